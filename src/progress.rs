//! Whether the long-running loops are still making progress. Each loop (a
//! source task, a hook worker) holds a `Beat` and says, each time it moves
//! on, by when it expects to move on again. The watchdog pings systemd only
//! while no loop is overdue, and `/readyz` reports the overdue ones: a wedged
//! task means no ping, and systemd restarts the service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Progress {
    deadlines: Arc<Mutex<HashMap<u64, (String, Instant)>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    /// A beat for the loop called `name` (e.g. "source ehr"), due within `first`.
    pub fn register(&self, name: impl Into<String>, first: Duration) -> Beat {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let beat = Beat {
            id,
            progress: Some(self.clone()),
        };
        self.lock()
            .insert(id, (name.into(), Instant::now() + first));
        beat
    }

    /// The loops past their deadline, with how long they have been overdue.
    pub fn overdue(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut late: Vec<_> = self
            .lock()
            .values()
            .filter(|(_, at)| *at < now)
            .map(|(name, at)| (name.clone(), now - *at))
            .collect();
        late.sort();
        late
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Instant)>> {
        self.deadlines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One loop's promise to move on again in time. Dropped with the loop: a
/// loop that ended is not wedged.
pub struct Beat {
    id: u64,
    progress: Option<Progress>,
}

impl Beat {
    /// A beat nobody watches (tests, one-off commands).
    pub fn detached() -> Beat {
        Beat {
            id: 0,
            progress: None,
        }
    }

    /// The loop moved on, and expects to move on again within `within`.
    pub fn expect_within(&self, within: Duration) {
        if let Some(p) = &self.progress
            && let Some(entry) = p.lock().get_mut(&self.id)
        {
            entry.1 = Instant::now() + within;
        }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        if let Some(p) = &self.progress {
            p.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_overdue_until_it_ends() {
        let p = Progress::default();
        let quick = p.register("source a", Duration::ZERO);
        let fine = p.register("hook h", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        let late = p.overdue();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0, "source a");
        quick.expect_within(Duration::from_secs(60));
        assert!(p.overdue().is_empty());
        fine.expect_within(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(p.overdue()[0].0, "hook h");
        drop(fine);
        assert!(p.overdue().is_empty());
        drop(quick);
        Beat::detached().expect_within(Duration::ZERO);
    }
}
