//! What a source writes, and through what: the state under the poller's
//! fence, or a dry run's sink, and the poller's memory of its targets. The
//! poll loop and the strategies' helpers (the snapshot's deletes, the bulk
//! export job) take a `Committer` beside their `Fetcher`, not the whole task.

use super::targets::KnownTargets;
use crate::route::Route;
use crate::state::{Fence, PageCommit, StateError, Store, TargetKey, TargetState};
use crate::telemetry::Event;
use std::collections::HashSet;
use std::sync::Arc;

/// The page commits a dry run would have written.
#[derive(Clone, Default)]
pub struct DryRun(Arc<std::sync::Mutex<Vec<PageCommit>>>);

impl DryRun {
    fn record(&self, commit: PageCommit) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(commit);
    }

    /// What was collected so far, oldest first.
    pub fn take(&self) -> Vec<PageCommit> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A source's write handle, borrowed from its task (`SourceTask::committer`).
#[derive(Clone, Copy)]
pub(super) struct Committer<'a> {
    pub store: &'a Store,
    /// Shown with every write that moves a watermark (see `state::Fence`).
    pub fence: &'a Fence,
    /// `poll --dry-run`: page commits are collected here, and nothing else
    /// is written.
    pub dry_run: Option<&'a DryRun>,
    /// What the poller remembers of its targets between polls.
    pub known: &'a KnownTargets,
}

impl Committer<'_> {
    /// Whether anything is written (not a dry run).
    pub fn writes(&self) -> bool {
        self.dry_run.is_none()
    }

    /// `key`'s state as remembered, else as stored.
    pub async fn target_state(&self, key: &TargetKey) -> Result<TargetState, StateError> {
        match self.known.get(self.fence, key) {
            Some(known) => Ok(known),
            None => self.store.target_state(key).await,
        }
    }

    /// Commits a page (records it, on a dry run), tells telemetry what the
    /// `routes`' filters made of it (`created` and `deleted`: of its
    /// changes, for its event), and wakes the hooks it has messages for.
    pub async fn commit(
        &self,
        commit: PageCommit,
        routes: &[Route],
        created: u64,
        deleted: u64,
    ) -> Result<(), StateError> {
        let woken: HashSet<String> = commit.messages.iter().map(|m| m.hook.clone()).collect();
        match self.dry_run {
            Some(sink) => sink.record(commit),
            None => {
                let committed = super::page::page_committed(&commit, routes, created, deleted);
                self.store.commit_page(self.fence, commit).await?;
                committed.emit();
            }
        }
        for hook in woken {
            self.store.notify_due(&hook);
        }
        Ok(())
    }
}
