//! Adversarial review of bulk export (issue 17, after items 1, 6, 13): a
//! stored watermark in the future, a file holding resources of another type
//! than its own, a file sent gzip-encoded though nobody asked for it.
//! Against a scripted `$export` server on 127.0.0.1.

use crate::common::hostile::{
    job_no, kick_off, kickoffs, ndjson, one_source_config, received_ids, resource, target,
    wait_for_target,
};
use crate::common::scripted::{Scripted, Seen, fhir_json, now_instant, status_with};
use crate::common::{Bridge, wait_for};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fhir_bridge::sandbox::Receiver;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One source on `base`, every type in `resources` by bulk export.
fn config(base: &str, resources: &[&str], hook_url: &str) -> String {
    config_with(base, resources, "", hook_url)
}

fn config_with(base: &str, resources: &[&str], extra: &str, hook_url: &str) -> String {
    let source = format!(
        "strategy = \"bulk-export\"\nevery = \"300ms\"\noverlap = \"2m\"\nstart = \"beginning\"\n\
         timeout = \"2s\"\n{extra}"
    );
    one_source_config(base, resources, &source, hook_url)
}

fn deletes(fhir: &Scripted) -> usize {
    (fhir.seen().iter())
        .filter(|s| s.method == "DELETE")
        .count()
}

/// An export server: job n's manifest (transactionTime: the server's now)
/// lists `outputs` (type, file name); `file(name)` answers each file.
async fn export_server(
    outputs: &'static [(&'static str, &'static str)],
    file: impl Fn(&str) -> Response + Send + Sync + 'static,
) -> Scripted {
    let jobs = Arc::new(AtomicUsize::new(0));
    Scripted::start(move |s: &Seen| {
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
        if let Some((_, name)) = s.uri.rsplit_once('/')
            && name.ends_with(".ndjson")
        {
            return file(name);
        }
        let output: Vec<_> = outputs
            .iter()
            .map(|(rt, name)| {
                serde_json::json!({"type": rt, "url": format!("{base}/fhir/_export/{n}/{name}")})
            })
            .collect();
        fhir_json(
            200,
            serde_json::json!({
                "transactionTime": now_instant(),
                "request": "x",
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            }),
        )
    })
    .await
}

/// A watermark stored in the future (by a version before the horizon, or a
/// server clock later found wrong) makes the export start from the
/// beginning, and that export's end repairs it: the watermark comes back to
/// the transactionTime, and the next kick-off has a `_since` again, instead
/// of exporting everything on every turn for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_watermark_in_the_future_is_repaired_by_the_next_export() {
    let first_at = now_instant();
    let fhir = export_server(&[("Patient", "patients.ndjson")], move |_| {
        ndjson(&[resource("Patient", "p1", &first_at)])
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the first export read and its job deleted", || {
        received_ids(&rx).contains(&"Patient/p1".to_string()) && deletes(&fhir) >= 1
    })
    .await;
    bridge.stop();
    let db = bridge.dir.path().join("state").join("bridge.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let changed = c
        .execute(
            "UPDATE poll_target SET watermark = '9999-12-31T23:59:59.000Z'
             WHERE source = 'ehr' AND resource_type = 'Patient'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(c);
    let before = deletes(&fhir);
    bridge.restart();
    wait_for(20, "two more exports read to their end", || {
        deletes(&fhir) >= before + 2
    })
    .await;
    let t = target(&bridge.status_json(), "Patient");
    let wm = t["watermark"].as_str().unwrap_or("").to_string();
    let wm_t = DateTime::parse_from_rfc3339(&wm)
        .unwrap_or_else(|e| panic!("watermark {wm:?}: {e}"))
        .to_utc();
    assert!(
        wm_t <= Utc::now() + chrono::Duration::seconds(61),
        "the future watermark was never repaired: {wm}"
    );
    let last = kickoffs(&fhir).pop().unwrap();
    assert!(
        last.uri.contains("_since="),
        "still exporting everything: {}",
        last.uri
    );
    assert_eq!(
        (received_ids(&rx).iter())
            .filter(|i| *i == "Patient/p1")
            .count(),
        1,
        "each version once"
    );
    bridge.stop();
}

/// A file listed as `Patient` that also holds an Observation: the
/// Observation is not silently dropped: it is skipped with a note on status
/// naming both types, and the Patient beside it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_of_another_type_in_a_file_is_noted_not_dropped_silently() {
    let at = now_instant();
    let fhir = export_server(&[("Patient", "patients.ndjson")], move |_| {
        ndjson(&[
            resource("Patient", "p1", &at),
            resource("Observation", "o1", &at),
        ])
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the export read and its job deleted", || {
        received_ids(&rx).contains(&"Patient/p1".to_string()) && deletes(&fhir) >= 1
    })
    .await;
    wait_for(10, "the Observation noted on status", || {
        let t = target(&bridge.status_json(), "Patient");
        t["entries_skipped"].as_u64().unwrap_or(0) >= 1
            && t["last_warning"].as_str().is_some_and(|w| {
                w.contains("a resource of type Observation in a file of type Patient")
            })
    })
    .await;
    assert!(!received_ids(&rx).contains(&"Observation/o1".to_string()));
    bridge.stop();
}

/// An output file sent with `Content-Encoding: gzip` (the bridge asks for
/// none): its bytes are not NDJSON. It is a file error: nothing is
/// delivered from it, its lines are not skipped one by one, and the
/// watermark does not move past what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_a_content_encoding_not_asked_for_is_an_error_not_skipped_lines() {
    let fhir = export_server(&[("Patient", "patients.ndjson")], |_| {
        let mut body = vec![0x1f, 0x8b, 0x08, 0x00, b'\n'];
        body.extend_from_slice(b"\x03\xff\xfe\n\x00\x01garbage\n");
        (
            [
                ("content-type", "application/fhir+ndjson"),
                ("content-encoding", "gzip"),
            ],
            body,
        )
            .into_response()
    })
    .await;
    let files = |f: &Scripted| {
        (f.seen().iter())
            .filter(|s| s.uri.ends_with(".ndjson"))
            .count()
    };
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the file asked for twice", || files(&fhir) >= 2).await;
    wait_for_target(
        &bridge,
        10,
        "the encoding named on status",
        ("Patient", "last_error"),
        "Content-Encoding",
    )
    .await;
    let t = target(&bridge.status_json(), "Patient");
    assert!(t["watermark"].is_null(), "the watermark moved: {t}");
    assert_eq!(t["entries_skipped"].as_u64().unwrap_or(0), 0, "{t}");
    assert_eq!(deletes(&fhir), 0, "the job was finished");
    bridge.stop();
}

/// A job whose manifest was read, whose file then failed, and whose status
/// URL answers 500 from then on: the job is wedged at the server. Past
/// `export_timeout` it is cancelled and a new export started, as for a job
/// that never gave a manifest, instead of failing every turn for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_status_fails_for_ever_after_its_manifest_is_started_again() {
    let at = now_instant();
    let jobs = Arc::new(AtomicUsize::new(0));
    let status_asks = Arc::new(AtomicUsize::new(0));
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
        if s.uri.ends_with(".ndjson") {
            return match n {
                1 => status_with(500, &[]),
                _ => ndjson(&[resource("Patient", "p1", &at)]),
            };
        }
        if n == 1 && status_asks.fetch_add(1, Ordering::SeqCst) > 0 {
            return status_with(500, &[]);
        }
        fhir_json(
            200,
            serde_json::json!({
                "transactionTime": now_instant(),
                "output": [{"type": "Patient", "url": format!("{base}/fhir/_export/{n}/p.ndjson")}],
                "error": [],
            }),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config_with(
        &fhir.url("/fhir"),
        &["Patient"],
        "export_timeout = \"1s\"\n",
        &rx.url("hooks/all"),
    ));
    wait_for(
        30,
        "the wedged job cancelled and a new export delivered",
        || {
            received_ids(&rx).contains(&"Patient/p1".to_string())
                && (fhir.seen().iter()).any(|s| s.method == "DELETE" && job_no(&s.uri) == Some(1))
        },
    )
    .await;
    assert!(kickoffs(&fhir).len() >= 2);
    bridge.stop();
}

/// NDJSON lines a hostile server may send beside good ones: a number no
/// float holds, CRLF line ends, a last line without a newline. The good
/// resources are delivered, the job ends and the watermark moves; nothing
/// fails the whole file for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ndjson_lines_do_not_wedge_the_file() {
    let at = now_instant();
    let fhir = export_server(&[("Patient", "patients.ndjson")], move |_| {
        let huge = format!(
            r#"{{"resourceType":"Patient","id":"huge","meta":{{"versionId":"1","lastUpdated":"{at}"}},"extension":[{{"url":"x","valueDecimal":1e999999}}]}}"#
        );
        let body = format!(
            "{}\r\n{huge}\r\n{}",
            resource("Patient", "p1", &at),
            resource("Patient", "p2", &at)
        );
        ([("content-type", "application/fhir+ndjson")], body).into_response()
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the good lines delivered and the job deleted", || {
        let got = received_ids(&rx);
        got.contains(&"Patient/p1".to_string())
            && got.contains(&"Patient/p2".to_string())
            && deletes(&fhir) >= 1
    })
    .await;
    let t = target(&bridge.status_json(), "Patient");
    assert!(t["watermark"].is_string(), "{t}");
    bridge.stop();
}

/// A job saved by an older version with `_since` in year 9999 (its stored
/// watermark there too): the server exports nothing for it. Resuming it and
/// then setting the watermark back would skip everything between: the job
/// is cancelled instead and a new export reads from the start, so a change
/// older than the overlap is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_job_asking_from_the_future_is_not_resumed() {
    let old = (Utc::now() - chrono::Duration::minutes(10))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let with_p2 = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let since_of = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        usize,
        Option<String>,
    >::new()));
    since_of
        .lock()
        .unwrap()
        .insert(99, Some("9999-12-31T23:59:59.000Z".into()));
    let jobs = Arc::new(AtomicUsize::new(0));
    let (p2, sinces) = (with_p2.clone(), since_of.clone());
    let fhir = Scripted::start(move |s: &Seen| {
        let base = format!("http://{}", s.header("host").unwrap_or_default());
        if s.uri.starts_with("/fhir/$export") {
            let n = jobs.fetch_add(1, Ordering::SeqCst) + 1;
            let url = url::Url::parse(&format!("http://h{}", s.uri)).unwrap();
            let since = (url.query_pairs())
                .find(|(k, _)| k == "_since")
                .map(|(_, v)| v.to_string());
            sinces.lock().unwrap().insert(n, since);
            let loc = format!("{base}/fhir/_export/{n}");
            return status_with(202, &[("content-location", &loc)]);
        }
        if s.method == "DELETE" {
            return status_with(202, &[]);
        }
        let Some(n) = job_no(&s.uri) else {
            return status_with(404, &[]);
        };
        if s.uri.ends_with(".ndjson") {
            // What was written since the job's `_since`, as a server does.
            let since = sinces.lock().unwrap().get(&n).cloned().flatten();
            let mut ps = vec![resource("Patient", "p1", &old)];
            if p2.load(Ordering::SeqCst) {
                ps.push(resource("Patient", "p2", &old));
            }
            ps.retain(|_| since.as_deref().is_none_or(|s| s <= old.as_str()));
            return ndjson(&ps);
        }
        fhir_json(
            200,
            serde_json::json!({
                "transactionTime": now_instant(),
                "output": [{"type": "Patient", "url": format!("{base}/fhir/_export/{n}/p.ndjson")}],
                "error": [],
            }),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the first export read and its job deleted", || {
        received_ids(&rx).contains(&"Patient/p1".to_string()) && deletes(&fhir) >= 1
    })
    .await;
    bridge.stop();
    // p2 was written 10 minutes ago on a replica that showed it only now
    // (or missed by the older version): it lies before the overlap.
    with_p2.store(true, Ordering::SeqCst);
    let db = bridge.dir.path().join("state").join("bridge.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c.execute(
        "UPDATE poll_target SET watermark = '9999-12-31T23:59:59.000Z'
         WHERE source = 'ehr' AND resource_type = 'Patient'",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT INTO export_job (source, job_url, since, kicked_off_at)
         VALUES ('ehr', ?1, '9999-12-31T23:59:59.000Z', ?2)",
        rusqlite::params![fhir.url("/fhir/_export/99"), Utc::now().timestamp_millis()],
    )
    .unwrap();
    drop(c);
    bridge.restart();
    wait_for(20, "the change before the overlap delivered", || {
        received_ids(&rx).contains(&"Patient/p2".to_string())
    })
    .await;
    bridge.stop();
}

/// `kill -9` after a file's last chunk is committed but before the job's
/// end (the file's end not yet read; the server then serves it whole): the
/// restart resumes the job, skips the committed lines, moves the watermark
/// once and deletes the job; each resource is delivered once, under one
/// message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_the_last_chunk_and_before_the_end_delivers_each_once() {
    let at = (Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = hang.clone();
    let fhir = export_server(&[("Patient", "patients.ndjson")], move |_| {
        let lines = format!(
            "{}\n{}\n",
            resource("Patient", "p1", &at),
            resource("Patient", "p2", &at)
        );
        if !h.load(Ordering::SeqCst) {
            return ndjson(&[
                resource("Patient", "p1", &at),
                resource("Patient", "p2", &at),
            ]);
        }
        // Both lines, then a body that never ends.
        let first =
            futures_util::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from(lines))]);
        let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ));
        ([("content-type", "application/fhir+ndjson")], body).into_response()
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(&fhir.url("/fhir"), &["Patient"], &rx.url("hooks/all"))
        .replace("timeout = \"2s\"", "timeout = \"2s\"\npage_size = 1");
    let mut bridge = Bridge::start(&cfg);
    let db = bridge.dir.path().join("state").join("bridge.db");
    wait_for(20, "both lines committed", || {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT lines_done FROM export_job", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n == 2)
    })
    .await;
    bridge.kill9();
    hang.store(false, Ordering::SeqCst);
    bridge.restart();
    wait_for(20, "the job ended", || deletes(&fhir) >= 1).await;
    wait_for(10, "the watermark moved", || {
        target(&bridge.status_json(), "Patient")["watermark"].is_string()
    })
    .await;
    // Deliveries settle: nothing more arrives.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let got = rx.received();
    for id in ["Patient/p1", "Patient/p2"] {
        let ids: std::collections::HashSet<_> = (got.iter())
            .filter(|r| r.resource_id == id)
            .map(|r| r.message_id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "{id} under message ids {ids:?}");
    }
    bridge.stop();
}

/// A job resumed after its first file was read, whose status URL now lists
/// the files in another order: progress counted by position would skip the
/// file not yet read and move the watermark over it. A manifest that is not
/// the one the progress was counted on is read again from its first file
/// (the diff drops what was delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_whose_manifest_changed_is_read_again_from_the_start() {
    let at = (Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let jobs = Arc::new(AtomicUsize::new(0));
    let (manifests, b_asks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tt = now_instant();
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
        if s.uri.ends_with("/a.ndjson") {
            return ndjson(&[resource("Patient", "p1", &at)]);
        }
        if s.uri.ends_with("/b.ndjson") {
            // Busy the first time: the job stops after file a.
            if b_asks.fetch_add(1, Ordering::SeqCst) == 0 {
                return status_with(500, &[]);
            }
            return ndjson(&[resource("Patient", "p2", &at)]);
        }
        let file = |f: &str| serde_json::json!({"type": "Patient", "url": format!("{base}/fhir/_export/{n}/{f}")});
        let output = match manifests.fetch_add(1, Ordering::SeqCst) {
            0 => vec![file("a.ndjson"), file("b.ndjson")],
            _ => vec![file("b.ndjson"), file("a.ndjson")],
        };
        fhir_json(
            200,
            serde_json::json!({"transactionTime": tt, "output": output, "error": []}),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the job read to its end", || deletes(&fhir) >= 1).await;
    wait_for(10, "both files' resources delivered", || {
        let got = received_ids(&rx);
        got.contains(&"Patient/p1".to_string()) && got.contains(&"Patient/p2".to_string())
    })
    .await;
    let p1: std::collections::HashSet<_> = (rx.received().iter())
        .filter(|r| r.resource_id == "Patient/p1")
        .map(|r| r.message_id.clone())
        .collect();
    assert_eq!(p1.len(), 1, "p1 under message ids {p1:?}");
    bridge.stop();
}

/// A server whose clock runs 10 minutes ahead of ours. After a restart the
/// bridge does not yet know that clock: the watermark (the server's last
/// `transactionTime`) is not taken for one in the future, and the next
/// export asks from it, not from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_server_clock_ahead_of_ours_is_learnt_before_judging_the_watermark() {
    let ahead = || Utc::now() + chrono::Duration::minutes(10);
    let with_date = move |mut r: Response| {
        let d = ahead().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        r.headers_mut()
            .insert("date", axum::http::HeaderValue::from_str(&d).unwrap());
        r
    };
    let instant = move || ahead().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let first = instant();
    let jobs = Arc::new(AtomicUsize::new(0));
    let fhir = Scripted::start(move |s: &Seen| {
        let base = format!("http://{}", s.header("host").unwrap_or_default());
        if s.uri.starts_with("/fhir/$export") {
            return with_date(kick_off(&base, &jobs));
        }
        if s.method == "DELETE" {
            return with_date(status_with(202, &[]));
        }
        if s.uri.starts_with("/fhir/Patient") {
            let b = serde_json::json!({"resourceType": "Bundle", "type": "searchset",
                "meta": {"lastUpdated": instant()}, "entry": []});
            return with_date(fhir_json(200, b));
        }
        let Some(n) = job_no(&s.uri) else {
            return with_date(status_with(404, &[]));
        };
        if s.uri.ends_with(".ndjson") {
            return with_date(ndjson(&[resource("Patient", "p1", &first)]));
        }
        with_date(fhir_json(
            200,
            serde_json::json!({
                "transactionTime": instant(),
                "output": [{"type": "Patient", "url": format!("{base}/fhir/_export/{n}/p.ndjson")}],
                "error": [],
            }),
        ))
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Patient"],
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the first export read and its job deleted", || {
        received_ids(&rx).contains(&"Patient/p1".to_string()) && deletes(&fhir) >= 1
    })
    .await;
    bridge.stop();
    let before = kickoffs(&fhir).len();
    bridge.restart();
    wait_for(20, "an export after the restart", || {
        kickoffs(&fhir).len() > before && deletes(&fhir) >= 2
    })
    .await;
    let after = &kickoffs(&fhir)[before];
    assert!(
        after.uri.contains("_since="),
        "the watermark was taken for one in the future: {}",
        after.uri
    );
    bridge.stop();
}
