//! The state contract's conformance suite: what every backend must do, written
//! only against the role traits (`TargetStore`, `DeliveryStore`,
//! `OperatorStore`), never against a backend's tables. Each backend runs the
//! same tests through its own entry point at the bottom (`conformance!`): a
//! second backend adds one line there and changes no test.

use super::{
    DeliveryRecord, DeliveryStore, DlqSelection, Fence, NewMessage, OperatorStore, PageCommit,
    Rename, SeenRow, TargetKey, TargetStore, now_ms,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// What the suite needs of a backend: all three roles.
pub(crate) trait Contract: TargetStore + DeliveryStore + OperatorStore {}
impl<S: TargetStore + DeliveryStore + OperatorStore> Contract for S {}

const T0: &str = "2026-01-01T00:00:00.000Z";
const T1: &str = "2026-01-02T00:00:00.000Z";
const T2: &str = "2026-01-03T00:00:00.000Z";

fn page(messages: Vec<NewMessage>) -> PageCommit {
    PageCommit {
        source: "s".into(),
        resource_type: "Observation".into(),
        messages,
        ..Default::default()
    }
}

fn msg(hook: &str, message_id: &str, resource_id: &str) -> NewMessage {
    NewMessage::test(hook, message_id, "Observation", resource_id)
}

fn seen(version: &str, last_updated: &str) -> SeenRow {
    SeenRow {
        version_id: Some(version.into()),
        last_updated: Some(last_updated.into()),
        content_hash: [version.len() as u8; 32],
        body: None,
    }
}

fn failed(retry_at_ms: Option<i64>) -> DeliveryRecord {
    DeliveryRecord::Failed {
        status: Some(503),
        error: "HTTP 503".into(),
        retry_at_ms,
    }
}

const DELIVERED: DeliveryRecord = DeliveryRecord::Delivered { status: 200 };

/// The message_ids `claim_due` hands out now (nothing in flight).
async fn claimable<S: Contract>(s: &S, hook: &str) -> Vec<String> {
    let got = DeliveryStore::claim_due(s, hook, vec![], 100)
        .await
        .unwrap();
    got.into_iter().map(|c| c.message_id).collect()
}

/// The row id of the one claimable message `message_id` of `hook`.
async fn claim_id<S: Contract>(s: &S, hook: &str, message_id: &str) -> i64 {
    let got = DeliveryStore::claim_due(s, hook, vec![], 100)
        .await
        .unwrap();
    got.iter()
        .find(|c| c.message_id == message_id)
        .unwrap_or_else(|| panic!("{message_id} not claimable"))
        .id
}

/// A page's seen rows, messages and watermark are there together after its
/// commit; the same page committed again (a re-read after a crash) adds no
/// message, no event number, and leaves the watermark where it is.
pub(crate) async fn a_page_commits_watermark_seen_and_messages_together<S: Contract>(
    s: &S,
    f: &Fence,
) {
    let key = TargetKey::population("s", "Observation");
    s.init_target(f, &key, Some(T0.into()), Some(T0.into()))
        .await
        .unwrap();
    let commit = || PageCommit {
        seen: vec![("a".into(), seen("1", T1))],
        watermark: Some(T1.into()),
        changes: 1,
        resources_read: 1,
        ..page(vec![msg("h", "a1", "a")])
    };
    s.commit_page(f, commit()).await.unwrap();
    let state = s.target_state(&key).await.unwrap();
    assert!(state.initialized);
    assert_eq!(state.watermark.as_deref(), Some(T1));
    assert_eq!(state.floor.as_deref(), Some(T0));
    let got = s
        .load_seen("s", "Observation", vec!["a".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "b was never seen");
    assert_eq!(got["a"], seen("1", T1));

    s.commit_page(f, commit()).await.unwrap();
    assert_eq!(s.target_state(&key).await.unwrap(), state);
    let claimed = DeliveryStore::claim_due(s, "h", vec![], 100).await.unwrap();
    assert_eq!(claimed.len(), 1, "a page committed twice adds nothing");
    assert_eq!(claimed[0].event_number, Some(1));
    assert_eq!(s.hook_report("h").await.unwrap().pending, 1);
    assert_eq!(s.channel_state("h").await.unwrap().events, 1);
}

/// A failed attempt waits for its retry time (`next_due_ms` says when);
/// `pending_due_now` makes it due at once.
pub(crate) async fn a_failed_delivery_waits_for_its_retry_time<S: Contract>(s: &S, f: &Fence) {
    s.commit_page(f, page(vec![msg("h", "a1", "a")]))
        .await
        .unwrap();
    let id = claim_id(s, "h", "a1").await;
    let later = now_ms() + 3_600_000;
    s.record_deliveries(f, "h", vec![(id, failed(Some(later)))], false)
        .await
        .unwrap();
    assert!(
        claimable(s, "h").await.is_empty(),
        "not due before its retry"
    );
    assert_eq!(s.next_due_ms("h").await.unwrap(), Some(later));
    assert_eq!(s.pending_due_now("h").await.unwrap(), 1);
    assert_eq!(claimable(s, "h").await, ["a1"]);
    s.record_delivery(f, "h", id, DELIVERED).await.unwrap();
    assert_eq!(s.next_due_ms("h").await.unwrap(), None);
    assert!(claimable(s, "h").await.is_empty(), "delivered: done");
}

/// A later message for a resource is not claimed while an earlier one is
/// pending (in flight, or waiting for a retry); other resources go on.
pub(crate) async fn a_later_version_waits_for_the_earlier_one<S: Contract>(s: &S, f: &Fence) {
    s.commit_page(
        f,
        page(vec![
            msg("h", "a1", "a"),
            msg("h", "a2", "a"),
            msg("h", "b1", "b"),
        ]),
    )
    .await
    .unwrap();
    let got = DeliveryStore::claim_due(s, "h", vec![], 100).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["a1", "b1"]);
    let in_flight = got.iter().map(|c| c.id).collect();
    let again = DeliveryStore::claim_due(s, "h", in_flight, 100)
        .await
        .unwrap();
    assert!(again.is_empty(), "in flight: not claimed twice; a2 waits");
    let later = now_ms() + 3_600_000;
    s.record_deliveries(
        f,
        "h",
        vec![(got[0].id, failed(Some(later))), (got[1].id, DELIVERED)],
        false,
    )
    .await
    .unwrap();
    assert!(
        claimable(s, "h").await.is_empty(),
        "a2 waits for a1's retry"
    );
    s.pending_due_now("h").await.unwrap();
    assert_eq!(claimable(s, "h").await, ["a1"]);
    s.record_delivery(f, "h", got[0].id, DELIVERED)
        .await
        .unwrap();
    assert_eq!(claimable(s, "h").await, ["a2"]);
}

/// Event numbers count from 1 per hook, without gaps, across pages; a
/// duplicate takes none; each hook counts on its own.
pub(crate) async fn event_numbers_are_gap_free_and_increasing_per_hook<S: Contract>(
    s: &S,
    f: &Fence,
) {
    s.commit_page(
        f,
        page(vec![
            msg("h", "a1", "a"),
            msg("g", "a1", "a"),
            msg("h", "a1", "a"),
            msg("h", "b1", "b"),
        ]),
    )
    .await
    .unwrap();
    s.commit_page(f, page(vec![msg("h", "b1", "b"), msg("h", "c1", "c")]))
        .await
        .unwrap();
    let numbers = |hook: &'static str| async move {
        let got = DeliveryStore::claim_due(s, hook, vec![], 100)
            .await
            .unwrap();
        got.into_iter()
            .map(|c| (c.message_id, c.event_number.unwrap()))
            .collect::<Vec<_>>()
    };
    let h: Vec<(String, i64)> = ["a1", "b1", "c1"]
        .iter()
        .zip(1..)
        .map(|(m, n)| (m.to_string(), n))
        .collect();
    assert_eq!(numbers("h").await, h);
    assert_eq!(numbers("g").await, [("a1".to_string(), 1)]);
    assert_eq!(s.channel_state("h").await.unwrap().events, 3);
    let retained = s.retained_events("h", 1, 3, false).await.unwrap();
    let ns: Vec<i64> = retained.iter().map(|e| e.number).collect();
    assert_eq!(ns, [1, 2, 3]);
}

/// Attempts exhausted, a message is a dead letter (not claimed, not due);
/// a redrive makes it pending again with its message_id and a fresh attempt
/// budget; a purge deletes it for good.
pub(crate) async fn dead_letters_are_redriven_with_their_id_and_purged<S: Contract>(
    s: &S,
    f: &Fence,
) {
    s.commit_page(f, page(vec![msg("h", "a1", "a"), msg("h", "b1", "b")]))
        .await
        .unwrap();
    let a = claim_id(s, "h", "a1").await;
    let b = claim_id(s, "h", "b1").await;
    s.record_delivery(f, "h", a, failed(Some(now_ms() - 1)))
        .await
        .unwrap();
    s.record_deliveries(f, "h", vec![(a, failed(None)), (b, failed(None))], false)
        .await
        .unwrap();
    let dead = s.dead_letters(Some("h".into())).await.unwrap();
    let ids: Vec<(&str, i64)> = dead
        .iter()
        .map(|m| (m.message_id.as_str(), m.attempts))
        .collect();
    assert_eq!(ids, [("a1", 2), ("b1", 1)]);
    assert!(claimable(s, "h").await.is_empty());
    assert_eq!(s.next_due_ms("h").await.unwrap(), None);

    let sel = |ids: Vec<i64>| DlqSelection {
        ids: Some(ids),
        configured: vec!["h".into()],
        ..Default::default()
    };
    assert_eq!(s.redrive(sel(vec![a])).await.unwrap(), 1);
    let again = DeliveryStore::claim_due(s, "h", vec![], 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].message_id.as_str(), again[0].id), ("a1", a));
    assert_eq!(again[0].attempts, 0, "a fresh attempt budget");
    assert_eq!(again[0].event_number, Some(1), "its event number stays");

    assert_eq!(s.purge(sel(vec![b])).await.unwrap(), 1);
    assert!(s.dead_letters(None).await.unwrap().is_empty());
    s.record_delivery(f, "h", a, DELIVERED).await.unwrap();
    assert!(s.hook_has_messages("h").await.unwrap(), "delivered, kept");
}

/// Delivered messages go once past the retention; pending and dead ones
/// stay. Seen versions last updated before a cutoff are forgotten, newer
/// ones kept.
pub(crate) async fn pruning_forgets_delivered_messages_and_old_versions<S: Contract>(
    s: &S,
    f: &Fence,
) {
    s.commit_page(
        f,
        PageCommit {
            seen: vec![("old".into(), seen("1", T0)), ("new".into(), seen("2", T2))],
            ..page(vec![msg("h", "a1", "a"), msg("h", "b1", "b")])
        },
    )
    .await
    .unwrap();
    let before = now_ms();
    let a = claim_id(s, "h", "a1").await;
    s.record_delivery(f, "h", a, DELIVERED).await.unwrap();
    assert_eq!(s.prune_delivered(before - 1).await.unwrap(), 0, "too new");
    assert_eq!(s.prune_delivered(now_ms() + 1).await.unwrap(), 1);
    assert_eq!(claimable(s, "h").await, ["b1"], "pending: kept");
    assert_eq!(s.hook_report("h").await.unwrap().delivered, 0);

    let pruned = s.prune_seen("s", "Observation", T1.into()).await.unwrap();
    assert_eq!(pruned, 1);
    let got = s
        .load_seen("s", "Observation", vec!["old".into(), "new".into()])
        .await
        .unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["new"]);
}

/// A patient off the roster keeps its targets through the grace and comes
/// back with its watermark; past the grace its targets are forgotten.
pub(crate) async fn a_patient_off_the_roster_is_forgotten_after_the_grace<S: Contract>(
    s: &S,
    f: &Fence,
) {
    let key = |p: &str| TargetKey {
        source: "s".into(),
        resource_type: "Observation".into(),
        patient: Some(p.into()),
    };
    for p in ["a", "b"] {
        s.init_target(f, &key(p), Some(T1.into()), None)
            .await
            .unwrap();
    }
    let roster = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
    let sync = s.sync_roster("s", roster(&["a"]), 1_000, 0).await.unwrap();
    assert_eq!(sync.left, ["b"]);
    assert_eq!(s.roster_in_state("s").await.unwrap(), roster(&["a"]));
    let sync = s
        .sync_roster("s", roster(&["a", "b"]), 2_000, 500)
        .await
        .unwrap();
    assert_eq!(sync.returned, ["b"]);
    let b = s.target_state(&key("b")).await.unwrap();
    assert_eq!(b.watermark.as_deref(), Some(T1), "back with its watermark");
    s.sync_roster("s", roster(&["a"]), 3_000, 0).await.unwrap();
    let sync = s
        .sync_roster("s", roster(&["a"]), 9_000, 4_000)
        .await
        .unwrap();
    assert_eq!(sync.forgotten, ["b"]);
    let b = s.target_state(&key("b")).await.unwrap();
    assert!(!b.initialized && b.watermark.is_none());
    let a = s.target_state(&key("a")).await.unwrap();
    assert_eq!(a.watermark.as_deref(), Some(T1), "a is untouched");
}

/// A rename moves a source's targets, seen versions and messages under the
/// new name; it refuses a name that has state and reports a name without.
pub(crate) async fn a_rename_moves_the_whole_source<S: Contract>(s: &S, f: &Fence) {
    let old = TargetKey::population("s", "Observation");
    let other = TargetKey::population("other", "Observation");
    s.init_target(f, &old, Some(T1.into()), None).await.unwrap();
    s.init_target(f, &other, Some(T0.into()), None)
        .await
        .unwrap();
    s.commit_page(
        f,
        PageCommit {
            seen: vec![("a".into(), seen("1", T1))],
            ..page(vec![msg("h", "a1", "a")])
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        s.rename_source("s", "t").await.unwrap(),
        Rename::Done(_)
    ));
    let new = TargetKey::population("t", "Observation");
    assert_eq!(
        s.target_state(&new).await.unwrap().watermark.as_deref(),
        Some(T1)
    );
    assert!(!s.target_state(&old).await.unwrap().initialized);
    let got = s
        .load_seen("t", "Observation", vec!["a".into()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let claimed = DeliveryStore::claim_due(s, "h", vec![], 100).await.unwrap();
    assert_eq!(claimed.len(), 1, "the message stays, under its hook");
    assert_eq!(s.sources_with_state().await.unwrap(), ["other", "t"]);
    assert_eq!(s.rename_source("s", "t").await.unwrap(), Rename::NoState);
    assert!(matches!(
        s.rename_source("other", "t").await.unwrap(),
        Rename::TargetHasState(_)
    ));
    assert_eq!(
        s.target_state(&other).await.unwrap().watermark.as_deref(),
        Some(T0),
        "a refused rename changes nothing"
    );
}

/// A wake-up reaches the hook's waiter at once, and one sent while nobody
/// waited is kept for the next wait; another hook's wake-up does not count,
/// and without one the wait ends with its timeout.
pub(crate) async fn a_wake_up_reaches_the_hooks_waiter<S: Contract>(s: &S, _: &Fence) {
    let long = Duration::from_secs(30);
    let short = Duration::from_millis(20);
    let (woken, ()) = tokio::join!(s.wait_due("h", long), async {
        tokio::task::yield_now().await;
        s.notify_due("h");
    });
    assert!(woken, "woken while waiting");
    s.notify_due("h");
    s.notify_due("h");
    assert!(s.wait_due("h", long).await, "kept while nobody waited");
    assert!(!s.wait_due("h", short).await, "kept once, not counted");
    s.notify_due("g");
    assert!(!s.wait_due("h", short).await, "another hook's wake-up");
    assert!(s.wait_due("g", long).await);
}

/// A page's seen rows come with their kept bodies when asked (for
/// `$previous`), and without when not; an id never seen has no row.
pub(crate) async fn a_pages_seen_rows_come_with_their_bodies_when_asked<S: Contract>(
    s: &S,
    f: &Fence,
) {
    let body = br#"{"resourceType":"Observation","id":"a"}"#.to_vec();
    let row = SeenRow {
        body: Some(body.clone()),
        ..seen("1", T1)
    };
    let commit = PageCommit {
        seen: vec![("a".into(), row)],
        keep_bodies: true,
        changes: 1,
        ..page(vec![])
    };
    s.commit_page(f, commit).await.unwrap();
    let ids = || vec!["a".to_string(), "b".to_string()];
    let with = s.load_seen_for_page("s", "Observation", ids(), true);
    let with = with.await.unwrap();
    assert_eq!(with.len(), 1, "b was never seen");
    assert_eq!(with["a"].body.as_deref(), Some(body.as_slice()));
    let without = s.load_seen_for_page("s", "Observation", ids(), false);
    assert_eq!(without.await.unwrap()["a"], seen("1", T1));
}

/// Runs every test of the suite on the stores `$open` makes (each time: a
/// fresh, empty state, the fence of its writer, and whatever must live as
/// long as they do).
macro_rules! conformance {
    ($open:expr) => {
        conformance!(@tests $open;
            a_page_commits_watermark_seen_and_messages_together,
            a_failed_delivery_waits_for_its_retry_time,
            a_later_version_waits_for_the_earlier_one,
            event_numbers_are_gap_free_and_increasing_per_hook,
            dead_letters_are_redriven_with_their_id_and_purged,
            pruning_forgets_delivered_messages_and_old_versions,
            a_patient_off_the_roster_is_forgotten_after_the_grace,
            a_rename_moves_the_whole_source,
            a_wake_up_reaches_the_hooks_waiter,
            a_pages_seen_rows_come_with_their_bodies_when_asked,
        );
    };
    (@tests $open:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                // `None`: the backend is not installed here (said on stderr).
                let Some((_keep, store, fence)) = $open else {
                    return;
                };
                crate::state::conformance::$test(&store, &fence).await;
            }
        )*
    };
}

/// SQLite, through `Store` (what every caller holds), fenced by the writer
/// lock as the daemon is.
fn sqlite() -> Option<((tempfile::TempDir, super::StateLock), super::Store, Fence)> {
    let (dir, store) = super::test_util::temp_store();
    let lock = super::StateLock::acquire(dir.path()).unwrap();
    let fence = lock.fence();
    Some(((dir, lock), store, fence))
}

mod sqlite {
    conformance!(super::sqlite());
}

/// PostgreSQL, through `Store`: a fresh database on the test server
/// (`postgres/test_server.rs`).
#[cfg(feature = "postgres")]
async fn postgres() -> Option<((), super::Store, Fence)> {
    let url = super::postgres::test_server::fresh_database().await?;
    let settings = super::postgres::PgSettings {
        url,
        pool_size: 4,
        tls: None,
    };
    let store = super::Store::postgres(&settings).unwrap();
    Some(((), store, Fence::private()))
}

#[cfg(feature = "postgres")]
mod postgres {
    conformance!(super::postgres().await);
}
