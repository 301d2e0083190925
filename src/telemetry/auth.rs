//! Access tokens: requests to a token endpoint, for a source or a hook.

use super::Event;
use metrics::counter;
use std::time::Duration;

pub const TOKEN_REFRESHES: &str = "fhir_bridge_token_refreshes_total";

/// The target these log lines had before they moved here (log filters).
const AUTH_TARGET: &str = "fhir_bridge::auth";

/// Whose token cache it is: a source (`[source.auth]`) or a hook (`[hook.auth]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// "source" or "hook"; empty in tests that build an authenticator alone.
    pub kind: &'static str,
    pub name: String,
}

impl Owner {
    pub fn source(name: &str) -> Owner {
        Owner {
            kind: "source",
            name: name.to_string(),
        }
    }

    pub fn hook(name: &str) -> Owner {
        Owner {
            kind: "hook",
            name: name.to_string(),
        }
    }

    fn count(&self, outcome: &'static str) {
        counter!(TOKEN_REFRESHES, "owner_kind" => self.kind, "owner" => self.name.clone(), "outcome" => outcome)
            .increment(1);
    }
}

/// A new access token was fetched.
pub struct TokenRefreshed<'a> {
    pub owner: &'a Owner,
    pub lifetime: Duration,
}

impl Event for TokenRefreshed<'_> {
    fn emit(self) {
        tracing::debug!(target: AUTH_TARGET, owner_kind = self.owner.kind, owner = %self.owner.name, lifetime_s = self.lifetime.as_secs(), "fetched an access token");
        self.owner.count("ok");
    }
}

/// A token request failed. The request it was for fails with the same error
/// (a poll error, a failed delivery attempt), which is logged there.
pub struct TokenRefreshFailed<'a> {
    pub owner: &'a Owner,
    /// HTTP status and OAuth error code only (see `AuthError`), never a body.
    pub error: &'a dyn std::fmt::Display,
}

impl Event for TokenRefreshFailed<'_> {
    fn emit(self) {
        tracing::debug!(target: AUTH_TARGET, owner_kind = self.owner.kind, owner = %self.owner.name, error = %self.error, "access token request failed");
        self.owner.count("error");
    }
}
