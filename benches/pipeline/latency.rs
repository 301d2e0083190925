//! Write -> webhook latency at a 1 s poll interval, with writes at random
//! instants: on the sandbox (its ms clock, or only a second-precision `Date`
//! and a clock 1.3 s behind ours), and on Medplum's engine (the project's
//! third-party test server) telling time only by Node's second-precision `Date`.

use super::{Bridge, hook_toml, source_toml, wait_count};
use fhir_bridge::sandbox::{FhirSandbox, Receiver, SandboxClock, generator};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub enum Server {
    Sandbox(FhirSandbox, SandboxClock),
    /// `node tests/fhir-server/server.mjs --date-only` (after `npm ci` there).
    Medplum {
        child: Child,
        base: String,
        http: reqwest::Client,
    },
}

impl Server {
    pub async fn sandbox(clock: SandboxClock) -> Server {
        let fhir = FhirSandbox::start(0).await.unwrap();
        fhir.store.set_clock(clock);
        Server::Sandbox(fhir, clock)
    }

    pub fn medplum_date_only() -> Server {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fhir-server");
        let mut child = Command::new("node")
            .args(["server.mjs", "--port", "0", "--date-only"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (and `npm ci --prefix tests/fhir-server`)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("LISTENING ") => break l[10..].trim().to_string(),
                Some(Ok(_)) => {}
                _ => panic!("the Medplum test server did not start"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server::Medplum {
            child,
            base: format!("http://127.0.0.1:{port}/fhir"),
            http: reqwest::Client::new(),
        }
    }

    fn base_url(&self) -> String {
        match self {
            Server::Sandbox(fhir, _) => fhir.base_url(),
            Server::Medplum { base, .. } => base.clone(),
        }
    }

    async fn write(&self, n: u64, rng: &mut fastrand::Rng) {
        let resource = generator::observation(n, rng);
        match self {
            Server::Sandbox(fhir, _) => {
                fhir.store.upsert("Observation", None, resource);
            }
            Server::Medplum { base, http, .. } => {
                let resp = http
                    .post(format!("{base}/Observation"))
                    .header("content-type", "application/fhir+json")
                    .body(resource.to_string())
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        }
    }

    /// The server's clock minus ours (resources are stamped on its clock).
    fn offset(&self) -> chrono::Duration {
        match self {
            Server::Sandbox(_, clock) => chrono::Duration::milliseconds(clock.offset_ms),
            Server::Medplum { .. } => chrono::Duration::zero(),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Server::Sandbox(_, c) if c.date_only => {
                "sandbox, `Date` header only (whole seconds), clock 1.3 s behind"
            }
            Server::Sandbox(..) => "sandbox",
            Server::Medplum { .. } => {
                "Medplum's engine, `Date` header only (Node's, whole seconds)"
            }
        }
    }

    fn date_only(&self) -> bool {
        match self {
            Server::Sandbox(_, c) => c.date_only,
            Server::Medplum { .. } => true,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Medplum { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The bridge gets `warmup` to learn the server's clock before the writes.
pub async fn latency(server: Server, rate: f64, seconds: u64, warmup: Duration) {
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = format!(
        "state_dir = \"state\"\n{}{}",
        source_toml("bench", &server.base_url(), &["Observation"], "1s", 100),
        hook_toml(&rx.url("hooks/all"), "true")
    );
    let bridge = Bridge::start(&cfg);
    tokio::time::sleep(warmup).await;
    let mut rng = fastrand::Rng::with_seed(9);
    // Writes at random instants (a Poisson process at `rate`), as clinical
    // writes come: on a fixed grid, the result would depend on the grid's
    // phase against the polls (up to +/-50 ms on the median at 10/s).
    let t = Instant::now();
    let mut next = t;
    let mut written = 0usize;
    while t.elapsed() < Duration::from_secs(seconds) {
        next += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / rate);
        tokio::time::sleep_until(next.into()).await;
        server.write(written as u64, &mut rng).await;
        written += 1;
    }
    wait_count(&rx, written, Duration::from_secs(30)).await;
    bridge.stop();
    // lastUpdated is on the server's clock: so is the arrival, here.
    let offset = server.offset();
    let mut lat: Vec<f64> = rx
        .received()
        .iter()
        .filter_map(|r| {
            let lu = chrono::DateTime::parse_from_rfc3339(r.body["lastUpdated"].as_str()?).ok()?;
            Some((r.received_at + offset - lu.to_utc()).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let after = match server.date_only() {
        true => format!(", after {} s learning the clock", warmup.as_secs()),
        false => String::new(),
    };
    println!(
        "| latency (write -> webhook) | {} | {written} writes at random instants, {rate}/s on average, 1 s poll interval{after} | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p50 <= 550, p99 <= 1250) |",
        server.describe(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}
