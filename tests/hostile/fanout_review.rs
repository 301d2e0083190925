//! The adversarial review of per-patient fan-out (issue 17, items 2, 8, 9):
//! a roster file replaced by a FIFO, and a roster read empty right after a
//! restart. Against the real binary, with the sandbox EHR on 127.0.0.1.

use crate::common::fanout::{self, delivered, lab};
use crate::common::{Bridge, FhirServer, hook, wait_for};
use fhir_bridge::sandbox::Receiver;

fn config(base: &str, patients: &str, refresh: &str, hooks: &str) -> String {
    fanout::fan_out_config(base, "now", patients, refresh, hooks)
}

fn warnings(bridge: &Bridge) -> String {
    let status = bridge.status_json();
    let targets = status["sources"][0]["targets"].as_array().cloned();
    targets
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["last_warning"].as_str().map(String::from))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The roster file is replaced by a FIFO (nobody writing to it). Reading it
/// blocked the source for good (and a symlink to /dev/zero, or a 2 GB file,
/// was read whole into memory). Now only a regular file of at most
/// `MAX_ROSTER_FILE_BYTES` is read: the last roster is kept, the log says
/// why, and the patients go on being polled.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_file_replaced_by_a_fifo_keeps_the_last_roster() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let dir = tempfile::tempdir().unwrap();
    let roster = dir.path().join("patients.txt");
    std::fs::write(&roster, "p1\n").unwrap();
    let bridge = Bridge::start(&config(
        &fhir.base_url(),
        &format!("{{ file = {:?} }}", roster.display().to_string()),
        "1s",
        &hooks,
    ));
    wait_for(30, "p1's target", || {
        bridge.status_json()["sources"][0]["targets"][0]["patients"] == 1
    })
    .await;
    let before = lab(&fhir, "p1");
    wait_for(30, "p1's first lab", || delivered(&rx).contains(&before)).await;
    std::fs::remove_file(&roster).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&roster)
        .status()
        .unwrap();
    assert!(made.success());
    // In the log: `status` itself validates the config, which refuses a
    // roster `file` that is not a regular file.
    wait_for(30, "the FIFO refused", || {
        bridge.logs().contains("not a regular file")
    })
    .await;
    let after = lab(&fhir, "p1");
    wait_for(30, "p1's lab after the FIFO", || {
        delivered(&rx).contains(&after)
    })
    .await;
}

/// The daemon restarts while the Group reads empty. The first read after a
/// start was believed whatever it said (nothing to compare it with): every
/// patient "left" and was not polled until the next roster read (an hour by
/// default), status green. Now the roster in the state (the patients whose
/// targets had not left) is the last roster: the empty read is suspect and
/// the patients go on being polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_read_empty_right_after_a_restart_is_suspect() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.set_group("ward", ["p1", "p2"]);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let mut bridge = Bridge::start(&config(
        &fhir.base_url(),
        r#"{ group = "Group/ward" }"#,
        "1h",
        &hooks,
    ));
    wait_for(30, "both patients' targets", || {
        bridge.status_json()["sources"][0]["targets"][0]["patients"] == 2
    })
    .await;
    let before = lab(&fhir, "p2");
    wait_for(30, "p2's first lab", || delivered(&rx).contains(&before)).await;
    bridge.stop();
    store.set_group("ward", Vec::<String>::new());
    bridge.restart();
    wait_for(30, "the suspect read on status", || {
        warnings(&bridge).contains("less than half of the last roster's 2")
    })
    .await;
    let during = lab(&fhir, "p2");
    wait_for(30, "p2's lab while the Group reads empty", || {
        delivered(&rx).contains(&during)
    })
    .await;
    assert_eq!(rx.count(), 2, "each lab once");
}

/// The Group of four is replaced by one new patient (a ward reassigned).
/// The read is suspect and the last roster is kept; the new patient was not
/// polled until the shrink was believed (three reads: three hours at the
/// default `roster_refresh`; 6 s here), and with `start = "now"` a lab written
/// meanwhile was never delivered. Now a suspect read keeps the last roster
/// and adds whom it adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_patient_in_a_suspect_read_is_polled_at_once() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.set_group("ward", ["p1", "p2", "p3", "p4"]);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let bridge = Bridge::start(&config(
        &fhir.base_url(),
        r#"{ group = "Group/ward" }"#,
        "3s",
        &hooks,
    ));
    wait_for(30, "four patients' targets", || {
        bridge.status_json()["sources"][0]["targets"][0]["patients"] == 4
    })
    .await;
    store.set_group("ward", ["p5"]);
    wait_for(30, "the suspect read on status", || {
        warnings(&bridge)
            .contains("this read has 1 patients, less than half of the last roster's 4")
    })
    .await;
    // p5's target started ("now") in the tick that showed the warning.
    let first = lab(&fhir, "p5");
    wait_for(30, "the new patient's lab", || {
        delivered(&rx).contains(&first)
    })
    .await;
}
