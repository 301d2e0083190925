//! Bytes written per event: N changes of a ~2 KB resource, each matched by 3
//! hooks, enqueued in pages of 100 into a fresh database. A change is stored
//! once, whatever the number of hooks: the database grows by about one
//! resource per event (4,950 B measured at N=2000), where a payload per hook
//! took 13,033 B. `cargo test --lib size_tests -- --nocapture` prints it.

use crate::state::sqlite::test_util::temp_store;
use crate::state::{ChangeRecord, NewMessage, PageCommit};
use std::sync::Arc;

const N: usize = 500;
const HOOKS: [&str; 3] = ["a", "b", "c"];

fn resource(i: usize) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"r{i}","meta":{{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"}},"note":"{}"}}"#,
        "x".repeat(2000)
    )
}

/// What `outbox::route_change` builds for a change all three hooks take.
fn page(range: std::ops::Range<usize>) -> Vec<NewMessage> {
    let mut out = Vec::new();
    for i in range {
        let rid = format!("r{i}");
        let change = Arc::new(ChangeRecord {
            id: 0,
            source: "s".into(),
            owner_id: "org/lab".into(),
            resource_type: "Observation".into(),
            resource_id: rid.clone(),
            version_id: Some("1".into()),
            last_updated: Some("2026-01-01T00:00:00.000Z".into()),
            event: "create".into(),
            detected_at: "2026-01-01T00:00:01Z".into(),
            body: Some(resource(i).into_bytes()),
        });
        for h in HOOKS {
            out.push(NewMessage {
                hook: h.into(),
                message_id: crate::route::message_id(h, "s", "Observation", &rid, "v:1"),
                change: change.clone(),
            });
        }
    }
    out
}

#[tokio::test]
async fn a_change_matched_by_three_hooks_is_stored_once() {
    let (dir, store) = temp_store();
    let (pages0, wal0) = sizes(&store, &dir);
    for p in 0..N / 100 {
        let msgs = page(p * 100..(p + 1) * 100);
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
    let (pages1, wal1) = sizes(&store, &dir);
    let page_size: i64 = store
        .lock()
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    let db = (pages1 - pages0) * page_size;
    println!(
        "N={N} hooks={} resource={}B: database +{db} B ({} B/event), WAL written {} B ({} B/event)",
        HOOKS.len(),
        resource(0).len(),
        db / N as i64,
        wal1 - wal0,
        (wal1 - wal0) / N as i64
    );
    // One ~2.1 KB body per event takes a 4 KB page; three payloads took 13 KB.
    assert!(db / (N as i64) < 6_500, "{} B per event", db / N as i64);
}

/// (page_count, WAL bytes). Auto-checkpoints are off, so the WAL holds every
/// page image written since the database was opened.
fn sizes(store: &crate::state::sqlite::SqliteStore, dir: &tempfile::TempDir) -> (i64, i64) {
    let c = store.lock();
    c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    let pages = c
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    let wal = std::fs::metadata(dir.path().join("bridge.db-wal")).map_or(0, |m| m.len() as i64);
    (pages, wal)
}
