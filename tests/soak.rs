//! The soak: the mixed scenario (EHR faults, receiver outages, kill -9s) for a
//! given time at a given write rate, printing the bridge's RSS and open file
//! descriptors over time (they must stay flat) and the checker's table.
//!
//! CI runs a short one (20 s). For a real soak: `scripts/soak 30m 20`
//! (SOAK_SECONDS, SOAK_RATE, SOAK_KILL_EVERY, CHAOS_SEED).

mod common;

use common::checker::check;
use common::proxy::{ALL_FAULTS, ChaosProxy, Plan};
use common::writer::{Write, Writer};
use common::{Bridge, FhirServer};
use fhir_bridge::sandbox::{Behaviour, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// (RSS in KiB, open fds) of a process, from /proc.
fn usage(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_faults() {
    let seconds: u64 = env("SOAK_SECONDS", 20);
    let rate: f64 = env("SOAK_RATE", 20.0);
    let kill_every: u64 = env("SOAK_KILL_EVERY", 7);
    let seed: u64 = env("CHAOS_SEED", 20261121);

    let fhir = Arc::new(FhirServer::medplum("cursor"));
    let proxy = ChaosProxy::start(&fhir.base_url(), seed).await;
    proxy.set_plan(Plan::Mix {
        p: 0.1,
        faults: ALL_FAULTS.to_vec(),
    });
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = format!(
        r#"state_dir = "state"
[[source]]
name = "ehr"
base_url = "{}"
resources = ["Observation"]
every = "500ms"
page_size = 20
overlap = "2s"
start = "beginning"
timeout = "2s"

[[hook]]
name = "all"
url = "{}"
retry_schedule = ["1s", "1s", "2s"]
max_attempts = 100000

[[hook]]
name = "critical"
url = "{}"
filter = 'any(.interpretation[]?.coding[]?; .code == "HH" or .code == "LL")'
retry_schedule = ["1s", "1s", "2s"]
max_attempts = 100000
"#,
        proxy.base_url(),
        rx.url("hooks/all"),
        rx.url("hooks/critical")
    );
    let mut bridge = Bridge::start(&cfg);
    let writer = Writer::start(fhir.clone(), rate, seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut kills = 0;
    let mut next_kill = Duration::from_secs(kill_every);
    let mut next_report = Duration::ZERO;
    println!(
        "{:>8} {:>8} {:>10} {:>9} {:>5} {:>7}",
        "ELAPSED", "WRITES", "DELIVERED", "RSS(KiB)", "FDS", "KILLS"
    );
    let mut samples = vec![];
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = started.elapsed();
        // Receiver outages come and go.
        let outage = (t.as_secs() / 5) % 4 == 3;
        rx.set_behaviour(if outage {
            Behaviour::Status(503)
        } else {
            Behaviour::Accept
        });
        if t >= next_kill {
            bridge.kill9();
            bridge.restart();
            kills += 1;
            next_kill = t + Duration::from_millis(rng.u64(kill_every * 500..kill_every * 1500));
        }
        if t >= next_report {
            let (rss, fds) = bridge.pid().map(usage).unwrap_or((0, 0));
            samples.push((rss, fds));
            println!(
                "{:>7.0}s {:>8} {:>10} {:>9} {:>5} {:>7}",
                t.as_secs_f64(),
                writer.count(),
                rx.count(),
                rss,
                fds,
                kills
            );
            next_report = t + Duration::from_secs((seconds / 10).clamp(2, 60));
        }
    }
    proxy.set_plan(Plan::Off);
    rx.set_behaviour(Behaviour::Accept);
    let writes: Vec<Write> = writer.stop().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let a = check(&writes, &rx.received(), "/hooks/all", |_| true);
        let c = check(&writes, &rx.received(), "/hooks/critical", |w| w.critical);
        if (a.missing.is_empty() && c.missing.is_empty()) || Instant::now() > deadline {
            println!(
                "soak: {seconds}s at {rate}/s, {} writes, {kills} kill -9s, {} EHR faults injected over {} requests",
                writes.len(),
                proxy.total_injected(),
                proxy.requests()
            );
            a.assert_ok("soak/all");
            c.assert_ok("soak/critical");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Flat resources: the last sample is not far above the post-warm-up ones.
    if samples.len() >= 4 {
        let warm = &samples[samples.len() / 2..];
        let (rss_min, rss_max) = (
            warm.iter().map(|s| s.0).min().unwrap(),
            warm.iter().map(|s| s.0).max().unwrap(),
        );
        let (fd_min, fd_max) = (
            warm.iter().map(|s| s.1).min().unwrap(),
            warm.iter().map(|s| s.1).max().unwrap(),
        );
        println!("soak: RSS {rss_min}-{rss_max} KiB, fds {fd_min}-{fd_max} after warm-up");
        assert!(
            fd_max <= fd_min + 32,
            "open file descriptors grow: {fd_min} -> {fd_max}"
        );
    }
    bridge.stop();
}
