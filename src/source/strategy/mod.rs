//! Polling strategies. Each says only *what to fetch* for a poll of one
//! target (its first URL; `next` links are followed as given) and *what its
//! pages mean* (search matches, or history entries with their methods). The
//! poll loop (`poll.rs`), the page pipeline (`page.rs`: parse, diff, filter,
//! route) and the watermark rule (`watermark.rs`) are shared by all.

pub(super) mod bulk_export;
pub(super) mod history;
mod last_updated;
pub(super) mod snapshot;

use crate::config::Source;
pub use crate::config::Strategy;
use crate::fhir::bundle::EntryMode;
use crate::state::TargetKey;
use chrono::{DateTime, Utc};
use url::Url;

pub(crate) use last_updated::search_url;

/// Which walk of a target a poll makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The target's strategy, as configured.
    Poll(Strategy),
    /// A `reconcile` pass of a `last-updated` target: a snapshot walk that
    /// leaves the watermark alone and looks only below it.
    Reconcile,
}

impl Walk {
    pub fn strategy(self) -> Strategy {
        match self {
            Walk::Poll(s) => s,
            Walk::Reconcile => Strategy::Snapshot,
        }
    }

    /// Whether it reads the whole set: no watermark, and its end infers deletes.
    pub fn is_full(self) -> bool {
        self.strategy() == Strategy::Snapshot
    }
}

/// The first request of one poll of a target: changes since `since` (the
/// watermark minus the overlap; `None`: from the beginning) and, where the
/// strategy can say so, before `until` (the server's clock); a snapshot
/// asks for everything. A per-patient target asks for its patient's
/// resources only.
pub fn first_url(
    strategy: Strategy,
    source: &Source,
    target: &TargetKey,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Url {
    let rt = target.resource_type.as_str();
    let mut url = match strategy {
        // A bulk export's job is run by `bulk_export::Exporter`; its URL is
        // `bulk_export::kickoff_url`. A plain search is the fallback here.
        Strategy::LastUpdated | Strategy::BulkExport => search_url(source, rt, since, until),
        Strategy::History => history::history_url(source, rt, since),
        // The whole set, whatever the window.
        Strategy::Snapshot => snapshot::snapshot_url(source, rt),
    };
    if let Some(patient) = &target.patient {
        // A Patient target is the patient itself; any other type is its compartment.
        let param = if rt == "Patient" { "_id" } else { "patient" };
        url.query_pairs_mut().append_pair(param, patient);
    }
    url
}

pub fn entry_mode(strategy: Strategy) -> EntryMode {
    match strategy {
        // An exported NDJSON line is a resource, as a search match is.
        Strategy::LastUpdated | Strategy::Snapshot | Strategy::BulkExport => EntryMode::Search,
        Strategy::History => EntryMode::History,
    }
}
