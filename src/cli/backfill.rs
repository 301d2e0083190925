//! `fhir-bridge backfill --source NAME --since TIME`: an initial load of what
//! a source held before the bridge polled it, beside the running daemon
//! (which delivers what the backfill enqueues). A progress bar on a terminal,
//! a line per resource type otherwise; Ctrl-C stops after the current page,
//! and the same command resumes where it stopped.

use crate::config::Config;
use crate::route::Route;
use crate::source::PollError;
use crate::source::backfill::{Backfill, BackfillStatus};
use crate::source::client::FhirClient;
use crate::state::{self, LockError, OpenError, StateError};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt::Write as _;
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("no source named `{0}` in the config")]
    NoSuchSource(String),
    #[error("`{0}` is not one of the source's resources")]
    NoSuchType(String),
    #[error(
        "`--since {0}`: give an RFC 3339 time (2026-01-01T00:00:00Z) or `beginning`; a relative time would change between runs, and a backfill resumes only the same range"
    )]
    Since(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("a `fhir-bridge source rename` is under way on {0}: run this again once it is done")]
    Renaming(String),
    #[error(transparent)]
    Lock(LockError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// `--since`: a fixed instant, so that running the command again resumes.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, BackfillError> {
    if s == "beginning" {
        return Ok(DateTime::<Utc>::UNIX_EPOCH);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|_| BackfillError::Since(crate::logsafe::escape(s)))
}

pub struct BackfillReport {
    pub text: String,
    pub ok: bool,
}

pub async fn run(
    config: &Config,
    source: &str,
    since: DateTime<Utc>,
    types: &[String],
    rate: f64,
) -> Result<BackfillReport, BackfillError> {
    let src = config
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| BackfillError::NoSuchSource(source.to_string()))?
        .clone();
    if let Some(t) = types.iter().find(|t| !src.resources.contains(t)) {
        return Err(BackfillError::NoSuchType(t.clone()));
    }
    // Held to the end: a rename must not move the source from under us.
    let (store, renames_wait) =
        state::open(config, state::Backfill)
            .await
            .map_err(|e| match e {
                OpenError::Backfills(LockError::Held { dir, .. }) => BackfillError::Renaming(dir),
                OpenError::Writer(e) | OpenError::Backfills(e) => BackfillError::Lock(e),
                OpenError::State(e) => BackfillError::State(e),
            })?;
    let pool = FhirClient::shared_pool().map_err(|e| BackfillError::Http(e.to_string()))?;
    let client = crate::daemon::source_client(&src, &pool)
        .map_err(|e| BackfillError::Http(e.to_string()))?;
    let backfill = Backfill {
        routes: Route::for_source(config, source),
        store,
        fence: renames_wait.fence(),
        client,
        since,
        rate,
        source: src.clone(),
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    let tty = std::io::stderr().is_terminal();
    let mut text = String::new();
    let mut ok = true;
    for rt in src
        .resources
        .iter()
        .filter(|t| types.is_empty() || types.contains(t))
    {
        let bar = progress_bar(rt, tty);
        let result = backfill
            .run(rt, &cancel, |s: &BackfillStatus| {
                if let Some(total) = s.total {
                    bar.set_length(total);
                }
                bar.set_position(s.resources.max(0) as u64);
                bar.set_message(format!("{} pages, {} changes", s.pages, s.changes));
            })
            .await;
        bar.finish_and_clear();
        let _ = writeln!(text, "{}", line(rt, &result));
        ok &= matches!(&result, Ok(s) if s.done);
        if cancel.is_cancelled() {
            let _ = writeln!(text, "interrupted: run the same command again to resume");
            break;
        }
    }
    Ok(BackfillReport { text, ok })
}

fn line(rt: &str, result: &Result<BackfillStatus, PollError>) -> String {
    match result {
        Ok(s) => format!(
            "{rt}: {}, {} pages, {} resources read, {} changes enqueued{}",
            if s.done { "done" } else { "stopped" },
            s.pages,
            s.resources,
            s.changes,
            if s.resumed { " (resumed)" } else { "" }
        ),
        Err(e) => format!("{rt}: failed: {e} (run again to resume)"),
    }
}

/// A bar when a person watches (stderr is a terminal), nothing otherwise.
fn progress_bar(rt: &str, tty: bool) -> ProgressBar {
    if !tty {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>20} {spinner} {pos} resources ({per_sec}) {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(rt.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
