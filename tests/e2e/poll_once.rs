//! `fhir-bridge poll --source NAME --once [--dry-run]`, against the real
//! binary and the sandbox EHR.

use crate::common;

use common::{Bridge, config, hook, wait_for};
use fhir_bridge::sandbox::{FhirSandbox, Receiver};
use serde_json::json;

fn obs(interp: &str) -> serde_json::Value {
    json!({"resourceType": "Observation", "status": "final",
           "interpretation": [{"coding": [{"code": interp}]}]})
}

async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_a_real_poll_fills_the_outbox() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook(
        "critical",
        &rx.url("hooks/critical"),
        r#"any(.interpretation[]?.coding[]?; .code == "HH")"#,
        "",
    ) + &hook("all", &rx.url("hooks/all"), "true", "");
    // The harness starts a daemon; its state is removed, so that the dry
    // run below meets a bridge that never ran.
    let mut bridge = Bridge::start(&config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    wait_for(20, "the daemon up", || {
        bridge.logs().contains("fhir-bridge started")
    })
    .await;
    bridge.stop();
    std::fs::remove_dir_all(bridge.dir.path().join("state")).unwrap();
    fhir.store.upsert("Observation", Some("crit"), obs("HH"));
    fhir.store.upsert("Observation", Some("norm"), obs("N"));
    // A poll's upper bound is the server's clock, which a fresh process
    // first learns from a Date header (whole seconds): a write in the last
    // second waits for the next poll, by design.
    settle().await;

    // Never ran: a dry run shows what would go where, and creates no state.
    let out = bridge.cli(&["poll", "--source", "ehr", "--once", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("dry run (nothing written, nothing sent)"),
        "{text}"
    );
    assert!(
        text.contains("Observation: ok, 2 change(s)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("create Observation/crit (version 1) -> critical, all"),
        "{text}"
    );
    assert!(
        text.contains("create Observation/norm (version 1) -> all\n"),
        "{text}"
    );
    assert!(!bridge.dir.path().join("state").join("bridge.db").exists());
    assert_eq!(rx.count(), 0);

    // Beside a running daemon a dry run works (and finds nothing new once
    // the daemon has polled); a real poll is refused.
    bridge.restart();
    wait_for(20, "both delivered to all", || {
        rx.received()
            .iter()
            .filter(|r| r.path == "/hooks/all")
            .count()
            == 2
    })
    .await;
    let out = bridge.cli(&["poll", "--source", "ehr", "--once", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Observation: ok, 0 change(s)"), "{text}");
    let out = bridge.cli(&["poll", "--source", "ehr", "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("use --dry-run, or stop the daemon first"),
        "{err}"
    );

    // Daemon stopped: a real poll puts the new change in the outbox, and the
    // daemon delivers it when it runs again.
    bridge.stop();
    fhir.store.upsert("Observation", Some("late"), obs("LL"));
    settle().await;
    let out = bridge.cli(&["poll", "--source", "ehr", "--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Observation: ok, 1 change(s)"), "{text}");
    let out = bridge.cli(&["poll", "--source", "nope", "--once"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no source named `nope`"));
    bridge.restart();
    wait_for(20, "the polled change delivered", || {
        rx.received()
            .iter()
            .any(|r| r.resource_id == "Observation/late")
    })
    .await;
    bridge.stop();
}
