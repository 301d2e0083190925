//! Strategies against a real third-party FHIR server (Medplum's engine), where
//! it supports what they need: `snapshot` (plain searches; a delete leaves no
//! trace in Medplum, so only a complete walk can tell) and per-patient
//! fan-out (a Group's members, `patient=` searches). Medplum has no type-level
//! `_history` and no `$export`: those run on the in-crate sandbox
//! (tests/strategies.rs) and on SEKMET, a third-party server that has both
//! (tests/strategies/sekmet.rs).

use crate::common;

use common::scenarios::observation;
use common::{Bridge, FhirServer, config_for, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::json;
use std::collections::BTreeMap;

/// (event, count) per resource id, duplicates (same message_id) removed.
fn events(rx: &Receiver) -> BTreeMap<String, Vec<String>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rx.received() {
        if seen.insert(r.message_id.clone()) {
            out.entry(r.resource_id).or_default().push(r.event);
        }
    }
    out
}

async fn delete(fhir: &FhirServer, path: &str) {
    let url = format!("{}/{path}", fhir.upstream_url());
    let resp = reqwest::Client::new().delete(url).send().await.unwrap();
    assert!(
        resp.status().is_success(),
        "DELETE {path}: {}",
        resp.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_on_medplum_finds_creates_updates_and_deletes_once() {
    let fhir = FhirServer::medplum("offset");
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks).replace(
        "owner_id = \"org/test\"",
        "owner_id = \"org/test\"\nstrategy = \"snapshot\"",
    );
    let mut bridge = Bridge::start(&config);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(fhir.create(observation("N", "final")).await.0);
    }
    wait_for(60, "10 creates", || events(&rx).len() == 10).await;
    fhir.update(&ids[0], observation("H", "amended")).await;
    bridge.kill9();
    delete(&fhir, &format!("Observation/{}", ids[1])).await;
    bridge.restart();
    let of = |id: &str| format!("Observation/{id}");
    wait_for(60, "an update and a delete", || {
        let e = events(&rx);
        e.get(&of(&ids[0])).is_some_and(|v| v.len() == 2)
            && e.get(&of(&ids[1])).is_some_and(|v| v.len() == 2)
    })
    .await;
    // Walks go on: nothing more arrives.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let e = events(&rx);
    assert_eq!(e[&of(&ids[0])], ["create", "update"]);
    assert_eq!(e[&of(&ids[1])], ["create", "delete"]);
    assert_eq!(e.values().map(Vec::len).sum::<usize>(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_on_medplum_polls_a_groups_patients() {
    let fhir = FhirServer::medplum("cursor");
    let mut patients = Vec::new();
    for _ in 0..3 {
        patients.push(fhir.create(json!({"resourceType": "Patient"})).await.0);
    }
    let member = |p: &String| json!({"entity": {"reference": format!("Patient/{p}")}});
    let (group, _) = fhir
        .create(
            json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [member(&patients[0]), member(&patients[1])]}),
        )
        .await;
    let lab = |p: &String| {
        let mut o = observation("N", "final");
        o["subject"] = json!({"reference": format!("Patient/{p}")});
        o
    };
    let mut labs = Vec::new();
    for p in &patients {
        labs.push(fhir.create(lab(p)).await.0);
    }
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks).replace(
        "owner_id = \"org/test\"",
        &format!("owner_id = \"org/test\"\npatients = {{ group = \"Group/{group}\" }}\nroster_refresh = \"1s\""),
    );
    let bridge = Bridge::start(&config);
    let of = |id: &String| format!("Observation/{id}");
    wait_for(60, "the two members' labs", || {
        let e = events(&rx);
        e.len() == 2 && e.contains_key(&of(&labs[0])) && e.contains_key(&of(&labs[1]))
    })
    .await;
    // A new lab for a member arrives; the non-member's never does.
    let newer = fhir.create(lab(&patients[1])).await.0;
    wait_for(60, "the member's new lab", || {
        events(&rx).contains_key(&of(&newer))
    })
    .await;
    assert!(!events(&rx).contains_key(&of(&labs[2])));
    assert_eq!(rx.count(), 3, "each once");
    wait_for(30, "status counts two patients", || {
        bridge.status_json()["sources"][0]["targets"][0]["patients"] == 2
    })
    .await;
}
