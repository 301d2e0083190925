//! Hook wake-ups for one process: a `tokio::sync::Notify` per hook, shared by
//! every clone of the store. A poller in another process cannot reach them;
//! that is why they are here, behind `DeliveryStore`, and not in the callers.

use super::SqliteStore;
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
}

impl SqliteStore {
    pub fn notify_due(&self, hook: &str) {
        self.wakers.get(hook).notify_one();
    }

    pub async fn wait_due(&self, hook: &str, timeout: Duration) -> bool {
        let notify = self.wakers.get(hook);
        tokio::time::timeout(timeout, notify.notified())
            .await
            .is_ok()
    }
}
