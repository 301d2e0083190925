//! The operator's records: messages as `dlq`/`replay`/`status` see them, their
//! filters and selections, reports, the daemon's heartbeat and the gauges.

use super::{MessageBody, StateError};
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Waiting for (another) delivery attempt.
    Pending,
    /// Delivered; kept for `retention` (replay).
    Delivered,
    /// Attempts exhausted: a dead letter.
    Dead,
}

impl MessageState {
    /// As stored in `outbox.state`, and as the operator's commands print it.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Dead => "dead",
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a message has stored to send, by size (never the content).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredBody {
    /// Size of its stored payload (messages from before migration 7); `None`
    /// once it is gone (deleted on delivery) or for a message of a change.
    pub payload_bytes: Option<i64>,
    /// The change it was made for (rendered when sent); `None` for a message
    /// from before migration 7.
    pub change_id: Option<i64>,
    /// Size of the change's stored resource; `None` once no pending or dead
    /// message needs it, or when no hook could include it.
    pub resource_bytes: Option<i64>,
}

impl StoredBody {
    pub fn has_payload(&self) -> bool {
        self.payload_bytes.is_some()
    }

    /// Whether its change's resource is still stored (it can go in full).
    pub fn has_resource(&self) -> bool {
        self.resource_bytes.is_some()
    }
}

/// One message of the outbox: everything stored about it, and its body only
/// when a query asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// The row id (`dlq list` shows it).
    pub id: i64,
    pub hook: String,
    pub message_id: String,
    /// The hook's event number for it; `None` for a message from before numbers.
    pub event_number: Option<i64>,
    pub state: MessageState,
    pub attempts: i64,
    /// When it entered the outbox (our clock, ms).
    pub created_at_ms: i64,
    pub next_attempt_at_ms: i64,
    /// When it was delivered or dead-lettered.
    pub done_at_ms: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: Option<String>,
    /// "create" or "update".
    pub event: String,
    pub source: String,
    /// What it has stored to send, by size.
    pub stored: StoredBody,
    /// What it sends, content included (PHI); `None`: not read by this query.
    pub body: Option<MessageBody>,
}

/// Whether a query reads the messages' bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithBody {
    No,
    Yes,
}

/// Messages of one source, one resource (or resource type), within a time
/// window. Every field `None`: everything. The time is when the message was
/// finished (dead-lettered, delivered), or created when it is not finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    pub source: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Our clock, ms, inclusive.
    pub since_ms: Option<i64>,
    /// Our clock, ms, exclusive.
    pub until_ms: Option<i64>,
}

impl MessageFilter {
    pub fn is_empty(&self) -> bool {
        *self == MessageFilter::default()
    }
}

/// How the operator names a message: the row id `dlq list` shows, or its
/// `message_id` (several rows when a message was moved to another hook and
/// the old one was kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKey {
    Id(i64),
    MessageId(String),
}

impl MessageKey {
    /// A number is a row id; anything else a message_id.
    pub fn parse(s: &str) -> MessageKey {
        match s.parse::<i64>() {
            Ok(id) => MessageKey::Id(id),
            Err(_) => MessageKey::MessageId(s.to_string()),
        }
    }
}

/// A hook with messages in the outbox that the config no longer names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanedHook {
    pub hook: String,
    pub pending: i64,
    pub dead: i64,
}

/// Which messages a `dlq` command acts on: dead letters of any hook, plus the
/// pending messages of orphaned hooks when they are asked for explicitly
/// (`hook` names the orphaned hook, or `ids` are given). `--all` alone never
/// touches pending messages.
#[derive(Debug, Clone, Default)]
pub struct DlqSelection {
    /// Only this hook's messages.
    pub hook: Option<String>,
    /// Only these ids; `None`: all.
    pub ids: Option<Vec<i64>>,
    /// The hooks in the config; any other hook with messages is orphaned.
    pub configured: Vec<String>,
    /// Only messages of this source, resource, time window.
    pub filter: MessageFilter,
}

/// What `move_to_hook` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Now pending on the target hook.
    pub moved: usize,
    /// Already under the target hook with the same message_id: deleted.
    pub duplicates: usize,
}

/// One message to requeue, with the payload to store when it has none.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub id: i64,
    /// `None`: send the payload still stored or render its change (a
    /// message with neither is skipped).
    pub payload: Option<Vec<u8>>,
    /// Only if its change's resource is still stored (a full-resource send).
    pub need_body: bool,
}

/// What a rename did, or why it did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rename {
    /// Rows moved, per table that had any (table, rows).
    Done(Vec<(String, usize)>),
    /// `old` has no row anywhere: nothing to rename (a typo?).
    NoState,
    /// `new` has rows already: merging two sources' state is not a rename.
    TargetHasState(Vec<String>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetReport {
    pub source: String,
    pub resource_type: String,
    pub watermark: Option<String>,
    pub last_poll_at_ms: Option<i64>,
    pub last_ok_at_ms: Option<i64>,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
    pub changes_seen: i64,
    pub resources_read: i64,
    pub entries_skipped: i64,
    pub entries_future: i64,
    pub last_skip_at_ms: Option<i64>,
    pub last_warning: Option<String>,
    pub last_warning_at_ms: Option<i64>,
    /// A per-patient type: how many patients' targets this row sums up.
    pub patients: Option<i64>,
    pub last_reconcile_at_ms: Option<i64>,
    pub last_reconcile_changes: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HookReport {
    pub hook: String,
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    pub failed_attempts: i64,
    pub filter_errors: i64,
    pub oldest_pending_at_ms: Option<i64>,
    pub last_success_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub disabled_at_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    /// The hook's last event number.
    pub events: i64,
    /// A FHIR channel's status (`None`: never handshaken) and its last error.
    pub subscription_status: Option<String>,
    pub subscription_error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub targets: i64,
    pub failing_targets: i64,
    pub pending: i64,
    pub dead: i64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "targets {} ok / {} failing; {} pending; {} dead letters",
            self.targets - self.failing_targets,
            self.failing_targets,
            self.pending,
            self.dead
        )
    }
}

/// The heartbeat row as last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    pub pid: u32,
    pub started_at_ms: i64,
    pub last_seen_at_ms: i64,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookDepth {
    pub hook: String,
    pub pending: i64,
    pub dead: i64,
    /// When the oldest pending message entered the outbox (our clock, ms).
    pub oldest_pending_at_ms: Option<i64>,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetMark {
    pub source: String,
    pub resource_type: String,
    /// RFC 3339, as stored; `None` before the target's first change.
    pub watermark: Option<String>,
    /// Whether this is the lowest watermark of the type's per-patient
    /// targets (a fan-out source) rather than its population-wide target.
    pub per_patient: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GaugeSnapshot {
    pub hooks: Vec<HookDepth>,
    pub targets: Vec<TargetMark>,
}

crate::state::role! {
    /// The operator's and the daemon's contract: dead letters and their moves,
    /// message lookups, replay, status reports, source renames, the heartbeat,
    /// gauges and housekeeping.
    pub trait OperatorStore {
        /// Hooks not in `configured` that have pending or dead messages.
        async fn orphaned_hooks(
            &self,
            configured: Vec<String>,
        ) -> Result<Vec<OrphanedHook>, StateError>;
        /// Whether any message of `hook` is in the outbox.
        async fn hook_has_messages(&self, hook: &str) -> Result<bool, StateError>;
        /// Dead letters of every hook (or `hook`), with the pending messages of
        /// orphaned hooks: what `dlq list` shows.
        async fn dlq_list(
            &self,
            hook: Option<String>,
            configured: Vec<String>,
        ) -> Result<Vec<MessageRecord>, StateError>;
        /// `dlq_list`, narrowed by `filter`.
        async fn dlq_list_filtered(
            &self,
            hook: Option<String>,
            filter: MessageFilter,
            configured: Vec<String>,
        ) -> Result<Vec<MessageRecord>, StateError>;
        /// Dead letters only, of every hook or one.
        async fn dead_letters(
            &self,
            hook: Option<String>,
        ) -> Result<Vec<MessageRecord>, StateError>;
        /// The ids of the messages a `redrive` (`moving`: false) or a `purge` or
        /// `move_to_hook` (`moving`: true) of `sel` would act on, oldest first:
        /// what the operator confirms, then passes on as `ids`.
        async fn dlq_selected(
            &self,
            sel: DlqSelection,
            moving: bool,
        ) -> Result<Vec<i64>, StateError>;
        /// Requeues the selected dead letters of configured hooks (an orphaned
        /// hook's need `move_to_hook`) for immediate delivery with a fresh
        /// attempt budget and their message_ids. Returns how many.
        async fn redrive(&self, sel: DlqSelection) -> Result<usize, StateError>;
        /// Deletes the selected messages for good (payloads go with them).
        async fn purge(&self, sel: DlqSelection) -> Result<usize, StateError>;
        /// Moves the selected messages to hook `to` as pending, due now, with a
        /// fresh attempt budget, keeping their message_id and stored payload. A
        /// message whose message_id `to` already has is a duplicate: deleted.
        async fn move_to_hook(&self, sel: DlqSelection, to: &str) -> Result<Moved, StateError>;
        /// The messages `key` names, of `hook` if given, oldest first; with
        /// their bodies only if `body` (PHI: for an operator's explicit request).
        async fn find_messages(
            &self,
            key: MessageKey,
            hook: Option<String>,
            body: WithBody,
        ) -> Result<Vec<MessageRecord>, StateError>;
        /// What message `id` sends: its stored payload or its change, body
        /// included (`Missing` when there is no such message). PHI: only for an
        /// operator's explicit request.
        async fn message_body(&self, id: i64) -> Result<MessageBody, StateError>;
        /// Delivered messages of `hook` that `filter` selects (its time is the
        /// delivery time), oldest first.
        async fn replay_candidates(
            &self,
            hook: &str,
            filter: MessageFilter,
        ) -> Result<Vec<MessageRecord>, StateError>;
        /// The messages of `hook` numbered `from` or later that are still kept
        /// and no longer pending (delivered, within the retention, or dead), that
        /// `filter` selects, in event-number order. Messages from before event
        /// numbers have none and are never among them.
        async fn replay_candidates_from_event(
            &self,
            hook: &str,
            from: i64,
            filter: MessageFilter,
        ) -> Result<Vec<MessageRecord>, StateError>;
        /// Makes these delivered messages pending again, due now, with a fresh
        /// attempt budget, in one transaction. A message that is no longer
        /// delivered (pruned meanwhile, or already requeued) or has no payload
        /// to send is left alone. Returns how many were requeued.
        async fn requeue_delivered(&self, items: Vec<Requeue>) -> Result<usize, StateError>;
        /// `requeue_delivered`, for delivered or dead messages (a replay from an
        /// event number sends both again). Their message_id and event number stay.
        async fn requeue_delivered_or_dead(&self, items: Vec<Requeue>) -> Result<usize, StateError>;
        /// A per-patient type's targets summed up in one row: the stalest
        /// watermark and success (the patient furthest behind: the oldest
        /// patient's last successful poll), the latest poll,
        /// the worst failure streak, totals, and the newest error and warning.
        /// Patients who left the roster (kept for `roster_grace`) are not polled
        /// and not counted.
        async fn patient_targets_report(
            &self,
            source: &str,
            resource_type: &str,
        ) -> Result<Option<TargetReport>, StateError>;
        async fn target_report(
            &self,
            source: &str,
            resource_type: &str,
        ) -> Result<Option<TargetReport>, StateError>;
        async fn hook_report(&self, hook: &str) -> Result<HookReport, StateError>;
        /// Re-keys source `old` as `new`; the daemon must not be running (the
        /// caller holds the state lock).
        async fn rename_source(&self, old: &str, new: &str) -> Result<Rename, StateError>;
        async fn summary(&self) -> Result<Summary, StateError>;
        /// Depths of `hooks` (in that order) and every target's watermark.
        async fn gauge_snapshot(&self, hooks: Vec<String>) -> Result<GaugeSnapshot, StateError>;
        /// Records that this process (pid) started now, replacing any earlier row.
        async fn record_daemon_start(&self, pid: u32, version: &str) -> Result<(), StateError>;
        /// Records that the process `pid` is still alive, now.
        async fn heartbeat(&self, pid: u32) -> Result<(), StateError>;
        /// The last heartbeat, if a daemon ever ran on this state.
        async fn last_heartbeat(&self) -> Result<Option<Heartbeat>, StateError>;
        /// Deletes delivered messages finished before `older_than_ms`. Returns how many.
        async fn prune_delivered(&self, older_than_ms: i64) -> Result<usize, StateError>;
        /// Forgets the versions of a target's resources last updated before
        /// `before` (an instant formatted like the stored ones), and their kept
        /// bodies. The poller never reads anything that old again (it drops
        /// entries before its window), and a later change arrives with a newer
        /// lastUpdated. Returns how many.
        async fn prune_seen(
            &self,
            source: &str,
            resource_type: &str,
            before: String,
        ) -> Result<usize, StateError>;
        /// Forgets a type's tombstones (deletes) last updated before `before`:
        /// a snapshot target keeps its other seen rows, which are the snapshot.
        async fn prune_tombstones(
            &self,
            source: &str,
            resource_type: &str,
            before: String,
        ) -> Result<usize, StateError>;
        /// Returns free pages to the file system once they are more than a quarter
        /// of the file (after a backlog's payloads were delivered, or a prune).
        /// Returns the bytes given back.
        async fn reclaim_space(&self) -> Result<u64, StateError>;
        /// Folds the WAL into the database and truncates it to nothing. Between
        /// checkpoints the WAL keeps old page images, delivered payloads among
        /// them (secure_delete zeroes the database's pages, not the WAL's
        /// history); housekeeping calls this every pass so they do not linger.
        /// Returns whether the checkpoint completed (readers can hold it back).
        async fn truncate_wal(&self) -> Result<bool, StateError>;
    }
    blocking {
        fn path(&self) -> &Path;
        /// When this handle last wrote a heartbeat (or the daemon's start)
        /// successfully, our clock in ms; `None` before the first.
        fn last_heartbeat_ok_ms(&self) -> Option<i64>;
    }
}
