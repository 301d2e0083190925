//! Hostile input: filter. See tests/hostile.rs.
//!
//! A hook whose filter never ends, or would take all memory, gets a filter
//! error per resource (its budget runs out); the other hooks of the same
//! source deliver everything, and the daemon stays up and stops on SIGTERM.

use crate::common::{self, Bridge, FhirServer, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::{Value, json};

const WRITES: usize = 4;

fn observation(n: usize) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "valueQuantity": {"value": n, "unit": "mmol/L"},
    })
}

fn hook_status(bridge: &Bridge, name: &str) -> Value {
    let st = bridge.status_json();
    st["hooks"]
        .as_array()
        .and_then(|hooks| hooks.iter().find(|h| h["name"] == name).cloned())
        .unwrap_or_else(|| panic!("hook {name} not in status: {st:#}"))
}

/// Two hooks on one source: `hostile` runs `filter`, `all` runs `true`.
async fn other_hooks_deliver_despite(filter: &str) {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.expect("receiver");
    for n in 0..WRITES {
        fhir.create(observation(n)).await;
    }
    let hooks = common::hook("hostile", &rx.url("hooks/hostile"), filter, "")
        + &common::hook("all", &rx.url("hooks/all"), "true", "");
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));

    wait_for(60, "every write delivered to `all`", || {
        rx.received()
            .iter()
            .filter(|r| r.path == "/hooks/all")
            .count()
            >= WRITES
    })
    .await;
    wait_for(30, "filter errors counted on `hostile`", || {
        hook_status(&bridge, "hostile")["filter_errors"]
            .as_u64()
            .unwrap_or(0)
            >= WRITES as u64
    })
    .await;
    assert!(bridge.exited().is_none(), "the daemon must stay up");

    // Later writes still flow: the source is not stuck on the hostile hook.
    fhir.create(observation(WRITES)).await;
    wait_for(60, "a later write delivered to `all`", || {
        rx.received()
            .iter()
            .filter(|r| r.path == "/hooks/all")
            .count()
            > WRITES
    })
    .await;
    assert!(
        rx.received().iter().all(|r| r.path == "/hooks/all"),
        "nothing matched the hostile filter"
    );
    assert!(
        bridge.logs().contains("exceeded its budget"),
        "the budget error is logged"
    );
    // Stops on SIGTERM within the grace period, exit status 0.
    bridge.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_filter_is_stopped_per_resource() {
    other_hooks_deliver_despite("def f: f; f").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_range_does_not_take_the_process_down() {
    other_hooks_deliver_despite("[range(1e9)] | length > 0").await;
}

/// Comparing two values that share their parts (2^60 leaves each, built in
/// 120 steps) runs in jaq's native code, where no budget check can stop it
/// (README, `filter`: what the budget does not cover). That source is stuck,
/// but SIGTERM still stops the daemon within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_even_with_a_filter_stuck_in_native_code() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.expect("receiver");
    fhir.create(observation(0)).await;
    let stuck =
        "(reduce range(60) as $i (0; [., .])) as $a | reduce range(60) as $i (0; [., .]) | . == $a";
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &common::hook("stuck", &rx.url("hooks/stuck"), stuck, ""),
    ));
    wait_for(30, "the first poll to start", || {
        bridge.logs().contains("fhir-bridge started")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(bridge.exited().is_none(), "the daemon must stay up");
    bridge.stop();
}
