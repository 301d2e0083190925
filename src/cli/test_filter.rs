//! `fhir-bridge test-filter`: one hook's effective filter (its topic and/or
//! `filter`) on a resource from a file, with the daemon's budget.

use crate::config::Config;
use crate::filter::{FilterError, Resource, parse_resource};
use std::path::Path;
use std::sync::atomic::AtomicBool;

#[derive(Debug, thiserror::Error)]
pub enum TestFilterError {
    #[error("no hook is named `{hook}` in {config}")]
    NoHook { hook: String, config: String },
    /// The io error is part of the message (see `ConfigError::Read`).
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: not JSON: {error}")]
    NotJson { path: String, error: String },
    #[error("{path}: not a FHIR resource: {what}")]
    NotResource { path: String, what: &'static str },
    #[error("hook `{hook}`: {error}")]
    Filter { hook: String, error: FilterError },
}

/// Whether `hook`'s filter matches the resource in `resource`, with
/// `$previous` read from `previous` (null without it).
pub fn run(
    config: &Config,
    hook: &str,
    resource: &Path,
    previous: Option<&Path>,
) -> Result<bool, TestFilterError> {
    let h = config
        .hooks
        .iter()
        .find(|h| h.name == hook)
        .ok_or_else(|| TestFilterError::NoHook {
            hook: hook.to_string(),
            config: config.path.display().to_string(),
        })?;
    let now = read(resource, false)?;
    let before = match previous {
        Some(p) => read(p, true)?,
        None => Resource::Null,
    };
    h.filter
        .matches_change(&now, &before, &AtomicBool::new(false))
        .map_err(|error| TestFilterError::Filter {
            hook: hook.to_string(),
            error,
        })
}

/// A JSON object from a file (or `null`, when allowed: a previous version
/// that did not exist).
fn read(path: &Path, null_ok: bool) -> Result<Resource, TestFilterError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TestFilterError::Read {
        path: shown.clone(),
        error,
    })?;
    let value = parse_resource(&text).map_err(|e| TestFilterError::NotJson {
        path: shown.clone(),
        error: match e {
            FilterError::Input(m) => m,
            other => other.to_string(),
        },
    })?;
    match value {
        Resource::Obj(_) => Ok(value),
        Resource::Null if null_ok => Ok(value),
        _ => Err(TestFilterError::NotResource {
            path: shown,
            what: "expected a JSON object",
        }),
    }
}
