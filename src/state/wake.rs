//! Hook wake-ups within one process: a `tokio::sync::Notify` per hook,
//! shared by every clone of a store. A poller in another process cannot reach
//! them; a backend shared by several processes adds its own signal beside
//! them (PostgreSQL: `LISTEN`/`NOTIFY`), and a worker's idle look bounds what
//! a lost signal costs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

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

    /// Waits for a wake-up of `hook`, at most `timeout`: whether one came.
    pub(super) async fn wait(&self, hook: &str, timeout: Duration) -> bool {
        let notify = self.get(hook);
        tokio::time::timeout(timeout, notify.notified())
            .await
            .is_ok()
    }
}
