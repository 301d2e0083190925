//! What a source's poller keeps about its targets between polls, and how its
//! first polls are spread.

use crate::config::Schedule;
use crate::state::{Fence, TargetCache, TargetKey, TargetState};
use std::time::Duration;

/// What a poller keeps in memory between polls (see `SourceTask::known`):
/// its targets' states (the state's `TargetCache`), an export job's next
/// status check, and sliced walks waiting for their turn.
#[derive(Default)]
pub struct KnownTargets(
    TargetCache,
    /// A `bulk-export` job's next status check: not before this instant
    /// (its `Retry-After`), for the job at this status URL.
    std::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Sliced walks waiting for their next turn (`walk.rs`).
    super::walk::PausedWalks,
);

impl KnownTargets {
    /// When the job at `job_url` may be asked for its status again (`None`: now).
    pub(super) fn export_status_due(&self, job_url: &str) -> Option<std::time::Instant> {
        let due = self.1.lock().unwrap_or_else(|p| p.into_inner());
        due.as_ref()
            .filter(|(u, _)| u == job_url)
            .map(|(_, at)| *at)
    }

    pub(super) fn set_export_status_due(&self, job_url: &str, at: std::time::Instant) {
        *self.1.lock().unwrap_or_else(|p| p.into_inner()) = Some((job_url.to_string(), at));
    }

    /// `key`'s state as last read or written under `fence`, if remembered.
    pub(super) fn get(&self, fence: &Fence, key: &TargetKey) -> Option<TargetState> {
        self.0.get(fence, key)
    }

    pub(super) fn set(&self, fence: &Fence, key: &TargetKey, state: TargetState) {
        self.0.remember(fence, key, state);
    }

    /// Sliced walks waiting for their next turn.
    pub(super) fn paused(&self) -> &super::walk::PausedWalks {
        &self.2
    }

    /// Reads the state afresh next time, and starts any paused walk anew.
    pub(super) fn forget(&self, key: &TargetKey) {
        self.2.take(key);
        self.0.forget(key);
    }
}

/// How widely the first polls of `sources` sources are spread: 100 ms per
/// source, at most one interval and at most a minute. A lone source polls at
/// once; a thousand spread over their interval, so there is no thundering herd.
pub fn first_poll_spread(schedule: &Schedule, sources: usize) -> Duration {
    match schedule {
        Schedule::Every(every) => (*every)
            .min(Duration::from_secs(60))
            .min(Duration::from_millis(100).saturating_mul(sources as u32)),
        Schedule::Cron(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_polls_spread_with_the_number_of_sources() {
        let every = Schedule::Every(Duration::from_secs(60));
        assert_eq!(first_poll_spread(&every, 1), Duration::from_millis(100));
        assert_eq!(first_poll_spread(&every, 100), Duration::from_secs(10));
        assert_eq!(first_poll_spread(&every, 1000), Duration::from_secs(60));
        let fast = Schedule::Every(Duration::from_secs(1));
        assert_eq!(first_poll_spread(&fast, 1000), Duration::from_secs(1));
        let cron = Schedule::cron("*/5 * * * *").unwrap();
        assert_eq!(first_poll_spread(&cron, 1000), Duration::ZERO);
    }
}
