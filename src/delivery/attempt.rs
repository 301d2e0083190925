//! What one POST to a receiver came to, typed where it happened: retry
//! classification and telemetry read the kind, never the error text.

use crate::retry_action::RetryAction;
use std::time::Duration;

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    Failed {
        kind: FailureKind,
        /// The bridge's own description (status, connection error): never a body.
        error: String,
        retry_after: Option<Duration>,
    },
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The receiver answered with this (non-2xx) status.
    Http(u16),
    /// No answer within the hook's `timeout`.
    Timeout,
    /// No token from the hook's token endpoint (or no client assertion): no POST.
    Auth,
    /// No answer: connection refused or reset, DNS, TLS.
    Network,
}

impl FailureKind {
    /// The receiver's HTTP status, if it answered.
    pub fn status(self) -> Option<u16> {
        match self {
            FailureKind::Http(status) => Some(status),
            FailureKind::Timeout | FailureKind::Auth | FailureKind::Network => None,
        }
    }

    /// The `status_class` label: `2xx` ... `5xx` for an HTTP answer; without
    /// one, `timeout`, `auth` or `network`.
    pub fn class(self) -> &'static str {
        match self {
            FailureKind::Http(status) => http_class(status),
            FailureKind::Timeout => "timeout",
            FailureKind::Auth => "auth",
            FailureKind::Network => "network",
        }
    }
}

/// `2xx` ... `5xx`, or `other`.
pub fn http_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl Attempt {
    /// What this attempt means for the message (see `retry_action`).
    pub fn action(&self) -> RetryAction {
        match self {
            Attempt::Delivered { .. } => RetryAction::Success,
            Attempt::Failed {
                kind: FailureKind::Http(status),
                retry_after,
                ..
            } => RetryAction::for_status(*status, *retry_after),
            Attempt::Failed { .. } => RetryAction::for_transport_error(),
        }
    }

    /// The receiver's HTTP status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Attempt::Delivered { status } => Some(*status),
            Attempt::Failed { kind, .. } => kind.status(),
        }
    }

    /// The `status_class` label of this attempt.
    pub fn status_class(&self) -> &'static str {
        match self {
            Attempt::Delivered { status } => http_class(*status),
            Attempt::Failed { kind, .. } => kind.class(),
        }
    }

    /// The failure's description, or "" for a delivery.
    pub fn error(&self) -> &str {
        match self {
            Attempt::Delivered { .. } => "",
            Attempt::Failed { error, .. } => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(http_class(200), "2xx");
        assert_eq!(FailureKind::Http(301).class(), "3xx");
        assert_eq!(FailureKind::Http(410).class(), "4xx");
        assert_eq!(FailureKind::Http(502).class(), "5xx");
        assert_eq!(FailureKind::Http(99).class(), "other");
        assert_eq!(FailureKind::Timeout.class(), "timeout");
        assert_eq!(FailureKind::Network.class(), "network");
        assert_eq!(FailureKind::Auth.class(), "auth");
    }

    #[test]
    fn the_kind_decides_the_action_not_the_text() {
        let failed = |kind| Attempt::Failed {
            kind,
            // A text that once decided the class: no longer read.
            error: "timed out after 15s".into(),
            retry_after: None,
        };
        assert_eq!(failed(FailureKind::Http(400)).action(), RetryAction::GiveUp);
        assert_eq!(
            failed(FailureKind::Http(410)).action(),
            RetryAction::Disable
        );
        assert_eq!(failed(FailureKind::Network).action(), RetryAction::Retry);
        assert_eq!(failed(FailureKind::Http(503)).status_class(), "5xx");
        assert_eq!(failed(FailureKind::Auth).status(), None);
    }
}
