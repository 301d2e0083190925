//! Nothing lost, ever: fault injection against the real binary, a real
//! third-party FHIR server (Medplum's engine) and a real receiver.
//!
//! Every scenario runs a writer (creates and updates at a set rate, logged),
//! the bridge under some fault, and the checker, which prints
//! `expected / delivered / missing / duplicates (same id) / duplicates (different id) / out-of-order`
//! and fails on anything missing, any duplicate under a different message_id,
//! and any out-of-order version. Seeds are fixed (override with CHAOS_SEED) so a
//! failing run replays.

mod common;

use common::checker::{self, Report, check};
use common::proxy::{ALL_FAULTS, ChaosProxy, Plan};
use common::writer::{Write, Writer};
use common::{Bridge, FhirServer, wait_for};
use fhir_bridge::sandbox::{Behaviour, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CRITICAL: &str = r#"any(.interpretation[]?.coding[]?; .code == "HH" or .code == "LL")"#;

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261121)
}

struct SourceSpec<'a> {
    name: &'a str,
    base: String,
    overlap: &'a str,
    page_size: u32,
}

fn source(name: &str, base: String) -> SourceSpec<'_> {
    SourceSpec {
        name,
        base,
        overlap: "2s",
        page_size: 20,
    }
}

fn config(sources: &[SourceSpec], hooks: &[(&str, String, &str, &str)]) -> String {
    let mut t = String::from("state_dir = \"state\"\n");
    for s in sources {
        t += &format!(
            "[[source]]\nname = \"{}\"\nbase_url = \"{}\"\nresources = [\"Observation\"]\nevery = \"300ms\"\npage_size = {}\noverlap = \"{}\"\nstart = \"beginning\"\ntimeout = \"2s\"\n\n",
            s.name, s.base, s.page_size, s.overlap
        );
    }
    for (name, url, filter, extra) in hooks {
        t += &format!(
            "[[hook]]\nname = \"{name}\"\nurl = \"{url}\"\nfilter = '{filter}'\n{extra}\n"
        );
        // Defaults for these tests, unless the hook sets its own: the
        // quickest retries the config allows (1 s is the floor).
        if !extra.contains("retry_schedule") {
            t += "retry_schedule = [\"1s\"]\n";
        }
        if !extra.contains("max_attempts") {
            t += "max_attempts = 1000\n";
        }
        t += "\n";
    }
    t
}

/// Waits until the hook has every expected change (all, or only the critical ones).
async fn converge(
    rx: &Receiver,
    writes: &[Write],
    path: &str,
    critical_only: bool,
    secs: u64,
) -> Report {
    checker::converge(
        rx,
        writes,
        path,
        move |w: &Write| !critical_only || w.critical,
        secs,
    )
    .await
}

fn medplum(paging: &str) -> Arc<FhirServer> {
    Arc::new(FhirServer::medplum(paging))
}

/// 1. Crash: kill -9 at random moments while writes and deliveries flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_kill9_at_random_moments() {
    let kills: usize = std::env::var("CHAOS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let fhir = medplum("cursor");
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &[source("ehr", fhir.base_url())],
        &[
            ("all", rx.url("hooks/all"), "true", "concurrency = 4"),
            ("critical", rx.url("hooks/critical"), CRITICAL, ""),
        ],
    );
    let writer = Writer::start(fhir.clone(), 40.0, seed());
    let mut bridge = Bridge::start(&cfg);
    let mut rng = fastrand::Rng::with_seed(seed());
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.u64(150..900))).await;
        bridge.kill9();
        bridge.restart();
    }
    let writes = writer.stop().await;
    let all = converge(&rx, &writes, "/hooks/all", false, 60).await;
    let crit = converge(&rx, &writes, "/hooks/critical", true, 30).await;
    println!("crash: {kills} kill -9s survived, {} writes", writes.len());
    all.assert_ok("crash/all");
    crit.assert_ok("crash/critical");
    bridge.stop();
}

/// 2. Receiver outage: 500 for 60 s, then healthy; retry timing and Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outage_sixty_seconds() {
    let outage: u64 = std::env::var("CHAOS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let fhir = medplum("cursor");
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_behaviour_for("/hooks/all", Behaviour::Status(500));
    rx.set_behaviour_for(
        "/hooks/polite",
        Behaviour::RetryAfter {
            status: 429,
            secs: 3,
        },
    );
    let cfg = config(
        &[source("ehr", fhir.base_url())],
        &[
            (
                "all",
                rx.url("hooks/all"),
                "true",
                "retry_schedule = [\"1s\", \"2s\", \"5s\"]",
            ),
            (
                "polite",
                rx.url("hooks/polite"),
                "true",
                "retry_schedule = [\"1s\"]",
            ),
        ],
    );
    let mut bridge = Bridge::start(&cfg);
    let writer = Writer::start(fhir.clone(), 10.0, seed());
    tokio::time::sleep(Duration::from_secs(outage)).await;
    rx.set_behaviour_for("/hooks/all", Behaviour::Accept);
    rx.set_behaviour_for("/hooks/polite", Behaviour::Accept);
    let writes = writer.stop().await;
    converge(&rx, &writes, "/hooks/all", false, 60)
        .await
        .assert_ok("outage/all");
    converge(&rx, &writes, "/hooks/polite", false, 60)
        .await
        .assert_ok("outage/polite");

    // Retry timing: gaps between attempts of one message follow 1s, 2s, 5s, 5s... (±20%).
    let hits = rx.hits();
    let first = hits
        .iter()
        .find(|h| h.path == "/hooks/all")
        .and_then(|h| h.webhook_id.clone())
        .unwrap();
    let times: Vec<Instant> = hits
        .iter()
        .filter(|h| h.webhook_id.as_ref() == Some(&first) && h.path == "/hooks/all")
        .map(|h| h.at)
        .collect();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!(
        "outage: retry gaps of one message (s): {:?}",
        gaps.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>()
    );
    for (i, expect) in [1.0, 2.0, 5.0, 5.0]
        .iter()
        .enumerate()
        .take(gaps.len().saturating_sub(1))
    {
        assert!(
            gaps[i] >= expect * 0.8 - 0.05 && gaps[i] <= expect * 1.2 + 1.2,
            "gap {i} = {} for schedule {expect}",
            gaps[i]
        );
    }
    // Retry-After: 3 s honoured although the schedule says 1 s (at most 1.2 s jittered).
    let polite: Vec<Instant> = {
        let id = hits
            .iter()
            .find(|h| h.path == "/hooks/polite")
            .and_then(|h| h.webhook_id.clone())
            .unwrap();
        hits.iter()
            .filter(|h| h.webhook_id.as_ref() == Some(&id) && h.path == "/hooks/polite")
            .map(|h| h.at)
            .collect()
    };
    for w in polite.windows(2).take(3) {
        let gap = (w[1] - w[0]).as_secs_f64();
        assert!(
            gap >= 2.9,
            "Retry-After 3 s not honoured: retried after {gap:.2}s"
        );
    }
    bridge.stop();
}

/// 4. Dead letters and 410 Gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_redrive_and_gone() {
    let fhir = medplum("cursor");
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_behaviour_for("/hooks/broken", Behaviour::Status(500));
    rx.set_behaviour_for("/hooks/gone", Behaviour::Status(410));
    let cfg = config(
        &[source("ehr", fhir.base_url())],
        &[
            (
                "broken",
                rx.url("hooks/broken"),
                "true",
                "max_attempts = 3\nretry_schedule = [\"1s\"]",
            ),
            ("gone", rx.url("hooks/gone"), "true", ""),
        ],
    );
    let mut bridge = Bridge::start(&cfg);
    let writer = Writer::start(fhir.clone(), 20.0, seed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = writer.stop().await;

    let dlq_count = |b: &Bridge| -> usize {
        let out = b.cli(&["dlq", "list", "--hook", "broken", "--json"]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .map(|v| v.len())
            .unwrap_or(0)
    };
    let distinct_final = check(&writes, &[], "/hooks/broken", |_| true).expected;
    // Every message dead, none still pending: a version still retrying when
    // the receiver recovers would overtake the older ones waiting in the
    // DLQ (redrive is the operator's, later), and arrive out of order.
    wait_for(60, "the broken hook's messages all in the DLQ", || {
        let st = bridge.status_json();
        let pending = st["hooks"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["name"] == "broken"))
            .map(|h| h["pending"].as_i64().unwrap_or(-1))
            .unwrap_or(-1);
        pending == 0 && dlq_count(&bridge) >= distinct_final
    })
    .await;
    let dead: Vec<serde_json::Value> = serde_json::from_slice(
        &bridge
            .cli(&["dlq", "list", "--hook", "broken", "--json"])
            .stdout,
    )
    .unwrap();
    assert!(dead.iter().all(|d| d["attempts"] == 3));

    let st = bridge.status_json();
    let gone = st["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "gone")
        .unwrap()
        .clone();
    assert_eq!(gone["disabled"], true, "{gone:#}");
    assert_eq!(st["healthy"], false);
    assert!(String::from_utf8_lossy(&bridge.cli(&["status"]).stdout).contains("DISABLED"));
    let gone_hits = rx.hits().iter().filter(|h| h.path == "/hooks/gone").count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = rx.hits().iter().filter(|h| h.path == "/hooks/gone").count();
    assert!(
        later <= gone_hits + 4,
        "a disabled hook keeps being called: {gone_hits} -> {later}"
    );

    // The fixes: the receiver recovers, the operator redrives and re-enables.
    rx.set_behaviour(Behaviour::Accept);
    rx.set_behaviour_for("/hooks/broken", Behaviour::Accept);
    rx.set_behaviour_for("/hooks/gone", Behaviour::Accept);
    assert!(
        bridge
            .cli(&["dlq", "redrive", "--hook", "broken", "--all"])
            .status
            .success()
    );
    let out = bridge.cli(&["hook", "enable", "gone"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enabled"),
        "{out:?}"
    );
    let broken = converge(&rx, &writes, "/hooks/broken", false, 30).await;
    broken.assert_ok("dlq/broken");
    let dead_ids: std::collections::BTreeSet<_> = dead
        .iter()
        .map(|d| d["message_id"].as_str().unwrap().to_string())
        .collect();
    let got: std::collections::BTreeSet<_> = rx
        .received()
        .iter()
        .filter(|r| r.path == "/hooks/broken")
        .map(|r| r.message_id.clone())
        .collect();
    assert!(
        dead_ids.is_subset(&got),
        "redrive keeps original message_ids"
    );
    converge(&rx, &writes, "/hooks/gone", false, 30)
        .await
        .assert_ok("dlq/gone");
    assert_eq!(bridge.status_json()["healthy"], true);
    bridge.stop();
}

/// 5. EHR faults, one at a time then mixed; another source keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehr_faults_one_by_one_then_mixed() {
    let fhir = medplum("cursor");
    let other = medplum("cursor");
    let proxy = ChaosProxy::start(&fhir.base_url(), seed()).await;
    let rx = Receiver::start(0, None).await.unwrap();
    // No overlap on the faulty source: only the watermark rule protects it.
    let faulty = SourceSpec {
        overlap: "0s",
        page_size: 5,
        ..source("faulty", proxy.base_url())
    };
    let cfg = config(
        &[faulty, source("steady", other.base_url())],
        &[
            (
                "from-faulty",
                rx.url("hooks/from-faulty"),
                "true",
                "sources = [\"faulty\"]",
            ),
            (
                "from-steady",
                rx.url("hooks/from-steady"),
                "true",
                "sources = [\"steady\"]",
            ),
        ],
    );
    // The admin listener too: its counters are checked against the receiver.
    let cfg = format!("{cfg}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let mut bridge = Bridge::start(&cfg);
    let w1 = Writer::start(fhir.clone(), 15.0, seed());
    let w2 = Writer::start(other.clone(), 5.0, seed() + 1);
    let mut errors_seen = 0;
    for fault in ALL_FAULTS {
        proxy.set_plan(Plan::Mix {
            p: 0.6,
            faults: vec![fault],
        });
        let steady_before = rx
            .received()
            .iter()
            .filter(|r| r.path == "/hooks/from-steady")
            .count();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            let st = bridge.status_json();
            if st["sources"][0]["targets"][0]["last_outcome"] == "error" {
                errors_seen += 1;
                assert!(
                    !st["sources"][0]["targets"][0]["last_error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("HH")
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let steady_after = rx
            .received()
            .iter()
            .filter(|r| r.path == "/hooks/from-steady")
            .count();
        assert!(
            steady_after > steady_before,
            "the steady source stalled during {fault:?}"
        );
    }
    proxy.set_plan(Plan::Mix {
        p: 0.3,
        faults: ALL_FAULTS.to_vec(),
    });
    tokio::time::sleep(Duration::from_secs(15)).await;
    proxy.set_plan(Plan::Off);
    let (writes1, writes2) = (w1.stop().await, w2.stop().await);
    let faulty_report = converge(&rx, &writes1, "/hooks/from-faulty", false, 60).await;
    let steady_report = converge(&rx, &writes2, "/hooks/from-steady", false, 30).await;
    println!(
        "ehr faults: {} injected over {} requests: {:?}; error status seen {errors_seen} times",
        proxy.total_injected(),
        proxy.requests(),
        proxy.injected()
    );
    faulty_report.assert_ok("faults/faulty");
    steady_report.assert_ok("faults/steady");
    assert!(errors_seen > 0, "the source's status never showed an error");
    assert!(
        faulty_report.duplicates_same_id == 0,
        "no crash, so no duplicate deliveries"
    );
    // /metrics, scraped after the chaos: every POST the receiver took is a
    // delivered 2xx, and the injected faults show as failed polls.
    let metrics = scrape_metrics(&bridge);
    for hook in ["from-faulty", "from-steady"] {
        let got = rx
            .received()
            .iter()
            .filter(|r| r.path == format!("/hooks/{hook}"))
            .count() as f64;
        let counted = series_sum(
            &metrics,
            "fhir_bridge_deliveries_total",
            &[&format!("hook=\"{hook}\""), "outcome=\"delivered\""],
        );
        assert_eq!(
            counted, got,
            "{hook}: /metrics says {counted}, the receiver got {got}"
        );
    }
    let failed = series_sum(&metrics, "fhir_bridge_polls_total", &["source=\"faulty\""])
        - series_sum(
            &metrics,
            "fhir_bridge_polls_total",
            &["source=\"faulty\"", "outcome=\"ok\""],
        );
    assert!(failed > 0.0, "no failed poll counted for the faulty source");
    println!("ehr faults: /metrics counted {failed} failed polls of the faulty source");
    bridge.stop();
}

/// GET /metrics from the admin listener whose address the daemon logged.
fn scrape_metrics(bridge: &Bridge) -> String {
    use std::io::{Read, Write as _};
    let logs = bridge.logs();
    let addr = logs
        .split("admin listener on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the admin listener's address in the log")
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to /metrics");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The sum of every series of `name` whose labels include all of `labels`.
fn series_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 6. Ties and drift: offset paging (which skips under concurrent writes), tiny
/// pages, fast writes that tie on the millisecond, polls that page while writes land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_and_page_drift() {
    let fhir = medplum("offset");
    let rx = Receiver::start(0, None).await.unwrap();
    let spec = SourceSpec {
        overlap: "3s",
        page_size: 3,
        ..source("ehr", fhir.base_url())
    };
    let cfg = config(
        &[spec],
        &[("all", rx.url("hooks/all"), "true", "concurrency = 8")],
    );
    let mut bridge = Bridge::start(&cfg);
    let writers: Vec<Writer> = (0..4)
        .map(|i| Writer::start(fhir.clone(), 50.0, seed() + i))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut writes = vec![];
    for w in writers {
        writes.extend(w.stop().await);
    }
    // Four writers share ids only by chance; order the log by server time.
    writes.sort_by(|a, b| a.last_updated.cmp(&b.last_updated));
    let ties = writes
        .windows(2)
        .filter(|w| w[0].last_updated == w[1].last_updated)
        .count();
    let r = converge(&rx, &writes, "/hooks/all", false, 60).await;
    println!(
        "ties: {} writes, {ties} sharing a millisecond with the previous one",
        writes.len()
    );
    r.assert_ok("ties-drift/all");
    assert_eq!(
        r.duplicates_same_id, 0,
        "no crash, so no duplicate deliveries"
    );
    bridge.stop();
}

/// 7. Restart storm: SIGTERM and restart every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm() {
    let fhir = medplum("cursor");
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &[source("ehr", fhir.base_url())],
        &[("all", rx.url("hooks/all"), "true", "")],
    );
    let mut bridge = Bridge::start(&cfg);
    let writer = Writer::start(fhir.clone(), 30.0, seed());
    let restarts = 8;
    for _ in 0..restarts {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        bridge.stop();
        bridge.restart();
    }
    let writes = writer.stop().await;
    let r = converge(&rx, &writes, "/hooks/all", false, 60).await;
    println!("restart storm: {restarts} SIGTERM restarts");
    r.assert_ok("restart-storm/all");
    bridge.stop();
}
