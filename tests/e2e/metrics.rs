//! The admin listener against the real binary: `/metrics` counts what the
//! receiver saw (through an outage), `/healthz` and `/readyz` answer, and
//! JSON logs are one object per line.

use crate::common;

use common::scenarios::observation;
use common::{Bridge, FhirServer, config_for, hook, wait_for};
use fhir_bridge::sandbox::{Behaviour, Receiver};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A plain HTTP/1.1 GET (blocking: `wait_for` conditions are synchronous).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of one series, e.g. `fhir_bridge_polls_total{source="ehr",...}`
/// (labels in the order the bridge writes them); 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The admin listener's address, from the daemon's JSON log line.
fn admin_addr(bridge: &Bridge) -> Option<String> {
    bridge.logs().lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v["message"]
            .as_str()?
            .starts_with("admin listener on")
            .then(|| v["addr"].as_str().map(String::from))?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_receiver_got() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_failing(500);
    let retries = "retry_schedule = [\"1s\"]\nmax_attempts = 1000";
    let hooks = hook("all", &rx.url("hooks/all"), "true", retries)
        + &hook("none", &rx.url("hooks/none"), "false", "");
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(fhir.create(observation("N", "final")).await.0);
    }
    let config = config_for(&fhir, &["Observation"], "beginning", &hooks)
        + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let mut bridge = Bridge::start_with_env(&config, &[("FHIR_BRIDGE_LOG_FORMAT", "json")]);

    let mut addr = None;
    wait_for(20, "the admin listener's address in the log", || {
        addr = admin_addr(&bridge);
        addr.is_some()
    })
    .await;
    let addr = addr.unwrap_or_default();
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_string()));
    wait_for(20, "/readyz 200", || get(&addr, "/readyz").0 == 200).await;

    // The outage: every attempt fails with 500 and is retried.
    let scrape = || get(&addr, "/metrics").1;
    let failed = r#"fhir_bridge_deliveries_total{hook="all",outcome="failed",status_class="5xx"}"#;
    wait_for(30, "failed attempts counted", || {
        metric(&scrape(), failed) >= 10.0
    })
    .await;
    // The gauges are refreshed every 10 s.
    let pending = r#"fhir_bridge_outbox_pending{hook="all"}"#;
    wait_for(30, "five pending messages", || {
        metric(&scrape(), pending) == 5.0
    })
    .await;
    let text = scrape();
    assert!(metric(&text, r#"fhir_bridge_retries_scheduled_total{hook="all"}"#) >= 10.0);
    assert!(
        metric(
            &text,
            r#"fhir_bridge_oldest_pending_age_seconds{hook="all"}"#
        ) > 0.0
    );

    // Recovery, then more changes: three creates and an update.
    rx.set_failing(0);
    for _ in 0..3 {
        fhir.create(observation("N", "final")).await;
    }
    fhir.update(&ids[0], observation("HH", "final")).await;
    wait_for(60, "nine deliveries", || rx.count() >= 9).await;
    wait_for(30, "the outbox empty", || metric(&scrape(), pending) == 0.0).await;

    let text = scrape();
    let got = rx.received();
    let distinct: BTreeSet<_> = got.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(distinct.len(), 9, "{got:?}");
    let delivered =
        r#"fhir_bridge_deliveries_total{hook="all",outcome="delivered",status_class="2xx"}"#;
    assert_eq!(metric(&text, delivered), got.len() as f64, "{text}");
    let refused = rx
        .hits()
        .iter()
        .filter(|h| h.behaviour != Behaviour::Accept)
        .count();
    assert_eq!(metric(&text, failed), refused as f64, "{text}");
    assert_eq!(
        metric(&text, r#"fhir_bridge_retries_scheduled_total{hook="all"}"#),
        refused as f64
    );
    let target = r#"source="ehr",resource_type="Observation""#;
    let changes = |kind: &str| {
        metric(
            &text,
            &format!(r#"fhir_bridge_changes_detected_total{{{target},kind="{kind}"}}"#),
        )
    };
    assert_eq!((changes("create"), changes("update")), (8.0, 1.0), "{text}");
    let decision = |hook: &str, d: &str| {
        metric(
            &text,
            &format!(
                r#"fhir_bridge_filter_decisions_total{{hook="{hook}",resource_type="Observation",decision="{d}"}}"#
            ),
        )
    };
    assert_eq!((decision("all", "in"), decision("none", "out")), (9.0, 9.0));
    assert!(
        metric(
            &text,
            &format!(r#"fhir_bridge_polls_total{{{target},outcome="ok"}}"#)
        ) > 0.0
    );
    assert!(
        metric(
            &text,
            r#"fhir_bridge_poll_duration_seconds_count{source="ehr"}"#
        ) > 0.0
    );
    assert!(
        metric(
            &text,
            &format!("fhir_bridge_resources_fetched_total{{{target}}}")
        ) >= 9.0
    );
    for latency in ["delivery_latency", "end_to_end_latency"] {
        let count = format!(r#"fhir_bridge_{latency}_seconds_count{{hook="all"}}"#);
        assert_eq!(metric(&text, &count), 9.0, "{text}");
    }
    assert_eq!(
        metric(&text, r#"fhir_bridge_dead_letters{hook="all"}"#),
        0.0
    );
    assert!(text.contains(&format!("fhir_bridge_watermark_lag_seconds{{{target}}}")));
    assert!(text.contains("fhir_bridge_build_info{version="), "{text}");
    // Names and types only: no payload ever reaches the metrics.
    let resource = format!("Observation/{}", ids[0]);
    assert!(!text.contains("valueQuantity") && !text.contains(&resource));
    assert_eq!(get(&addr, "/readyz").0, 200);

    bridge.stop();
    // Every line the daemon wrote is one JSON object.
    for line in bridge.logs().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(bridge.logs().contains("delivery failed; will retry"));
}

/// A port already taken stops the daemon at start, naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_port_is_an_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let fhir = FhirServer::sandbox().await;
    let config = config_for(&fhir, &["Observation"], "now", "")
        + &format!("\n[admin]\nlisten = \"{addr}\"\n");
    let mut bridge = Bridge::start(&config);
    let mut status = None;
    wait_for(20, "the daemon to exit", || {
        status = bridge.exited();
        status.is_some()
    })
    .await;
    assert_eq!(status.and_then(|s| s.code()), Some(2));
    let logs = bridge.logs();
    assert!(logs.contains(&format!("admin listener {addr}")), "{logs}");
}
