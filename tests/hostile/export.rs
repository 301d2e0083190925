//! Hostile bulk export (issue 17, items 1 and 6): a manifest whose
//! `transactionTime` lies in year 9999, a job whose status answers 202 for
//! ever, a manifest the bridge cannot use. Against a scripted `$export`
//! server on 127.0.0.1.

use crate::common::hostile::{
    job_no, kick_off, kickoffs, ndjson, one_source_config, received_ids, target, wait_for_target,
};
use crate::common::scripted::{
    Scripted, Seen, bundle, fhir_json, now_instant, observation, status_with,
};
use crate::common::{Bridge, wait_for};
use axum::response::Response;
use chrono::{DateTime, Utc};
use fhir_bridge::sandbox::Receiver;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One source on `base`: `Patient` by bulk export, the other `resources`
/// by `last-updated`; one hook taking everything.
fn config(base: &str, resources: &[&str], extra: &str, hook_url: &str) -> String {
    let source = format!(
        "every = \"300ms\"\noverlap = \"2m\"\nstart = \"beginning\"\ntimeout = \"2s\"\n{extra}\n\
         [source.strategy_by_type]\nPatient = \"bulk-export\"\n"
    );
    one_source_config(base, resources, &source, hook_url)
}

fn patient(id: &str, last_updated: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Patient",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": last_updated},
    })
}

fn deletes(fhir: &Scripted) -> Vec<usize> {
    (fhir.seen().iter())
        .filter(|s| s.method == "DELETE")
        .filter_map(|s| job_no(&s.uri))
        .collect()
}

/// The `_since` of a kick-off, if it has one.
fn since_of(kickoff: &Seen) -> Option<DateTime<Utc>> {
    let url = url::Url::parse(&format!("http://h{}", kickoff.uri)).ok()?;
    let (_, v) = url.query_pairs().find(|(k, _)| k == "_since")?;
    DateTime::parse_from_rfc3339(&v).ok().map(|t| t.to_utc())
}

/// Item 1: a manifest says `transactionTime` 9999-12-31T23:59:59Z. The
/// watermark moves only to the horizon (the server's clock plus a minute),
/// the next kick-off's `_since` is sane, a later change is delivered, and
/// status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_time_in_year_9999_moves_the_watermark_only_to_the_horizon() {
    let later = Arc::new(AtomicBool::new(false));
    let first_at = now_instant();
    let (l, jobs) = (later.clone(), Arc::new(AtomicUsize::new(0)));
    let fhir = Scripted::start(move |s: &Seen| {
        let base = format!("http://{}", s.header("host").unwrap_or_default());
        if s.uri.starts_with("/fhir/$export") {
            return kick_off(&base, &jobs);
        }
        if s.method == "DELETE" {
            return status_with(202, &[]);
        }
        let Some(n) = job_no(&s.uri) else {
            return status_with(404, &[]);
        };
        if s.uri.ends_with("/patients.ndjson") {
            let mut ps = vec![patient("p1", &first_at)];
            if l.load(Ordering::SeqCst) {
                ps.push(patient("p2", &now_instant()));
            }
            return ndjson(&ps);
        }
        fhir_json(
            200,
            serde_json::json!({
                "transactionTime": "9999-12-31T23:59:59Z",
                "request": "x",
                "requiresAccessToken": true,
                "output": [{"type": "Patient", "url": format!("{base}/fhir/_export/{n}/patients.ndjson")}],
                "error": [],
            }),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        "",
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the first export read and its job deleted", || {
        received_ids(&rx).contains(&"Patient/p1".to_string()) && !deletes(&fhir).is_empty()
    })
    .await;
    let t = target(&bridge.status_json(), "Patient");
    let wm = t["watermark"].as_str().unwrap_or("").to_string();
    let wm_t = DateTime::parse_from_rfc3339(&wm)
        .unwrap_or_else(|e| panic!("watermark {wm:?}: {e}"))
        .to_utc();
    assert!(
        wm_t <= Utc::now() + chrono::Duration::seconds(61),
        "the watermark went past the horizon: {wm}"
    );
    later.store(true, Ordering::SeqCst);
    wait_for(20, "a later change delivered", || {
        received_ids(&rx).contains(&"Patient/p2".to_string())
    })
    .await;
    // Every kick-off after the first asks from a sane `_since`: not after
    // the server's clock.
    let ks = kickoffs(&fhir);
    assert!(ks.len() >= 2, "{} kick-offs", ks.len());
    for k in &ks[1..] {
        let since = since_of(k).unwrap_or_else(|| panic!("no _since in {}", k.uri));
        assert!(since <= Utc::now(), "kick-off from the future: {}", k.uri);
    }
    wait_for(10, "the future transactionTime noted on status", || {
        target(&bridge.status_json(), "Patient")["last_warning"]
            .as_str()
            .is_some_and(|w| w.contains(
                "the bulk export's transactionTime 9999-12-31T23:59:59.000Z is after the server's clock; the watermark moved only to"
            ))
    })
    .await;
    assert_eq!(
        received_ids(&rx)
            .iter()
            .filter(|i| *i == "Patient/p1")
            .count(),
        1,
        "each version once"
    );
    bridge.stop();
}

/// A scripted server for item 6: `$export` kicks off job n; `status(n)`
/// says what its status URL answers; `Observation` searches return what
/// `observations` holds; every job's `patients.ndjson` holds Patient/p1.
async fn export_and_search_server(
    status: impl Fn(usize, &str) -> Response + Send + Sync + 'static,
    observations: Arc<Mutex<Vec<serde_json::Value>>>,
) -> Scripted {
    let jobs = AtomicUsize::new(0);
    let file_time = now_instant();
    Scripted::start(move |s: &Seen| {
        let base = format!("http://{}", s.header("host").unwrap_or_default());
        if s.uri.starts_with("/fhir/$export") {
            return kick_off(&base, &jobs);
        }
        if s.uri.starts_with("/fhir/Observation") {
            return bundle(&now_instant(), observations.lock().unwrap().clone(), None);
        }
        if s.method == "DELETE" {
            return status_with(202, &[]);
        }
        if s.uri.ends_with("/patients.ndjson") {
            return ndjson(&[patient("p1", &file_time)]);
        }
        match job_no(&s.uri) {
            Some(n) => status(n, &base),
            None => status_with(404, &[]),
        }
    })
    .await
}

fn status_checks(fhir: &Scripted) -> usize {
    (fhir.seen().iter())
        .filter(|s| s.method == "GET" && job_no(&s.uri).is_some())
        .count()
}

/// Item 6: `Patient` by bulk export, `Observation` by `last-updated`, on one
/// source whose job's status answers 202 for ever. Observation changes are
/// still delivered on schedule, and the status is asked no faster than its
/// `Retry-After` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_never_finishes_does_not_starve_the_other_types() {
    let observations = Arc::new(Mutex::new(Vec::new()));
    let fhir = export_and_search_server(
        |_, _| status_with(202, &[("retry-after", "1"), ("x-progress", "working")]),
        observations.clone(),
    )
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient", "Observation"],
        "",
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the export kicked off", || !kickoffs(&fhir).is_empty()).await;
    let started = std::time::Instant::now();
    for i in 1..=3 {
        let id = format!("o{i}");
        observations
            .lock()
            .unwrap()
            .push(observation(&id, "1", &now_instant()));
        wait_for(
            15,
            &format!("Observation/{id} delivered while the job runs"),
            || received_ids(&rx).contains(&format!("Observation/{id}")),
        )
        .await;
    }
    let checks = status_checks(&fhir);
    let allowed = started.elapsed().as_secs() as usize + 3;
    assert!(
        checks <= allowed,
        "{checks} status checks, Retry-After: 1 allows {allowed}"
    );
    assert!(checks >= 1);
    assert_eq!(kickoffs(&fhir).len(), 1, "the same job, still running");
    bridge.stop();
}

/// Item 6: a job still running `export_timeout` after its kick-off is
/// cancelled (DELETE) and a new export starts from the watermarks, noted on
/// status; so is one whose manifest the bridge cannot use (a file on another
/// origin: never contacted). The third job's manifest is read and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_past_export_timeout_is_cancelled_and_started_again() {
    let evil = Scripted::start(|_: &Seen| ndjson(&[patient("evil", &now_instant())])).await;
    let evil_file = evil.url("/files/1.ndjson");
    let fhir = export_and_search_server(
        move |n, base| match n {
            // Runs for ever.
            1 => status_with(202, &[("retry-after", "1")]),
            // Done, but a file is on another origin.
            2 => fhir_json(
                200,
                serde_json::json!({
                    "transactionTime": now_instant(),
                    "output": [{"type": "Patient", "url": evil_file}],
                }),
            ),
            _ => fhir_json(
                200,
                serde_json::json!({
                    "transactionTime": now_instant(),
                    "output": [{"type": "Patient", "url": format!("{base}/fhir/_export/{n}/patients.ndjson")}],
                }),
            ),
        },
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient", "Observation"],
        "export_timeout = \"2s\"",
        &rx.url("hooks/all"),
    ));
    wait_for(30, "the first job cancelled, a second kicked off", || {
        deletes(&fhir).contains(&1) && kickoffs(&fhir).len() >= 2
    })
    .await;
    wait_for_target(
        &bridge,
        10,
        "the timeout noted on status",
        ("Patient", "last_warning"),
        "no usable manifest 2s after its kick-off (export_timeout); it was cancelled (DELETE)",
    )
    .await;
    wait_for(
        30,
        "the unusable manifest's job cancelled, a third delivered",
        || deletes(&fhir).contains(&2) && received_ids(&rx).contains(&"Patient/p1".to_string()),
    )
    .await;
    assert_eq!(evil.count(), 0, "the other origin was contacted");
    assert!(!received_ids(&rx).contains(&"Patient/evil".to_string()));
    // The unusable manifest was a poll error on status while it lasted.
    assert!(
        bridge
            .logs()
            .contains("output file 0 leaves the source's origins"),
        "the unusable manifest's error not logged"
    );
    bridge.stop();
}

/// A manifest whose file has expired at the server (404) while its status
/// still answers 200: the job is dropped and a new export started from the
/// watermarks, noted on status, rather than asked for the same file for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_export_file_starts_a_new_export() {
    let written = now_instant();
    let jobs = Arc::new(AtomicUsize::new(0));
    let j = jobs.clone();
    let fhir = Scripted::start(move |s: &Seen| {
        let base = format!("http://{}", s.header("host").unwrap_or_default());
        if s.uri.starts_with("/fhir/$export") {
            return kick_off(&base, &j);
        }
        if s.method == "DELETE" {
            return status_with(202, &[]);
        }
        match job_no(&s.uri) {
            Some(1) if s.uri.ends_with(".ndjson") => status_with(404, &[]),
            Some(_) if s.uri.ends_with(".ndjson") => ndjson(&[patient("p1", &written)]),
            Some(n) => fhir_json(
                200,
                serde_json::json!({
                    "transactionTime": now_instant(),
                    "output": [{"type": "Patient", "url": format!("{base}/fhir/_export/{n}/patients.ndjson")}],
                }),
            ),
            None => status_with(404, &[]),
        }
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        "",
        &rx.url("hooks/all"),
    ));
    wait_for(20, "a new export delivered", || {
        received_ids(&rx).contains(&"Patient/p1".to_string())
    })
    .await;
    assert!(
        deletes(&fhir).contains(&1),
        "the expired job was not cancelled"
    );
    wait_for(10, "the expired file noted on status", || {
        target(&bridge.status_json(), "Patient")["last_warning"]
            .as_str()
            .is_some_and(|w| {
                w.contains(
                    "bulk export output file 0 was gone (HTTP 404, expired); a new export started",
                )
            })
    })
    .await;
    bridge.stop();
}
