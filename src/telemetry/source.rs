//! Polling: polls and their outcomes, pages, resources, changes, filters.

use super::Event;
use crate::outbox::Route;
use crate::source::PollError;
use crate::source::client::FetchError;
use crate::state::PageCommit;
use metrics::{counter, histogram};
use std::time::Duration;

pub const POLLS: &str = "fhir_bridge_polls_total";
pub const POLL_DURATION: &str = "fhir_bridge_poll_duration_seconds";
pub const PAGES: &str = "fhir_bridge_pages_fetched_total";
pub const RESOURCES: &str = "fhir_bridge_resources_fetched_total";
pub const CHANGES: &str = "fhir_bridge_changes_detected_total";
pub const FILTER_DECISIONS: &str = "fhir_bridge_filter_decisions_total";
pub const FILTER_ERRORS: &str = "fhir_bridge_filter_errors_total";

/// Log lines keep the targets they had before they moved here, so that
/// `FHIR_BRIDGE_LOG=fhir_bridge::source=debug` still selects them.
const POLL_TARGET: &str = "fhir_bridge::source::poll";

/// One poll of one target ended, well or not.
pub struct PollCompleted<'a> {
    pub source: &'a str,
    pub resource_type: &'a str,
    /// The changes it committed, or why it failed.
    pub outcome: Result<u64, &'a PollError>,
    pub duration: Duration,
    /// Pages fetched and resources read, a failed poll's too (up to the failure).
    pub pages: u64,
    pub resources: u64,
}

impl Event for PollCompleted<'_> {
    fn emit(self) {
        let (source, rt) = (self.source, self.resource_type);
        match self.outcome {
            Ok(changes) => {
                tracing::debug!(target: POLL_TARGET, source = %source, resource_type = %rt, changes, pages = self.pages, resources = self.resources, duration_ms = self.duration.as_millis() as u64, "poll ok")
            }
            // The error is the bridge's own text (see source::errors): no body, no URL.
            Err(e) => {
                tracing::warn!(target: POLL_TARGET, source = %source, resource_type = %rt, error = %e, "poll failed")
            }
        }
        let outcome = match self.outcome {
            Ok(_) => "ok",
            Err(e) => poll_outcome(e),
        };
        let labels = [
            ("source", source.to_string()),
            ("resource_type", rt.to_string()),
        ];
        let mut with_outcome = labels.to_vec();
        with_outcome.push(("outcome", outcome.to_string()));
        counter!(POLLS, &with_outcome).increment(1);
        // By source only: a histogram is 13 series, and at 10,000 targets
        // per-target ones made a scrape of 160,000 lines (14 MB).
        histogram!(POLL_DURATION, "source" => source.to_string())
            .record(self.duration.as_secs_f64());
        if self.pages > 0 {
            counter!(PAGES, &labels).increment(self.pages);
        }
        if self.resources > 0 {
            counter!(RESOURCES, &labels).increment(self.resources);
        }
    }
}

/// The `outcome` label of a failed poll: a small fixed set, so that a
/// dashboard can tell an EHR that is down from one that sends nonsense.
pub fn poll_outcome(e: &PollError) -> &'static str {
    match e {
        PollError::Fetch { error, .. } | PollError::ConfirmRead { error, .. } => match error {
            FetchError::Status { status: 429, .. } => "throttled",
            FetchError::Status { .. } => "http_error",
            FetchError::Timeout => "timeout",
            FetchError::Connect(_) | FetchError::Other(_) => "connection",
            FetchError::Auth(_) => "auth",
            FetchError::TooLarge { .. } | FetchError::Redirect { .. } => "invalid_response",
        },
        PollError::Bundle { .. } => "invalid_response",
        PollError::BadNextLink { .. }
        | PollError::NextLinkTooLong { .. }
        | PollError::NextLinkLoop { .. }
        | PollError::ForeignNextLink { .. }
        | PollError::PageCap { .. } => "paging",
        PollError::Clock { .. } | PollError::NoServerTime { .. } => "clock",
        PollError::Export(_) => "export",
        PollError::State(_) => "state",
    }
}

/// New versions of resources committed to the state by one page.
pub struct ChangesDetected<'a> {
    pub source: &'a str,
    pub resource_type: &'a str,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl Event for ChangesDetected<'_> {
    fn emit(self) {
        if self.created + self.updated + self.deleted == 0 {
            return;
        }
        tracing::debug!(target: POLL_TARGET, source = %self.source, resource_type = %self.resource_type, created = self.created, updated = self.updated, deleted = self.deleted, "changes committed");
        for (kind, n) in [
            ("create", self.created),
            ("update", self.updated),
            ("delete", self.deleted),
        ] {
            if n > 0 {
                counter!(CHANGES, "source" => self.source.to_string(), "resource_type" => self.resource_type.to_string(), "kind" => kind)
                    .increment(n);
            }
        }
    }
}

/// What one hook's filter decided on the changes of one committed page.
pub struct FilterDecision<'a> {
    pub hook: &'a str,
    pub resource_type: &'a str,
    pub kept: u64,
    pub dropped: u64,
}

impl Event for FilterDecision<'_> {
    fn emit(self) {
        for (decision, n) in [("in", self.kept), ("out", self.dropped)] {
            if n > 0 {
                counter!(FILTER_DECISIONS, "hook" => self.hook.to_string(), "resource_type" => self.resource_type.to_string(), "decision" => decision)
                    .increment(n);
            }
        }
    }
}

/// A filter raised an error (or went over its budget) on one resource: a
/// non-match for that hook.
pub struct FilterError<'a> {
    pub hook: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub error: &'a crate::filter::FilterError,
}

impl Event for FilterError<'_> {
    fn emit(self) {
        tracing::debug!(target: "fhir_bridge::outbox", hook = %self.hook, resource = %format!("{}/{}", self.resource_type, self.resource_id), error = %loggable(self.error), "filter error counted as non-match");
        counter!(FILTER_ERRORS, "hook" => self.hook.to_string(), "resource_type" => self.resource_type.to_string())
            .increment(1);
    }
}

/// A filter error as a log may show it. jaq's runtime messages quote the
/// values they failed on (`cannot use "Jane Doe" as number`): values of the
/// resource, PHI. Only the bridge's own texts (budgets) are shown in full.
pub fn loggable(e: &crate::filter::FilterError) -> String {
    use crate::filter::FilterError as E;
    match e {
        E::Runtime(_) => "filter error (message not logged: it may quote the resource)".into(),
        E::Input(_) => "resource is not valid JSON".into(),
        E::Budget(_) | E::Cancelled | E::Compile(_) => e.to_string(),
    }
}

/// A page's changes reached the state: what was detected, and what each
/// hook's filter made of it. Counted before the commit (which consumes the
/// page), told after it succeeded.
pub struct PageCommitted {
    source: String,
    resource_type: String,
    created: u64,
    updated: u64,
    deleted: u64,
    /// Per hook: changes its filter kept, and dropped.
    decisions: Vec<(String, u64, u64)>,
}

impl PageCommitted {
    /// Every route's filter saw every change of the page: the messages are
    /// the ones it kept, `filter_errors` the ones it failed on, the rest it
    /// dropped.
    pub fn new(commit: &PageCommit, routes: &[Route], created: u64, deleted: u64) -> PageCommitted {
        let decisions = routes
            .iter()
            .map(|r| {
                let kept = commit.messages.iter().filter(|m| m.hook == r.hook).count() as u64;
                let errors = commit.filter_errors.get(&r.hook).copied().unwrap_or(0);
                let dropped = commit.changes.saturating_sub(kept + errors);
                (r.hook.clone(), kept, dropped)
            })
            .collect();
        PageCommitted {
            source: commit.source.clone(),
            resource_type: commit.resource_type.clone(),
            created,
            updated: commit.changes.saturating_sub(created + deleted),
            deleted,
            decisions,
        }
    }
}

impl Event for PageCommitted {
    fn emit(self) {
        ChangesDetected {
            source: &self.source,
            resource_type: &self.resource_type,
            created: self.created,
            updated: self.updated,
            deleted: self.deleted,
        }
        .emit();
        for (hook, kept, dropped) in &self.decisions {
            FilterDecision {
                hook,
                resource_type: &self.resource_type,
                kept: *kept,
                dropped: *dropped,
            }
            .emit();
        }
    }
}
