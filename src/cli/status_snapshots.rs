//! Snapshots of `status` as people and monitors see it (insta, in
//! `src/cli/snapshots/`): a report built by hand at a fixed time, without
//! colour, so every run draws the same bytes. `cargo insta review` (or
//! INSTA_UPDATE=always) accepts an intended change.

use super::*;
use crate::cli::liveness::classify;
use crate::state::{Heartbeat, LockProbe};
use std::time::Duration;

/// 2027-01-15T08:00:00Z.
const NOW: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

fn at(ms_ago: i64) -> Option<String> {
    Some(fmt_ms(NOW - ms_ago))
}

fn target(rt: &str) -> TargetStatus {
    TargetStatus {
        resource_type: rt.into(),
        watermark: Some("2027-01-15T07:59:58.120Z".into()),
        last_poll_at: at(2_000),
        last_success_at: at(2_000),
        last_outcome: Some("ok".into()),
        last_error: None,
        consecutive_failures: 0,
        changes_seen: 1204,
        resources_read: 5310,
        entries_skipped: 0,
        entries_future: 0,
        last_warning: None,
        last_warning_at: None,
        patients: None,
        last_reconcile_at: None,
        last_reconcile_changes: None,
        lagging: false,
    }
}

fn hook(name: &str) -> HookStatus {
    HookStatus {
        name: name.into(),
        url: format!("https://hooks.example.org/{name}"),
        pending: 0,
        delivered: 980,
        failed_attempts: 0,
        dead_lettered: 0,
        filter_errors: 0,
        oldest_pending_age_seconds: None,
        last_success_at: at(5_000),
        last_error: None,
        last_error_at: None,
        disabled: false,
        disabled_reason: None,
        stale: false,
        max_pending_age: Duration::from_secs(900),
        events: 980,
        subscription: None,
    }
}

/// Everything that can go wrong at once, beside what is fine.
fn report() -> StatusReport {
    let beat = Heartbeat {
        pid: 4242,
        started_at_ms: NOW - 3 * 3600 * 1000,
        last_seen_at_ms: NOW - 2_000,
        version: "0.1.0".into(),
    };
    let daemon = classify(LockProbe::Held(Some(4242)), Some(&beat), NOW);
    let reconciled = TargetStatus {
        last_reconcile_at: at(5 * 3600 * 1000),
        last_reconcile_changes: Some(2),
        ..target("Observation")
    };
    let failing = TargetStatus {
        last_outcome: Some("error".into()),
        last_error: Some("HTTP 503".into()),
        consecutive_failures: 4,
        last_success_at: at(12 * MIN),
        ..target("Encounter")
    };
    let lagging = TargetStatus {
        last_poll_at: at(40 * MIN),
        last_success_at: at(40 * MIN),
        lagging: true,
        entries_skipped: 1,
        last_warning: Some("entry 3 skipped: id is not a FHIR id".into()),
        last_warning_at: at(40 * MIN),
        ..target("Patient")
    };
    let sources = vec![
        SourceStatus {
            name: "epic".into(),
            base_url: "https://fhir.example.org/api/FHIR/R4".into(),
            targets: vec![reconciled, failing],
        },
        SourceStatus {
            name: "athena".into(),
            base_url: "https://api.example.org/fhir/r4".into(),
            targets: vec![lagging],
        },
    ];
    let hooks = vec![
        hook("critical-labs"),
        HookStatus {
            dead_lettered: 3,
            failed_attempts: 18,
            last_error: Some("HTTP 500".into()),
            last_error_at: at(3 * MIN),
            ..hook("billing")
        },
        HookStatus {
            pending: 12,
            oldest_pending_age_seconds: Some(20 * 60),
            stale: true,
            failed_attempts: 7,
            last_error: Some("connection failed: timed out".into()),
            last_error_at: at(MIN),
            filter_errors: 2,
            ..hook("care-team")
        },
        HookStatus {
            disabled: true,
            disabled_reason: Some("HTTP 410 Gone".into()),
            pending: 5,
            oldest_pending_age_seconds: Some(300),
            ..hook("old-app")
        },
    ];
    let mut r = StatusReport {
        healthy: false,
        level: Level::Ok,
        problems: vec![],
        config: "/etc/fhir-bridge/bridges.toml".into(),
        database: "/var/lib/fhir-bridge/bridge.db".into(),
        has_state: true,
        daemon,
        sources,
        hooks,
        orphaned_hooks: vec![OrphanedHookStatus {
            name: "renamed".into(),
            pending: 2,
            dead_lettered: 0,
        }],
    };
    r.problems = health::assess(&r, true);
    r.level = health::level(&r.problems);
    r.healthy = r.level == Level::Ok;
    r
}

fn plain() -> Style {
    Style {
        now_ms: NOW,
        colour: false,
        unicode: false,
    }
}

#[test]
fn status_table() {
    let r = report();
    assert_eq!(r.level.exit_code(), 2);
    insta::assert_snapshot!(render_text(&r, &plain()));
}

#[test]
fn status_json() {
    let json = serde_json::to_string_pretty(&report()).unwrap();
    insta::assert_snapshot!(json);
}

#[test]
fn a_healthy_status_is_ok_and_colour_is_opt_in() {
    let mut r = report();
    r.sources.truncate(1);
    r.sources[0].targets.truncate(1);
    r.hooks.truncate(1);
    r.orphaned_hooks.clear();
    r.problems = health::assess(&r, false);
    r.level = health::level(&r.problems);
    assert_eq!(r.level, Level::Ok);
    let text = render_text(&r, &plain());
    assert!(text.starts_with("fhir-bridge status: OK\n"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    assert!(!text.contains("NEEDS ATTENTION"), "{text}");
    let coloured = render_text(
        &r,
        &Style {
            colour: true,
            ..plain()
        },
    );
    assert!(
        coloured.starts_with("fhir-bridge status: \x1b[32mOK\x1b[0m"),
        "{coloured}"
    );
}
