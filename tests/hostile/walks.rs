//! Issue 17, items 3 and 4: a full walk that disagrees with its own
//! `Bundle.total` infers no deletes, and every inferred delete is confirmed
//! by a read of the resource before it goes out; history listed newest first
//! with DELETE entries that carry no time (HAPI's shape) still gives a
//! resource's create, update and delete, in order, within one poll.

use crate::common::hostile::{self, SnapshotScript as Script, first_target, more_walks};
use crate::common::scripted::{Scripted, Seen, fhir_json, observation, status_with};
use crate::common::{Bridge, by_resource, config, hook, wait_for};
use chrono::{DateTime, Utc};
use fhir_bridge::sandbox::{FhirSandbox, Receiver};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Waits until the first target's `field` on status contains `text`.
async fn wait_for_status(bridge: &Bridge, field: &str, text: &str) {
    wait_for(30, &format!("{field} with {text:?} on status"), || {
        first_target(bridge)[field]
            .as_str()
            .is_some_and(|v| v.contains(text))
    })
    .await;
}

fn events(rx: &Receiver, id: &str) -> Vec<(String, Option<String>)> {
    by_resource(&rx.received())
        .remove(&format!("Observation/{id}"))
        .unwrap_or_default()
}

fn event_names(rx: &Receiver, id: &str) -> Vec<String> {
    events(rx, id).into_iter().map(|e| e.0).collect()
}

async fn snapshot_server(script: Arc<Mutex<Script>>) -> Scripted {
    hostile::snapshot_server(script, || status_with(404, &[])).await
}

fn reads(fhir: &Scripted, id: &str) -> usize {
    let path = format!("/fhir/Observation/{id}");
    fhir.seen().iter().filter(|s| s.uri == path).count()
}

/// Item 3: walks return a, b, c, d with total 4; then a and b, still with
/// total 4: incomplete, no delete and no read. Then a and b with total 2:
/// c answers 200 (it only left the search: no delete, a warning, not read
/// again every walk), d answers 500 (no delete, the error on status, read
/// again next walk), and once d answers 404, one delete of d.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_deletes_need_a_complete_walk_and_a_read_that_confirms_them() {
    // a and b, which the walks keep meeting, read as themselves: the
    // server's 404s are believed (see walks_review.rs).
    let script = Arc::new(Mutex::new(Script {
        ids: vec!["a", "b", "c", "d"],
        total: 4,
        reads: HashMap::from([("a", 200), ("b", 200)]),
    }));
    let fhir = snapshot_server(script.clone()).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &fhir.url("/fhir"),
        &["Observation"],
        "beginning",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    )
    .replace("page_size = 7", "page_size = 7\nstrategy = \"snapshot\"");
    let bridge = Bridge::start(&cfg);
    wait_for(30, "four creates", || rx.count() >= 4).await;

    // The walk lists two where its total says four.
    script.lock().unwrap().ids = vec!["a", "b"];
    more_walks(&fhir, 3).await;
    wait_for_status(&bridge, "last_warning", "its Bundle.total says 4").await;
    assert_eq!(rx.count(), 4, "no delete from an incomplete walk");
    assert_eq!(reads(&fhir, "c") + reads(&fhir, "d"), 0);

    // Complete walks: c still exists, d's read fails.
    {
        let mut s = script.lock().unwrap();
        s.total = 2;
        s.reads.insert("c", 200);
        s.reads.insert("d", 500);
    }
    wait_for_status(&bridge, "last_error", "confirmed nothing").await;
    wait_for_status(&bridge, "last_warning", "still exist (read answered 200)").await;
    more_walks(&fhir, 3).await;
    assert_eq!(rx.count(), 4, "no delete without a 404 or 410");
    assert_eq!(reads(&fhir, "c"), 1, "c is not read again every walk");
    assert!(reads(&fhir, "d") >= 3, "d stays a candidate");

    script.lock().unwrap().reads.insert("d", 404);
    wait_for(30, "the delete of d", || rx.count() >= 5).await;
    more_walks(&fhir, 3).await;
    assert_eq!(event_names(&rx, "d"), ["create", "delete"]);
    assert_eq!(event_names(&rx, "c"), ["create"]);
    assert_eq!(rx.count(), 5);
    assert_eq!(reads(&fhir, "c"), 1);
    let t = first_target(&bridge);
    assert_eq!(t["last_outcome"], "ok", "{t}");
}

fn last_updated(stored: &str) -> DateTime<Utc> {
    let v: serde_json::Value = serde_json::from_str(stored).unwrap();
    v["meta"]["lastUpdated"].as_str().unwrap().parse().unwrap()
}

/// Item 4: a HAPI-shaped server (history newest first, DELETE entries
/// without `response.lastModified`); x is created, updated and deleted
/// before the first poll, y created and updated after x. Every version comes,
/// in order; the watermark is y's update's time (the timeless delete
/// neither holds nor moves it); a later delete and create come too, once.
async fn hapi_history_in_one_poll(page_size: u32) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let store = &fhir.store;
    store.quirks.hapi_history(true);
    let write = |id: &str, status: &str| {
        store.upsert(
            "Observation",
            Some(id),
            serde_json::json!({"resourceType": "Observation", "status": status}),
        )
    };
    write("x", "preliminary");
    write("x", "final");
    assert!(store.delete("Observation", "x"));
    write("y", "preliminary");
    let y2 = last_updated(&write("y", "final"));
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &fhir.base_url(),
        &["Observation"],
        "2000-01-01T00:00:00Z",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    )
    .replace(
        "page_size = 7",
        &format!("page_size = {page_size}\nstrategy = \"history\""),
    );
    let bridge = Bridge::start(&cfg);
    let v = |e: &str, n: &str| (e.to_string(), Some(n.to_string()));
    wait_for(30, "x's three versions and y's two", || rx.count() >= 5).await;
    assert_eq!(
        events(&rx, "x"),
        [v("create", "1"), v("update", "2"), v("delete", "3")]
    );
    assert_eq!(events(&rx, "y"), [v("create", "1"), v("update", "2")]);
    let watermark = |b: &Bridge| -> Option<DateTime<Utc>> {
        first_target(b)["watermark"].as_str()?.parse().ok()
    };
    wait_for(30, "the watermark at y's update", || {
        watermark(&bridge) == Some(y2)
    })
    .await;

    assert!(store.delete("Observation", "y"));
    let z = last_updated(&write("z", "final"));
    wait_for(30, "y's delete and z's create", || rx.count() >= 7).await;
    wait_for(30, "the watermark at z's create", || {
        watermark(&bridge) == Some(z)
    })
    .await;
    let requests = store.requests();
    wait_for(30, "more polls", || store.requests() >= requests + 10).await;
    assert_eq!(
        events(&rx, "y"),
        [v("create", "1"), v("update", "2"), v("delete", "3")]
    );
    assert_eq!(events(&rx, "z"), [v("create", "1")]);
    assert_eq!(events(&rx, "x").len(), 3);
    assert_eq!(rx.count(), 7, "nothing twice, nothing back from the dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hapi_history_create_update_delete_on_one_page() {
    hapi_history_in_one_poll(7).await;
}

/// Two versions a page: x's delete and update share a page, its create is
/// on the next one (the chain is read ahead and taken last page first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hapi_history_create_update_delete_across_pages() {
    hapi_history_in_one_poll(2).await;
}

/// Item 3: a walk that suddenly misses 150 resources reads at most 100 of
/// them (`MAX_CONFIRMS_PER_WALK`) before the next walk; the rest wait for
/// it. Each is read once, and deleted once, on its 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_reads_are_capped_per_walk() {
    let missing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let m = missing.clone();
    let fhir = Scripted::start(move |req: &Seen| {
        let at = "2026-01-01T00:00:00Z";
        let path = req.uri.split('?').next().unwrap_or_default();
        // k, met by every walk, reads as itself (the witness of the 404s).
        if path == "/fhir/Observation/k" {
            return fhir_json(200, observation("k", "1", at));
        }
        if path.starts_with("/fhir/Observation/") {
            return status_with(404, &[]);
        }
        if path != "/fhir/Observation" {
            return status_with(404, &[]);
        }
        let n = if m.load(std::sync::atomic::Ordering::SeqCst) {
            0
        } else {
            150
        };
        let mut entries = vec![observation("k", "1", at)];
        entries.extend((0..n).map(|i| observation(&format!("m{i}"), "1", at)));
        let total = entries.len();
        let entries: Vec<_> = (entries.into_iter())
            .map(|r| serde_json::json!({"resource": r, "search": {"mode": "match"}}))
            .collect();
        fhir_json(
            200,
            serde_json::json!({"resourceType": "Bundle", "type": "searchset",
                "meta": {"lastUpdated": crate::common::scripted::now_instant()},
                "total": total, "entry": entries}),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &fhir.url("/fhir"),
        &["Observation"],
        "beginning",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    )
    .replace("page_size = 7", "page_size = 200\nstrategy = \"snapshot\"");
    let _bridge = Bridge::start(&cfg);
    wait_for(60, "151 creates", || rx.count() >= 151).await;
    missing.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for(60, "150 deletes", || rx.count() >= 301).await;
    more_walks(&fhir, 2).await;
    // Reads between two walks' searches.
    let mut per_walk = vec![0usize];
    for s in fhir.seen() {
        if s.uri.starts_with("/fhir/Observation?") {
            per_walk.push(0);
        } else if s.uri.starts_with("/fhir/Observation/m") {
            *per_walk.last_mut().unwrap() += 1;
        }
    }
    assert_eq!(per_walk.iter().max(), Some(&100), "{per_walk:?}");
    assert_eq!(per_walk.iter().sum::<usize>(), 150, "each read once");
    let got = by_resource(&rx.received());
    let deletes = (got.values())
        .filter(|e| e.iter().any(|(ev, _)| ev == "delete"))
        .count();
    assert_eq!(deletes, 150);
    assert_eq!(rx.count(), 301);
}

/// A `reconcile` pass whose confirming read answers 429 with `Retry-After`
/// pauses the whole source, as a page's would (no request until then), and
/// deletes nothing; once the pause is over, the read comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirming_read_answered_429_pauses_the_source_in_a_reconciliation() {
    let fhir = Scripted::start(move |req: &Seen| {
        let at = "2026-01-01T00:00:00Z";
        let path = req.uri.split('?').next().unwrap_or_default();
        if path == "/fhir/Observation/b" {
            return status_with(429, &[("Retry-After", "3")]);
        }
        if path == "/fhir/Observation/a" {
            return fhir_json(200, observation("a", "1", at));
        }
        if path != "/fhir/Observation" {
            return status_with(404, &[]);
        }
        // The polls (bounded by _lastUpdated) meet a and b; the
        // reconciliation's full walk only a.
        let mut entries = vec![observation("a", "1", at)];
        if req.uri.contains("_lastUpdated") {
            entries.push(observation("b", "1", at));
        }
        let total = entries.len();
        let entries: Vec<_> = (entries.into_iter())
            .map(|r| serde_json::json!({"resource": r, "search": {"mode": "match"}}))
            .collect();
        fhir_json(
            200,
            serde_json::json!({"resourceType": "Bundle", "type": "searchset",
                "meta": {"lastUpdated": crate::common::scripted::now_instant()},
                "total": total, "entry": entries}),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &fhir.url("/fhir"),
        &["Observation"],
        "2000-01-01T00:00:00Z",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    )
    .replace(
        "page_size = 7",
        "page_size = 7\nreconcile = \"* * * * * *\"",
    );
    let bridge = Bridge::start(&cfg);
    wait_for(30, "two creates", || rx.count() >= 2).await;
    wait_for(30, "a read of b", || reads(&fhir, "b") >= 1).await;
    let requests = fhir.count();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(fhir.count(), requests, "no request during the pause");
    wait_for_status(&bridge, "last_error", "HTTP 429").await;
    wait_for(30, "b read again after the pause", || {
        reads(&fhir, "b") >= 2
    })
    .await;
    assert_eq!(rx.count(), 2, "no delete");
}
