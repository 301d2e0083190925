//! What `status` reports, as records: every source's targets and every
//! hook, with the problems found and their worst level. `status` fills them
//! from the state, `health` judges them, `status_text` draws them; JSON
//! monitors read them as they are serialised here.

use super::liveness::DaemonStatus;
use serde::Serialize;
use std::time::Duration;

/// How bad it is: `health` says what makes a problem a warning or critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    /// The exit code of `status`.
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
}

/// One thing that needs attention. PHI-free like the rest of status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub level: Level,
    /// What it is about: `daemon`, `source ehr/Observation`, `hook h`.
    pub subject: String,
    pub message: String,
}

/// Everything `status` shows, in the order it shows it.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// `level` is "ok".
    pub healthy: bool,
    /// "ok", "warning" or "critical": the exit code 0, 1, 2 (see `health`).
    pub level: Level,
    /// What needs attention, worst first.
    pub problems: Vec<Problem>,
    pub config: String,
    pub database: String,
    /// False until the daemon has created its database.
    pub has_state: bool,
    pub daemon: DaemonStatus,
    pub sources: Vec<SourceStatus>,
    pub hooks: Vec<HookStatus>,
    /// Hooks with pending or dead messages that the config no longer names.
    pub orphaned_hooks: Vec<OrphanedHookStatus>,
}

#[derive(Debug, Serialize)]
pub struct OrphanedHookStatus {
    pub name: String,
    pub pending: i64,
    pub dead_lettered: i64,
}

#[derive(Debug, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub base_url: String,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub resource_type: String,
    pub watermark: Option<String>,
    pub last_poll_at: Option<String>,
    pub last_success_at: Option<String>,
    /// "ok", "error", or null before the first poll.
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
    pub changes_seen: i64,
    pub resources_read: i64,
    /// Entries skipped and not delivered (an id that is not a FHIR id, say).
    pub entries_skipped: i64,
    /// Entries stamped after the server's clock: delivered, watermark not moved.
    pub entries_future: i64,
    /// The last per-entry note (skipped or future entry), PHI-free.
    pub last_warning: Option<String>,
    pub last_warning_at: Option<String>,
    /// A per-patient type: the number of patients, whose targets this row
    /// sums up (the stalest watermark and success, the worst failure streak).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patients: Option<i64>,
    /// `reconcile`: when the last complete reconciliation ended, and how many
    /// changes it found that the polls had missed (0 on a healthy server).
    pub last_reconcile_at: Option<String>,
    pub last_reconcile_changes: Option<i64>,
    /// The last successful poll is `LAG_TICKS` scheduled polls ago (and at
    /// least 5 min): polls are not happening or not succeeding.
    pub lagging: bool,
}

#[derive(Debug, Serialize)]
pub struct HookStatus {
    pub name: String,
    pub url: String,
    pub pending: i64,
    pub delivered: i64,
    pub failed_attempts: i64,
    pub dead_lettered: i64,
    pub filter_errors: i64,
    pub oldest_pending_age_seconds: Option<i64>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Set when the receiver answered 410 Gone; cleared by `fhir-bridge hook enable`.
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// The oldest pending message has waited longer than the hook's
    /// `max_pending_age`: deliveries are not getting through.
    pub stale: bool,
    #[serde(skip)]
    pub max_pending_age: Duration,
    /// Events numbered so far (each message's event number).
    pub events: i64,
    /// FHIR-format hooks: the subscription channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<SubscriptionStatus>,
}

/// A FHIR-format hook as a Subscription: `requested` until a handshake got a
/// 2xx, then `active`, and `error` after a failed notification.
#[derive(Debug, Serialize)]
pub struct SubscriptionStatus {
    pub format: &'static str,
    pub status: String,
    pub error: Option<String>,
}
