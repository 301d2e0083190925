//! Logging to stderr: the level from `FHIR_BRIDGE_LOG` (an invalid value is
//! an error, not silence), colour only for a person at a terminal.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub const LOG_VAR: &str = "FHIR_BRIDGE_LOG";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{LOG_VAR}={value:?} is not a valid log filter: {error}")]
    Invalid { value: String, error: String },
    #[error("{LOG_VAR} is not valid UTF-8")]
    NotUnicode,
    #[error("cannot set up logging: {0}")]
    Init(String),
}

/// The filter: `FHIR_BRIDGE_LOG` if set and not empty, else `default`.
pub fn filter(value: Option<&str>, default: &str) -> Result<EnvFilter, LogError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => EnvFilter::try_new(v).map_err(|e| LogError::Invalid {
            value: v.to_string(),
            error: e.to_string(),
        }),
        None => Ok(EnvFilter::new(default)),
    }
}

/// ANSI colour only on a terminal, and never with `NO_COLOR` set to
/// anything (https://no-color.org): files, pipes and journald get plain text.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the stderr logger.
pub fn init(default: &str) -> Result<(), LogError> {
    let value = match std::env::var(LOG_VAR) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err(LogError::NotUnicode),
    };
    let filter = filter(value.as_deref(), default)?;
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // Its own report of a failed write is an eprintln!, which panics.
        .log_internal_errors(false)
        .try_init()
        .map_err(|e| LogError::Init(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn an_invalid_filter_is_an_error_naming_the_variable() {
        let e = filter(Some("fhir_bridge=notalevel"), "info").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("FHIR_BRIDGE_LOG=\"fhir_bridge=notalevel\""),
            "{msg}"
        );
        assert!(filter(Some("fhir_bridge=debug,info"), "info").is_ok());
        assert!(
            filter(Some("  "), "info").is_ok(),
            "empty means the default"
        );
        assert!(filter(None, "warn").is_ok());
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
