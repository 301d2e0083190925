//! Issue 17, review of items 3 and 4 as a hostile EHR: a full walk's
//! confirming reads that cannot tell a delete (a server answering 404 to
//! every read, an id the URL cannot carry) confirm none.

use crate::common::hostile::{self, SnapshotScript as Script, first_target, more_walks};
use crate::common::scripted::{Scripted, Seen, fhir_json, observation, status_with};
use crate::common::{Bridge, by_resource, config, hook, wait_for};
use axum::response::IntoResponse;
use fhir_bridge::sandbox::Receiver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A proxy's page for every path it does not know, reads the script does
/// not list included.
async fn snapshot_server(script: Arc<Mutex<Script>>) -> Scripted {
    hostile::snapshot_server(script, || {
        (
            axum::http::StatusCode::NOT_FOUND,
            [(axum::http::header::CONTENT_TYPE, "text/html")],
            "<html><body>Not Found (maintenance)</body></html>",
        )
            .into_response()
    })
    .await
}

fn snapshot_bridge(fhir: &Scripted, rx: &Receiver) -> Bridge {
    let cfg = config(
        &fhir.url("/fhir"),
        &["Observation"],
        "beginning",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    )
    .replace("page_size = 7", "page_size = 7\nstrategy = \"snapshot\"");
    Bridge::start(&cfg)
}

/// A walk stops meeting c and d while the EHR (or a proxy in front of it)
/// answers 404 to every read, the resources the walk just met included: the
/// 404s say nothing about c and d, so no delete, and the poll fails saying
/// why. Once the met ones read 200 again, c and d's 404s delete them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_404_to_every_read_confirms_no_delete() {
    let script = Arc::new(Mutex::new(Script {
        ids: vec!["a", "b", "c", "d"],
        total: 4,
        ..Default::default()
    }));
    let fhir = snapshot_server(script.clone()).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let bridge = snapshot_bridge(&fhir, &rx);
    wait_for(30, "four creates", || rx.count() >= 4).await;

    {
        let mut s = script.lock().unwrap();
        s.ids = vec!["a", "b"];
        s.total = 2;
    }
    wait_for(30, "the walk's own resource read 404 on status", || {
        (first_target(&bridge)["last_error"].as_str())
            .is_some_and(|e| e.contains("a resource the walk met"))
    })
    .await;
    more_walks(&fhir, 3).await;
    assert_eq!(rx.count(), 4, "no delete while every read answers 404");

    script
        .lock()
        .unwrap()
        .reads
        .extend([("a", 200), ("b", 200)]);
    wait_for(30, "the deletes of c and d", || rx.count() >= 6).await;
    more_walks(&fhir, 3).await;
    let got = by_resource(&rx.received());
    for id in ["c", "d"] {
        let events: Vec<_> = got[&format!("Observation/{id}")]
            .iter()
            .map(|e| e.0.clone())
            .collect();
        assert_eq!(events, ["create", "delete"], "{id}");
    }
    assert_eq!(rx.count(), 6);
}

/// An id that is a dot segment (`..` is a valid FHIR id) cannot be read:
/// `[base]/Observation/..` is the base itself, whose 404 says nothing about
/// the resource. It is never confirmed gone; another missing one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_the_read_url_cannot_carry_is_never_confirmed_gone() {
    let script = Arc::new(Mutex::new(Script {
        ids: vec!["a", "..", ".", "e"],
        total: 4,
        reads: HashMap::from([("a", 200)]),
    }));
    let fhir = snapshot_server(script.clone()).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let bridge = snapshot_bridge(&fhir, &rx);
    wait_for(30, "four creates", || rx.count() >= 4).await;
    {
        let mut s = script.lock().unwrap();
        s.ids = vec!["a"];
        s.total = 1;
    }
    wait_for(30, "the delete of e", || rx.count() >= 5).await;
    more_walks(&fhir, 3).await;
    assert_eq!(rx.count(), 5, "no delete of . or ..");
    let got = by_resource(&rx.received());
    assert_eq!(got["Observation/e"].len(), 2);
    let warning = first_target(&bridge)["last_warning"].to_string();
    assert!(warning.contains("cannot carry"), "{warning}");
}

/// `kill -9` while a walk's confirming reads are under way (c read 404, d's
/// read still unanswered): nothing of them was committed, so after the
/// restart c and d are confirmed again and each is deleted once, under one
/// message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill9_during_the_confirming_reads_deletes_each_once() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let missing = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(true));
    let holding = Arc::new(AtomicBool::new(false));
    let (m, h, started) = (missing.clone(), hold.clone(), holding.clone());
    let fhir = Scripted::start(move |req: &Seen| {
        let at = "2026-01-01T00:00:00Z";
        let path = req.uri.split('?').next().unwrap_or_default();
        match path {
            "/fhir/Observation/a" | "/fhir/Observation/b" => {
                let id = &path["/fhir/Observation/".len()..];
                return fhir_json(200, observation(id, "1", at));
            }
            "/fhir/Observation/d" if h.load(SeqCst) => {
                started.store(true, SeqCst);
                std::thread::sleep(std::time::Duration::from_secs(3));
                return status_with(404, &[]);
            }
            "/fhir/Observation" => {}
            _ => return status_with(404, &[]),
        }
        let ids: &[&str] = match m.load(SeqCst) {
            true => &["a", "b"],
            false => &["a", "b", "c", "d"],
        };
        let entries: Vec<_> = (ids.iter())
            .map(|id| serde_json::json!({"resource": observation(id, "1", at), "search": {"mode": "match"}}))
            .collect();
        fhir_json(
            200,
            serde_json::json!({"resourceType": "Bundle", "type": "searchset",
                "meta": {"lastUpdated": crate::common::scripted::now_instant()},
                "total": ids.len(), "entry": entries}),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = snapshot_bridge(&fhir, &rx);
    wait_for(30, "four creates", || rx.count() >= 4).await;
    missing.store(true, SeqCst);
    wait_for(30, "d's read under way", || holding.load(SeqCst)).await;
    bridge.kill9();
    hold.store(false, SeqCst);
    assert_eq!(rx.count(), 4, "nothing committed before the kill");
    bridge.restart();
    wait_for(30, "the deletes of c and d", || rx.count() >= 6).await;
    more_walks(&fhir, 3).await;
    let received = rx.received();
    let got = by_resource(&received);
    for id in ["c", "d"] {
        let events: Vec<_> = got[&format!("Observation/{id}")]
            .iter()
            .map(|e| e.0.clone())
            .collect();
        assert_eq!(events, ["create", "delete"], "{id}");
    }
    // Six changes, each under one message id (a re-delivery of one after
    // the kill would carry the same id).
    let ids: std::collections::HashSet<_> = received.iter().map(|r| &r.message_id).collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 6);
}
