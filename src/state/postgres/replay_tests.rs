//! `sqlite/replay.rs`'s tests on PostgreSQL: the same cases, the same answers.

use super::*;
use crate::state::postgres::test_util::fresh_store;
use crate::state::{DeliveryRecord, NewMessage, PageCommit};

/// Messages `a` and `b` of hook `h`, delivered; `a`'s change is also
/// pending for hook `k`, which keeps its resource stored.
async fn delivered(store: &PgStore) {
    let a = NewMessage::test("h", "a", "Observation", "a");
    let mut k = a.clone();
    k.hook = "k".into();
    let b = NewMessage::test("h", "b", "Observation", "b");
    store
        .commit_page(
            &crate::state::Fence::private(),
            PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages: vec![a, k, b],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let claimed = store.claim_due("h", vec![], 100).await.unwrap();
    let done = claimed
        .iter()
        .map(|c| (c.id, DeliveryRecord::Delivered { status: 200 }))
        .collect();
    store
        .record_deliveries(&crate::state::Fence::private(), "h", done, false)
        .await
        .unwrap();
}

fn requeue(id: i64, need_body: bool) -> Requeue {
    Requeue {
        id,
        payload: None,
        need_body,
    }
}

#[tokio::test]
async fn delivered_messages_come_back_pending_with_what_they_can_send() {
    let Some(store) = fresh_store().await else {
        return;
    };
    delivered(&store).await;
    let found = store
        .replay_candidates("h", MessageFilter::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(
        found
            .iter()
            .all(|c| !c.stored.has_payload() && c.stored.change_id.is_some())
    );
    let bodies: Vec<_> = found.iter().map(|c| c.stored.has_resource()).collect();
    assert_eq!(bodies, [true, false], "b's resource went on delivery");
    let only_b = MessageFilter {
        resource_id: Some("b".into()),
        ..Default::default()
    };
    let b = store.replay_candidates("h", only_b).await.unwrap();
    assert_eq!(b.len(), 1);
    let future = MessageFilter {
        since_ms: Some(now_ms() + 60_000),
        ..Default::default()
    };
    assert!(
        store
            .replay_candidates("h", future)
            .await
            .unwrap()
            .is_empty()
    );

    // In full: only `a`, whose resource is still stored.
    let (a_id, b_id) = (found[0].id, found[1].id);
    let n = store
        .requeue_delivered(vec![requeue(a_id, true), requeue(b_id, true)])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // `b` without its resource (id-only).
    assert_eq!(
        store
            .requeue_delivered(vec![requeue(b_id, false)])
            .await
            .unwrap(),
        1
    );
    let claimed = store.claim_due("h", vec![], 10).await.unwrap();
    let got: Vec<_> = claimed
        .iter()
        .map(|c| (c.message_id.as_str(), c.attempts, c.body.raw()))
        .collect();
    assert_eq!(got, [("a", 0, b"{}".to_vec()), ("b", 0, vec![])]);
    // Requeued once: not delivered any more, so not again.
    assert_eq!(
        store
            .requeue_delivered(vec![requeue(a_id, false)])
            .await
            .unwrap(),
        0
    );
    // Pending again, `a` keeps its resource after `k` is delivered.
    let k = store.claim_due("k", vec![], 10).await.unwrap();
    store
        .record_delivery(
            &crate::state::Fence::private(),
            "k",
            k[0].id,
            DeliveryRecord::Delivered { status: 200 },
        )
        .await
        .unwrap();
    let a = store.message_body(a_id).await.unwrap();
    assert_eq!(a.raw(), b"{}");
}

/// Settles every due message of `hook`: delivered, or dead if `dead`.
async fn settle(store: &PgStore, hook: &str, dead: bool) {
    let claimed = store.claim_due(hook, vec![], 100).await.unwrap();
    let records = claimed
        .iter()
        .map(|c| {
            let r = if dead {
                DeliveryRecord::Failed {
                    status: Some(500),
                    error: "HTTP 500".into(),
                    retry_at_ms: None,
                }
            } else {
                DeliveryRecord::Delivered { status: 200 }
            };
            (c.id, r)
        })
        .collect();
    store
        .record_deliveries(&crate::state::Fence::private(), hook, records, false)
        .await
        .unwrap();
}

async fn enqueue(store: &PgStore, messages: Vec<NewMessage>) {
    store
        .commit_page(
            &crate::state::Fence::private(),
            PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// Events 1-5 of `h` (1-4 delivered, 5 dead) and of `g` (delivered):
/// from event 3, `h`'s 3, 4 and 5 are pending again under their
/// message_ids and numbers; `h`'s 1 and 2 and all of `g` stay as they were.
#[tokio::test]
async fn replay_from_an_event_number_requeues_the_rest_keeping_their_numbers() {
    let Some(store) = fresh_store().await else {
        return;
    };
    for hook in ["h", "g"] {
        let msgs = (1..=4)
            .map(|i| NewMessage::test(hook, &format!("{hook}{i}"), "Observation", &i.to_string()))
            .collect();
        enqueue(&store, msgs).await;
        settle(&store, hook, false).await;
        enqueue(
            &store,
            vec![NewMessage::test(
                hook,
                &format!("{hook}5"),
                "Observation",
                "5",
            )],
        )
        .await;
        settle(&store, hook, hook == "h").await;
    }
    let found = store
        .replay_candidates_from_event("h", 3, MessageFilter::default())
        .await
        .unwrap();
    let numbers: Vec<_> = found
        .iter()
        .map(|m| (m.message_id.as_str(), m.event_number, m.state))
        .collect();
    use crate::state::MessageState::{Dead, Delivered};
    assert_eq!(
        numbers,
        [
            ("h3", Some(3), Delivered),
            ("h4", Some(4), Delivered),
            ("h5", Some(5), Dead)
        ]
    );
    let items = found.iter().map(|m| requeue(m.id, false)).collect();
    // Only delivered ones for a replay by time: the dead one stays dead.
    assert_eq!(
        store
            .requeue_delivered(vec![requeue(found[2].id, false)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.requeue_delivered_or_dead(items).await.unwrap(), 3);

    let claimed = store.claim_due("h", vec![], 10).await.unwrap();
    let got: Vec<_> = claimed
        .iter()
        .map(|c| (c.message_id.as_str(), c.event_number, c.attempts))
        .collect();
    assert_eq!(
        got,
        [("h3", Some(3), 0), ("h4", Some(4), 0), ("h5", Some(5), 0)]
    );
    let left = store
        .replay_candidates("h", MessageFilter::default())
        .await
        .unwrap();
    let left: Vec<_> = left.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(left, ["h1", "h2"]);
    assert!(store.claim_due("g", vec![], 10).await.unwrap().is_empty());
    let g = store
        .replay_candidates_from_event("g", 1, MessageFilter::default())
        .await
        .unwrap();
    let g: Vec<_> = g.iter().map(|m| (m.event_number, m.state)).collect();
    assert_eq!(
        g,
        [
            (Some(1), Delivered),
            (Some(2), Delivered),
            (Some(3), Delivered),
            (Some(4), Delivered),
            (Some(5), Delivered)
        ]
    );
    // Nothing numbered that high: nothing.
    let none = store
        .replay_candidates_from_event("h", 6, MessageFilter::default())
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// A message moved to the hook keeps its older row id but takes a later
/// number: candidates come in number order, not row order.
#[tokio::test]
async fn candidates_from_an_event_come_in_event_number_order() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![NewMessage::test("old", "m", "Observation", "m")],
    )
    .await;
    settle(&store, "old", true).await;
    enqueue(
        &store,
        vec![NewMessage::test("h", "h1", "Observation", "1")],
    )
    .await;
    let sel = crate::state::DlqSelection {
        hook: Some("old".into()),
        configured: vec!["h".into()],
        ..Default::default()
    };
    store.move_to_hook(sel, "h").await.unwrap();
    settle(&store, "h", false).await;
    let found = store
        .replay_candidates_from_event("h", 1, MessageFilter::default())
        .await
        .unwrap();
    let got: Vec<_> = found
        .iter()
        .map(|m| (m.message_id.as_str(), m.event_number))
        .collect();
    assert_eq!(got, [("h1", Some(1)), ("m", Some(2))]);
    assert!(found[1].id < found[0].id);
}

/// A replay of one hook's delivered message while the other hook's message
/// of the same change is being delivered (its trigger dropping the body
/// nobody else needed): the replay never leaves a message pending without
/// the body it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_beside_a_delivery_never_loses_the_body_it_needs() {
    use crate::state::NewMessage;
    let Some(store) = crate::state::postgres::test_util::fresh_store().await else {
        return;
    };
    let one = NewMessage::test("h1", "m", "Observation", "a");
    let two = NewMessage {
        hook: "h2".into(),
        ..one.clone()
    };
    store
        .commit_page(
            &crate::state::Fence::private(),
            crate::state::PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages: vec![one, two],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let c = store.client().await.unwrap();
    c.execute(
        "UPDATE outbox SET state = 'delivered' WHERE hook = 'h1'",
        &[],
    )
    .await
    .unwrap();
    let id: i64 = c
        .query_one("SELECT id FROM outbox WHERE hook = 'h1'", &[])
        .await
        .unwrap()
        .get(0);
    // h2's delivery drops the body (h1's message is delivered), not committed yet.
    let mut c1 = store.client().await.unwrap();
    let t1 = c1.transaction().await.unwrap();
    t1.execute(
        "UPDATE outbox SET state = 'delivered' WHERE hook = 'h2'",
        &[],
    )
    .await
    .unwrap();
    let s2 = store.clone();
    let replay = tokio::spawn(async move {
        let item = Requeue {
            id,
            payload: None,
            need_body: true,
        };
        s2.requeue_delivered(vec![item]).await.unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    t1.commit().await.unwrap();
    replay.await.unwrap();
    let row = c
        .query_one(
            "SELECT o.state, EXISTS (SELECT 1 FROM change_body b WHERE b.id = o.change_id)
             FROM outbox o WHERE o.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (state, body): (String, bool) = (row.get(0), row.get(1));
    assert!(state != "pending" || body, "pending without its body");
}
