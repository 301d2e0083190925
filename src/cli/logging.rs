//! Logging to stderr: the level from `FHIR_BRIDGE_LOG` (an invalid value is
//! an error, not silence), colour only for a person at a terminal, no
//! timestamp when journald adds its own, or one JSON object per line
//! (`--log-format json`) for log shippers.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people; without a timestamp under journald.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields.
    Json,
}

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

/// Whether stderr is a journald stream. systemd sets `JOURNAL_STREAM` to the
/// `device:inode` of the stream it connected; a process whose stderr was
/// redirected (to a file, a pipe) may still inherit the variable, so the
/// numbers must be stderr's own. `INVOCATION_ID` alone is not enough: a unit
/// may send stderr to a file (`StandardError=file:`), which wants timestamps.
pub fn is_journal(journal_stream: Option<&std::ffi::OsStr>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(var), Some((dev, ino))) = (journal_stream.and_then(|v| v.to_str()), stderr) else {
        return false;
    };
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// stderr's device and inode numbers.
#[cfg(unix)]
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn stderr_id() -> Option<(u64, u64)> {
    None
}

/// Installs the stderr logger.
pub fn init(default: &str, format: LogFormat) -> Result<(), LogError> {
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
    let journal = is_journal(std::env::var_os("JOURNAL_STREAM").as_deref(), stderr_id());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its own report of a failed write is an eprintln!, which panics.
        .log_internal_errors(false);
    let installed = match format {
        // Field values are JSON strings: escaped, whatever they hold.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
        // journald stamps every line itself; a second timestamp is noise.
        LogFormat::Text if journal => builder.without_time().with_ansi(ansi).try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    installed.map_err(|e| LogError::Init(e.to_string()))
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
    fn journald_only_when_stderr_is_its_stream() {
        let var = Some(OsStr::new("8:12345"));
        assert!(is_journal(var, Some((8, 12345))));
        // Inherited by a process whose stderr went elsewhere.
        assert!(!is_journal(var, Some((8, 999))));
        assert!(!is_journal(None, Some((8, 12345))));
        assert!(!is_journal(Some(OsStr::new("garbage")), Some((8, 12345))));
        assert!(!is_journal(var, None));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
