//! End-to-end pipeline benchmark: `cargo bench --bench pipeline`.
//!
//! Runs the real pipeline (`daemon::run`) in-process between the in-crate
//! sandbox FHIR server and the sandbox receiver, all on 127.0.0.1, and prints:
//! 1. backlog throughput: N matching resources from `start = "beginning"` until
//!    the last webhook is acknowledged;
//! 2. delivery latency at a 1 s poll interval and a steady write rate: from the
//!    resource's `meta.lastUpdated` to its webhook's arrival (p50, p99, max).
//!
//! Sizes: BENCH_BACKLOG (default 20000), BENCH_RATE (writes/s, default 50),
//! BENCH_SECONDS (default 10).

use fhir_bridge::config::Config;
use fhir_bridge::sandbox::{FhirSandbox, Receiver, generator};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(fhir: &str, rx: &str, state: &Path, every: &str, page: u32, concurrency: u32) -> Config {
    let text = format!(
        r#"state_dir = "{}"
[[source]]
name = "bench"
base_url = "{fhir}"
resources = ["Observation"]
every = "{every}"
page_size = {page}
overlap = "5s"
start = "beginning"
[[hook]]
name = "all"
url = "{rx}"
filter = '.resourceType == "Observation"'
concurrency = {concurrency}
"#,
        state.display()
    );
    Config::from_str(&text, Path::new("bench.toml")).expect("bench config")
}

async fn wait_count(rx: &Receiver, n: usize, limit: Duration) -> bool {
    let t = Instant::now();
    while rx.count() < n {
        if t.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn throughput(n: usize) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..n {
        fhir.store.upsert(
            "Observation",
            None,
            generator::observation(i as u64, &mut rng),
        );
    }
    let rx = Receiver::start(0, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &fhir.base_url(),
        &rx.url("all"),
        dir.path(),
        "200ms",
        1000,
        32,
    );
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let daemon = tokio::spawn(fhir_bridge::daemon::run(cfg, cancel.clone()));
    let ok = wait_count(&rx, n, Duration::from_secs(600)).await;
    let secs = started.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = daemon.await;
    let db = std::fs::metadata(dir.path().join("bridge.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "backlog      {n} resources -> {} webhooks in {secs:.2}s = {:.0} events/s{}  (db {:.1} MB)",
        rx.received().len(),
        rx.received().len() as f64 / secs,
        if ok { "" } else { " (TIMED OUT)" },
        db as f64 / 1e6
    );
}

async fn latency(rate: f64, seconds: u64) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&fhir.base_url(), &rx.url("all"), dir.path(), "1s", 100, 8);
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(fhir_bridge::daemon::run(cfg, cancel.clone()));
    let writer = {
        let store = fhir.store.clone();
        let stop = cancel.child_token();
        tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut rng = fastrand::Rng::with_seed(9);
            let mut tick = tokio::time::interval(period);
            let t = Instant::now();
            let mut n = 0usize;
            while t.elapsed() < Duration::from_secs(seconds) && !stop.is_cancelled() {
                tick.tick().await;
                store.upsert(
                    "Observation",
                    None,
                    generator::observation(n as u64, &mut rng),
                );
                n += 1;
            }
            n
        })
    };
    let written = writer.await.unwrap();
    wait_count(&rx, written, Duration::from_secs(30)).await;
    cancel.cancel();
    let _ = daemon.await;
    let mut lat: Vec<f64> = rx
        .received()
        .iter()
        .filter_map(|r| {
            let lu = r.body["lastUpdated"].as_str()?;
            let lu = chrono::DateTime::parse_from_rfc3339(lu).ok()?;
            Some((r.received_at - lu.to_utc()).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "latency      {written} writes at {rate}/s, 1s poll interval: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} delivered)",
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful: run only under bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("fhir-bridge pipeline benchmark (in-process: sandbox FHIR -> pipeline -> sandbox receiver)");
        throughput(env_or("BENCH_BACKLOG", 20_000)).await;
        latency(env_or("BENCH_RATE", 50.0), env_or("BENCH_SECONDS", 10)).await;
    });
}
