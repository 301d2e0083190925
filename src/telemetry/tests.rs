use super::auth::{Owner, TokenRefreshFailed, TokenRefreshed};
use super::delivery::{DeadLettered, DeliveryAttempted, RetryScheduled};
use super::source::{ChangesDetected, FilterDecision, FilterFailed, PollCompleted, PollFailure};
use super::test_util::{render, value};
use super::*;
use std::collections::BTreeSet;
use std::time::Duration;

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
    let failed = PollFailure {
        outcome: "timeout",
        error: &"Observation search page 2: timed out",
    };
    let text = render(|| {
        for outcome in [Ok(3), Ok(0), Err(failed)] {
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
        FilterFailed {
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
    // A 503, then a 204.
    let text = render(|| {
        for (status, delivered, attempts) in [(503, false, 1), (204, true, 2)] {
            DeliveryAttempted {
                hook: "care",
                message_id: "m",
                resource_type: "Observation",
                resource_id: "o1",
                status: Some(status),
                status_class: if delivered { "2xx" } else { "5xx" },
                delivered,
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
fn token_refreshes_by_owner_and_outcome() {
    let owner = Owner::source("epic");
    let err = "token endpoint: the answer is not a token";
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
