//! `fhir-bridge backfill`: an initial load beside the running daemon,
//! rate-limited, killed half-way and resumed, against the real binary. What
//! the backfill and ordinary polling both see arrives under one message id.

use crate::common;

use common::{Bridge, config, hook, wait_for};
use fhir_bridge::sandbox::{FhirSandbox, Receiver};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_half_way_resumes_and_delivers_each_resource_once() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    // 140 resources written over the past day (20 pages of 7).
    const PAST: i64 = 140;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..PAST {
        fhir.store.freeze_clock(Some(now - 86_400_000 + i * 60_000));
        common::store_observation(&fhir.store, &format!("past{i:03}"));
    }
    fhir.store.freeze_clock(None);
    // The daemon starts now: it polls from here on, the past is the backfill's.
    let bridge = Bridge::start(&config(
        &fhir.base_url(),
        &["Observation"],
        "now",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    ));
    wait_for(20, "the daemon up", || {
        bridge.logs().contains("fhir-bridge started")
    })
    .await;
    let backfill = |rate: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fhir-bridge"));
        c.args([
            "backfill",
            "--source",
            "ehr",
            "--since",
            "beginning",
            "--rate",
            rate,
            "-c",
        ])
        .arg(bridge.config_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };
    // 5 pages a second: killed after ~2 s, about half-way.
    let mut first = backfill("5").spawn().unwrap();
    let store = fhir.store.clone();
    let live = tokio::spawn(async move {
        for i in 0..20 {
            common::store_observation(&store, &format!("live{i:02}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let partial = rx
        .received()
        .iter()
        .filter(|r| r.resource_id.contains("past"))
        .count();
    assert!(
        partial > 0 && partial < PAST as usize,
        "{partial} of {PAST} before the kill"
    );
    live.await.unwrap();

    let out = backfill("50").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Observation: done"), "{text}");
    assert!(text.contains("(resumed)"), "{text}");
    // Again: nothing left to do.
    let again = backfill("50").output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("Observation: done, "));

    wait_for(30, "the past and the live writes delivered", || {
        let ids: BTreeSet<String> = rx
            .received()
            .iter()
            .map(|r| r.resource_id.clone())
            .collect();
        ids.len() == PAST as usize + 20
    })
    .await;
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rx.received() {
        ids.entry(r.resource_id).or_default().insert(r.message_id);
    }
    for (resource, m) in &ids {
        assert_eq!(m.len(), 1, "{resource} arrived under {m:?}");
    }
    eprintln!(
        "backfill: {partial} of {PAST} past resources before the kill; {} POSTs for {} resources",
        rx.received().len(),
        ids.len()
    );
    // A relative --since would not resume: refused.
    let out = bridge.cli(&["backfill", "--source", "ehr", "--since", "2h"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a backfill resumes only the same range")
    );
    drop(bridge);
}
