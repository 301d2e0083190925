//! The poll side's records: targets and their watermarks, seen versions, the
//! page commit, backfill and export jobs, the roster. Backends read and
//! write them; nothing here speaks SQL.

use super::NewMessage;
use std::collections::HashMap;

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
