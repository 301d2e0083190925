//! Strategies against SEKMET (PyPI `sekmet-fhir` 0.1.1, FastAPI + SQLite), a
//! real third-party FHIR server with what Medplum's engine lacks:
//! type-level `_history` (newest first; a delete is a DELETE entry with no
//! resource) and asynchronous `$export` (system and Group level, NDJSON
//! files, `Retry-After: 1`). See tests/sekmet/README.md for its quirks.

use crate::common;

use common::scenarios::observation;
use common::sekmet::{Exchange, Sekmet};
use common::{Bridge, by_resource, config, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A source on SEKMET from 2000 on, `extra` keys added. A page of 100 holds
/// every change of a test: SEKMET's `next` links drop `_since`.
fn source(fhir: &Sekmet, types: &[&str], hooks: &str, extra: &str) -> String {
    config(&fhir.base_url(), types, "2000-01-01T00:00:00Z", hooks)
        .replace("page_size = 7", "page_size = 100")
        .replace(
            "owner_id = \"org/test\"",
            &format!("owner_id = \"org/test\"\n{extra}"),
        )
}

fn total(rx: &Receiver) -> usize {
    by_resource(&rx.received()).values().map(Vec::len).sum()
}

/// Waits until `cond` holds or `secs` pass, without failing: the assertions
/// after it say what is missing.
async fn settle(secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn v(event: &str, version: &str) -> (String, Option<String>) {
    (event.to_string(), Some(version.to_string()))
}

/// `history` on SEKMET: creates (POST), updates (PUT) and deletes, once
/// each and in order per resource, across `kill -9`. While the bridge is
/// down, several versions of one resource pile up, and SEKMET lists them
/// newest first on one page: they must still arrive oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_sekmet_gives_creates_updates_and_deletes_once_in_order_across_kill9() {
    let fhir = Sekmet::start().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source(&fhir, &["Observation"], &hooks, "strategy = \"history\"");
    let mut bridge = Bridge::start(&config);
    let (a, _) = fhir.create(observation("N", "preliminary")).await;
    let (b, _) = fhir.create(observation("N", "preliminary")).await;
    let (c, _) = fhir.create(observation("L", "final")).await;
    wait_for(30, "three creates", || total(&rx) == 3).await;
    assert_eq!(fhir.update(&a, observation("H", "final")).await, "2");
    wait_for(30, "an update", || total(&rx) == 4).await;
    bridge.kill9();
    // Down: b updated twice and deleted, a deleted, e created and updated.
    assert_eq!(fhir.update(&b, observation("N", "final")).await, "2");
    assert_eq!(fhir.update(&b, observation("H", "amended")).await, "3");
    fhir.delete("Observation", &b).await;
    fhir.delete("Observation", &a).await;
    let (e, _) = fhir.create(observation("N", "preliminary")).await;
    assert_eq!(fhir.update(&e, observation("N", "final")).await, "2");
    bridge.restart();
    settle(20, || total(&rx) >= 10).await;
    // Polls go on re-reading the overlap: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = by_resource(&rx.received());
    let events = |id: &str| got.get(&format!("Observation/{id}")).cloned();
    let expected = [
        (
            "a",
            &a,
            vec![v("create", "1"), v("update", "2"), v("delete", "3")],
        ),
        (
            "b",
            &b,
            vec![
                v("create", "1"),
                v("update", "2"),
                v("update", "3"),
                v("delete", "4"),
            ],
        ),
        ("c", &c, vec![v("create", "1")]),
        ("e", &e, vec![v("create", "1"), v("update", "2")]),
    ];
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(_, id, want)| events(id.as_str()).as_ref() != Some(want))
        .map(|(name, id, want)| {
            format!(
                "{name} (Observation/{id}): received {:?}, expected {want:?}",
                events(id.as_str()).unwrap_or_default()
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(got.len(), 4, "no other resource: {got:?}");
    // A delete carries no resource.
    for r in rx.received().iter().filter(|r| r.event == "delete") {
        assert_eq!(r.body["resourceIncluded"], false);
        assert!(r.body.get("resource").is_none());
    }
    let target = &bridge.status_json()["sources"][0]["targets"][0];
    assert_eq!(target["last_outcome"], "ok", "{target}");
}

/// What SEKMET's traffic log says of one `$export` job.
#[derive(Debug, Default)]
struct Job {
    /// `/fhir/bulk-status/{id}`
    status_path: String,
    /// Status answers 202 (in progress, `Retry-After: 1`).
    in_progress: usize,
    /// The manifest, once answered (200).
    manifest: Option<Value>,
    deleted: bool,
}

/// A kick-off (an `$export` URL answered 202), with the `transactionTime`
/// of the last manifest SEKMET served before it.
#[derive(Debug)]
struct Kickoff {
    url: String,
    after: Option<chrono::DateTime<chrono::Utc>>,
}

/// The kick-offs, and the jobs in order of their first status request.
fn exports(fhir: &Sekmet) -> (Vec<Kickoff>, Vec<Job>) {
    let mut kickoffs = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut last_tt = None;
    for Exchange {
        method,
        url,
        status,
        response,
    } in fhir.traffic()
    {
        if url.contains("$export") && status == Some(202) {
            kickoffs.push(Kickoff {
                url,
                after: last_tt,
            });
            continue;
        }
        if !url.starts_with("/fhir/bulk-status/") {
            continue;
        }
        let i = match jobs.iter().position(|j| j.status_path == url) {
            Some(i) => i,
            None => {
                jobs.push(Job {
                    status_path: url.clone(),
                    ..Job::default()
                });
                jobs.len() - 1
            }
        };
        let job = &mut jobs[i];
        match (method.as_str(), status) {
            ("GET", Some(202)) => job.in_progress += 1,
            ("GET", Some(200)) => {
                let manifest: Value =
                    serde_json::from_str(&response.unwrap_or_default()).expect("a manifest");
                last_tt = Some(instant(manifest["transactionTime"].as_str().unwrap()));
                job.manifest = Some(manifest);
            }
            ("DELETE", Some(202)) => job.deleted = true,
            _ => {}
        }
    }
    (kickoffs, jobs)
}

fn deleted_jobs(fhir: &Sekmet) -> usize {
    exports(fhir).1.iter().filter(|j| j.deleted).count()
}

/// A query parameter of a path and query as SEKMET logged it.
fn param(path: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://sekmet{path}")).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn instant(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .to_utc()
}

/// The watermarks on status, per type.
fn watermarks(bridge: &Bridge) -> BTreeMap<String, Option<String>> {
    let status = bridge.status_json();
    let targets = status["sources"][0]["targets"].as_array().unwrap().clone();
    targets
        .iter()
        .map(|t| {
            (
                t["resource_type"].as_str().unwrap().to_string(),
                t["watermark"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Checks what the bridge asked of SEKMET: every kick-off asks for `types`
/// in NDJSON, since `start` at first and since the last job's
/// `transactionTime` minus the overlap (5 s) after it; every job whose
/// manifest was read is deleted, but for one at most (the one in flight);
/// a deleted job's status URL answers 404; status polls waited for 202s.
/// Returns the jobs.
async fn check_jobs(fhir: &Sekmet, kickoff_path: &str, types: &str) -> Vec<Job> {
    let (kickoffs, jobs) = exports(fhir);
    assert!(!kickoffs.is_empty());
    for Kickoff { url: k, after } in &kickoffs {
        assert!(k.starts_with(kickoff_path), "{k}");
        assert_eq!(param(k, "_type").as_deref(), Some(types), "{k}");
        assert_eq!(
            param(k, "_outputFormat").as_deref(),
            Some("application/fhir+ndjson")
        );
        let since = instant(&param(k, "_since").expect("_since"));
        match after {
            None => assert_eq!(since, instant("2000-01-01T00:00:00Z"), "{k}"),
            Some(tt) => assert_eq!(since, *tt - chrono::Duration::seconds(5), "{k}"),
        }
    }
    let with_manifest = jobs.iter().filter(|j| j.manifest.is_some()).count();
    let deleted = jobs.iter().filter(|j| j.deleted).count();
    assert!(deleted + 1 >= with_manifest, "{jobs:#?}");
    for job in jobs.iter().filter(|j| j.deleted) {
        assert!(job.manifest.is_some(), "deleted before its end: {job:?}");
        let url = format!("{}{}", fhir.base_url(), &job.status_path["/fhir".len()..]);
        assert_eq!(fhir.get_status(&url).await, 404, "{url}");
    }
    assert!(
        jobs.iter().any(|j| j.in_progress > 0),
        "SEKMET answered no 202: {jobs:#?}"
    );
    jobs
}

/// The watermark of every type is one job's `transactionTime`.
fn assert_watermarks_are_a_transaction_time(bridge: &Bridge, jobs: &[Job], types: &[&str]) {
    let marks = watermarks(bridge);
    let tts: Vec<_> = jobs
        .iter()
        .filter_map(|j| j.manifest.as_ref())
        .map(|m| instant(m["transactionTime"].as_str().unwrap()))
        .collect();
    let first = marks[types[0]].clone().expect("a watermark");
    for t in types {
        assert_eq!(marks[*t].as_ref(), Some(&first), "{marks:?}");
    }
    assert!(
        tts.contains(&instant(&first)),
        "watermark {first} is no manifest's transactionTime: {tts:?}"
    );
}

fn patient(active: bool) -> Value {
    json!({"resourceType": "Patient", "active": active, "name": [{"family": "Doe"}]})
}

/// `bulk-export` on SEKMET, two types in one job: creates, then updates
/// made while the bridge is down (`kill -9` between rounds), each once; the
/// rounds after find nothing new; every finished job is deleted; both
/// watermarks are a manifest's `transactionTime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_on_sekmet_delivers_creates_and_updates_once_across_rounds_and_kill9() {
    let fhir = Sekmet::start_logging_traffic().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let mut obs = Vec::new();
    for _ in 0..4 {
        obs.push(fhir.create(observation("N", "final")).await.0);
    }
    let mut pats = Vec::new();
    for _ in 0..2 {
        pats.push(fhir.create(patient(true)).await.0);
    }
    // Chunks of 2 lines: a file is committed in several pieces.
    let config = source(
        &fhir,
        &["Patient", "Observation"],
        &hooks,
        "strategy = \"bulk-export\"",
    )
    .replace("page_size = 100", "page_size = 2");
    let mut bridge = Bridge::start(&config);
    wait_for(60, "6 creates", || total(&rx) == 6).await;
    wait_for(30, "the first job deleted", || deleted_jobs(&fhir) >= 1).await;
    bridge.kill9();
    fhir.update(&obs[0], observation("H", "amended")).await;
    fhir.update(&obs[1], observation("H", "amended")).await;
    fhir.update(&pats[0], patient(false)).await;
    let (p, _) = fhir.create(patient(true)).await;
    bridge.restart();
    wait_for(60, "3 updates and a create", || total(&rx) == 10).await;
    // More rounds (each re-exports the overlap): nothing more arrives.
    let done = deleted_jobs(&fhir);
    wait_for(60, "two more exports", || deleted_jobs(&fhir) >= done + 2).await;
    bridge.stop();
    assert_eq!(total(&rx), 10);
    let got = by_resource(&rx.received());
    assert_eq!(got.len(), 7, "{got:?}");
    let events = |r: String| got[&r].clone();
    assert_eq!(
        events(format!("Observation/{}", obs[0])),
        [v("create", "1"), v("update", "2")]
    );
    assert_eq!(
        events(format!("Observation/{}", obs[1])),
        [v("create", "1"), v("update", "2")]
    );
    assert_eq!(
        events(format!("Observation/{}", obs[2])),
        [v("create", "1")]
    );
    assert_eq!(
        events(format!("Patient/{}", pats[0])),
        [v("create", "1"), v("update", "2")]
    );
    assert_eq!(events(format!("Patient/{}", pats[1])), [v("create", "1")]);
    assert_eq!(events(format!("Patient/{p}")), [v("create", "1")]);
    let jobs = check_jobs(&fhir, "/fhir/$export?", "Patient,Observation").await;
    assert!(jobs.len() >= 4, "{jobs:#?}");
    assert_watermarks_are_a_transaction_time(&bridge, &jobs, &["Patient", "Observation"]);
}

/// `export_group`: `[base]/Group/{id}/$export` on SEKMET delivers the
/// group's patients and the Observations in their compartments, never a
/// non-member's; a member's new Observation comes in a later round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_of_a_group_on_sekmet_delivers_only_its_members_and_their_observations() {
    let fhir = Sekmet::start_logging_traffic().await;
    let mut pats = Vec::new();
    for _ in 0..3 {
        pats.push(fhir.create(patient(true)).await.0);
    }
    let member = |p: &String| json!({"entity": {"reference": format!("Patient/{p}")}});
    let (group, _) = fhir
        .create(
            json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [member(&pats[0]), member(&pats[1])]}),
        )
        .await;
    let lab = |p: &String| {
        let mut o = observation("N", "final");
        o["subject"] = json!({"reference": format!("Patient/{p}")});
        o
    };
    let mut labs = Vec::new();
    for p in &pats {
        labs.push(fhir.create(lab(p)).await.0);
    }
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source(
        &fhir,
        &["Patient", "Observation"],
        &hooks,
        &format!("strategy = \"bulk-export\"\nexport_group = \"Group/{group}\""),
    );
    let mut bridge = Bridge::start(&config);
    wait_for(60, "two patients and their labs", || total(&rx) == 4).await;
    let newer = fhir.create(lab(&pats[1])).await.0;
    let outsider = fhir.create(lab(&pats[2])).await.0;
    wait_for(60, "the member's new lab", || total(&rx) == 5).await;
    let done = deleted_jobs(&fhir);
    wait_for(60, "one more export", || deleted_jobs(&fhir) > done).await;
    let got = by_resource(&rx.received());
    let keys: BTreeSet<String> = got.keys().cloned().collect();
    let want: BTreeSet<String> = [
        format!("Patient/{}", pats[0]),
        format!("Patient/{}", pats[1]),
        format!("Observation/{}", labs[0]),
        format!("Observation/{}", labs[1]),
        format!("Observation/{newer}"),
    ]
    .into();
    assert_eq!(keys, want, "not {} nor {outsider}", pats[2]);
    assert!(got.values().all(|e| e[..] == [v("create", "1")]), "{got:?}");
    bridge.stop();
    let jobs = check_jobs(
        &fhir,
        &format!("/fhir/Group/{group}/$export?"),
        "Patient,Observation",
    )
    .await;
    assert_watermarks_are_a_transaction_time(&bridge, &jobs, &["Patient", "Observation"]);
}
