//! The sandbox's `$export` jobs, and the switches tests set on them
//! (`set_pending_polls`, `set_file_lines`, `stall_file`): data the store
//! holds and export.rs's handlers serve.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One kicked-off export: its output files, and how many status requests
/// it answers 202 before its manifest.
pub(super) struct Job {
    pub(super) polls_left: usize,
    pub(super) transaction_ms: i64,
    /// (type, lines) per output file.
    pub(super) files: Vec<(String, Vec<Arc<str>>)>,
}

/// The sandbox's export jobs and the switches tests set.
pub struct Exports {
    jobs: Mutex<HashMap<usize, Job>>,
    pub(super) next_job: AtomicUsize,
    pub(super) kickoffs: AtomicUsize,
    pub(super) deletes: AtomicUsize,
    pub(super) pending_polls: AtomicUsize,
    pub(super) file_lines: AtomicUsize,
    pub(super) stall: Mutex<Option<(usize, usize)>>,
    pub(super) stalled: AtomicUsize,
}

impl Default for Exports {
    fn default() -> Self {
        Exports {
            jobs: Mutex::default(),
            next_job: AtomicUsize::new(0),
            kickoffs: AtomicUsize::new(0),
            deletes: AtomicUsize::new(0),
            pending_polls: AtomicUsize::new(1),
            file_lines: AtomicUsize::new(1000),
            stall: Mutex::default(),
            stalled: AtomicUsize::new(0),
        }
    }
}

impl Exports {
    pub(super) fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kick-offs accepted so far.
    pub fn kickoffs(&self) -> usize {
        self.kickoffs.load(Ordering::Relaxed)
    }

    /// Jobs deleted so far.
    pub fn deletes(&self) -> usize {
        self.deletes.load(Ordering::Relaxed)
    }

    /// Jobs kicked off and not deleted.
    pub fn live_jobs(&self) -> usize {
        self.jobs().len()
    }

    /// Status requests answered 202 before a job's manifest is ready.
    pub fn set_pending_polls(&self, n: usize) {
        self.pending_polls.store(n, Ordering::Relaxed);
    }

    /// Lines per output file, at most.
    pub fn set_file_lines(&self, n: usize) {
        self.file_lines.store(n.max(1), Ordering::Relaxed);
    }

    /// Downloads of file `n` send `lines` lines, then hang (`None`: off).
    pub fn stall_file(&self, at: Option<(usize, usize)>) {
        *self.stall.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Downloads that stalled so far.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::Relaxed)
    }
}
