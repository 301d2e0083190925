//! Hostile input to per-patient fan-out and the source's request budget
//! (issue 17): a roster that reads empty or halved for a moment, a server
//! answering 429 with Retry-After again and again, and a 429 on the
//! CapabilityStatement request at start.

use crate::common::fanout::{self, delivered, lab};
use crate::common::scripted::{Scripted, Seen, bundle, now_instant, status_with};
use crate::common::{Bridge, FhirServer, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn fan_out_config(base: &str, start: &str, refresh: &str, hooks: &str) -> String {
    fanout::fan_out_config(base, start, r#"{ group = "Group/ward" }"#, refresh, hooks)
}

fn warning(bridge: &Bridge) -> String {
    bridge.status_json()["sources"][0]["targets"][0]["last_warning"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Item 2: the Group reads empty for a few seconds (long enough for the
/// empty roster to be believed). The patients' targets are kept for
/// `roster_grace`; when they come back they resume from their watermarks,
/// and a lab written during the gap is delivered (it was lost: the patients
/// came back at `start = "now"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_read_empty_for_a_while_forgets_no_patient() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.set_group("ward", ["p1", "p2"]);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let bridge = Bridge::start(&fan_out_config(&fhir.base_url(), "now", "1s", &hooks));
    // Both patients polled (their targets started at "now").
    wait_for(30, "both patients' targets", || {
        bridge.status_json()["sources"][0]["targets"][0]["patients"] == 2
    })
    .await;
    let before = lab(&fhir, "p1");
    wait_for(30, "p1's first lab", || delivered(&rx).contains(&before)).await;
    store.set_group("ward", Vec::<String>::new());
    // Suspect first (kept, on status), then believed after three reads.
    wait_for(30, "the shrink on status", || {
        warning(&bridge).contains("less than half of the last roster's 2")
    })
    .await;
    let during = lab(&fhir, "p1");
    wait_for(30, "the empty roster believed", || {
        bridge
            .logs()
            .contains("the targets of patients who left are kept")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.set_group("ward", ["p1", "p2"]);
    wait_for(30, "the lab written during the gap", || {
        delivered(&rx).contains(&during)
    })
    .await;
    assert_eq!(rx.count(), 2, "each lab once");
}

/// Item 2: a Group that shrinks from four patients to one in one read is
/// suspect: the last roster is kept (a lab of a patient missing from the
/// read is still delivered) and status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_halved_in_one_read_keeps_the_last_one_and_warns() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.set_group("ward", ["p1", "p2", "p3", "p4"]);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let bridge = Bridge::start(&fan_out_config(&fhir.base_url(), "beginning", "3s", &hooks));
    let first = lab(&fhir, "p4");
    wait_for(30, "p4's first lab", || delivered(&rx).contains(&first)).await;
    store.set_group("ward", ["p1"]);
    wait_for(30, "the suspect read on status", || {
        warning(&bridge).contains("this read has 1 patients, less than half of the last roster's 4; the last roster is kept")
    })
    .await;
    let second = lab(&fhir, "p4");
    wait_for(30, "p4's second lab (the last roster kept)", || {
        delivered(&rx).contains(&second)
    })
    .await;
}

/// A scripted FHIR server: `Group/ward` with patients p0..p9, empty
/// searches, and every `every`-th request answered 429 Retry-After: 1.
/// Returns the server and the patients whose searches were answered 200.
async fn throttling_server(every: usize) -> (Scripted, Arc<Mutex<Vec<String>>>) {
    let count = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(Mutex::new(Vec::new()));
    let s = served.clone();
    let fhir = Scripted::start(move |seen: &Seen| {
        if count.fetch_add(1, Ordering::SeqCst) % every == every - 1 {
            return status_with(429, &[("Retry-After", "1")]);
        }
        if seen.uri.starts_with("/fhir/Group/ward") {
            let members: Vec<Value> = (0..10)
                .map(|i| json!({"entity": {"reference": format!("Patient/p{i}")}}))
                .collect();
            return crate::common::scripted::fhir_json(
                200,
                json!({"resourceType": "Group", "id": "ward", "member": members}),
            );
        }
        if let Some(p) = seen.uri.split("patient=").nth(1) {
            let p = p.split('&').next().unwrap_or_default().to_string();
            s.lock().unwrap().push(p);
        }
        bundle(&now_instant(), vec![], None)
    })
    .await;
    (fhir, served)
}

/// Item 8: a server answers 429 (Retry-After: 1) to every seventh request.
/// Each pause stopped the turn and the next started again from the first
/// patient, so the last patients were never polled; now the turn goes on
/// where it stopped and every patient is polled, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_429_rate_starves_no_patient() {
    let (fhir, served) = throttling_server(7).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let bridge = Bridge::start(&fan_out_config(
        &fhir.url("/fhir"),
        "beginning",
        "1h",
        &hooks,
    ));
    let polls = |p: &str| served.lock().unwrap().iter().filter(|s| *s == p).count();
    wait_for(60, "every patient polled twice", || {
        (0..10).all(|i| polls(&format!("p{i}")) >= 2)
    })
    .await;
    // Status: every patient's target counted, the oldest success recent.
    wait_for(30, "ten patients on status", || {
        let t = &bridge.status_json()["sources"][0]["targets"][0];
        t["patients"] == 10 && t["last_success_at"].is_string()
    })
    .await;
}

/// Item 9: the CapabilityStatement request at start answers 429 with
/// Retry-After: 3. The source is paused: no request goes out for 3 s (the
/// next search went out 1 ms later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_the_capability_statement_pauses_the_source() {
    let times: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let t = times.clone();
    let fhir = Scripted::start(move |seen: &Seen| {
        t.lock().unwrap().push((Instant::now(), seen.uri.clone()));
        if seen.uri.starts_with("/fhir/metadata") {
            return status_with(429, &[("Retry-After", "3")]);
        }
        bundle(&now_instant(), vec![], None)
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let config = format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{}"
resources = ["Observation"]
every = "300ms"
start = "beginning"
timeout = "2s"

{}
"#,
        fhir.url("/fhir"),
        hook("all", &rx.url("hooks/all"), "true", "")
    );
    let _bridge = Bridge::start(&config);
    wait_for(30, "a search after the statement", || {
        times.lock().unwrap().len() >= 2
    })
    .await;
    let times = times.lock().unwrap().clone();
    assert!(times[0].1.starts_with("/fhir/metadata"), "{:?}", times[0].1);
    let gap = times[1].0 - times[0].0;
    assert!(
        gap >= Duration::from_millis(2800),
        "the next request ({}) went out {gap:?} after the 429",
        times[1].1
    );
}
