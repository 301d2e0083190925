//! Per-patient fan-out end to end on the in-crate sandbox: a roster from a
//! Group, a Patient search and a file; the roster changing during the run;
//! the source's request budget; a 429 storm pausing the whole source.

mod common;

use common::fanout::delivered;
use common::proxy::{ChaosProxy, Fault, Plan};
use common::{Bridge, FhirServer, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// An Observation about `patient`; returns its id.
fn lab(fhir: &FhirServer, patient: &str) -> String {
    let id = common::fanout::lab(fhir, patient);
    id.trim_start_matches("Observation/").to_string()
}

fn config(base: &str, fan_out: &str, hooks: &str) -> String {
    format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{base}"
resources = ["Observation"]
every = "300ms"
page_size = 7
overlap = "5s"
start = "beginning"
roster_refresh = "1s"
{fan_out}

{hooks}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_roster_is_polled_per_patient_and_follows_its_changes() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.set_group("ward", ["p1", "Patient/p2"]);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let a1 = lab(&fhir, "p1");
    let b1 = lab(&fhir, "p2");
    let c1 = lab(&fhir, "p3");
    let bridge = Bridge::start(&config(
        &fhir.base_url(),
        "patients = { group = \"Group/ward\" }",
        &hooks,
    ));
    let ids = |ids: &[&String]| -> BTreeSet<String> {
        ids.iter().map(|i| format!("Observation/{i}")).collect()
    };
    wait_for(30, "p1 and p2's labs", || {
        delivered(&rx) == ids(&[&a1, &b1])
    })
    .await;
    // p1 leaves, p3 joins: p3's lab (old, from before) arrives once the
    // roster is read again; then p2's new lab arrives, and p1's never does.
    store.set_group("ward", ["p2", "p3"]);
    wait_for(30, "p3's lab", || delivered(&rx) == ids(&[&a1, &b1, &c1])).await;
    let a2 = lab(&fhir, "p1");
    let b2 = lab(&fhir, "p2");
    wait_for(30, "p2's new lab", || {
        delivered(&rx) == ids(&[&a1, &b1, &c1, &b2])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !delivered(&rx).contains(&format!("Observation/{a2}")),
        "p1 left the roster"
    );
    assert_eq!(rx.count(), 4, "each once");
    // Status sums the per-patient targets of a type in one row.
    wait_for(30, "status counts two patients", || {
        bridge.status_json()["sources"][0]["targets"][0]["patients"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_from_a_patient_search_or_a_file() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    for (id, org) in [("p1", "o1"), ("p2", "o2"), ("p3", "o1")] {
        store.upsert(
            "Patient",
            Some(id),
            json!({"managingOrganization": {"reference": format!("Organization/{org}")}}),
        );
    }
    let labs: Vec<String> = ["p1", "p2", "p3"].iter().map(|p| lab(&fhir, p)).collect();
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let by_search = Bridge::start(&config(
        &fhir.base_url(),
        "patients = { search = \"Patient?organization=Organization/o1\" }",
        &hooks,
    ));
    let expected: BTreeSet<String> = [&labs[0], &labs[2]]
        .iter()
        .map(|i| format!("Observation/{i}"))
        .collect();
    wait_for(30, "the labs of o1's patients", || {
        delivered(&rx) == expected
    })
    .await;
    drop(by_search);

    let rx2 = Receiver::start(0, None).await.unwrap();
    let hooks2 = hook("all", &rx2.url("hooks/all"), "true", "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("patients.txt");
    std::fs::write(&file, "# the study cohort\nPatient/p2\n").unwrap();
    let by_file = config(
        &fhir.base_url(),
        &format!("patients = {{ file = \"{}\" }}", file.display()),
        &hooks2,
    );
    let _bridge = Bridge::start(&by_file);
    let only_p2: BTreeSet<String> = [format!("Observation/{}", labs[1])].into();
    wait_for(30, "p2's lab", || delivered(&rx2) == only_p2).await;
    // The file changes: p3 joins at the next refresh.
    std::fs::write(&file, "p2\np3\n").unwrap();
    wait_for(30, "p3's lab too", || delivered(&rx2).len() == 2).await;
}

/// `max_requests_per_second` bounds the source's requests, whatever the
/// number of targets; a 429 storm pauses the whole source (not each target
/// in turn); nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_budget_holds_and_a_429_storm_pauses_the_source() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    let patients: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = patients.iter().map(String::as_str).collect();
    store.set_group("all", &refs);
    for p in &patients {
        lab(&fhir, p);
    }
    let proxy = ChaosProxy::start(&fhir.base_url(), 7).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let started = Instant::now();
    let _bridge = Bridge::start(&config(
        &proxy.base_url(),
        "patients = { group = \"Group/all\" }\nmax_requests_per_second = 5",
        &hooks,
    ));
    wait_for(60, "20 labs", || rx.count() == 20).await;
    // A bucket of 5 per second, full at start: never more than that.
    let budget = |since: Instant| 5.0 * since.elapsed().as_secs_f64() + 5.0;
    assert!(
        (proxy.requests() as f64) <= budget(started),
        "{} requests in {:?}",
        proxy.requests(),
        started.elapsed()
    );
    // A storm of 429s (Retry-After: 1): the whole source waits out each one.
    proxy.set_plan(Plan::Mix {
        p: 1.0,
        faults: vec![Fault::TooManyRequests],
    });
    let before = proxy.requests();
    let storm = Instant::now();
    for p in patients.iter().take(5) {
        lab(&fhir, p);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = proxy.requests() - before;
    assert!(
        during as f64 <= storm.elapsed().as_secs_f64() + 2.0,
        "{during} requests during {:?} of 429s",
        storm.elapsed()
    );
    proxy.set_plan(Plan::Off);
    wait_for(60, "the 5 new labs after the storm", || rx.count() == 25).await;
    let ids: BTreeSet<String> = rx.received().into_iter().map(|r| r.message_id).collect();
    assert_eq!(ids.len(), 25, "each once");
}

/// A roster that cannot be read before any was: no target to poll, so
/// each type's row on status carries the error (never a silent source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_that_cannot_be_read_shows_on_status() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let bridge = Bridge::start(&config(
        &fhir.base_url(),
        "patients = { group = \"Group/missing\" }",
        &hooks,
    ));
    wait_for(30, "the roster's error on status", || {
        let t = &bridge.status_json()["sources"][0]["targets"][0];
        t["last_outcome"] == "error"
            && t["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("roster: HTTP 404"))
    })
    .await;
    // Once the Group exists, its patients are polled.
    fhir.as_sandbox().store.set_group("missing", ["p1"]);
    let id = lab(&fhir, "p1");
    wait_for(30, "p1's lab", || {
        delivered(&rx).contains(&format!("Observation/{id}"))
    })
    .await;
}
