//! The poll side's records: targets and their watermarks, seen versions, the
//! page commit, backfill and export jobs, the roster. Backends read and
//! write them; nothing here speaks SQL.

use super::{Fence, NewMessage, StateError};
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One poll target: a resource type of a source, for one patient or (`None`)
/// for the whole population. The state stores `None` as `''`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub source: String,
    pub resource_type: String,
    pub patient: Option<String>,
}

impl TargetKey {
    /// The population-wide target of a type (every target before per-patient polling).
    pub fn population(source: &str, resource_type: &str) -> TargetKey {
        TargetKey {
            source: source.to_string(),
            resource_type: resource_type.to_string(),
            patient: None,
        }
    }
}

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.patient {
            None => write!(f, "{}/{}", self.source, self.resource_type),
            Some(p) => write!(f, "{}/{} (Patient/{p})", self.source, self.resource_type),
        }
    }
}

/// What the poller needs to know about a target before polling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetState {
    pub initialized: bool,
    pub watermark: Option<String>,
    pub floor: Option<String>,
    /// When the last complete reconciliation ended (ms); in the poller's
    /// memory, when the last one was tried or the schedule started.
    pub reconciled_at_ms: Option<i64>,
}

/// The last version of a resource the bridge has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRow {
    pub version_id: Option<String>,
    pub last_updated: Option<String>,
    pub content_hash: [u8; 32],
    /// The version's body (`seen_body`): loaded and written only for the
    /// types whose hooks read `$previous` (see [`PageCommit::keep_bodies`]).
    pub body: Option<Vec<u8>>,
}

impl SeenRow {
    /// What a delete leaves in `seen` (its tombstone): the content hash of an
    /// empty body, SHA-256 of nothing, which no resource has. Spelled out here
    /// so that the state needs no hashing; `diff`'s tests hold it equal to
    /// `diff::content_hash(b"")`.
    pub const TOMBSTONE_HASH: [u8; 32] = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];

    /// Whether this row records a delete.
    pub fn is_tombstone(&self) -> bool {
        self.content_hash == Self::TOMBSTONE_HASH
    }
}

/// How one poll of one target ended. `error` and `warning` are PHI-free text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOutcome {
    pub source: String,
    pub resource_type: String,
    /// A per-patient target's patient.
    pub patient: Option<String>,
    pub error: Option<String>,
    /// When the poll ended (our clock, ms).
    pub at_ms: i64,
    /// Resources read that no page transaction counted (re-reads).
    pub resources_read: u64,
    /// Entries skipped, not delivered (e.g. an id that is not a FHIR id).
    pub skipped: u64,
    /// Entries stamped after the server's current time: delivered, but they
    /// did not move the watermark.
    pub future: u64,
    /// The last per-entry note of this poll, if any.
    pub warning: Option<String>,
}

/// Everything one page of search results changes, committed atomically.
#[derive(Debug, Default)]
pub struct PageCommit {
    pub source: String,
    pub resource_type: String,
    /// A per-patient target's patient (its own watermark).
    pub patient: Option<String>,
    pub seen: Vec<(String, SeenRow)>,
    /// The type keeps bodies for `$previous`: each seen row's `body` is
    /// written to `seen_body` with it, or, when `None` (too large), the
    /// older body is forgotten. Otherwise `seen_body` is not touched.
    pub keep_bodies: bool,
    pub messages: Vec<NewMessage>,
    /// The new watermark, when the page lets it advance.
    pub watermark: Option<String>,
    /// Filter runtime errors per hook on this page.
    pub filter_errors: HashMap<String, u64>,
    pub changes: u64,
    pub resources_read: u64,
    /// A backfill's page: its progress is written to the backfill job, and
    /// the poll target (watermark, counters) is left alone.
    pub backfill: Option<BackfillProgress>,
    /// A bulk export's chunk: how far its job's files are read, written
    /// with the chunk (a restart resumes after the last committed one).
    pub export: Option<ExportProgress>,
}

/// Where a backfill got to with this page.
#[derive(Debug, Clone, Default)]
pub struct BackfillProgress {
    /// Resume from here; `None`: this page does not move it.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillJob {
    pub since: String,
    pub until: String,
    pub cursor: Option<String>,
    pub done: bool,
    pub pages: i64,
    pub resources: i64,
    pub changes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportJob {
    pub job_url: String,
    /// The `_since` it was kicked off with; `None`: everything.
    pub since: Option<String>,
    pub kicked_off_at: i64,
    pub transaction_time: Option<String>,
    /// Output files read to their end (in manifest order).
    pub files_done: i64,
    /// Lines of file `files_done` already committed.
    pub lines_done: i64,
    /// The kick-off URL without `_since` (base, group, types); `None` for a
    /// job saved by an older version.
    pub request: Option<String>,
    /// The fingerprint of the manifest `files_done` and `lines_done` count
    /// on; `None` until one was read (or saved by an older version).
    pub manifest: Option<String>,
}

/// Where a chunk's commit leaves the job: `lines` of file `file` are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportProgress {
    pub file: i64,
    pub lines: i64,
}

/// What a roster read changed, by patient.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RosterSync {
    /// Had targets, not on the roster now: kept, marked as gone.
    pub left: Vec<String>,
    /// Had left, on the roster again: their targets go on from their watermarks.
    pub returned: Vec<String>,
    /// Left before the grace: their targets are deleted.
    pub forgotten: Vec<String>,
}

impl RosterSync {
    /// The decision, without I/O: `in_state` maps each patient with targets to
    /// when it left the roster (`None`: it had not).
    pub(crate) fn plan(
        in_state: &BTreeMap<String, Option<i64>>,
        roster: &BTreeSet<String>,
        forget_before_ms: i64,
    ) -> RosterSync {
        let mut out = RosterSync::default();
        for (patient, left_at) in in_state {
            match (roster.contains(patient), left_at) {
                (true, Some(_)) => out.returned.push(patient.clone()),
                (true, None) => {}
                (false, None) => out.left.push(patient.clone()),
                (false, Some(t)) if *t < forget_before_ms => out.forgotten.push(patient.clone()),
                (false, Some(_)) => {}
            }
        }
        out
    }
}

crate::state::role! {
    /// The poll side's contract: targets and their watermarks, seen versions, the
    /// page commit (seen rows, messages and watermark in one transaction),
    /// backfill and export jobs, the roster, poll and reconcile outcomes.
    pub trait TargetStore {
        async fn target_state(&self, key: &TargetKey) -> Result<TargetState, StateError>;
        /// Marks a target as started: its floor and first watermark are set once.
        async fn init_target(
            &self,
            fence: &Fence,
            key: &TargetKey,
            watermark: Option<String>,
            floor: Option<String>,
        ) -> Result<(), StateError>;
        /// The seen-versions rows for these ids (absent ids were never seen).
        async fn load_seen(
            &self,
            source: &str,
            resource_type: &str,
            ids: Vec<String>,
        ) -> Result<HashMap<String, SeenRow>, StateError>;
        /// `load_seen` for a page about to be diffed, read before its
        /// blocking step. With `bodies`, each row's kept body too (for
        /// `$previous`), in the same read transaction.
        async fn load_seen_for_page(
            &self,
            source: &str,
            resource_type: &str,
            ids: Vec<String>,
            bodies: bool,
        ) -> Result<HashMap<String, SeenRow>, StateError>;
        /// Commits one page: seen-versions, outbox rows and the watermark move together.
        async fn commit_page(&self, fence: &Fence, page: PageCommit) -> Result<(), StateError>;
        /// The lowest watermark of a type's per-patient targets; `None` when it
        /// has none, or while any of them has none yet (it reads from its start).
        async fn lowest_patient_watermark(
            &self,
            source: &str,
            resource_type: &str,
        ) -> Result<Option<String>, StateError>;
        /// Records how polls ended, of any sources, in one transaction.
        async fn record_polls(&self, outcomes: Vec<PollOutcome>) -> Result<(), StateError>;
        async fn backfill_job(
            &self,
            source: &str,
            resource_type: &str,
        ) -> Result<Option<BackfillJob>, StateError>;
        /// Starts (or starts over) the job for this range.
        async fn start_backfill(
            &self,
            source: &str,
            resource_type: &str,
            since: &str,
            until: &str,
        ) -> Result<(), StateError>;
        async fn finish_backfill(
            &self,
            source: &str,
            resource_type: &str,
        ) -> Result<(), StateError>;
        async fn export_job(&self, source: &str) -> Result<Option<ExportJob>, StateError>;
        /// Records a job just kicked off (replacing any earlier one).
        async fn save_export_job(
            &self,
            source: &str,
            job_url: &str,
            since: Option<String>,
            request: &str,
        ) -> Result<ExportJob, StateError>;
        /// The manifest read: its `transactionTime` and its fingerprint (what
        /// the progress counts on from now). `restart`: the progress was counted
        /// on another manifest; the files are read again from the first.
        async fn note_export_manifest(
            &self,
            source: &str,
            transaction_time: &str,
            fingerprint: &str,
            restart: bool,
        ) -> Result<(), StateError>;
        /// File `files_done - 1` was read to its end.
        async fn export_file_done(&self, source: &str, files_done: i64) -> Result<(), StateError>;
        /// The job is read: every exported type's watermark moves to its
        /// `transactionTime` (never back), and the job is forgotten, together.
        /// The types in `repaired` had a watermark in the future (the export read
        /// them from the start): theirs is set to `transactionTime`, back from
        /// that future, or every later export would start from the beginning.
        async fn finish_export(
            &self,
            fence: &Fence,
            source: &str,
            types: Vec<String>,
            transaction_time: &str,
            repaired: Vec<String>,
        ) -> Result<(), StateError>;
        /// Forgets a job the server no longer knows (expired, failed).
        async fn drop_export_job(&self, source: &str) -> Result<(), StateError>;
        /// The patients of a fan-out source whose targets have not left the
        /// roster: the last roster the bridge believed, as the state keeps it.
        async fn roster_in_state(&self, source: &str) -> Result<BTreeSet<String>, StateError>;
        /// Brings a source's per-patient targets in line with the roster just
        /// read (see `RosterSync`), in one transaction.
        async fn sync_roster(
            &self,
            source: &str,
            roster: BTreeSet<String>,
            now_ms: i64,
            forget_before_ms: i64,
        ) -> Result<RosterSync, StateError>;
        /// The seen resources of a type, tombstones aside, for which `walked`
        /// says no: the resources a complete walk did not meet. Read in
        /// `resource_id` order, a chunk at a time (the primary key's order, so
        /// no sort and nothing held but the answer). With `bodies`, each row's
        /// kept body (for `$previous`).
        async fn seen_not_walked(
            &self,
            source: &str,
            resource_type: &str,
            walked: Arc<dyn Fn(&str) -> bool + Send + Sync>,
            bodies: bool,
        ) -> Result<Vec<(String, SeenRow)>, StateError>;
        /// A complete reconciliation of a target ended at `at_ms` (our clock)
        /// and found `changes`.
        async fn record_reconcile(
            &self,
            key: &TargetKey,
            at_ms: i64,
            changes: u64,
        ) -> Result<(), StateError>;
        /// The sources that have targets in the state (whatever the config says).
        async fn sources_with_state(&self) -> Result<Vec<String>, StateError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaving_patient_is_kept_until_the_grace_ends() {
        let state: BTreeMap<String, Option<i64>> = [
            ("stays".to_string(), None),
            ("leaves".to_string(), None),
            ("back".to_string(), Some(50)),
            ("away".to_string(), Some(150)),
            ("gone".to_string(), Some(50)),
        ]
        .into();
        let roster: BTreeSet<String> = ["stays", "back", "new"].map(String::from).into();
        let sync = RosterSync::plan(&state, &roster, 100);
        assert_eq!(sync.left, ["leaves"]);
        assert_eq!(sync.returned, ["back"]);
        assert_eq!(sync.forgotten, ["gone"]);
    }
}
