//! The daemon's whole path on a PostgreSQL state (feature `postgres`): polled
//! changes are committed, numbered, claimed and delivered once each, in
//! per-resource order; a restart re-sends nothing; `status` reads it all.

use crate::common::scenarios::observation;
use crate::common::{Bridge, FhirServer, by_resource, config_for, hook, hook_of, wait_for};
use fhir_bridge::sandbox::Receiver;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_go_out_once_each_in_order_from_a_postgres_state() {
    let Some(url) = fhir_bridge::state::fresh_postgres_for_tests().await else {
        return;
    };
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "concurrency = 8");
    let mut ids = vec![];
    for _ in 0..12 {
        ids.push(fhir.create(observation("N", "preliminary")).await.0);
    }
    let config = config_for(&fhir, &["Observation"], "beginning", &hooks)
        + &format!("\n[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
    let mut bridge = Bridge::start(&config);
    wait_for(60, "first deliveries", || rx.received().len() >= ids.len()).await;
    // Two rounds of updates, each seen by a poll (a poll sees a
    // resource's current version only).
    let mut expected = ids.len();
    for (interp, status) in [("HH", "final"), ("LL", "amended")] {
        for id in &ids[..4] {
            fhir.update(id, observation(interp, status)).await;
        }
        expected += 4;
        wait_for(60, "updates", || rx.received().len() >= expected).await;
    }

    bridge.stop();
    bridge.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.received();
    let unique: BTreeSet<&str> = got.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(unique.len(), expected, "every version once");
    assert_eq!(got.len(), expected, "no duplicates");
    for (resource, versions) in by_resource(&got) {
        let numbers: Vec<u64> = versions
            .iter()
            .filter_map(|(_, v)| v.as_deref()?.parse().ok())
            .collect();
        let mut sorted = numbers.clone();
        sorted.sort();
        assert_eq!(numbers, sorted, "{resource}: versions in order");
    }
    let st = bridge.status_json();
    let all = hook_of(&st, "all");
    assert_eq!(all["delivered"], expected as i64, "{st:#}");
    assert_eq!(all["pending"], 0, "{st:#}");
    assert_eq!(all["events"], expected as i64, "{st:#}");
    bridge.stop();
}
