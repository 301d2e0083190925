//! End-to-end scenarios, run against each FHIR server kind.

use super::{Bridge, FhirServer, config_for, hook, wait_for};
use fhir_bridge::sandbox::{Received, Receiver};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const CRITICAL: &str = r#".resourceType == "Observation" and any(.interpretation[]?.coding[]?; .code == "HH" or .code == "LL")"#;

pub fn observation(interp: &str, status: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "valueQuantity": {"value": 6.8, "unit": "mmol/L"},
        "interpretation": [{"coding": [{"code": interp}]}]
    })
}

fn on_hook(got: &[Received], hook: &str) -> Vec<Received> {
    got.iter()
        .filter(|r| r.path == format!("/hooks/{hook}"))
        .cloned()
        .collect()
}

/// (resourceId, versionId) -> message_ids seen for it.
fn by_version(got: &[Received]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut m: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in got {
        m.entry((
            r.resource_id.clone(),
            r.version_id.clone().unwrap_or_default(),
        ))
        .or_default()
        .insert(r.message_id.clone());
    }
    m
}

/// Creates and updates arrive once each, the filter keeps the right ones, and a
/// restart re-delivers nothing.
pub async fn creates_updates_filter_and_restart(fhir: &FhirServer) {
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("critical", &rx.url("hooks/critical"), CRITICAL, "")
        + &hook("all", &rx.url("hooks/all"), "true", "concurrency = 8");
    let mut expected_all = BTreeSet::new();
    let mut expected_critical = BTreeSet::new();
    let mut ids = vec![];
    for i in 0..10 {
        let interp = if i % 3 == 0 { "HH" } else { "N" };
        let (id, v) = fhir.create(observation(interp, "preliminary")).await;
        expected_all.insert((format!("Observation/{id}"), v.clone()));
        if interp == "HH" {
            expected_critical.insert((format!("Observation/{id}"), v.clone()));
        }
        ids.push(id);
    }
    let (eid, ev) = fhir
        .create(
            json!({"resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"}}),
        )
        .await;
    expected_all.insert((format!("Encounter/{eid}"), ev));

    let mut bridge = Bridge::start(&config_for(
        fhir,
        &["Observation", "Encounter"],
        "beginning",
        &hooks,
    ));
    wait_for(60, "first deliveries", || {
        on_hook(&rx.received(), "all").len() >= expected_all.len()
    })
    .await;

    // Two updates: one critical result, one normal one.
    let v0 = fhir.update(&ids[0], observation("HH", "final")).await;
    let v1 = fhir.update(&ids[1], observation("N", "final")).await;
    expected_all.insert((format!("Observation/{}", ids[0]), v0.clone()));
    expected_all.insert((format!("Observation/{}", ids[1]), v1));
    expected_critical.insert((format!("Observation/{}", ids[0]), v0));
    wait_for(60, "update deliveries", || {
        on_hook(&rx.received(), "all").len() >= expected_all.len()
            && on_hook(&rx.received(), "critical").len() >= expected_critical.len()
    })
    .await;

    // A restart must re-deliver nothing already delivered.
    bridge.stop();
    bridge.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = rx.received();
    let all = on_hook(&got, "all");
    let critical = on_hook(&got, "critical");
    let all_versions: BTreeSet<_> = by_version(&all).into_keys().collect();
    assert_eq!(all_versions, expected_all, "every version once on `all`");
    assert_eq!(all.len(), expected_all.len(), "no duplicates on `all`");
    let crit_versions: BTreeSet<_> = by_version(&critical).into_keys().collect();
    assert_eq!(
        crit_versions, expected_critical,
        "the filter keeps exactly the critical results"
    );
    assert_eq!(critical.len(), expected_critical.len());

    // Payload shape.
    let first = all
        .iter()
        .find(|r| r.resource_id == format!("Observation/{}", ids[0]))
        .unwrap();
    let b = &first.body;
    assert_eq!(b["source"], "fhir-bridge");
    assert_eq!(b["ownerId"], "org/test");
    assert_eq!(b["sourceName"], "ehr");
    assert_eq!(b["resourceIncluded"], true);
    assert_eq!(b["resource"]["resourceType"], "Observation");
    assert_eq!(b["event"], "create");
    assert!(b["lastUpdated"].is_string() && b["time"].is_string());
    let update = all
        .iter()
        .find(|r| r.resource_id == format!("Observation/{}", ids[1]) && r.event == "update")
        .expect("an update event");
    assert_eq!(update.body["resource"]["status"], "final");

    let st = bridge.status_json();
    assert_eq!(st["healthy"], true, "{st:#}");
    let all_status = st["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "all")
        .unwrap();
    assert_eq!(all_status["delivered"], expected_all.len() as i64);
    assert_eq!(all_status["pending"], 0);
    assert_eq!(st["sources"][0]["targets"][0]["last_outcome"], "ok");
    bridge.stop();
}

/// A receiver that answers 500 for a while gets everything once it recovers.
pub async fn receiver_outage_then_recovery(fhir: &FhirServer) {
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_failing(500);
    let hooks = hook(
        "h",
        &rx.url("hooks/h"),
        "true",
        "retry_schedule = [\"1s\"]\nmax_attempts = 100",
    );
    let mut expected = BTreeSet::new();
    for _ in 0..5 {
        let (id, v) = fhir.create(observation("N", "final")).await;
        expected.insert((format!("Observation/{id}"), v));
    }
    let mut bridge = Bridge::start(&config_for(fhir, &["Observation"], "beginning", &hooks));
    wait_for(60, "failed attempts recorded", || {
        bridge.status_json()["hooks"][0]["failed_attempts"]
            .as_i64()
            .unwrap_or(0)
            >= 10
    })
    .await;
    let st = bridge.status_json();
    assert_eq!(st["hooks"][0]["last_error"], "HTTP 500");
    assert!(rx.received().is_empty());
    rx.set_failing(0);
    wait_for(60, "delivery after recovery", || {
        rx.received().len() >= expected.len()
    })
    .await;
    let got: BTreeSet<_> = by_version(&rx.received()).into_keys().collect();
    assert_eq!(got, expected);
    bridge.stop();
}

/// A hook that always fails ends in the dead-letter queue; `dlq redrive`
/// delivers after it is fixed, with the original message_ids.
pub async fn dead_letters_and_redrive(fhir: &FhirServer) {
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_failing(503);
    let hooks = hook(
        "h",
        &rx.url("hooks/h"),
        "true",
        "retry_schedule = [\"1s\"]\nmax_attempts = 2",
    );
    for _ in 0..3 {
        fhir.create(observation("N", "final")).await;
    }
    let mut bridge = Bridge::start(&config_for(fhir, &["Observation"], "beginning", &hooks));
    let dlq = |b: &Bridge| -> Vec<Value> {
        let out = b.cli(&["dlq", "list", "--json"]);
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
    };
    wait_for(60, "three dead letters", || dlq(&bridge).len() == 3).await;
    let dead = dlq(&bridge);
    assert!(
        dead.iter()
            .all(|d| d["attempts"] == 2 && d["last_status"] == 503)
    );
    let status = bridge.cli(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(2),
        "dead letters make status critical: exit 2"
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("CRITICAL"));
    assert_eq!(bridge.status_json()["hooks"][0]["dead_lettered"], 3);

    rx.set_failing(0);
    let out = bridge.cli(&["dlq", "redrive", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("requeued 3"));
    wait_for(30, "redriven deliveries", || rx.received().len() >= 3).await;
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .map(|d| d["message_id"].as_str().unwrap().to_string())
        .collect();
    let got_ids: BTreeSet<String> = rx.received().iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(got_ids, dead_ids, "redrive keeps the original message_ids");
    assert!(dlq(&bridge).is_empty());
    assert_eq!(bridge.cli(&["status"]).status.code(), Some(0));
    bridge.stop();
}

/// `kill -9` mid-delivery, twice, while writes go on: nothing is lost, and any
/// duplicate carries the same message_id.
pub async fn kill9_loses_nothing(fhir: &FhirServer) {
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("h", &rx.url("hooks/h"), "true", "concurrency = 2");
    let mut expected = BTreeSet::new();
    for _ in 0..40 {
        let (id, v) = fhir.create(observation("N", "preliminary")).await;
        expected.insert((format!("Observation/{id}"), v));
    }
    let mut bridge = Bridge::start(&config_for(fhir, &["Observation"], "beginning", &hooks));
    for round in 1..=3usize {
        wait_for(60, "some deliveries", || rx.received().len() >= round * 8).await;
        bridge.kill9();
        for _ in 0..10 {
            let (id, v) = fhir.create(observation("N", "preliminary")).await;
            expected.insert((format!("Observation/{id}"), v));
        }
        bridge.restart();
    }
    wait_for(90, "every change delivered", || {
        let got: BTreeSet<_> = by_version(&rx.received()).into_keys().collect();
        expected.is_subset(&got)
    })
    .await;
    let versions = by_version(&rx.received());
    for (key, ids) in &versions {
        assert_eq!(
            ids.len(),
            1,
            "{key:?} arrived under different message_ids: {ids:?}"
        );
    }
    assert_eq!(versions.len(), expected.len());
    bridge.stop();
}

/// `start = "now"`: what existed before the first poll is not emitted.
pub async fn start_now_skips_the_past(fhir: &FhirServer) {
    let rx = Receiver::start(0, None).await.unwrap();
    for _ in 0..3 {
        fhir.create(observation("HH", "final")).await;
    }
    let hooks = hook("h", &rx.url("hooks/h"), "true", "");
    let mut bridge = Bridge::start(&config_for(fhir, &["Observation"], "now", &hooks));
    wait_for(30, "the target to initialise", || {
        bridge.status_json()["sources"][0]["targets"][0]["watermark"].is_string()
    })
    .await;
    // Server time may trail ours by a little; make sure new writes are later.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (id, v) = fhir.create(observation("HH", "final")).await;
    wait_for(30, "the new resource", || !rx.received().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = rx.received();
    assert_eq!(
        got.len(),
        1,
        "only the resource written after start: {got:?}"
    );
    assert_eq!(got[0].resource_id, format!("Observation/{id}"));
    assert_eq!(got[0].version_id.as_deref(), Some(v.as_str()));
    bridge.stop();
}
