//! Is the daemon running? Two witnesses: the state directory's lock (held
//! for a daemon's whole life, released by the kernel when it dies) and the
//! heartbeat it writes every few seconds. A held lock with a heartbeat older
//! than `STALE_HEARTBEAT_MS` is a hung daemon.

use super::{fmt_ms, span};
use crate::state::{Heartbeat, LockProbe};
use serde::Serialize;

/// A heartbeat older than this (30 s, six missed beats) means not responding.
pub const STALE_HEARTBEAT_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaemonState {
    Running,
    Stopped,
    NeverRan,
    NotResponding,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub state: DaemonState,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub last_seen_at: Option<String>,
    #[serde(skip)]
    pub started_at_ms: Option<i64>,
    #[serde(skip)]
    pub last_seen_at_ms: Option<i64>,
}

/// What the lock and the last heartbeat say, at `now_ms`.
pub fn classify(lock: LockProbe, beat: Option<&Heartbeat>, now_ms: i64) -> DaemonStatus {
    let fresh = |b: &Heartbeat| now_ms - b.last_seen_at_ms <= STALE_HEARTBEAT_MS;
    let from = |state: DaemonState, b: Option<&Heartbeat>| DaemonStatus {
        running: state == DaemonState::Running,
        state,
        pid: b.map(|b| b.pid),
        started_at: b.map(|b| fmt_ms(b.started_at_ms)),
        last_seen_at: b.map(|b| fmt_ms(b.last_seen_at_ms)),
        started_at_ms: b.map(|b| b.started_at_ms),
        last_seen_at_ms: b.map(|b| b.last_seen_at_ms),
    };
    match (lock, beat) {
        (LockProbe::Held(pid), Some(b)) if pid.is_none_or(|p| p == b.pid) => {
            let state = if fresh(b) {
                DaemonState::Running
            } else {
                DaemonState::NotResponding
            };
            from(state, Some(b))
        }
        // Held by a daemon that has not written its first heartbeat yet
        // (it is opening or migrating the database).
        (LockProbe::Held(pid), _) => DaemonStatus {
            pid,
            ..from(DaemonState::Running, None)
        },
        (LockProbe::Free, Some(b)) => from(DaemonState::Stopped, Some(b)),
        (LockProbe::Unknown, Some(b)) if fresh(b) => from(DaemonState::Running, Some(b)),
        (LockProbe::Unknown, Some(b)) => from(DaemonState::Stopped, Some(b)),
        (LockProbe::Free | LockProbe::Unknown, None) => from(DaemonState::NeverRan, None),
    }
}

/// The `daemon: ...` line of `status`.
pub fn daemon_line(d: &DaemonStatus, now_ms: i64) -> String {
    let seen = |t: Option<i64>| t.map(|t| format!("last seen {} ago", span(now_ms - t)));
    match d.state {
        DaemonState::Running => match (d.started_at_ms, seen(d.last_seen_at_ms)) {
            (Some(start), Some(seen)) => format!(
                "running (pid {}, up {}, {seen})",
                d.pid.unwrap_or_default(),
                span(now_ms - start)
            ),
            _ => match d.pid {
                Some(p) => format!("running (pid {p}, starting)"),
                None => "running (starting)".into(),
            },
        },
        DaemonState::Stopped => format!(
            "NOT RUNNING ({})",
            seen(d.last_seen_at_ms).unwrap_or_default()
        ),
        DaemonState::NeverRan => "never ran".into(),
        DaemonState::NotResponding => format!(
            "not responding ({})",
            seen(d.last_seen_at_ms).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn beat(pid: u32, started_ago_s: i64, seen_ago_s: i64) -> Heartbeat {
        Heartbeat {
            pid,
            started_at_ms: NOW - started_ago_s * 1000,
            last_seen_at_ms: NOW - seen_ago_s * 1000,
            version: "0.1.0".into(),
        }
    }

    fn line(lock: LockProbe, b: Option<Heartbeat>) -> (DaemonState, String) {
        let d = classify(lock, b.as_ref(), NOW);
        assert_eq!(d.running, d.state == DaemonState::Running);
        (d.state, daemon_line(&d, NOW))
    }

    #[test]
    fn every_state_and_its_line() {
        use DaemonState::*;
        assert_eq!(
            line(LockProbe::Held(Some(7)), Some(beat(7, 3 * 3600, 2))),
            (Running, "running (pid 7, up 3h, last seen 2s ago)".into())
        );
        assert_eq!(
            line(LockProbe::Free, Some(beat(7, 3 * 3600, 11 * 60))),
            (Stopped, "NOT RUNNING (last seen 11m ago)".into())
        );
        assert_eq!(line(LockProbe::Free, None), (NeverRan, "never ran".into()));
        assert_eq!(
            line(LockProbe::Held(Some(7)), Some(beat(7, 3600, 120))),
            (NotResponding, "not responding (last seen 2m ago)".into())
        );
        // A new daemon, before its first heartbeat: the row is its predecessor's.
        assert_eq!(
            line(LockProbe::Held(Some(8)), Some(beat(7, 3600, 600))),
            (Running, "running (pid 8, starting)".into())
        );
        // Cannot tell from the lock: the heartbeat decides.
        assert_eq!(line(LockProbe::Unknown, Some(beat(7, 60, 3))).0, Running);
        assert_eq!(line(LockProbe::Unknown, Some(beat(7, 60, 31))).0, Stopped);
        assert_eq!(line(LockProbe::Unknown, None).0, NeverRan);
    }

    #[test]
    fn json_names() {
        let d = classify(LockProbe::Free, None, NOW);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["state"], "never-ran");
        assert_eq!(v["running"], false);
        assert!(v["pid"].is_null() && v.get("started_at_ms").is_none());
        let d = classify(LockProbe::Held(None), Some(&beat(3, 9, 40)), NOW);
        assert_eq!(serde_json::to_value(&d).unwrap()["state"], "not-responding");
    }
}
