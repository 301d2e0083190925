//! `sqlite/dlq_tests.rs`, on PostgreSQL (the same cases, the same answers).

use crate::state::postgres::PgStore;
use crate::state::postgres::test_util::fresh_store;
use crate::state::{DeliveryRecord, MessageKey, NewMessage, PageCommit, WithBody};
use crate::state::{DlqSelection, Moved, OrphanedHook};

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

fn msg(hook: &str, mid: &str, res: &str) -> NewMessage {
    NewMessage::test(hook, mid, "Observation", res)
        .with_body(format!("{{\"m\":\"{mid}\"}}").into_bytes())
}

/// Claims every due message of `hook` and records `record` for each.
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

/// `old`: 1 dead + 2 pending; `gone`: delivered only; `a`: 1 dead.
async fn fixture(store: &PgStore) {
    enqueue(store, vec![msg("old", "o1", "r1"), msg("a", "a1", "r1")]).await;
    settle(store, "old", true).await;
    settle(store, "a", true).await;
    enqueue(
        store,
        vec![
            msg("old", "o2", "r2"),
            msg("old", "o3", "r3"),
            msg("gone", "g1", "r1"),
        ],
    )
    .await;
    settle(store, "gone", false).await;
}

fn configured(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn orphaned_hooks_are_those_with_pending_or_dead_messages_outside_the_config() {
    let Some(store) = fresh_store().await else {
        return;
    };
    fixture(&store).await;
    let orphans = store.orphaned_hooks(configured(&["a"])).await.unwrap();
    assert_eq!(
        orphans,
        [OrphanedHook {
            hook: "old".into(),
            pending: 2,
            dead: 1
        }]
    );
    assert!(
        store
            .orphaned_hooks(configured(&["a", "old"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.hook_has_messages("gone").await.unwrap());
    assert!(!store.hook_has_messages("never").await.unwrap());
}

#[tokio::test]
async fn the_list_shows_dead_letters_and_orphans_pending_messages() {
    let Some(store) = fresh_store().await else {
        return;
    };
    fixture(&store).await;
    let list = store.dlq_list(None, configured(&["a"])).await.unwrap();
    let got: Vec<_> = list
        .iter()
        .map(|d| (d.hook.as_str(), d.message_id.as_str(), d.state.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("old", "o1", "dead"),
            ("a", "a1", "dead"),
            ("old", "o2", "pending"),
            ("old", "o3", "pending"),
        ]
    );
    // With `old` configured again, its pending messages are its worker's business.
    let list = store
        .dlq_list(Some("old".into()), configured(&["a", "old"]))
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn redrive_to_another_hook_moves_dead_and_orphaned_messages_with_their_ids() {
    let Some(store) = fresh_store().await else {
        return;
    };
    fixture(&store).await;
    // `a` already has o3 (from an earlier move, say): that one is a duplicate.
    enqueue(&store, vec![msg("a", "o3", "r3")]).await;
    let sel = DlqSelection {
        hook: Some("old".into()),
        ids: None,
        configured: configured(&["a"]),
        ..Default::default()
    };
    let done = store.move_to_hook(sel, "a").await.unwrap();
    assert_eq!(
        done,
        Moved {
            moved: 2,
            duplicates: 1
        }
    );
    assert!(
        store
            .orphaned_hooks(configured(&["a"]))
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim_due("a", vec![], 10).await.unwrap();
    let got: Vec<_> = claimed
        .iter()
        .map(|c| {
            (
                c.message_id.as_str(),
                c.attempts,
                String::from_utf8_lossy(&c.body.raw()).to_string(),
            )
        })
        .collect();
    // The o3 `a` had, then o1 (was dead, fresh budget) and o2 (was
    // pending), numbered after it as `a`'s newest events (SQLite claims
    // by row id: o1, o2, o3); a1 stays dead.
    assert_eq!(
        got,
        [
            ("o3", 0, "{\"m\":\"o3\"}".to_string()),
            ("o1", 0, "{\"m\":\"o1\"}".to_string()),
            ("o2", 0, "{\"m\":\"o2\"}".to_string()),
        ]
    );
    assert_eq!(store.dead_letters(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn all_alone_moves_dead_letters_but_never_pending_messages() {
    let Some(store) = fresh_store().await else {
        return;
    };
    fixture(&store).await;
    let sel = DlqSelection {
        configured: configured(&["a", "b"]),
        ..Default::default()
    };
    let done = store.move_to_hook(sel, "b").await.unwrap();
    assert_eq!(done.moved, 2, "o1 and a1");
    let orphans = store.orphaned_hooks(configured(&["a", "b"])).await.unwrap();
    assert_eq!((orphans[0].pending, orphans[0].dead), (2, 0));
}

#[tokio::test]
async fn purge_of_an_orphaned_hook_deletes_its_pending_messages_too() {
    let Some(store) = fresh_store().await else {
        return;
    };
    fixture(&store).await;
    let conf = configured(&["a"]);
    // Without --hook: dead letters only.
    let n = store
        .purge(DlqSelection {
            configured: conf.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        store.orphaned_hooks(conf.clone()).await.unwrap()[0].pending,
        2
    );
    let n = store
        .purge(DlqSelection {
            hook: Some("old".into()),
            ids: None,
            configured: conf.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert!(store.orphaned_hooks(conf).await.unwrap().is_empty());
}

#[tokio::test]
async fn plain_redrive_leaves_orphaned_dead_letters_alone() {
    let Some(store) = fresh_store().await else {
        return;
    };
    fixture(&store).await;
    let n = store
        .redrive(DlqSelection {
            configured: configured(&["a"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(store.claim_due("a", vec![], 10).await.unwrap().len(), 1);
    let dead = store.dead_letters(None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].hook, "old");
}

/// A message moved to another hook is a new event there: it takes that
/// hook's next numbers, in the order moved; the old hook's counter keeps
/// the numbers it gave (they are never reused).
#[tokio::test]
async fn a_moved_message_takes_the_new_hooks_next_event_number() {
    let Some(store) = fresh_store().await else {
        return;
    };
    // `old`: o1 = 1 (dead), o2 = 2, o3 = 3 (pending); `a`: a1 = 1 (dead).
    fixture(&store).await;
    let last_number = |hook: &'static str| {
        let store = store.clone();
        async move { store.channel_state(hook).await.unwrap().events }
    };
    assert_eq!((last_number("old").await, last_number("a").await), (3, 1));
    let sel = DlqSelection {
        hook: Some("old".into()),
        configured: configured(&["a"]),
        ..Default::default()
    };
    assert_eq!(store.move_to_hook(sel, "a").await.unwrap().moved, 3);
    let claimed = store.claim_due("a", vec![], 10).await.unwrap();
    let numbers: Vec<_> = claimed
        .iter()
        .map(|c| (c.message_id.as_str(), c.event_number))
        .collect();
    assert_eq!(numbers, [("o1", Some(2)), ("o2", Some(3)), ("o3", Some(4))]);
    assert_eq!((last_number("old").await, last_number("a").await), (3, 4));
    // Both hooks go on from their own counters.
    enqueue(&store, vec![msg("old", "o4", "r4"), msg("a", "a2", "r4")]).await;
    let next = |hook: &'static str, mid: &'static str| {
        let store = store.clone();
        async move {
            let found = store
                .find_messages(
                    MessageKey::MessageId(mid.into()),
                    Some(hook.into()),
                    WithBody::No,
                )
                .await
                .unwrap();
            found[0].event_number
        }
    };
    assert_eq!(next("old", "o4").await, Some(4));
    assert_eq!(next("a", "a2").await, Some(5));
}
