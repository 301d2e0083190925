use super::auth::{Owner, TokenRefreshFailed, TokenRefreshed};
use super::delivery::{DeadLettered, DeliveryAttempted, RetryScheduled, status_class};
use super::source::{ChangesDetected, FilterDecision, FilterError, PollCompleted, poll_outcome};
use super::*;
use crate::delivery::Attempt;
use crate::source::PollError;
use crate::source::client::FetchError;
use std::collections::BTreeSet;
use std::time::Duration;

/// Runs `f` with a fresh recorder of the bridge's configuration and returns
/// the Prometheus text it renders.
fn render(f: impl FnOnce()) -> String {
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        f()
    });
    handle.render()
}

/// The value of the series `series` (name and labels exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn names_follow_prometheus_conventions() {
    let unique: BTreeSet<_> = ALL.iter().collect();
    assert_eq!(unique.len(), ALL.len(), "a name is listed twice");
    for name in ALL {
        assert!(name.starts_with("fhir_bridge_"), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
    }
    for counter in [
        source::POLLS,
        source::PAGES,
        source::RESOURCES,
        source::CHANGES,
        source::FILTER_DECISIONS,
        source::FILTER_ERRORS,
        delivery::DELIVERIES,
        delivery::RETRIES,
        delivery::DEAD_LETTERED,
        auth::TOKEN_REFRESHES,
    ] {
        assert!(counter.ends_with("_total"), "{counter}");
    }
    for seconds in [
        source::POLL_DURATION,
        delivery::ATTEMPT_DURATION,
        delivery::DELIVERY_LATENCY,
        delivery::END_TO_END_LATENCY,
        gauges::OLDEST_PENDING_AGE,
        gauges::WATERMARK_LAG,
        gauges::START_TIME,
    ] {
        assert!(seconds.ends_with("_seconds"), "{seconds}");
    }
}

#[test]
fn a_poll_counts_its_outcome_pages_and_resources() {
    let failed = PollError::Fetch {
        resource_type: "Observation".into(),
        page: 2,
        error: FetchError::Timeout,
    };
    let text = render(|| {
        for outcome in [Ok(3), Ok(0), Err(&failed)] {
            PollCompleted {
                source: "epic",
                resource_type: "Observation",
                outcome,
                duration: Duration::from_millis(120),
                pages: 2,
                resources: 10,
            }
            .emit();
        }
    });
    let labels = r#"source="epic",resource_type="Observation""#;
    assert_eq!(
        value(
            &text,
            &format!("{}{{{labels},outcome=\"ok\"}}", source::POLLS)
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("{}{{{labels},outcome=\"timeout\"}}", source::POLLS)
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, &format!("{}{{{labels}}}", source::PAGES)),
        Some(6.0)
    );
    assert_eq!(
        value(&text, &format!("{}{{{labels}}}", source::RESOURCES)),
        Some(30.0)
    );
    // A true histogram (buckets), not a summary.
    assert_eq!(
        value(
            &text,
            &format!(
                "{}_bucket{{source=\"epic\",le=\"0.25\"}}",
                source::POLL_DURATION
            )
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("{}_count{{source=\"epic\"}}", source::POLL_DURATION)
        ),
        Some(3.0)
    );
    assert!(
        text.contains(&format!("# HELP {} ", source::POLLS)),
        "{text}"
    );
}

#[test]
fn poll_failures_have_a_few_outcomes() {
    let fetch = |error| PollError::Fetch {
        resource_type: "Observation".into(),
        page: 1,
        error,
    };
    let status = |s| FetchError::Status {
        status: s,
        retry_after: None,
    };
    assert_eq!(poll_outcome(&fetch(status(429))), "throttled");
    assert_eq!(poll_outcome(&fetch(status(500))), "http_error");
    assert_eq!(
        poll_outcome(&fetch(FetchError::Connect("refused".into()))),
        "connection"
    );
    assert_eq!(
        poll_outcome(&fetch(FetchError::TooLarge { limit: 1024 })),
        "invalid_response"
    );
    let cap = PollError::PageCap {
        resource_type: "Observation".into(),
        pages: 1000,
    };
    assert_eq!(poll_outcome(&cap), "paging");
}

#[test]
fn changes_and_filter_decisions_by_kind() {
    let e = crate::filter::FilterError::Input("unparseable resource".into());
    let text = render(|| {
        ChangesDetected {
            source: "epic",
            resource_type: "Encounter",
            created: 4,
            updated: 1,
            deleted: 2,
        }
        .emit();
        FilterDecision {
            hook: "care",
            resource_type: "Encounter",
            kept: 2,
            dropped: 3,
        }
        .emit();
        FilterError {
            hook: "care",
            resource_type: "Encounter",
            resource_id: "e1",
            error: &e,
        }
        .emit();
    });
    let c = source::CHANGES;
    assert_eq!(
        value(
            &text,
            &format!(r#"{c}{{source="epic",resource_type="Encounter",kind="create"}}"#)
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"{c}{{source="epic",resource_type="Encounter",kind="update"}}"#)
        ),
        Some(1.0)
    );
    let f = source::FILTER_DECISIONS;
    assert_eq!(
        value(
            &text,
            &format!(r#"{f}{{hook="care",resource_type="Encounter",decision="out"}}"#)
        ),
        Some(3.0)
    );
    let fe = source::FILTER_ERRORS;
    assert_eq!(
        value(
            &text,
            &format!(r#"{fe}{{hook="care",resource_type="Encounter"}}"#)
        ),
        Some(1.0)
    );
}

#[test]
fn deliveries_by_outcome_and_status_class_with_latencies() {
    let now = chrono::Utc::now().timestamp_millis();
    let delivered = Attempt::Delivered { status: 204 };
    let failed = Attempt::Failed {
        status: Some(503),
        error: "HTTP 503".into(),
        retry_after: None,
    };
    let text = render(|| {
        for (attempt, attempts) in [(&failed, 1), (&delivered, 2)] {
            DeliveryAttempted {
                hook: "care",
                message_id: "m",
                resource_type: "Observation",
                resource_id: "o1",
                attempt,
                attempts,
                duration: Duration::from_millis(30),
                created_at_ms: now - 2_000,
                last_updated: chrono::DateTime::from_timestamp_millis(now - 7_000),
            }
            .emit();
        }
        RetryScheduled {
            hook: "care",
            message_id: "m",
            status: Some(503),
            attempts: 1,
            error: "HTTP 503",
            delay: Duration::from_secs(5),
        }
        .emit();
        DeadLettered {
            hook: "care",
            message_id: "n",
            status: None,
            attempts: 6,
            error: "timed out after 15s",
        }
        .emit();
    });
    let d = delivery::DELIVERIES;
    assert_eq!(
        value(
            &text,
            &format!(r#"{d}{{hook="care",outcome="delivered",status_class="2xx"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"{d}{{hook="care",outcome="failed",status_class="5xx"}}"#)
        ),
        Some(1.0)
    );
    // Two seconds in the outbox, seven since lastUpdated.
    let lat = delivery::DELIVERY_LATENCY;
    assert_eq!(
        value(&text, &format!(r#"{lat}_bucket{{hook="care",le="1"}}"#)),
        Some(0.0)
    );
    assert_eq!(
        value(&text, &format!(r#"{lat}_bucket{{hook="care",le="2.5"}}"#)),
        Some(1.0)
    );
    let e2e = delivery::END_TO_END_LATENCY;
    assert_eq!(
        value(&text, &format!(r#"{e2e}_bucket{{hook="care",le="5"}}"#)),
        Some(0.0)
    );
    assert_eq!(
        value(&text, &format!(r#"{e2e}_bucket{{hook="care",le="10"}}"#)),
        Some(1.0)
    );
    assert_eq!(
        value(&text, &format!(r#"{}{{hook="care"}}"#, delivery::RETRIES)),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"{}{{hook="care"}}"#, delivery::DEAD_LETTERED)
        ),
        Some(1.0)
    );
    // Attempts per finished message: 2 (delivered) and 6 (dead).
    let apm = delivery::ATTEMPTS_PER_MESSAGE;
    assert_eq!(
        value(&text, &format!(r#"{apm}_sum{{hook="care"}}"#)),
        Some(8.0)
    );
}

#[test]
fn filter_errors_never_quote_the_resource() {
    use crate::filter::FilterError as E;
    let runtime = E::Runtime(r#"cannot use "Jane Doe" as number"#.into());
    assert!(!source::loggable(&runtime).contains("Jane"));
    assert!(!source::loggable(&E::Input("at line 1: \"Jane".into())).contains("Jane"));
    let f = crate::filter::Filter::compile("def f: f; f").unwrap();
    let budget = f
        .matches(&crate::filter::parse_resource("{}").unwrap())
        .unwrap_err();
    assert!(
        source::loggable(&budget).contains("exceeded its budget"),
        "{budget}"
    );
}

#[test]
fn status_classes() {
    assert_eq!(status_class(Some(200), ""), "2xx");
    assert_eq!(status_class(Some(301), ""), "3xx");
    assert_eq!(status_class(Some(410), ""), "4xx");
    assert_eq!(status_class(Some(502), ""), "5xx");
    assert_eq!(status_class(None, "timed out after 15s"), "timeout");
    assert_eq!(status_class(None, "connection failed: refused"), "network");
    assert_eq!(
        status_class(None, "token endpoint: HTTP 400 invalid_client"),
        "auth"
    );
}

#[test]
fn token_refreshes_by_owner_and_outcome() {
    let owner = Owner::source("epic");
    let err = crate::auth::AuthError::NotAToken;
    let text = render(|| {
        TokenRefreshed {
            owner: &owner,
            lifetime: Duration::from_secs(300),
        }
        .emit();
        TokenRefreshFailed {
            owner: &owner,
            error: &err,
        }
        .emit();
    });
    let t = auth::TOKEN_REFRESHES;
    assert_eq!(
        value(
            &text,
            &format!(r#"{t}{{owner_kind="source",owner="epic",outcome="ok"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"{t}{{owner_kind="source",owner="epic",outcome="error"}}"#)
        ),
        Some(1.0)
    );
}

#[test]
fn gauges_from_a_state_snapshot() {
    use crate::state::{GaugeSnapshot, HookDepth, TargetMark};
    let config = crate::config::Config::from_str(
        r#"
[[source]]
name = "epic"
base_url = "http://127.0.0.1:1/fhir"
resources = ["Observation", "Encounter"]
[[source]]
name = "cerner"
base_url = "http://127.0.0.1:3/fhir"
resources = ["Observation"]
patients = { group = "Group/1" }
[[hook]]
name = "care"
url = "http://127.0.0.1:2/hook"
"#,
        std::path::Path::new("bridges.toml"),
    )
    .unwrap();
    let now = crate::state::now_ms();
    let snap = GaugeSnapshot {
        hooks: vec![HookDepth {
            hook: "care".into(),
            pending: 7,
            dead: 2,
            oldest_pending_at_ms: Some(now - 90_000),
            disabled: true,
        }],
        targets: vec![
            TargetMark {
                source: "epic".into(),
                resource_type: "Observation".into(),
                watermark: Some(crate::fhir::format_instant(
                    chrono::Utc::now() - chrono::Duration::seconds(600),
                )),
                per_patient: false,
            },
            // Not configured any more: no series.
            TargetMark {
                source: "gone".into(),
                resource_type: "Observation".into(),
                watermark: Some("2020-01-01T00:00:00.000Z".into()),
                per_patient: false,
            },
            // A fan-out source: its patient furthest behind, not the
            // population-wide row left from before it fanned out.
            TargetMark {
                source: "cerner".into(),
                resource_type: "Observation".into(),
                watermark: Some("2020-01-01T00:00:00.000Z".into()),
                per_patient: false,
            },
            TargetMark {
                source: "cerner".into(),
                resource_type: "Observation".into(),
                watermark: Some(crate::fhir::format_instant(
                    chrono::Utc::now() - chrono::Duration::seconds(120),
                )),
                per_patient: true,
            },
        ],
    };
    let text = render(|| {
        gauges::Gauges::new(&config, &Default::default()).apply(&snap);
    });
    let h = r#"{hook="care"}"#;
    assert_eq!(
        value(&text, &format!("{}{h}", gauges::OUTBOX_PENDING)),
        Some(7.0)
    );
    assert_eq!(
        value(&text, &format!("{}{h}", gauges::DEAD_LETTERS)),
        Some(2.0)
    );
    assert_eq!(
        value(&text, &format!("{}{h}", gauges::HOOK_DISABLED)),
        Some(1.0)
    );
    let age = value(&text, &format!("{}{h}", gauges::OLDEST_PENDING_AGE)).unwrap();
    assert!((90.0..95.0).contains(&age), "{age}");
    let lag = value(
        &text,
        &format!(
            r#"{}{{source="epic",resource_type="Observation"}}"#,
            gauges::WATERMARK_LAG
        ),
    )
    .unwrap();
    assert!((600.0..605.0).contains(&lag), "{lag}");
    let lag = value(
        &text,
        &format!(
            r#"{}{{source="cerner",resource_type="Observation"}}"#,
            gauges::WATERMARK_LAG
        ),
    )
    .unwrap();
    assert!((120.0..125.0).contains(&lag), "{lag}");
    assert!(!text.contains(r#"source="gone""#), "{text}");
}

/// Metric names a dashboard or rules file mentions: `fhir_bridge_...` words,
/// without a histogram's `_bucket`/`_sum`/`_count`.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("fhir_bridge_") {
        let word: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + word.len()..];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| word.strip_suffix(s).filter(|n| ALL.contains(n)))
            .unwrap_or(&word);
        out.insert(name.to_string());
    }
    out
}

fn contrib(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_dashboard_uses_only_metrics_the_bridge_defines() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&contrib("contrib/grafana/fhir-bridge.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let names = mentioned(&exprs.join("\n"));
    for name in &names {
        assert!(
            ALL.contains(&name.as_str()),
            "the dashboard uses unknown {name}"
        );
    }
    for name in [source::POLLS, delivery::DELIVERIES, gauges::OUTBOX_PENDING] {
        assert!(names.contains(name), "the dashboard shows no {name}");
    }
}

#[test]
fn the_alert_rules_use_only_metrics_the_bridge_defines() {
    let names = mentioned(&contrib("contrib/prometheus/alerts.yml"));
    assert!(!names.is_empty());
    for name in &names {
        assert!(
            ALL.contains(&name.as_str()),
            "the alert rules use unknown {name}"
        );
    }
}

/// One gauge refresh at 10,000 targets (the state read and the gauge
/// updates) sees every target; its time is printed for the record (the
/// benchmark's `telemetry` row measures it in a release build).
#[tokio::test]
async fn a_gauge_refresh_covers_ten_thousand_targets() {
    let (_d, store) = crate::state::test_util::temp_store();
    let mut toml = String::from("[[hook]]\nname = \"h\"\nurl = \"http://127.0.0.1:1/\"\n");
    for s in 0..1000 {
        toml += &format!(
            "[[source]]\nname = \"s{s}\"\nbase_url = \"http://127.0.0.1:1/fhir\"\nresources = [{}]\n",
            (0..10)
                .map(|t| format!("\"T{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for t in 0..10 {
            let w = Some("2026-01-01T00:00:00.000Z".to_string());
            store
                .init_target(
                    &crate::state::TargetKey::population(&format!("s{s}"), &format!("T{t}")),
                    w,
                    None,
                )
                .await
                .unwrap();
        }
    }
    let config = crate::config::Config::from_str(&toml, std::path::Path::new("b.toml")).unwrap();
    let recorder = builder().build_recorder();
    let gauges = metrics::with_local_recorder(&recorder, || {
        gauges::Gauges::new(&config, &Default::default())
    });
    let started = std::time::Instant::now();
    let snap = store.gauge_snapshot(vec!["h".into()]).await.unwrap();
    let read = started.elapsed();
    let started = std::time::Instant::now();
    gauges.apply(&snap);
    println!(
        "state read: {read:?}; gauge updates: {:?}; {} targets",
        started.elapsed(),
        snap.targets.len()
    );
    assert_eq!(snap.targets.len(), 10_000);
}
