//! Which claimed messages go out together, one notification each. A batch
//! that went out before (its webhook-id stored as each member's `batch_id`)
//! goes again as it was: the same messages in the same order, so the same
//! webhook-id. Only when it must change (a member redriven or purged apart,
//! a smaller `max_events_per_bundle`) does what is left go as new
//! notifications, still in event-number order. Messages never sent form new
//! batches of up to `max_events_per_bundle`, in event-number order.

use super::render::notification_id;
use crate::state::Claimed;
use std::collections::BTreeMap;

/// With whom a claimed message may go.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Company {
    /// The other members of the batch it went out in.
    Batch(String),
    /// No one: it went out on its own before (or before batches were stored).
    Alone(i64),
    /// Any other message never sent.
    New,
}

fn company(m: &Claimed) -> Company {
    match (&m.batch_id, m.attempts) {
        (Some(b), _) => Company::Batch(b.clone()),
        (None, 0) => Company::New,
        (None, _) => Company::Alone(m.id),
    }
}

fn number_order(m: &Claimed) -> (Option<i64>, i64) {
    (m.event_number, m.id)
}

/// The notifications `claimed` goes out in, at most `per_post` messages
/// each, in event-number order within each and by first event among them.
pub(super) fn notifications(claimed: Vec<Claimed>, per_post: usize) -> Vec<Vec<Claimed>> {
    let per_post = per_post.max(1);
    let mut groups: BTreeMap<Company, Vec<Claimed>> = BTreeMap::new();
    for m in claimed {
        groups.entry(company(&m)).or_default().push(m);
    }
    let mut out: Vec<Vec<Claimed>> = Vec::new();
    for mut msgs in groups.into_values() {
        msgs.sort_by_key(number_order);
        let mut rest = msgs.into_iter().peekable();
        while rest.peek().is_some() {
            out.push(rest.by_ref().take(per_post).collect());
        }
    }
    out.sort_by_key(|n| n.first().map(number_order));
    out
}

/// The webhook-id to store on the messages of `post` before it goes (see
/// `Store::assign_batches`), unless they hold it already. With `batching`
/// (`max_events_per_bundle` above 1) a lone message
/// stores its id too: a POST cut short (kill -9, the shutdown grace over)
/// leaves it unrecorded, and it must then go again alone, under that id,
/// rather than join a new batch the receiver never saw. Otherwise a lone
/// message never batched needs none: its id is its own message_id.
pub(super) fn batch_to_store(post: &[Claimed], batching: bool) -> Option<(String, Vec<i64>)> {
    if let [one] = post
        && one.batch_id.is_none()
        && !batching
    {
        return None;
    }
    let id = notification_id(post);
    post.iter()
        .any(|m| m.batch_id.as_deref() != Some(id.as_str()))
        .then(|| (id, post.iter().map(|m| m.id).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MessageBody;

    fn msg(id: i64, number: i64, attempts: u32, batch: Option<&str>) -> Claimed {
        Claimed {
            id,
            message_id: format!("m{id}"),
            resource_type: "Observation".into(),
            resource_id: format!("o{id}"),
            attempts,
            event_number: Some(number),
            body: MessageBody::Missing,
            created_at_ms: 0,
            batch_id: batch.map(String::from),
        }
    }

    fn numbers(posts: &[Vec<Claimed>]) -> Vec<Vec<i64>> {
        posts
            .iter()
            .map(|p| p.iter().map(|m| m.event_number.unwrap()).collect())
            .collect()
    }

    /// A failed batch comes back whole and in order, whatever order the
    /// claim returned it in; new messages do not join it.
    #[test]
    fn a_batch_goes_again_as_it_was() {
        let claimed = vec![
            msg(5, 5, 1, Some("b")),
            msg(7, 7, 0, None),
            msg(2, 2, 1, Some("b")),
            msg(1, 1, 1, Some("b")),
            msg(6, 6, 0, None),
            msg(3, 3, 1, Some("b")),
            msg(4, 4, 1, Some("b")),
        ];
        let posts = notifications(claimed, 5);
        assert_eq!(numbers(&posts), [vec![1, 2, 3, 4, 5], vec![6, 7]]);
        let again = notifications(posts[0].clone(), 5);
        assert_eq!(notification_id(&again[0]), notification_id(&posts[0]));
    }

    /// A smaller `max_events_per_bundle` splits a batch in number order; a
    /// message that went alone goes alone; new ones batch together.
    #[test]
    fn a_split_keeps_number_order() {
        let claimed = vec![
            msg(3, 3, 2, Some("b")),
            msg(1, 1, 2, Some("b")),
            msg(2, 2, 2, Some("b")),
            msg(8, 8, 1, None),
            msg(10, 10, 0, None),
            msg(9, 9, 0, None),
        ];
        let posts = notifications(claimed, 2);
        assert_eq!(numbers(&posts), [vec![1, 2], vec![3], vec![8], vec![9, 10]]);
    }

    /// What is stored before a POST: a new batch's id; nothing for a batch
    /// that holds its id already, or a lone message never batched.
    #[test]
    fn batch_ids_are_stored_once_per_new_batch() {
        let new = vec![msg(1, 1, 0, None), msg(2, 2, 0, None)];
        let (id, ids) = batch_to_store(&new, true).unwrap();
        assert_eq!(
            (id.as_str(), ids),
            (notification_id(&new).as_str(), vec![1, 2])
        );
        let kept: Vec<Claimed> = new.iter().map(|m| msg(m.id, m.id, 1, Some(&id))).collect();
        assert_eq!(batch_to_store(&kept, true), None);
        assert_eq!(batch_to_store(&[msg(3, 3, 0, None)], false), None);
        // What is left of a batch is a batch of its own.
        let (left, _) = batch_to_store(&kept[..1], true).unwrap();
        assert_eq!(left, "m1");
    }

    /// A lone message of a hook that batches stores its id before it goes:
    /// cut short in flight (nothing recorded), it comes back as a batch of
    /// one under that id, and new messages do not join it.
    #[test]
    fn a_lone_message_of_a_batching_hook_keeps_its_id() {
        let lone = vec![msg(1, 1, 0, None)];
        let (id, ids) = batch_to_store(&lone, true).unwrap();
        assert_eq!((id.as_str(), ids), ("m1", vec![1]));
        let claimed = vec![
            msg(1, 1, 0, Some("m1")),
            msg(2, 2, 0, None),
            msg(3, 3, 0, None),
        ];
        let posts = notifications(claimed, 5);
        assert_eq!(numbers(&posts), [vec![1], vec![2, 3]]);
        assert_eq!(notification_id(&posts[0]), "m1");
        assert_eq!(batch_to_store(&posts[0], true), None);
    }
}
