//! `fhir-bridge status`: every source and hook at a glance. Read-only.
//! No resource bodies, tokens or passwords are ever shown: errors recorded in
//! state are PHI-free by construction.

use super::fmt_ms;
use super::health;
use super::liveness;
use super::status_report::{
    HookStatus, Level, OrphanedHookStatus, SourceStatus, StatusReport, SubscriptionStatus,
    TargetStatus,
};
use crate::config::Config;
use crate::state::{self, HookReport, StateError, Store, TargetReport, now_ms};

pub use super::status_text::{Style, render_text};

/// An entry skipped (not delivered) keeps status unhealthy this long (24 h).
const SKIP_ATTENTION_MS: i64 = 24 * 3600 * 1000;

/// Base URL without credentials or query: safe to print.
fn safe_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

pub async fn collect(config: &Config) -> Result<StatusReport, StateError> {
    let db = state::location(config);
    let store = state::open(config, state::ReadOnly).await?;
    let (sources, recent_skip) = source_statuses(config, store.as_ref()).await?;
    let hooks = hook_statuses(config, store.as_ref()).await?;
    let orphaned_hooks = match &store {
        Some(st) => {
            st.orphaned_hooks(config.hooks.iter().map(|h| h.name.clone()).collect())
                .await?
        }
        None => vec![],
    }
    .into_iter()
    .map(|o| OrphanedHookStatus {
        name: o.hook,
        pending: o.pending,
        dead_lettered: o.dead,
    })
    .collect::<Vec<_>>();
    let beat = match &store {
        Some(st) => st.last_heartbeat().await?,
        None => None,
    };
    let writer = state::probe_writer(config, store.as_ref()).await;
    let daemon = liveness::classify(writer, beat.as_ref(), now_ms());
    let mut report = StatusReport {
        healthy: false,
        level: Level::Ok,
        problems: vec![],
        config: config.path.display().to_string(),
        database: db,
        has_state: store.is_some(),
        daemon,
        sources,
        hooks,
        orphaned_hooks,
    };
    report.problems = health::assess(&report, recent_skip);
    report.level = health::level(&report.problems);
    report.healthy = report.level == Level::Ok;
    Ok(report)
}

/// Each source's targets as the state has them (a fan-out type: its patients
/// together), and whether any skipped an entry lately.
async fn source_statuses(
    config: &Config,
    store: Option<&Store>,
) -> Result<(Vec<SourceStatus>, bool), StateError> {
    let mut sources = Vec::new();
    let mut recent_skip = false;
    for s in &config.sources {
        let mut targets = Vec::new();
        for rt in &s.resources {
            let r = match store {
                // Before any patient's target exists (no roster yet), the
                // type's population-wide row carries the roster's error.
                Some(st) if s.fan_out.is_some() => {
                    match st.patient_targets_report(&s.name, rt).await? {
                        Some(r) => Some(r),
                        None => st.target_report(&s.name, rt).await?,
                    }
                }
                Some(st) => st.target_report(&s.name, rt).await?,
                None => None,
            }
            .unwrap_or_else(|| TargetReport {
                resource_type: rt.clone(),
                ..Default::default()
            });
            // A snapshot walks everything each time: its watermark means nothing.
            let snapshot = s.strategies.for_type(rt) == crate::config::Strategy::Snapshot;
            targets.push(TargetStatus {
                resource_type: rt.clone(),
                watermark: r.watermark.filter(|_| !snapshot),
                last_poll_at: r.last_poll_at_ms.map(fmt_ms),
                last_success_at: r.last_ok_at_ms.map(fmt_ms),
                last_outcome: r.last_outcome,
                last_error: r.last_error,
                consecutive_failures: r.consecutive_failures,
                changes_seen: r.changes_seen,
                resources_read: r.resources_read,
                entries_skipped: r.entries_skipped,
                entries_future: r.entries_future,
                last_warning: r.last_warning,
                last_warning_at: r.last_warning_at_ms.map(fmt_ms),
                patients: r.patients,
                last_reconcile_at: r.last_reconcile_at_ms.map(fmt_ms),
                last_reconcile_changes: r.last_reconcile_changes,
                lagging: r
                    .last_ok_at_ms
                    .is_some_and(|t| health::lagging(&s.schedule, t, now_ms())),
            });
            recent_skip |= r
                .last_skip_at_ms
                .is_some_and(|t| now_ms() - t < SKIP_ATTENTION_MS);
        }
        sources.push(SourceStatus {
            name: s.name.clone(),
            base_url: safe_url(&s.base_url),
            targets,
        });
    }
    Ok((sources, recent_skip))
}

/// Each configured hook's outbox, deliveries and subscription.
async fn hook_statuses(
    config: &Config,
    store: Option<&Store>,
) -> Result<Vec<HookStatus>, StateError> {
    let mut hooks = Vec::new();
    for h in &config.hooks {
        let r = match store {
            Some(st) => st.hook_report(&h.name).await?,
            None => HookReport::default(),
        };
        let age = r
            .oldest_pending_at_ms
            .map(|t| ((now_ms() - t) / 1000).max(0));
        let max_age = h.max_pending_age;
        hooks.push(HookStatus {
            name: h.name.clone(),
            url: safe_url(&h.url),
            pending: r.pending,
            delivered: r.delivered,
            failed_attempts: r.failed_attempts,
            dead_lettered: r.dead,
            filter_errors: r.filter_errors,
            oldest_pending_age_seconds: age,
            last_success_at: r.last_success_at_ms.map(fmt_ms),
            last_error: r.last_error,
            last_error_at: r.last_error_at_ms.map(fmt_ms),
            disabled: r.disabled_at_ms.is_some(),
            disabled_reason: r.disabled_reason,
            stale: age.is_some_and(|a| a as u64 > max_age.as_secs()),
            max_pending_age: max_age,
            events: r.events,
            subscription: h.notification.format.is_fhir().then(|| SubscriptionStatus {
                format: h.notification.format.as_str(),
                status: r.subscription_status.unwrap_or_else(|| "requested".into()),
                error: r.subscription_error,
            }),
        });
    }
    Ok(hooks)
}

#[cfg(test)]
#[path = "status_snapshots.rs"]
mod snapshots;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::liveness::DaemonState;
    use crate::state::test_util::backdate;
    use crate::state::{NewMessage, PageCommit, Store};

    const CONFIG: &str = r#"
state_dir = "state"

[[source]]
name = "ehr"
base_url = "http://127.0.0.1:9/fhir"
resources = ["Observation"]

[[hook]]
name = "slow"
url = "http://127.0.0.1:9/slow"

[[hook]]
name = "fresh"
url = "http://127.0.0.1:9/fresh"
"#;

    /// A hook whose receiver has failed for longer than its max_pending_age
    /// (and never succeeded) is stale, and status needs attention; a hook
    /// left out of the config with messages is orphaned.
    #[tokio::test]
    async fn stale_hooks_and_orphaned_hooks_need_attention() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_str(CONFIG, &dir.path().join("bridges.toml")).unwrap();
        let store = Store::open(&config.db_path()).unwrap();
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "ehr".into(),
                    resource_type: "Observation".into(),
                    messages: vec![
                        NewMessage::test("slow", "m1", "Observation", "1"),
                        NewMessage::test("fresh", "m2", "Observation", "1"),
                        NewMessage::test("renamed", "m3", "Observation", "1"),
                    ],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        backdate(&store, "slow", 16 * 60 * 1000).await;
        backdate(&store, "fresh", 14 * 60 * 1000).await;

        let r = collect(&config).await.unwrap();
        assert!(!r.healthy);
        assert_eq!(r.daemon.state, DaemonState::NeverRan);
        let stale: Vec<_> = r.hooks.iter().map(|h| (h.name.as_str(), h.stale)).collect();
        assert_eq!(stale, [("slow", true), ("fresh", false)]);
        assert_eq!(r.orphaned_hooks.len(), 1);
        assert_eq!(
            (
                r.orphaned_hooks[0].name.as_str(),
                r.orphaned_hooks[0].pending
            ),
            ("renamed", 1)
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["hooks"][0]["stale"], true);
        assert_eq!(json["orphaned_hooks"][0]["dead_lettered"], 0);
        assert_eq!(json["daemon"]["state"], "never-ran");
        assert_eq!(r.level, Level::Warning);
        assert_eq!(json["level"], "warning");
        let style = Style {
            now_ms: now_ms(),
            colour: false,
            unicode: false,
        };
        let text = render_text(&r, &style);
        assert!(text.contains("daemon: never ran"), "{text}");
        assert!(
            text.contains("STALE: the oldest pending message has waited 16m (limit 15m)"),
            "{text}"
        );
        assert!(
            text.contains("renamed: 1 pending, 0 dead-lettered; move them with `fhir-bridge dlq redrive --hook renamed --to-hook NEW --all`"),
            "{text}"
        );
    }
}
