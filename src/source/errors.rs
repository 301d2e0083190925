//! How a poll fails. Every message is the bridge's own text (types, page
//! numbers, status codes), never a body or a URL from the server: it goes to
//! logs and status.

use super::bundle::BundleError;
use super::client::{FetchError, UntrustedClock};
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
    #[error(transparent)]
    State(#[from] StateError),
}

impl PollError {
    /// What the failure means for this target's next poll. Only a server's
    /// `Retry-After` changes the schedule (the target waits, at most
    /// `MAX_SOURCE_BACKOFF`); every other failure is polled again on the next
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
            } => RetryAction::for_status(*status, *retry_after),
            _ => RetryAction::Retry,
        }
    }
}
