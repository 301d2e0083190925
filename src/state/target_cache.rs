//! The watermark cache: each target's state as its poller last read or wrote
//! it, kept between polls so that a poll needs no round trip to know where to
//! start (most polls find nothing).
//!
//! It is part of the state's contract because it holds only while its poller
//! is the targets' only writer, which is what the poller's `Fence` grants.
//! Entries are stamped with the fence's epoch when remembered; a lookup under
//! another epoch misses, so a poller whose right to write was taken over and
//! granted again (a shared backend's lease) reads the store afresh. On SQLite
//! a fence's epoch never changes (the writer lock is held until the process
//! ends), so every entry stays good until forgotten.

use super::{Fence, TargetKey, TargetState};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Target states remembered by one poller.
#[derive(Default)]
pub struct TargetCache(Mutex<HashMap<TargetKey, (u64, TargetState)>>);

impl TargetCache {
    /// The state remembered for `key` under `fence`'s epoch, if any.
    pub fn get(&self, fence: &Fence, key: &TargetKey) -> Option<TargetState> {
        let map = self.lock();
        let (epoch, state) = map.get(key)?;
        (*epoch == fence.epoch()).then(|| state.clone())
    }

    /// Remembers `state` as `key`'s, under `fence`'s epoch.
    pub fn remember(&self, fence: &Fence, key: &TargetKey, state: TargetState) {
        self.lock().insert(key.clone(), (fence.epoch(), state));
    }

    /// Reads `key`'s state afresh next time.
    pub fn forget(&self, key: &TargetKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TargetKey, (u64, TargetState)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_good_only_under_the_epoch_it_was_remembered_in() {
        let cache = TargetCache::default();
        let key = TargetKey::population("s", "Observation");
        let state = TargetState {
            initialized: true,
            watermark: Some("2026-01-01T00:00:00.000Z".into()),
            ..Default::default()
        };
        let fence = Fence::private();
        cache.remember(&fence, &key, state.clone());
        assert_eq!(cache.get(&fence, &key), Some(state.clone()));
        assert_eq!(cache.get(&fence.with_epoch(1), &key), None);
        cache.forget(&key);
        assert_eq!(cache.get(&fence, &key), None);
    }
}
