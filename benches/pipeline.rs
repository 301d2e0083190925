//! The fhir-bridge benchmark: `scripts/bench` (or `cargo bench --bench pipeline`).
//!
//! The FHIR server (the in-crate sandbox) and the receiver run in this process;
//! the bridge runs as its own process (the release binary), so its RSS and CPU
//! are its own. Every figure comes from the same run on the same machine:
//!
//! 1. raw limits: the server's page-fetch rate with a plain client loop (same
//!    `_count`), and the receiver's POST rate with a plain client (same concurrency);
//! 2. backlog throughput, and its ratio to min(raw fetch, raw POST);
//! 3. latency at a 1 s poll interval and a steady write rate, on the sandbox,
//!    on the sandbox telling time only by a second-precision `Date` header, and
//!    on Medplum's engine (tests/fhir-server, `--date-only`) doing the same;
//! 4. scale: many poll targets against a server with (almost) no changes;
//! 5. state size after the backlog;
//! 6. backfill memory: peak RSS walking a large backlog that matches no hook;
//! 7. the token cache: requests per token at 1,000 authenticated targets;
//! 8. telemetry: the cost of a poll's event and of a scrape at 10,000 targets.
//!
//! Sizes (env): BENCH_BACKLOG (100000), BENCH_RATE (50/s), BENCH_LATENCY_SECONDS (20),
//! BENCH_CLOCK_WARMUP (15 s, before the Date-only latency row's writes),
//! BENCH_SOURCES (1000) x 10 types, BENCH_SCALE_SECONDS (130), BENCH_BACKFILL (1000000),
//! BENCH_BURST (20000), BENCH_STEADY_SECONDS (180), BENCH_TOKEN_SOURCES (100) x 10 types, BENCH_TOKEN_SECONDS (90),
//! BENCH_PATIENTS (10000) x 5 types, BENCH_FANOUT_SECONDS (120), BENCH_EXPORT (1000000),
//! BENCH_ONLY (comma list of: raw,backlog,burst,latency,latency-date,latency-medplum,scale,fanout,export,backfill,tokens,telemetry).
//! BENCH_HOOK_EXTRA: extra keys for the benchmark's hook (e.g. a FHIR `format`).

#[path = "pipeline/latency.rs"]
mod latency;
#[path = "pipeline/telemetry.rs"]
mod telemetry;
#[path = "pipeline/tokens.rs"]
mod tokens;

use fhir_bridge::sandbox::{FhirSandbox, Receiver, SandboxClock, generator};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: u32 = 1000;
const CONCURRENCY: usize = 32;
const TYPES: [&str; 10] = [
    "Observation",
    "Encounter",
    "Patient",
    "Condition",
    "MedicationRequest",
    "Procedure",
    "DiagnosticReport",
    "AllergyIntolerance",
    "Immunization",
    "DocumentReference",
];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn enabled(part: &str) -> bool {
    std::env::var("BENCH_ONLY")
        .map(|v| v.split(',').any(|p| p == part))
        .unwrap_or(true)
}

/// The bridge as a child process.
struct Bridge {
    child: Child,
    dir: tempfile::TempDir,
}

impl Bridge {
    fn start(config: &str) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bridges.toml");
        std::fs::write(&cfg, config).unwrap();
        // BENCH_BRIDGE_WRAPPER runs the bridge under a profiler, e.g.
        // "valgrind --tool=callgrind --callgrind-out-file=/tmp/bridge.cg".
        let wrapper = std::env::var("BENCH_BRIDGE_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(prog) => {
                let mut c = Command::new(prog);
                c.args(words).arg(env!("CARGO_BIN_EXE_fhir-bridge"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_fhir-bridge")),
        };
        let child = cmd
            .args(["run", "-c"])
            .arg(&cfg)
            .env("FHIR_BRIDGE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Bridge { child, dir }
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.proc_field("status", "VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.proc_field("status", "VmHWM:")
    }

    /// Write syscalls so far (SQLite's writes dominate them).
    fn write_syscalls(&self) -> u64 {
        self.proc_field("io", "syscw:")
    }

    /// CPU seconds used so far (user + system).
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0
    }

    /// "X MB (database Y + WAL Z)".
    fn size_mb(&self) -> String {
        format!(
            "{:.1} MB (database {:.1} + WAL {:.1})",
            self.db_bytes() as f64 / 1e6,
            self.file_bytes("bridge.db") as f64 / 1e6,
            self.file_bytes("bridge.db-wal") as f64 / 1e6
        )
    }

    fn db_bytes(&self) -> u64 {
        self.file_bytes("bridge.db") + self.file_bytes("bridge.db-wal")
    }

    fn file_bytes(&self, name: &str) -> u64 {
        std::fs::metadata(self.dir.path().join("state").join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn source_toml(name: &str, base: &str, types: &[&str], every: &str, page: u32) -> String {
    let types = types
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[source]]\nname = \"{name}\"\nbase_url = \"{base}\"\nresources = [{types}]\nevery = \"{every}\"\npage_size = {page}\noverlap = \"5s\"\nstart = \"beginning\"\n\n"
    )
}

/// `BENCH_HOOK_EXTRA` adds keys to the hook, e.g. `format = "fhir-backport-r4"`.
fn hook_toml(url: &str, filter: &str) -> String {
    let extra = std::env::var("BENCH_HOOK_EXTRA").unwrap_or_default();
    format!(
        "[[hook]]\nname = \"all\"\nurl = \"{url}\"\nfilter = '{filter}'\nconcurrency = {CONCURRENCY}\n{extra}\n"
    )
}

/// Writes `n` resources stamped over the past day, oldest first, as an EHR's
/// history would be (a backlog is old data: only its last few resources lie
/// inside the overlap window).
async fn preload(fhir: &FhirSandbox, rt: &str, n: usize) {
    let now = chrono::Utc::now().timestamp_millis();
    let step = (86_400_000 / n.max(1) as i64).max(1);
    let first = now - 60_000 - step * n as i64;
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..n {
        let mut r = generator::observation(i as u64, &mut rng);
        r["resourceType"] = rt.into();
        fhir.store.freeze_clock(Some(first + step * i as i64));
        fhir.store.upsert(rt, None, r);
    }
    fhir.store.freeze_clock(None);
}

/// Writes `n` resources now, as fast as possible: a burst that lies wholly
/// inside the overlap window, so every poll re-reads it until it is old enough.
async fn preload_burst(fhir: &FhirSandbox, rt: &str, n: usize) {
    let mut rng = fastrand::Rng::with_seed(8);
    for i in 0..n {
        let mut r = generator::observation(i as u64, &mut rng);
        r["resourceType"] = rt.into();
        fhir.store.upsert(rt, None, r);
    }
}

async fn wait_count(rx: &Receiver, n: usize, limit: Duration) -> bool {
    let t = Instant::now();
    while rx.count() < n {
        if t.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Resources/s a plain client gets walking every page.
async fn raw_fetch(fhir: &FhirSandbox, n: usize) -> f64 {
    let client = reqwest::Client::new();
    let mut url = format!(
        "{}/Observation?_sort=_lastUpdated&_count={PAGE}",
        fhir.base_url()
    );
    let t = Instant::now();
    let mut got = 0usize;
    loop {
        let body = client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let page = fhir_bridge::fhir::bundle::parse_page(&body).unwrap();
        got += page.entries.len();
        match page.next {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(got, n);
    got as f64 / t.elapsed().as_secs_f64()
}

/// Requests/s the receiver accepts from a plain client with CONCURRENCY in flight.
async fn raw_post(rx: &Receiver, n: usize) -> f64 {
    let client = reqwest::Client::new();
    let body = {
        let mut rng = fastrand::Rng::with_seed(1);
        serde_json::json!({"message_id": "m", "source": "fhir-bridge", "resourceId": "Observation/1",
            "resource": generator::observation(1, &mut rng)})
        .to_string()
    };
    let url = rx.url("raw");
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..CONCURRENCY {
        let (client, body, url) = (client.clone(), body.clone(), url.clone());
        tasks.spawn(async move {
            for _ in (w..n).step_by(CONCURRENCY) {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    n as f64 / t.elapsed().as_secs_f64()
}

/// Starts the bridge on everything in `fhir` (one matching hook, 1 s interval)
/// and waits until `n` more webhooks have arrived. Returns events/s, the
/// bridge's CPU % of one core, and the bridge (still running).
async fn drain(fhir: &FhirSandbox, rx: &Receiver, n: usize) -> (f64, f64, Bridge) {
    let before = rx.count();
    // A short retention, so that housekeeping (every retention / 4) shows
    // within the bench what it does over days in production.
    let cfg = format!(
        "state_dir = \"state\"\nretention = \"1m\"\n{}{}",
        source_toml("bench", &fhir.base_url(), &["Observation"], "1s", PAGE),
        hook_toml(&rx.url("hooks/all"), ".resourceType == \"Observation\"")
    );
    let t = Instant::now();
    let bridge = Bridge::start(&cfg);
    let ok = wait_count(rx, before + n, Duration::from_secs(1800)).await;
    let secs = t.elapsed().as_secs_f64();
    if !ok {
        println!(
            "| (timed out after {secs:.0} s with {} of {n}) | | | |",
            rx.count() - before
        );
    }
    let cpu = 100.0 * bridge.cpu_seconds() / secs;
    (n as f64 / secs, cpu, bridge)
}

/// The same, for a backlog written all at once just before the bridge starts.
async fn burst(n: usize) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    preload_burst(&fhir, "Observation", n).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let (rate, cpu, bridge) = drain(&fhir, &rx, n).await;
    println!(
        "| burst throughput | sandbox | {n} matching resources written in the last seconds (all inside the 5 s overlap, re-read by every poll until they leave it) | {rate:.0} events/s; bridge CPU {cpu:.0}% of one core |"
    );
    bridge.stop();
}

async fn backlog(n: usize) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    preload(&fhir, "Observation", n).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let fetch = raw_fetch(&fhir, n).await;
    let post = raw_post(&rx, n.min(50_000)).await;
    println!(
        "| raw fetch | sandbox | {n} resources, _count={PAGE}, plain client | {fetch:.0} resources/s |"
    );
    println!(
        "| raw POST | sandbox receiver | {} requests, {CONCURRENCY} in flight, plain client | {post:.0} requests/s |",
        n.min(50_000)
    );
    let (rate, cpu, bridge) = drain(&fhir, &rx, n).await;
    println!(
        "| backlog throughput | sandbox | {n} matching resources stamped over the past day, from start = beginning | {rate:.0} events/s = {:.2} x min(raw fetch, raw POST); bridge CPU {cpu:.0}% of one core; peak RSS {:.1} MB |",
        rate / fetch.min(post),
        bridge.peak_rss_kib() as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let right_after = bridge.size_mb();
    // One housekeeping pass (every 15 s at a 1 min retention): the delivered
    // payloads' pages go back to the file system.
    tokio::time::sleep(Duration::from_secs(16)).await;
    println!(
        "| state size after backlog | sandbox | {n} resources delivered (retention 1 min) | right after: {right_after}; after one housekeeping pass: {} |",
        bridge.size_mb()
    );
    steady(&fhir, &rx, &bridge, n).await;
    bridge.stop();
}

/// Steady updates on the backlog's resources: the state must level off at
/// what the retention (1 min here) and the overlap window hold.
async fn steady(fhir: &FhirSandbox, rx: &Receiver, bridge: &Bridge, n: usize) {
    let seconds: u64 = env_or("BENCH_STEADY_SECONDS", 180);
    let rate = 200.0;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let before = rx.count();
    let t = Instant::now();
    let mut samples = vec![];
    let mut next_sample = Duration::from_secs(30);
    let mut written = 0usize;
    while t.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let id = rng.usize(1..=n).to_string();
        let body = generator::observation(written as u64, &mut rng);
        fhir.store.upsert("Observation", Some(&id), body);
        written += 1;
        if t.elapsed() >= next_sample {
            samples.push(format!("{} s: {}", next_sample.as_secs(), bridge.size_mb()));
            next_sample += Duration::from_secs(30);
        }
    }
    wait_count(rx, before + written, Duration::from_secs(60)).await;
    println!(
        "| state size, steady updates | sandbox | {written} updates at {rate}/s on {n} resources, retention 1 min, overlap 5 s | {} |",
        samples.join("; ")
    );
}

/// A server that tells its time only by a second-precision `Date` header (no
/// Bundle.meta.lastUpdated), its clock 1.3 s behind ours: the sandbox in that mode.
const DATE_ONLY: SandboxClock = SandboxClock {
    offset_ms: -1_300,
    date_only: true,
};

async fn scale(sources: usize, seconds: u64) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    for rt in TYPES {
        preload(&fhir, rt, 3).await;
    }
    let rx = Receiver::start(0, None).await.unwrap();
    let mut cfg = String::from("state_dir = \"state\"\n");
    for i in 0..sources {
        cfg += &source_toml(
            &format!("site-{i:04}"),
            &fhir.base_url(),
            &TYPES,
            "60s",
            100,
        );
    }
    cfg += &hook_toml(
        &rx.url("hooks/all"),
        ".resourceType == \"Observation\" and .status == \"final\"",
    );
    let bridge = Bridge::start(&cfg);
    // Let start-up and the first round of polls pass, then measure steady state.
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let window = seconds - seconds / 2;
    let (rss_max, cpu, writes) = steady_usage(&bridge, window).await;
    println!(
        "| scale | sandbox | {} poll targets ({sources} sources x 10 types), 60 s interval, no changes | RSS {:.1} MB, CPU {cpu:.1}% of one core, {writes} (targets: <= 150 MB, <= 5%) |",
        sources * 10,
        rss_max as f64 / 1024.0
    );
    bridge.stop();
}

/// Per-patient fan-out at scale: one source, a Group of `patients`, 5 types
/// (a target per patient and type), a 60 s interval and 20 requests/s: the
/// request budget, not the interval, sets the pace (a round of 50,000
/// targets takes 2,500 s). Measured after the roster and the first targets
/// started: RSS, CPU, SQLite writes, and the requests actually made.
async fn fanout_scale(patients: usize, seconds: u64) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let ids: Vec<String> = (0..patients).map(|i| format!("p{i}")).collect();
    fhir.store.set_group("cohort", &ids);
    let types = &TYPES[..5];
    for rt in types {
        preload(&fhir, rt, 3).await;
    }
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = format!(
        "state_dir = \"state\"\n{}patients = {{ group = \"Group/cohort\" }}\nmax_requests_per_second = 20\n\n{}",
        source_toml("ehr", &fhir.base_url(), types, "60s", 100)
            .trim_end()
            .to_string()
            + "\n",
        hook_toml(&rx.url("hooks/all"), "true")
    );
    let bridge = Bridge::start(&cfg);
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let window = seconds - seconds / 2;
    let requests0 = fhir.store.requests();
    let t0 = Instant::now();
    let (rss_max, cpu, writes) = steady_usage(&bridge, window).await;
    let rate = (fhir.store.requests() - requests0) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "| fan-out scale | sandbox | {patients} patients x 5 types = {} targets on one source, 60 s interval, max_requests_per_second = 20 | {rate:.1} requests/s; RSS {:.1} MB, CPU {cpu:.1}% of one core, {writes}; state {} |",
        patients * 5,
        rss_max as f64 / 1024.0,
        bridge.size_mb()
    );
    bridge.stop();
}

/// The bridge's peak RSS (KiB), CPU (% of one core) and SQLite writes over
/// the next `window` seconds. SQLite's writes are pwrite64 calls (database
/// and WAL pages) and fsyncs (checkpoints); sockets use write/writev.
/// Counted with `perf stat` when it is there, else all write syscalls.
async fn steady_usage(bridge: &Bridge, window: u64) -> (u64, f64, String) {
    let counter = std::thread::spawn({
        let pid = bridge.child.id();
        move || sqlite_syscalls(pid, window)
    });
    let (cpu0, w0, t0) = (
        bridge.cpu_seconds(),
        bridge.write_syscalls(),
        Instant::now(),
    );
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(window) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(bridge.rss_kib());
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = 100.0 * (bridge.cpu_seconds() - cpu0) / secs;
    let writes = match counter.join().ok().flatten() {
        Some((pwrites, fsyncs)) => format!(
            "SQLite writes {:.1} page writes/s and {:.2} fsyncs/s",
            pwrites as f64 / window as f64,
            fsyncs as f64 / window as f64
        ),
        None => format!(
            "{:.0} write syscalls/s (all; perf not available)",
            (bridge.write_syscalls() - w0) as f64 / secs
        ),
    };
    (rss_max, cpu, writes)
}

/// (pwrite64 calls, fsync + fdatasync calls) of `pid` over `seconds`, via perf.
fn sqlite_syscalls(pid: u32, seconds: u64) -> Option<(u64, u64)> {
    let out = Command::new("perf")
        .args(["stat", "-x,", "-e"])
        .arg("syscalls:sys_enter_pwrite64,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync")
        .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let count = |event: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        count("pwrite64")?,
        count("sys_enter_fsync")? + count("fdatasync")?,
    ))
}

async fn backfill(n: usize) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    preload(&fhir, "Observation", n).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = format!(
        "state_dir = \"state\"\n{}{}",
        source_toml("bench", &fhir.base_url(), &["Observation"], "1s", PAGE),
        hook_toml(&rx.url("hooks/all"), "false")
    );
    let t = Instant::now();
    let bridge = Bridge::start(&cfg);
    let db = bridge.dir.path().join("state").join("bridge.db");
    let mut samples = vec![];
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(bridge.rss_kib());
        if let Ok(Some(read)) = resources_read(&db)
            && read >= n as i64
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(1800) {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let quarter = samples.len() / 4;
    println!(
        "| backfill memory | sandbox | walk {n} resources matching no hook | peak RSS {:.1} MB; RSS at 25% {:.1} MB, at 100% {:.1} MB; {:.0} resources/s; db {:.0} MB |",
        bridge.peak_rss_kib() as f64 / 1024.0,
        samples.get(quarter).copied().unwrap_or(0) as f64 / 1024.0,
        samples.last().copied().unwrap_or(0) as f64 / 1024.0,
        n as f64 / secs,
        bridge.db_bytes() as f64 / 1e6
    );
    bridge.stop();
}

/// A bulk export of `n` resources (about 0.5 KB each: a few hundred MB of
/// NDJSON in files of 100,000 lines) matching no hook: the download is
/// streamed and committed in chunks, so RSS must stay flat whatever the size.
async fn export(n: usize) {
    let fhir = FhirSandbox::start(0).await.unwrap();
    preload(&fhir, "Observation", n).await;
    fhir.store.exports.set_file_lines(100_000);
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = format!(
        "state_dir = \"state\"\n{}strategy = \"bulk-export\"\n\n{}",
        source_toml("bench", &fhir.base_url(), &["Observation"], "1s", PAGE),
        hook_toml(&rx.url("hooks/all"), "false")
    );
    let t = Instant::now();
    let bridge = Bridge::start(&cfg);
    let mut samples = vec![];
    while fhir.store.exports.deletes() == 0 && t.elapsed() < Duration::from_secs(1800) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(bridge.rss_kib());
    }
    let secs = t.elapsed().as_secs_f64();
    let quarter = samples.len() / 4;
    println!(
        "| bulk-export memory | sandbox | one export of {n} resources in NDJSON files of 100,000 lines, matching no hook | peak RSS {:.1} MB; RSS at 25% {:.1} MB, at the end {:.1} MB; {:.0} resources/s; db {:.0} MB |",
        bridge.peak_rss_kib() as f64 / 1024.0,
        samples.get(quarter).copied().unwrap_or(0) as f64 / 1024.0,
        samples.last().copied().unwrap_or(0) as f64 / 1024.0,
        n as f64 / secs,
        bridge.db_bytes() as f64 / 1e6
    );
    bridge.stop();
}

fn resources_read(db: &Path) -> rusqlite::Result<Option<i64>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.query_row("SELECT sum(resources_read) FROM poll_target", [], |r| {
        r.get(0)
    })
}

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        println!(
            "fhir-bridge benchmark, {} cores ({cpu}), release build",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        println!();
        println!("| row | server | workload | result |");
        println!("|---|---|---|---|");
        if enabled("backlog") || enabled("raw") {
            backlog(env_or("BENCH_BACKLOG", 100_000)).await;
        }
        if enabled("burst") {
            burst(env_or("BENCH_BURST", 20_000)).await;
        }
        let (rate, seconds) = (
            env_or("BENCH_RATE", 50.0),
            env_or("BENCH_LATENCY_SECONDS", 20),
        );
        let clock_warmup = Duration::from_secs(env_or("BENCH_CLOCK_WARMUP", 15));
        if enabled("latency") {
            let server = latency::Server::sandbox(SandboxClock::default()).await;
            latency::latency(server, rate, seconds, Duration::from_secs(2)).await;
        }
        if enabled("latency-date") {
            let server = latency::Server::sandbox(DATE_ONLY).await;
            latency::latency(server, rate, seconds, clock_warmup).await;
        }
        if enabled("latency-medplum") {
            let server = latency::Server::medplum_date_only();
            latency::latency(server, rate, seconds, clock_warmup).await;
        }
        if enabled("fanout") {
            fanout_scale(
                env_or("BENCH_PATIENTS", 10_000),
                env_or("BENCH_FANOUT_SECONDS", 120),
            )
            .await;
        }
        if enabled("scale") {
            scale(
                env_or("BENCH_SOURCES", 1000),
                env_or("BENCH_SCALE_SECONDS", 130),
            )
            .await;
        }
        if enabled("telemetry") {
            telemetry::telemetry();
        }
        if enabled("tokens") {
            tokens::tokens(
                env_or("BENCH_TOKEN_SOURCES", 100),
                env_or("BENCH_TOKEN_SECONDS", 90),
            )
            .await;
        }
        if enabled("export") {
            export(env_or("BENCH_EXPORT", 1_000_000)).await;
        }
        if enabled("backfill") {
            backfill(env_or("BENCH_BACKFILL", 1_000_000)).await;
        }
    });
}
