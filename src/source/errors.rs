//! How a poll fails. Every message is the bridge's own text (types, page
//! numbers, status codes), never a body or a URL from the server: it goes to
//! logs and status.

use super::client::{FetchError, UntrustedClock};
use crate::fhir::bundle::BundleError;
use crate::retry_action::RetryAction;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{resource_type} search page {page}: {error}")]
    Fetch {
        resource_type: String,
        page: usize,
        error: FetchError,
    },
    #[error("{resource_type} search page {page}: {error}")]
    Bundle {
        resource_type: String,
        page: usize,
        error: BundleError,
    },
    #[error("{resource_type} search page {page}: next link is not a URL")]
    BadNextLink { resource_type: String, page: usize },
    #[error(
        "{resource_type} search page {page}: next link is {bytes} bytes long, more than 16 KiB (not followed)"
    )]
    NextLinkTooLong {
        resource_type: String,
        page: usize,
        bytes: usize,
    },
    #[error("{resource_type} search page {page}: next link loops back to an earlier page")]
    NextLinkLoop { resource_type: String, page: usize },
    #[error(
        "{resource_type} search page {page}: next link leaves the server's origin (not followed)"
    )]
    ForeignNextLink { resource_type: String, page: usize },
    #[error(
        "{resource_type}: {pages} pages without moving the watermark (max_pages_per_poll); stopped"
    )]
    PageCap { resource_type: String, pages: usize },
    #[error("{resource_type}: {error}")]
    Clock {
        resource_type: String,
        error: UntrustedClock,
    },
    #[error(
        "{resource_type}: the server's response gave no time (no Bundle.meta.lastUpdated, no Date header)"
    )]
    NoServerTime { resource_type: String },
    #[error(
        "{resource_type}: {failed} read(s) to confirm a delete confirmed nothing (last: {error}); no delete, they stay candidates for the next walk"
    )]
    ConfirmRead {
        resource_type: String,
        failed: usize,
        error: FetchError,
    },
    #[error("bulk export: {0}")]
    Export(#[from] ExportError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// How a bulk export's job fails (`strategy/bulk_export/job.rs`).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("kick-off: {0}")]
    KickOff(FetchError),
    #[error("kick-off answered HTTP {0}, not 202 Accepted")]
    KickOffStatus(u16),
    #[error("kick-off gave no Content-Location (the job's status URL)")]
    NoJobUrl,
    #[error("the job's status URL leaves the source's origins (not followed)")]
    ForeignJobUrl,
    #[error("status: {0}")]
    Status(FetchError),
    #[error("the job failed (status HTTP {0}); the next poll starts a new export")]
    Failed(u16),
    #[error("manifest: {0}")]
    Manifest(#[from] super::strategy::bulk_export::ManifestError),
    #[error("output file {file} leaves the source's origins (not followed)")]
    ForeignFile { file: usize },
    #[error("output file {file}: {error}")]
    File { file: usize, error: FetchError },
    #[error("the job was gone again right after a new kick-off")]
    GoneAgain,
}

impl PollError {
    /// The `outcome` label of a failed poll: a small fixed set, so that a
    /// dashboard can tell an EHR that is down from one that sends nonsense.
    pub fn outcome(&self) -> &'static str {
        match self {
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

    /// What the failure means for this target's next poll. Only a server's
    /// `Retry-After` changes the schedule (the target waits, at most
    /// `rate::MAX_PAUSE`); every other failure is polled again on the next
    /// tick from the same watermark: a poll has nothing to give up.
    pub fn retry_action(&self) -> RetryAction {
        match self {
            PollError::Fetch {
                error:
                    FetchError::Status {
                        status,
                        retry_after,
                    },
                ..
            }
            | PollError::ConfirmRead {
                error:
                    FetchError::Status {
                        status,
                        retry_after,
                    },
                ..
            } => RetryAction::for_status(*status, *retry_after),
            PollError::Export(
                ExportError::KickOff(FetchError::Status {
                    status,
                    retry_after,
                })
                | ExportError::Status(FetchError::Status {
                    status,
                    retry_after,
                })
                | ExportError::File {
                    error:
                        FetchError::Status {
                            status,
                            retry_after,
                        },
                    ..
                },
            ) => RetryAction::for_status(*status, *retry_after),
            _ => RetryAction::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_failures_have_a_few_outcomes() {
        let fetch = |error| PollError::Fetch {
            resource_type: "Observation".into(),
            page: 1,
            error,
        };
        let status = |s| FetchError::Status {
            status: s,
            retry_after: None,
        };
        assert_eq!(PollError::outcome(&fetch(status(429))), "throttled");
        assert_eq!(PollError::outcome(&fetch(status(500))), "http_error");
        assert_eq!(
            PollError::outcome(&fetch(FetchError::Connect("refused".into()))),
            "connection"
        );
        assert_eq!(
            PollError::outcome(&fetch(FetchError::TooLarge { limit: 1024 })),
            "invalid_response"
        );
        let cap = PollError::PageCap {
            resource_type: "Observation".into(),
            pages: 1000,
        };
        assert_eq!(PollError::outcome(&cap), "paging");
    }
}
