//! Hook wake-ups within one process: a `tokio::sync::Notify` per hook,
//! shared by every clone of a store. A poller in another process cannot reach
//! them; a backend shared by several processes adds its own signal beside
//! them (PostgreSQL: `LISTEN`/`NOTIFY`), and a worker's idle look bounds what
//! a lost signal costs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Most hooks a signal from another process may add (far above any
/// config's hooks).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
const MAX_HOOKS_FROM_OUTSIDE: usize = 1024;

#[derive(Clone, Default)]
pub(super) struct Wakers(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Wakers {
    /// The hook's `Notify`, made on first use (by a waiter or a notifier).
    fn get(&self, hook: &str) -> Arc<Notify> {
        // A panic elsewhere cannot leave the map half-written: take it as is.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(hook.to_string()).or_default().clone()
    }

    /// Wakes the hook's waiter (or the next one to wait).
    pub(super) fn notify(&self, hook: &str) {
        self.get(hook).notify_one();
    }

    /// Wakes the hook's waiter on a signal from another process, whose hook
    /// name is anyone's text (any session of a shared database may send
    /// it): a hook this process does not know yet is added only while the
    /// map is small, so a flood of made-up names cannot grow it without end
    /// (a signal lost costs a worker's idle look, never a message).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) fn notify_from_outside(&self, hook: &str) {
        let notify = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(hook) {
                Some(n) => n.clone(),
                None if map.len() < MAX_HOOKS_FROM_OUTSIDE => {
                    map.entry(hook.to_string()).or_default().clone()
                }
                None => return,
            }
        };
        notify.notify_one();
    }

    /// How many hooks have a `Notify`.
    #[cfg(all(test, feature = "postgres"))]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits for a wake-up of `hook`, at most `timeout`: whether one came.
    pub(super) async fn wait(&self, hook: &str, timeout: Duration) -> bool {
        let notify = self.get(hook);
        tokio::time::timeout(timeout, notify.notified())
            .await
            .is_ok()
    }
}
