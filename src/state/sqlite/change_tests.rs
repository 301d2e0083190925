//! A change is stored once for all its messages; its resource goes when no
//! pending or dead message needs it, the change when no message refers to it.

use super::*;
use crate::state::sqlite::SqliteStore;
use crate::state::sqlite::test_util::temp_store;
use crate::state::{DeliveryRecord, DlqSelection, NewMessage, PageCommit, now_ms};

/// (change rows, change_body rows).
async fn counts(store: &SqliteStore) -> (i64, i64) {
    store
        .call(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM change), (SELECT count(*) FROM change_body)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
        .unwrap()
}

/// One change of `Observation/res`, taken by each of `hooks`.
fn shared(res: &str, hooks: &[&str]) -> Vec<NewMessage> {
    let first = NewMessage::test(hooks[0], res, "Observation", res).with_body(b"{\"r\":1}".into());
    hooks
        .iter()
        .map(|h| NewMessage {
            hook: h.to_string(),
            ..first.clone()
        })
        .collect()
}

async fn enqueue(store: &SqliteStore, messages: Vec<NewMessage>) {
    let page = PageCommit {
        source: "s".into(),
        resource_type: "Observation".into(),
        messages,
        ..Default::default()
    };
    store
        .commit_page(&crate::state::Fence::private(), page)
        .await
        .unwrap();
}

async fn settle(store: &SqliteStore, hook: &str, record: DeliveryRecord) {
    let claimed = store.claim_due(hook, vec![], 10).await.unwrap();
    let records = claimed.iter().map(|c| (c.id, record.clone())).collect();
    store
        .record_deliveries(&crate::state::Fence::private(), hook, records, false)
        .await
        .unwrap();
}

fn dead() -> DeliveryRecord {
    DeliveryRecord::Failed {
        status: Some(400),
        error: "HTTP 400".into(),
        retry_at_ms: None,
    }
}

#[tokio::test]
async fn one_change_for_all_hooks_and_its_resource_goes_with_the_last_delivery() {
    let (_d, store) = temp_store();
    enqueue(&store, shared("x", &["a", "b"])).await;
    assert_eq!(counts(&store).await, (1, 1));
    let claimed = store.claim_due("a", vec![], 10).await.unwrap();
    let MessageBody::Change(c) = &claimed[0].body else {
        panic!("{:?}", claimed[0].body)
    };
    assert_eq!((c.resource_id.as_str(), c.event.as_str()), ("x", "create"));
    assert_eq!(c.body.as_deref(), Some(&b"{\"r\":1}"[..]));

    settle(&store, "a", DeliveryRecord::Delivered { status: 200 }).await;
    assert_eq!(counts(&store).await, (1, 1), "b still needs it");
    settle(&store, "b", dead()).await;
    assert_eq!(
        counts(&store).await,
        (1, 1),
        "a dead letter keeps it (redrive)"
    );
    let sel = DlqSelection {
        configured: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    assert_eq!(store.redrive(sel).await.unwrap(), 1);
    settle(&store, "b", DeliveryRecord::Delivered { status: 200 }).await;
    assert_eq!(counts(&store).await, (1, 0), "no PHI left");

    // Pruning the delivered messages leaves no orphaned change.
    store.prune_delivered(now_ms() + 1).await.unwrap();
    assert_eq!(counts(&store).await, (0, 0));
}

#[tokio::test]
async fn purged_moved_and_duplicate_messages_leave_no_change_behind() {
    let (_d, store) = temp_store();
    enqueue(&store, shared("x", &["a"])).await;
    // The same message again (a change read twice): no second change row.
    enqueue(&store, shared("x", &["a"])).await;
    assert_eq!(counts(&store).await, (1, 1));
    settle(&store, "a", dead()).await;
    // Moved onto a hook that already has it: the duplicate is deleted.
    enqueue(&store, shared("x", &["c"])).await;
    assert_eq!(counts(&store).await, (2, 2));
    let sel = DlqSelection {
        hook: Some("a".into()),
        configured: vec!["c".into()],
        ..Default::default()
    };
    let moved = store.move_to_hook(sel, "c").await.unwrap();
    assert_eq!(moved.duplicates, 1);
    assert_eq!(counts(&store).await, (1, 1));
    let sel = DlqSelection {
        hook: Some("c".into()),
        configured: vec![],
        ..Default::default()
    };
    assert_eq!(store.purge(sel).await.unwrap(), 1);
    assert_eq!(counts(&store).await, (0, 0));
}

/// A database from before migration 7 keeps its stored payloads and sends
/// them as they are, beside messages of changes.
#[tokio::test]
async fn stored_payloads_of_an_upgraded_database_are_sent_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.db");
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        super::super::schema::migrate_to(&mut c, 6).unwrap();
        for (i, state) in ["pending", "dead", "delivered"].iter().enumerate() {
            c.execute(
                "INSERT INTO outbox (hook, message_id, source, resource_type, resource_id,
                    event, state, created_at, next_attempt_at)
                 VALUES ('h', ?1, 's', 'Observation', ?1, 'create', ?2, 0, 0)",
                rusqlite::params![format!("m{i}"), state],
            )
            .unwrap();
            if *state != "delivered" {
                c.execute(
                    "INSERT INTO outbox_payload (id, payload) VALUES (last_insert_rowid(), ?1)",
                    [format!("{{\"old\":{i}}}").into_bytes()],
                )
                .unwrap();
            }
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    enqueue(&store, shared("new", &["h"])).await;
    let claimed = store.claim_due("h", vec![], 10).await.unwrap();
    let bodies: Vec<_> = claimed.iter().map(|c| c.body.clone()).collect();
    assert_eq!(bodies[0], MessageBody::Stored(b"{\"old\":0}".to_vec()));
    assert!(matches!(bodies[1], MessageBody::Change(_)));
    let dead = store.message_body(claimed[0].id + 1).await.unwrap();
    assert_eq!(dead, MessageBody::Stored(b"{\"old\":1}".to_vec()));
    let gone = store.message_body(claimed[0].id + 2).await.unwrap();
    assert_eq!(gone, MessageBody::Missing);
}
