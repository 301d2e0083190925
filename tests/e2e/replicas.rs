//! Replicas of the real binary on one PostgreSQL state (feature `postgres`):
//! one writes, the others wait as standbys; a standby takes over once the
//! writer's lease ends (`kill -9`), and a writer stalled past its lease
//! (`SIGSTOP`) finds it taken when it resumes and exits non-zero.

use crate::common::{Bridge, wait_for};
use std::process::Command;

fn signal(bridge: &Bridge, sig: &str) {
    let pid = bridge.pid().expect("running").to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_standby_takes_over_and_a_stalled_writer_stops() {
    let Some(url) = fhir_bridge::state::fresh_postgres_for_tests().await else {
        return;
    };
    let config = format!("[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
    let mut a = Bridge::start(&config);
    wait_for(30, "a writes", || a.logs().contains("fhir-bridge started")).await;
    let mut b = Bridge::start(&config);
    wait_for(30, "b waits", || {
        b.logs().contains("standby: another replica")
    })
    .await;
    assert!(!b.logs().contains("fhir-bridge started"));

    // The writer dies without a word: its lease runs out (15 s), b takes it.
    a.kill9();
    wait_for(30, "b takes over", || {
        b.logs().contains("took over the state's lease")
    })
    .await;
    let st = b.status_json();
    assert_eq!(st["daemon"]["running"], true, "{st}");
    let db = st["database"].as_str().unwrap().to_string();
    assert!(
        db.starts_with("postgres://") && !db.contains("user="),
        "{db}"
    );
    let mut c = Bridge::start(&config);
    wait_for(30, "c waits", || {
        c.logs().contains("standby: another replica")
    })
    .await;

    // b stalls past its lease: c takes over; b, resumed, stops at once.
    signal(&b, "-STOP");
    wait_for(40, "c takes over", || {
        c.logs().contains("took over the state's lease")
    })
    .await;
    signal(&b, "-CONT");
    wait_for(15, "b exits", || b.exited().is_some()).await;
    let status = b.exited().unwrap();
    assert!(!status.success(), "{status}");
    assert!(
        b.logs().contains("the state's lease was lost"),
        "{}",
        b.logs()
    );
    for logs in [a.logs(), b.logs(), c.logs()] {
        assert!(!logs.contains("user=bridge"), "the url is never logged");
    }
    c.stop();
}
