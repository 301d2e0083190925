//! Durable state. `Store` is the one handle every layer uses; behind it sits a
//! backend (today only SQLite, in `sqlite/`, the only place that speaks SQL).
//!
//! Durability: WAL with `synchronous=NORMAL`. A commit survives a process crash
//! (`kill -9`). A power loss can roll back the last commits, but watermark,
//! seen-versions and outbox rows always roll back *together*, so the next poll
//! reads the same changes again: nothing is lost, at worst re-sent.

mod backfill_lock;
mod deliveries;
mod files;
mod lock;
mod operator;
mod sqlite;
mod targets;

pub use backfill_lock::BackfillLock;
pub use deliveries::{
    ChangeRecord, ChannelState, Claimed, DeliveryRecord, MAX_EVENTS_PER_QUERY, MessageBody,
    NewMessage, RetainedEvent,
};
pub use lock::{LockError, LockProbe, StateLock};
pub use operator::{
    DlqSelection, GaugeSnapshot, Heartbeat, HookDepth, HookReport, MessageFilter, MessageKey,
    MessageRecord, MessageState, Moved, OrphanedHook, Rename, Requeue, StoredBody, Summary,
    TargetMark, TargetReport, WithBody,
};
pub use targets::{
    BackfillJob, BackfillProgress, ExportJob, ExportProgress, PageCommit, PollOutcome, RosterSync,
    SeenRow, TargetKey, TargetState,
};

use sqlite::SqliteStore;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {message}")]
    Open { path: String, message: String },
    /// Still SQLite's error type: a second backend adds its own variant.
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database task failed: {0}")]
    Task(String),
}

/// A handle on the state, cheap to clone. Every method dispatches to the
/// backend it was opened on.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// The backends a `Store` can sit on (an enum, not `dyn`: identical
/// signatures, native `async fn`, no boxing).
#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
}

/// Milliseconds since the Unix epoch, our clock (never the EHR's).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `Store`'s async methods, each handed to the backend's method of the same
/// name.
macro_rules! dispatch {
    ($(
        $(#[$meta:meta])*
        async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        impl Store {
            $(
                $(#[$meta])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        Backend::Sqlite(b) => b.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

impl Store {
    /// Opens (creating and migrating if needed) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open(path)?),
        })
    }

    /// Opens an existing database for reading only (status, dlq list), safe
    /// while the daemon writes. `Ok(None)` when there is no database yet.
    pub fn open_read_only(path: &Path) -> Result<Option<Store>, StateError> {
        Ok(SqliteStore::open_read_only(path)?.map(|s| Store {
            backend: Backend::Sqlite(s),
        }))
    }

    /// Where the state lives (for messages).
    pub fn path(&self) -> &Path {
        match &self.backend {
            Backend::Sqlite(b) => b.path(),
        }
    }

    /// When the daemon's heartbeat was last written by this handle, for
    /// readiness (`None`: never).
    pub fn last_heartbeat_ok_ms(&self) -> Option<i64> {
        match &self.backend {
            Backend::Sqlite(b) => b.last_heartbeat_ok_ms(),
        }
    }

    /// `load_seen` for a caller already on a blocking thread (the page
    /// pipeline).
    pub fn load_seen_blocking(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
        bodies: bool,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        match &self.backend {
            Backend::Sqlite(b) => b.load_seen_blocking(source, resource_type, ids, bodies),
        }
    }
}

dispatch! {
    async fn target_state(&self, key: &TargetKey) -> Result<TargetState, StateError>;
    async fn init_target(&self, key: &TargetKey, watermark: Option<String>, floor: Option<String>) -> Result<(), StateError>;
    async fn load_seen(&self, source: &str, resource_type: &str, ids: Vec<String>) -> Result<HashMap<String, SeenRow>, StateError>;
    async fn commit_page(&self, page: PageCommit) -> Result<(), StateError>;
    async fn lowest_patient_watermark(&self, source: &str, resource_type: &str) -> Result<Option<String>, StateError>;
    async fn record_polls(&self, outcomes: Vec<PollOutcome>) -> Result<(), StateError>;
    async fn backfill_job(&self, source: &str, resource_type: &str) -> Result<Option<BackfillJob>, StateError>;
    async fn start_backfill(&self, source: &str, resource_type: &str, since: &str, until: &str) -> Result<(), StateError>;
    async fn finish_backfill(&self, source: &str, resource_type: &str) -> Result<(), StateError>;
    async fn export_job(&self, source: &str) -> Result<Option<ExportJob>, StateError>;
    async fn save_export_job(&self, source: &str, job_url: &str, since: Option<String>, request: &str) -> Result<ExportJob, StateError>;
    async fn note_export_manifest(&self, source: &str, transaction_time: &str, fingerprint: &str, restart: bool) -> Result<(), StateError>;
    async fn export_file_done(&self, source: &str, files_done: i64) -> Result<(), StateError>;
    async fn finish_export(&self, source: &str, types: Vec<String>, transaction_time: &str, repaired: Vec<String>) -> Result<(), StateError>;
    async fn drop_export_job(&self, source: &str) -> Result<(), StateError>;
    async fn roster_in_state(&self, source: &str) -> Result<BTreeSet<String>, StateError>;
    async fn sync_roster(&self, source: &str, roster: BTreeSet<String>, now_ms: i64, forget_before_ms: i64) -> Result<RosterSync, StateError>;
    async fn seen_not_walked(&self, source: &str, resource_type: &str, walked: Arc<dyn Fn(&str) -> bool + Send + Sync>, bodies: bool) -> Result<Vec<(String, SeenRow)>, StateError>;
    async fn record_reconcile(&self, key: &TargetKey, at_ms: i64, changes: u64) -> Result<(), StateError>;

    async fn claim_due(&self, hook: &str, in_flight: Vec<i64>, limit: usize) -> Result<Vec<Claimed>, StateError>;
    async fn assign_batches(&self, batches: Vec<(String, Vec<i64>)>) -> Result<(), StateError>;
    async fn pending_due_now(&self, hook: &str) -> Result<usize, StateError>;
    async fn next_due_ms(&self, hook: &str) -> Result<Option<i64>, StateError>;
    async fn record_delivery(&self, hook: &str, id: i64, record: DeliveryRecord) -> Result<(), StateError>;
    async fn record_deliveries(&self, hook: &str, records: Vec<(i64, DeliveryRecord)>, channel: bool) -> Result<(), StateError>;
    async fn disable_hook(&self, hook: &str, reason: &str) -> Result<(), StateError>;
    async fn enable_hook(&self, hook: &str) -> Result<bool, StateError>;
    async fn hook_disabled(&self, hook: &str) -> Result<bool, StateError>;
    async fn channel_state(&self, hook: &str) -> Result<ChannelState, StateError>;
    async fn set_channel_status(&self, hook: &str, status: &str, error: Option<String>) -> Result<(), StateError>;
    async fn retained_events(&self, hook: &str, since: i64, until: i64, with_bodies: bool) -> Result<Vec<RetainedEvent>, StateError>;

    async fn orphaned_hooks(&self, configured: Vec<String>) -> Result<Vec<OrphanedHook>, StateError>;
    async fn hook_has_messages(&self, hook: &str) -> Result<bool, StateError>;
    async fn dlq_list(&self, hook: Option<String>, configured: Vec<String>) -> Result<Vec<MessageRecord>, StateError>;
    async fn dlq_list_filtered(&self, hook: Option<String>, filter: MessageFilter, configured: Vec<String>) -> Result<Vec<MessageRecord>, StateError>;
    async fn dead_letters(&self, hook: Option<String>) -> Result<Vec<MessageRecord>, StateError>;
    async fn dlq_selected(&self, sel: DlqSelection, moving: bool) -> Result<Vec<i64>, StateError>;
    async fn redrive(&self, sel: DlqSelection) -> Result<usize, StateError>;
    async fn purge(&self, sel: DlqSelection) -> Result<usize, StateError>;
    async fn move_to_hook(&self, sel: DlqSelection, to: &str) -> Result<Moved, StateError>;
    async fn find_messages(&self, key: MessageKey, hook: Option<String>, body: WithBody) -> Result<Vec<MessageRecord>, StateError>;
    async fn message_body(&self, id: i64) -> Result<MessageBody, StateError>;
    async fn replay_candidates(&self, hook: &str, filter: MessageFilter) -> Result<Vec<MessageRecord>, StateError>;
    async fn replay_candidates_from_event(&self, hook: &str, from: i64, filter: MessageFilter) -> Result<Vec<MessageRecord>, StateError>;
    async fn requeue_delivered(&self, items: Vec<Requeue>) -> Result<usize, StateError>;
    async fn requeue_delivered_or_dead(&self, items: Vec<Requeue>) -> Result<usize, StateError>;
    async fn patient_targets_report(&self, source: &str, resource_type: &str) -> Result<Option<TargetReport>, StateError>;
    async fn target_report(&self, source: &str, resource_type: &str) -> Result<Option<TargetReport>, StateError>;
    async fn hook_report(&self, hook: &str) -> Result<HookReport, StateError>;
    async fn rename_source(&self, old: &str, new: &str) -> Result<Rename, StateError>;
    async fn sources_with_state(&self) -> Result<Vec<String>, StateError>;
    async fn summary(&self) -> Result<Summary, StateError>;
    async fn gauge_snapshot(&self, hooks: Vec<String>) -> Result<GaugeSnapshot, StateError>;
    async fn record_daemon_start(&self, pid: u32, version: &str) -> Result<(), StateError>;
    async fn heartbeat(&self, pid: u32) -> Result<(), StateError>;
    async fn last_heartbeat(&self) -> Result<Option<Heartbeat>, StateError>;
    async fn prune_delivered(&self, older_than_ms: i64) -> Result<usize, StateError>;
    async fn prune_seen(&self, source: &str, resource_type: &str, before: String) -> Result<usize, StateError>;
    async fn prune_tombstones(&self, source: &str, resource_type: &str, before: String) -> Result<usize, StateError>;
    async fn reclaim_space(&self) -> Result<u64, StateError>;
    async fn truncate_wal(&self) -> Result<bool, StateError>;
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::{Backend, Store};

    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("bridge.db")).unwrap();
        (dir, store)
    }

    /// Makes a hook's messages look `ms` older than they are.
    pub async fn backdate(store: &Store, hook: &str, ms: i64) {
        match &store.backend {
            Backend::Sqlite(b) => super::sqlite::test_util::backdate(b, hook, ms).await,
        }
    }
}
