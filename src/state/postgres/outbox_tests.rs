//! `sqlite/outbox.rs`'s tests on PostgreSQL (the same cases, the same
//! answers), then what SQLite never faces: concurrent enqueuers on one
//! hook, a stale fence, a late outcome.

use super::*;
use crate::state::postgres::test_util::{exec, fresh_store};
use crate::state::{LeaseId, MessageKey, MessageState, PageCommit, WithBody};

async fn enqueue(store: &PgStore, msgs: Vec<NewMessage>) {
    store
        .commit_page(
            &crate::state::Fence::private(),
            PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages: msgs,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn versions_of_one_resource_are_claimed_in_order() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![
            NewMessage::test("h", "a1", "Observation", "a"),
            NewMessage::test("h", "a2", "Observation", "a"),
            NewMessage::test("h", "b1", "Observation", "b"),
            NewMessage::test("h", "a1", "Observation", "a"), // duplicate id: ignored
        ],
    )
    .await;
    let got = store.claim_due("h", vec![], 10).await.unwrap();
    let ids: Vec<_> = got.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["a1", "b1"]);
    // While a1 is in flight it is not claimed again, and a2 waits for it.
    let again = store
        .claim_due("h", vec![got[0].id, got[1].id], 10)
        .await
        .unwrap();
    assert!(again.is_empty());
    store
        .record_delivery(
            &crate::state::Fence::private(),
            "h",
            got[0].id,
            DeliveryRecord::Delivered { status: 200 },
        )
        .await
        .unwrap();
    let next = store.claim_due("h", vec![got[1].id], 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].message_id, "a2");
}

#[tokio::test]
async fn failures_wait_and_exhausted_ones_go_dead() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![NewMessage::test("h", "a1", "Observation", "a")],
    )
    .await;
    let c = store.claim_due("h", vec![], 1).await.unwrap().remove(0);
    let later = now_ms() + 60_000;
    store
        .record_delivery(
            &crate::state::Fence::private(),
            "h",
            c.id,
            DeliveryRecord::Failed {
                status: Some(500),
                error: "HTTP 500".into(),
                retry_at_ms: Some(later),
            },
        )
        .await
        .unwrap();
    assert!(store.claim_due("h", vec![], 1).await.unwrap().is_empty());
    assert_eq!(store.next_due_ms("h").await.unwrap(), Some(later));
    store
        .record_delivery(
            &crate::state::Fence::private(),
            "h",
            c.id,
            DeliveryRecord::Failed {
                status: Some(500),
                error: "HTTP 500".into(),
                retry_at_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.next_due_ms("h").await.unwrap(), None);
    let dead = store.dead_letters(None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
}

/// A stored batch is claimed whole, past the limit and whatever its
/// members' due times; delivery forgets it.
#[tokio::test]
async fn a_batch_is_claimed_whole() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let msgs = (1..=5)
        .map(|i| NewMessage::test("h", &format!("m{i}"), "Observation", &format!("o{i}")))
        .collect();
    enqueue(&store, msgs).await;
    let all = store.claim_due("h", vec![], 10).await.unwrap();
    let ids: Vec<i64> = all.iter().map(|m| m.id).collect();
    store
        .assign_batches(vec![("b".into(), vec![ids[1], ids[3], ids[4]])])
        .await
        .unwrap();
    let later = now_ms() + 3_600_000;
    let failed = |id| {
        (
            id,
            DeliveryRecord::Failed {
                status: Some(503),
                error: "HTTP 503".into(),
                retry_at_ms: Some(later),
            },
        )
    };
    // m5 falls due an hour after the others: it still comes with m2.
    store
        .record_deliveries(
            &crate::state::Fence::private(),
            "h",
            vec![failed(ids[4])],
            false,
        )
        .await
        .unwrap();
    let got = store.claim_due("h", vec![], 2).await.unwrap();
    let claimed: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|m| (m.message_id.as_str(), m.batch_id.as_deref()))
        .collect();
    assert_eq!(
        claimed,
        [
            ("m1", None),
            ("m2", Some("b")),
            ("m4", Some("b")),
            ("m5", Some("b"))
        ]
    );
    // In flight (in one POST), a batch's members are not claimed again.
    let in_flight = vec![ids[0], ids[1], ids[3], ids[4]];
    let again = store.claim_due("h", in_flight, 10).await.unwrap();
    assert_eq!(again.len(), 1, "m3 only");
    // Delivered, a message belongs to no batch.
    store
        .record_delivery(
            &crate::state::Fence::private(),
            "h",
            ids[1],
            DeliveryRecord::Delivered { status: 200 },
        )
        .await
        .unwrap();
    let id = ids[1];
    let batch: Option<String> = store
        .client()
        .await
        .unwrap()
        .query_one("SELECT batch_id FROM outbox WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(batch, None);
}

/// A changed endpoint: waiting messages are due now; dead ones stay dead.
#[tokio::test]
async fn pending_messages_fall_due_now() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![
            NewMessage::test("h", "a", "Observation", "a"),
            NewMessage::test("h", "b", "Observation", "b"),
        ],
    )
    .await;
    let got = store.claim_due("h", vec![], 10).await.unwrap();
    let fail = |retry_at_ms| DeliveryRecord::Failed {
        status: None,
        error: "connection failed".into(),
        retry_at_ms,
    };
    let records = vec![
        (got[0].id, fail(Some(now_ms() + 7_200_000))),
        (got[1].id, fail(None)),
    ];
    store
        .record_deliveries(&crate::state::Fence::private(), "h", records, false)
        .await
        .unwrap();
    assert!(store.claim_due("h", vec![], 10).await.unwrap().is_empty());
    assert_eq!(store.pending_due_now("h").await.unwrap(), 1);
    let due = store.claim_due("h", vec![], 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].message_id, "a");
    assert_eq!(store.dead_letters(None).await.unwrap().len(), 1);
}

/// Numbers per hook from 1, consecutive across transactions; a duplicate
/// takes none; another hook counts on its own.
#[tokio::test]
async fn event_numbers_are_gap_free_per_hook() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![
            NewMessage::test("h", "a1", "Observation", "a"),
            NewMessage::test("g", "a1", "Observation", "a"),
            NewMessage::test("h", "a1", "Observation", "a"), // duplicate
            NewMessage::test("h", "b1", "Observation", "b"),
        ],
    )
    .await;
    enqueue(
        &store,
        vec![
            NewMessage::test("h", "b1", "Observation", "b"), // duplicate
            NewMessage::test("h", "c1", "Observation", "c"),
        ],
    )
    .await;
    let numbers = |hook: &'static str| {
        let store = store.clone();
        async move {
            let got = store.claim_due(hook, vec![], 10).await.unwrap();
            got.iter()
                .map(|c| (c.message_id.clone(), c.event_number.unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        numbers("h").await,
        [("a1".into(), 1), ("b1".into(), 2), ("c1".into(), 3)]
    );
    assert_eq!(numbers("g").await, [("a1".to_string(), 1)]);
}

const DELIVERED: DeliveryRecord = DeliveryRecord::Delivered { status: 200 };

fn dead() -> DeliveryRecord {
    DeliveryRecord::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
        retry_at_ms: None,
    }
}

/// 8 enqueuers of 50 pages each on one hook at once (as replicas and a
/// backfill would), every seventh page rolled back on purpose after taking
/// its numbers, and each page with a message another enqueuer commits too:
/// the hook's numbers are exactly 1..N, one message_id each, and a reader
/// following the numbers (as `$events` does) never sees one before all
/// lower ones are there.
#[tokio::test]
async fn concurrent_enqueuers_number_a_hook_gap_free_in_commit_order() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let Some(store) = fresh_store().await else {
        return;
    };
    const TASKS: usize = 8;
    const PAGES: usize = 50;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut last = 0i64;
            loop {
                let finished = done.load(SeqCst);
                let got = store
                    .retained_events("h", last + 1, i64::MAX, false)
                    .await
                    .unwrap();
                for e in &got {
                    assert_eq!(e.number, last + 1, "a number visible before a lower one");
                    last = e.number;
                }
                if finished && got.is_empty() {
                    return last;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
    };
    let tasks = (0..TASKS).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut committed = Vec::new();
            for p in 0..PAGES {
                let mut msgs: Vec<NewMessage> = (0..3)
                    .map(|i| {
                        let id = format!("t{t}p{p}m{i}");
                        NewMessage::test("h", &id, "Observation", &id)
                    })
                    .collect();
                // Also met by the task beside it (the same change read twice).
                let shared = format!("shared{}p{p}", t / 2);
                msgs.push(NewMessage::test("h", &shared, "Observation", &shared));
                if p % 7 == 3 {
                    let mut client = store.client().await.unwrap();
                    let tx = client.transaction().await.unwrap();
                    let _ = insert_messages(&tx, &msgs).await;
                    tx.rollback().await.unwrap();
                } else {
                    let page = PageCommit {
                        source: "s".into(),
                        resource_type: "Observation".into(),
                        messages: msgs.clone(),
                        ..Default::default()
                    };
                    store.commit_page(&Fence::private(), page).await.unwrap();
                    committed.extend(msgs.into_iter().map(|m| m.message_id));
                }
            }
            committed
        })
    });
    let mut expected = BTreeSet::new();
    for ids in futures_util::future::join_all(tasks).await {
        expected.extend(ids.unwrap());
    }
    done.store(true, SeqCst);
    let n = expected.len() as i64;
    assert_eq!(reader.await.unwrap(), n, "the reader saw every number");
    let rows = store
        .client()
        .await
        .unwrap()
        .query(
            "SELECT message_id, event_number FROM outbox WHERE hook = 'h' ORDER BY event_number",
            &[],
        )
        .await
        .unwrap();
    let numbers: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(numbers, (1..=n).collect::<Vec<_>>());
    let ids: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, expected, "one row per committed message_id");
    assert_eq!(store.channel_state("h").await.unwrap().events, n);
}

/// A writer whose lease moved on (a newer epoch, or another owner) writes
/// nothing: no page, no delivery outcome. The current one writes.
#[tokio::test]
async fn a_stale_fence_writes_nothing() {
    let Some(store) = fresh_store().await else {
        return;
    };
    exec(
        &store,
        "INSERT INTO lease (scope, unit, owner, epoch) VALUES ('hook:h', 0, 'r1', 2)",
    )
    .await;
    let lease = |owner: &str| LeaseId {
        scope: "hook:h".into(),
        unit: 0,
        owner: owner.into(),
    };
    let current = Fence::leased(lease("r1"), 2);
    let stale = Fence::leased(lease("r1"), 1);
    let other = Fence::leased(lease("r2"), 2);
    let page = |mid: &str| PageCommit {
        source: "s".into(),
        resource_type: "Observation".into(),
        messages: vec![NewMessage::test("h", mid, "Observation", mid)],
        ..Default::default()
    };
    let fenced = |r: Result<(), StateError>| matches!(r, Err(StateError::Fenced(_)));
    assert!(fenced(store.commit_page(&stale, page("m0")).await));
    assert!(!store.hook_has_messages("h").await.unwrap(), "no message");
    assert_eq!(
        store.channel_state("h").await.unwrap().events,
        0,
        "no number"
    );
    assert!(store.summary().await.unwrap().targets == 0, "no watermark");

    store.commit_page(&current, page("m1")).await.unwrap();
    let id = store.claim_due("h", vec![], 10).await.unwrap()[0].id;
    for fence in [&stale, &other] {
        let r = store
            .record_deliveries(fence, "h", vec![(id, DELIVERED)], false)
            .await;
        assert!(fenced(r));
        assert!(fenced(store.record_delivery(fence, "h", id, dead()).await));
    }
    let found = store
        .find_messages(MessageKey::Id(id), None, WithBody::No)
        .await
        .unwrap();
    assert_eq!(
        (found[0].state, found[0].attempts),
        (MessageState::Pending, 0)
    );
    let report = store.hook_report("h").await.unwrap();
    assert_eq!(
        (report.failed_attempts, report.last_success_at_ms),
        (0, None)
    );

    store
        .record_delivery(&current, "h", id, DELIVERED)
        .await
        .unwrap();
    assert_eq!(store.hook_report("h").await.unwrap().delivered, 1);
}

/// An outcome recorded after the message was finished (a lane's old owner
/// answering late) changes nothing: a delivered message stays delivered, a
/// dead one dead, and no stat counts it.
#[tokio::test]
async fn a_late_outcome_never_flips_a_finished_message() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![
            NewMessage::test("h", "a1", "Observation", "a"),
            NewMessage::test("h", "b1", "Observation", "b"),
        ],
    )
    .await;
    let got = store.claim_due("h", vec![], 10).await.unwrap();
    let (a, b) = (got[0].id, got[1].id);
    let f = Fence::private();
    store
        .record_deliveries(&f, "h", vec![(a, DELIVERED), (b, dead())], false)
        .await
        .unwrap();
    let before = store.hook_report("h").await.unwrap();
    let retry = DeliveryRecord::Failed {
        status: None,
        error: "timed out".into(),
        retry_at_ms: Some(now_ms() + 60_000),
    };
    store
        .record_deliveries(
            &f,
            "h",
            vec![(a, dead()), (a, retry), (b, DELIVERED)],
            false,
        )
        .await
        .unwrap();
    let state = |id| {
        let store = store.clone();
        async move {
            let m = store
                .find_messages(MessageKey::Id(id), None, WithBody::No)
                .await
                .unwrap();
            (m[0].state, m[0].attempts, m[0].last_status)
        }
    };
    assert_eq!(state(a).await, (MessageState::Delivered, 1, Some(200)));
    assert_eq!(state(b).await, (MessageState::Dead, 1, Some(500)));
    let after = store.hook_report("h").await.unwrap();
    assert_eq!(
        (after.delivered, after.dead, after.failed_attempts),
        (before.delivered, before.dead, before.failed_attempts)
    );
    assert_eq!(after.last_success_at_ms, before.last_success_at_ms);
    assert_eq!(after.last_error_at_ms, before.last_error_at_ms);
}

/// Per-resource order follows event numbers: a message moved to a hook is
/// behind the messages of its resource already pending there, though its
/// row is older.
#[tokio::test]
async fn a_moved_message_waits_behind_its_resources_pending_ones() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(
        &store,
        vec![NewMessage::test("old", "x0", "Observation", "x")],
    )
    .await;
    let id = store.claim_due("old", vec![], 10).await.unwrap()[0].id;
    store
        .record_delivery(&Fence::private(), "old", id, dead())
        .await
        .unwrap();
    enqueue(
        &store,
        vec![NewMessage::test("h", "x1", "Observation", "x")],
    )
    .await;
    let sel = crate::state::DlqSelection {
        hook: Some("old".into()),
        configured: vec!["h".into()],
        ..Default::default()
    };
    assert_eq!(store.move_to_hook(sel, "h").await.unwrap().moved, 1);
    let claimed = store.claim_due("h", vec![], 10).await.unwrap();
    let got: Vec<_> = claimed
        .iter()
        .map(|c| (c.message_id.as_str(), c.event_number))
        .collect();
    assert_eq!(got, [("x1", Some(1))], "x0 (number 2) waits");
    store
        .record_delivery(&Fence::private(), "h", claimed[0].id, DELIVERED)
        .await
        .unwrap();
    let next = store.claim_due("h", vec![], 10).await.unwrap();
    assert_eq!((next[0].message_id.as_str(), next[0].id), ("x0", id));
}

/// A resource's lane never changes (lanes are leased units): pinned here.
#[test]
fn a_resources_lane_is_stable() {
    assert_eq!(lane("Observation", "a"), 5);
    assert_eq!(lane("Patient", "123"), 13);
    assert_eq!(lane("Encounter", "e-1"), 8);
    let lanes: std::collections::BTreeSet<i16> = (0..1000)
        .map(|i| lane("Observation", &i.to_string()))
        .collect();
    assert_eq!(lanes, (0..LANES as i16).collect());
}

/// Each message's lane is stored with it.
#[tokio::test]
async fn messages_carry_their_resources_lane() {
    let Some(store) = fresh_store().await else {
        return;
    };
    enqueue(&store, vec![NewMessage::test("h", "m", "Patient", "123")]).await;
    let row = store
        .client()
        .await
        .unwrap()
        .query_one("SELECT lane FROM outbox WHERE message_id = 'm'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i16>(0), 13);
}

/// Two enqueuers meeting the same two message ids in opposite orders
/// deadlock; PostgreSQL aborts one, and a page commit it aborted runs again
/// (the other one's rows are then there: nothing is added twice, no number
/// is lost).
#[tokio::test]
async fn a_page_commit_that_met_a_deadlock_runs_again() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let m = |id: &str| NewMessage::test("h", id, "Observation", id);
    // Another enqueuer: m2 first, holding it (and the hook's counter row).
    let mut client = store.client().await.unwrap();
    let other = client.transaction().await.unwrap();
    insert_messages(&other, &[m("m2")]).await.unwrap();
    // The page: m1, then it waits for m2.
    let page = PageCommit {
        source: "s".into(),
        resource_type: "Observation".into(),
        messages: vec![m("m1"), m("m2")],
        ..Default::default()
    };
    let commit = {
        let store = store.clone();
        tokio::spawn(async move { store.commit_page(&Fence::private(), page).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // m1 now waits for the page: a deadlock, found by the page (it waited first).
    insert_messages(&other, &[m("m1")]).await.unwrap();
    other.commit().await.unwrap();
    commit.await.unwrap().unwrap();
    let rows = store
        .client()
        .await
        .unwrap()
        .query(
            "SELECT message_id, event_number FROM outbox ORDER BY event_number",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [("m2".to_string(), 1), ("m1".to_string(), 2)]);
    assert_eq!(store.channel_state("h").await.unwrap().events, 2);
}

/// Two enqueuers of one hook: the first to insert (the lower row id) is the
/// last to commit (the higher number). A claim takes the hook's messages in
/// event-number order, as SQLite's (whose ids and numbers agree): a claim
/// cut by its limit never sends a later event before an earlier one.
#[tokio::test]
async fn a_claim_follows_event_numbers_not_row_ids() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let mut c1 = store.client().await.unwrap();
    let t1 = c1.transaction().await.unwrap();
    // The row (and its id) first, the number later.
    let id1: i64 = t1
        .query_one(
            "INSERT INTO outbox (hook, message_id, source, resource_type, resource_id, event,
                state, created_at, next_attempt_at, lane)
             VALUES ('h', 'inserted-first', 's', 'Observation', 'a', 'create', 'pending', 0, 0, 0)
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    enqueue(
        &store,
        vec![NewMessage::test("h", "inserted-second", "Observation", "b")],
    )
    .await;
    let n = take_numbers(&t1, "h", 1).await.unwrap();
    number(&t1, &[id1], n).await.unwrap();
    t1.commit().await.unwrap();

    let claimed = store.claim_due("h", vec![], 1).await.unwrap();
    let got: Vec<(&str, Option<i64>)> = claimed
        .iter()
        .map(|c| (c.message_id.as_str(), c.event_number))
        .collect();
    assert_eq!(got, [("inserted-second", Some(1))]);
}

/// One change for two hooks, both delivered at the same moment by two
/// transactions: the body goes with the last of them (each alone saw the
/// other still pending), as on SQLite, whose one writer orders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_goes_when_its_last_message_is_delivered_concurrently() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let one = NewMessage::test("h1", "m", "Observation", "a");
    let two = NewMessage {
        hook: "h2".into(),
        ..one.clone()
    };
    enqueue(&store, vec![one, two]).await;
    let deliver = "UPDATE outbox SET state = 'delivered' WHERE hook = $1";
    let mut c1 = store.client().await.unwrap();
    let t1 = c1.transaction().await.unwrap();
    t1.execute(deliver, &[&"h1"]).await.unwrap();
    let s2 = store.clone();
    let second = tokio::spawn(async move {
        let mut c2 = s2.client().await.unwrap();
        let t2 = c2.transaction().await.unwrap();
        t2.execute(deliver, &[&"h2"]).await.unwrap();
        t2.commit().await.unwrap();
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    t1.commit().await.unwrap();
    second.await.unwrap();
    let c = store.client().await.unwrap();
    let bodies: i64 = c
        .query_one("SELECT count(*) FROM change_body", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bodies, 0, "no message needs the body any more");
}
