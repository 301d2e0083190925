//! Fences: what a writer shows with every write that moves a watermark or
//! records a delivery, so that a backend can refuse a writer that is no
//! longer the one entitled to write (its lease was taken over while it
//! stalled). A fence is handed out by what grants the right to write: the
//! writer lock, the backfill lock, or (later) a lease with its epoch.
//!
//! On SQLite the right is held for the life of the process (a file lock the
//! kernel releases only when the process ends), so a fence cannot go stale;
//! the backend checks only that it covers the write (a backfill's covers its
//! own pages, no watermark and no delivery). A shared backend carries the lease's scope
//! and epoch in it and checks them in the writing transaction, refusing a
//! stale one with a `StateError`.

#[cfg(test)]
use super::StateLock;
use super::{BackfillLock, PageCommit, StateError};
use std::sync::Arc;

/// Proof that its holder may write what it writes. Cheap to clone: each task
/// that writes keeps its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    grant: Grant,
    /// Which term of the grant: a shared backend's lease epoch, bumped each
    /// time the lease is granted. The locks of SQLite have one term (0).
    epoch: u64,
    /// The lease that granted it, on a shared backend (`None`: a lock of
    /// this machine, or a state only this process knows).
    lease: Option<Arc<LeaseId>>,
}

/// A lease of a shared backend: a unit of work in a scope, and the replica
/// it was granted to. With the epoch, what a write's transaction checks.
#[derive(Debug, PartialEq, Eq)]
pub struct LeaseId {
    pub scope: String,
    pub unit: i32,
    pub owner: String,
}

/// What granted a fence (kept for the backend's checks and for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// The writer lock of the state directory: the daemon, `poll --once`.
    Writer,
    /// The backfill lock, shared: a backfill writes its job's pages beside
    /// the daemon (never a poll target's watermark).
    Backfill,
    /// A state no other process can open (a dry run's scratch copy, tests).
    Private,
}

impl Fence {
    /// Whether it covers moving a poll target's watermark or its start
    /// (`init_target`, `finish_export`). A backfill's does not.
    pub(crate) fn check_watermarks(&self) -> Result<(), StateError> {
        match self.grant {
            Grant::Writer | Grant::Private => Ok(()),
            Grant::Backfill => Err(StateError::Fenced(
                "a backfill does not move a poll target's watermark",
            )),
        }
    }

    /// Whether it covers committing `page`: a backfill's covers its own
    /// pages (their progress goes to the backfill job) and nothing else.
    pub(crate) fn check_page(&self, page: &PageCommit) -> Result<(), StateError> {
        match (self.grant, &page.backfill) {
            (Grant::Backfill, Some(_)) => Ok(()),
            _ => self.check_watermarks(),
        }
    }

    /// Whether it covers recording delivery outcomes (a hook worker's).
    pub(crate) fn check_deliveries(&self) -> Result<(), StateError> {
        match self.grant {
            Grant::Writer | Grant::Private => Ok(()),
            Grant::Backfill => Err(StateError::Fenced("a backfill records no deliveries")),
        }
    }

    /// The fence for a state only this process knows of: a dry run's scratch
    /// state or a test's. Never for the configured state, whose fences come
    /// from its locks.
    pub fn private() -> Fence {
        Fence::granted(Grant::Private)
    }

    /// The writer lock's fence (SQLite's, held until the process ends).
    pub(crate) fn writer() -> Fence {
        Fence::granted(Grant::Writer)
    }

    fn granted(grant: Grant) -> Fence {
        Fence {
            grant,
            epoch: 0,
            lease: None,
        }
    }

    /// A writer's fence from a shared backend's lease, in its `epoch`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn leased(lease: LeaseId, epoch: u64) -> Fence {
        Fence {
            grant: Grant::Writer,
            epoch,
            lease: Some(Arc::new(lease)),
        }
    }

    /// The lease a shared backend checks in the writing transaction.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn lease(&self) -> Option<&LeaseId> {
        self.lease.as_deref()
    }

    /// The term of the grant this fence shows. What a writer remembers of the
    /// state it wrote (`TargetCache`) holds only within one term.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The same grant in another term (tests of what depends on the term).
    #[cfg(test)]
    pub(crate) fn with_epoch(&self, epoch: u64) -> Fence {
        Fence {
            epoch,
            ..self.clone()
        }
    }
}

impl BackfillLock {
    /// A backfill's fence, valid while its shared lock is held.
    pub fn fence(&self) -> Fence {
        Fence::granted(Grant::Backfill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_util::temp_store;
    use crate::state::{BackfillProgress, DeliveryRecord, TargetKey};

    /// A backfill's fence commits its pages and nothing else; the writer
    /// lock's covers every fenced write.
    #[tokio::test]
    async fn a_backfills_fence_covers_its_pages_only() {
        let (dir, store) = temp_store();
        let backfill = BackfillLock::share(dir.path()).unwrap().fence();
        let writer = StateLock::acquire(dir.path()).unwrap().fence();
        let key = TargetKey::population("s", "Observation");
        let page = |backfill: bool| PageCommit {
            source: "s".into(),
            resource_type: "Observation".into(),
            watermark: Some("2026-01-01T00:00:00.000Z".into()),
            backfill: backfill.then(BackfillProgress::default),
            ..Default::default()
        };
        store.commit_page(&backfill, page(true)).await.unwrap();
        let refused = |r: Result<(), StateError>| matches!(r, Err(StateError::Fenced(_)));
        assert!(refused(store.commit_page(&backfill, page(false)).await));
        assert!(refused(
            store.init_target(&backfill, &key, None, None).await
        ));
        let outcome = DeliveryRecord::Delivered { status: 200 };
        assert!(refused(
            store.record_delivery(&backfill, "h", 1, outcome).await
        ));
        assert_eq!(store.target_state(&key).await.unwrap(), Default::default());
        store.commit_page(&writer, page(false)).await.unwrap();
        let state = store.target_state(&key).await.unwrap();
        assert_eq!(state.watermark.as_deref(), Some("2026-01-01T00:00:00.000Z"));
    }
}
