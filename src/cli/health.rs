//! How bad is it? `status` sorts what it found into OK, warning and
//! critical, for people (a list of problems) and monitors (the exit code:
//! 0, 1, 2, as Nagios-style checks expect).
//!
//! Critical means data is not flowing and will not without an operator:
//! dead letters wait for `dlq redrive`, a disabled hook for `hook enable`, a
//! target failing poll after poll for a fix at the EHR end. Warning means it
//! may heal by itself or is not losing anything yet: a stale hook still
//! retrying, a poll failure or two, a lagging target, a stopped daemon (its
//! outbox keeps everything), an orphaned hook's pending messages.

use super::liveness::DaemonState;
use super::span;
use super::status_report::{Level, Problem, StatusReport};
use crate::config::Schedule;
use chrono::{DateTime, Utc};

/// A target whose last this-many polls failed in a row is critical; fewer
/// failures are a warning (a blip: a timeout, a 503 during a deploy).
pub const CRITICAL_FAILURES: i64 = 3;

/// A target is lagging when it has missed this many scheduled polls since its
/// last successful one ...
pub const LAG_TICKS: usize = 3;
/// ... and that was at least this long ago (sub-minute schedules).
pub const LAG_MIN_MS: i64 = 5 * 60 * 1000;

/// Whether a target whose last successful poll was at `last_ok_ms` has
/// missed `LAG_TICKS` scheduled polls by `now_ms`.
pub fn lagging(schedule: &Schedule, last_ok_ms: i64, now_ms: i64) -> bool {
    let Some(mut tick) = DateTime::<Utc>::from_timestamp_millis(last_ok_ms) else {
        return false;
    };
    for _ in 0..LAG_TICKS {
        tick = schedule.next_after(tick);
    }
    now_ms > tick.timestamp_millis().max(last_ok_ms + LAG_MIN_MS)
}

/// Everything in `r` that needs attention, worst first (stable within a level).
pub fn assess(r: &StatusReport, recent_skip: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    daemon_problems(r, &mut out);
    source_problems(r, recent_skip, &mut out);
    hook_problems(r, &mut out);
    orphan_problems(r, &mut out);
    out.sort_by_key(|p| std::cmp::Reverse(p.level));
    out
}

/// Adds one problem to `out`.
fn adder(out: &mut Vec<Problem>) -> impl FnMut(Level, String, String) + '_ {
    |level, subject, message| {
        out.push(Problem {
            level,
            subject,
            message,
        })
    }
}

/// A daemon that is not running, never ran or stopped writing its heartbeat.
fn daemon_problems(r: &StatusReport, out: &mut Vec<Problem>) {
    let mut add = adder(out);
    match r.daemon.state {
        DaemonState::Running => {}
        DaemonState::Stopped => add(
            Level::Warning,
            "daemon".into(),
            "not running: nothing is polled or delivered (the outbox keeps what was found)".into(),
        ),
        DaemonState::NeverRan => add(Level::Warning, "daemon".into(), "never ran".into()),
        DaemonState::NotResponding => add(
            Level::Warning,
            "daemon".into(),
            "not responding: its lock is held but it has not written a heartbeat for 30 s".into(),
        ),
    }
}

/// Targets whose polls fail or lag, and entries skipped lately.
fn source_problems(r: &StatusReport, recent_skip: bool, out: &mut Vec<Problem>) {
    let mut add = adder(out);
    for s in &r.sources {
        for t in &s.targets {
            let subject = format!("source {}/{}", s.name, t.resource_type);
            if t.last_outcome.as_deref() == Some("error") {
                let level = if t.consecutive_failures >= CRITICAL_FAILURES {
                    Level::Critical
                } else {
                    Level::Warning
                };
                add(
                    level,
                    subject.clone(),
                    format!(
                        "the last {} poll(s) failed: {}",
                        t.consecutive_failures,
                        t.last_error.as_deref().unwrap_or("-")
                    ),
                );
            }
            if t.lagging {
                add(
                    Level::Warning,
                    subject.clone(),
                    format!(
                        "lagging: no successful poll since {} ({} scheduled polls missed)",
                        t.last_success_at.as_deref().unwrap_or("-"),
                        LAG_TICKS
                    ),
                );
            }
        }
    }
    if recent_skip {
        add(
            Level::Warning,
            "sources".into(),
            "entries were skipped (not delivered) in the last 24 h: see NOTES".into(),
        );
    }
}

/// Hooks with dead letters, disabled, with a subscription not active, or stale.
fn hook_problems(r: &StatusReport, out: &mut Vec<Problem>) {
    let mut add = adder(out);
    for h in &r.hooks {
        let subject = format!("hook {}", h.name);
        if h.dead_lettered > 0 {
            add(
                Level::Critical,
                subject.clone(),
                format!(
                    "{} dead letter(s): `fhir-bridge dlq list --hook {}`, then `dlq redrive`",
                    h.dead_lettered, h.name
                ),
            );
        }
        if h.disabled {
            add(
                Level::Critical,
                subject.clone(),
                format!(
                    "DISABLED: {}; re-enable with `fhir-bridge hook enable {}`",
                    h.disabled_reason.as_deref().unwrap_or("disabled"),
                    h.name
                ),
            );
        }
        if let Some(sub) = &h.subscription
            && sub.status != "active"
        {
            let what = match sub.status.as_str() {
                "requested" => "the handshake has not been acknowledged yet; events wait",
                _ => "the last notification failed",
            };
            let error = sub
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            add(
                Level::Warning,
                subject.clone(),
                format!("subscription {}: {what}{error}", sub.status),
            );
        }
        if h.stale {
            add(
                Level::Warning,
                subject.clone(),
                format!(
                    "STALE: the oldest pending message has waited {} (limit {}); see its last error",
                    span(h.oldest_pending_age_seconds.unwrap_or_default() * 1000),
                    span(h.max_pending_age.as_millis() as i64)
                ),
            );
        }
    }
}

/// Hooks in the state that the config no longer has: nothing sends their messages.
fn orphan_problems(r: &StatusReport, out: &mut Vec<Problem>) {
    let mut add = adder(out);
    for o in &r.orphaned_hooks {
        let subject = format!("orphaned hook {}", o.name);
        if o.dead_lettered > 0 {
            add(
                Level::Critical,
                subject.clone(),
                format!("{} dead letter(s)", o.dead_lettered),
            );
        }
        add(
            Level::Warning,
            subject,
            format!(
                "{} pending, {} dead-lettered, and nothing sends them: see ORPHANED HOOKS",
                o.pending, o.dead_lettered
            ),
        );
    }
}

/// The worst level among `problems`.
pub fn level(problems: &[Problem]) -> Level {
    problems.iter().map(|p| p.level).max().unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_target_lags_after_three_missed_polls_and_five_minutes() {
        let every = |s| Schedule::Every(Duration::from_secs(s));
        let t0 = 1_800_000_000_000;
        // Every 10 min: three ticks are 30 min.
        assert!(!lagging(&every(600), t0, t0 + 29 * 60_000));
        assert!(lagging(&every(600), t0, t0 + 31 * 60_000));
        // Every 10 s: five minutes, not 30 s.
        assert!(!lagging(&every(10), t0, t0 + 60_000));
        assert!(lagging(&every(10), t0, t0 + 5 * 60_000 + 1));
        // A cron: hourly at minute 0.
        let hourly = Schedule::cron("0 * * * *").unwrap();
        assert!(!lagging(&hourly, t0, t0 + 2 * 3_600_000));
        assert!(lagging(&hourly, t0, t0 + 4 * 3_600_000));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(level(&[]), Level::Ok);
        let p = |level| Problem {
            level,
            subject: "x".into(),
            message: "y".into(),
        };
        assert_eq!(level(&[p(Level::Warning)]).exit_code(), 1);
        assert_eq!(
            level(&[p(Level::Warning), p(Level::Critical)]).exit_code(),
            2
        );
    }
}
