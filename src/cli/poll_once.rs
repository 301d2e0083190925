//! `fhir-bridge poll --source NAME --once [--dry-run]`: one poll of every
//! resource type of one source, printing the changes it found and which
//! hooks get (or, in a dry run, would get) them.
//!
//! A real poll writes like the daemon (watermarks, seen versions, outbox
//! messages a daemon started later delivers), so it needs the state lock: the
//! daemon is the only writer of its targets. A dry run reads the state and
//! the EHR and writes nothing, so it works beside a running daemon.

use crate::config::Config;
use crate::progress::Beat;
use crate::route::Route;
use crate::source::client::FhirClient;
use crate::source::{DryRun, Routing, SourceTask};
use crate::state::{self, LockError, OpenError, PageCommit, StateError, Store};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum PollOnceError {
    #[error("no source named `{0}` in the config")]
    NoSuchSource(String),
    #[error("{0}: it polls this source itself; use --dry-run, or stop the daemon first")]
    DaemonRunning(LockError),
    #[error(transparent)]
    Lock(LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// What the poll printed, and whether every resource type polled cleanly.
pub struct PollReport {
    pub text: String,
    pub ok: bool,
}

pub async fn run(
    config: &Config,
    source: &str,
    dry_run: bool,
) -> Result<PollReport, PollOnceError> {
    let src = config
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| PollOnceError::NoSuchSource(source.to_string()))?
        .clone();
    // Held while polling: no daemon may start meanwhile.
    let mut writer = None;
    // A dry run writes nothing to the configured state (it opens it read
    // only, or a scratch copy): its fence is a private one.
    let mut fence = crate::state::Fence::private();
    let mut scratch = None;
    let store = if dry_run {
        match state::open(config, state::ReadOnly).await? {
            Some(store) => store,
            None => {
                // Never ran: everything is new. A scratch database stands in.
                let dir = std::env::temp_dir().join(format!(
                    "fhir-bridge-dry-run-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                let store = Store::open(&dir.join("bridge.db"))?;
                scratch = Some(dir);
                store
            }
        }
    } else {
        let (store, lock) = state::open(config, state::Exclusive)
            .await
            .map_err(|e| match e {
                OpenError::Writer(e @ (LockError::Held { .. } | LockError::Leased { .. })) => {
                    PollOnceError::DaemonRunning(e)
                }
                OpenError::Writer(e) | OpenError::Backfills(e) => PollOnceError::Lock(e),
                OpenError::State(e) => PollOnceError::State(e),
            })?;
        fence = lock.fence();
        writer = Some(lock);
        store
    };
    let pool = FhirClient::shared_pool().map_err(|e| PollOnceError::Http(e.to_string()))?;
    let client = crate::daemon::source_client(&src, &pool)
        .map_err(|e| PollOnceError::Http(e.to_string()))?;
    let sink = DryRun::default();
    let limiter = client.limiter();
    let task = SourceTask {
        routing: Routing {
            routes: Route::for_source(config, source),
        }
        .fixed(),
        store,
        fence,
        client,
        first_poll_spread: Default::default(),
        known: Default::default(),
        limiter,
        outcomes: None,
        beat: Beat::detached(),
        dry_run: dry_run.then(|| sink.clone()),
        left_search: Default::default(),
        source: src.clone(),
    };
    let mut text = format!(
        "source {source}{}\n",
        if dry_run {
            ": dry run (nothing written, nothing sent)"
        } else {
            ""
        }
    );
    let mut ok = true;
    let cancel = CancellationToken::new();
    for rt in &src.resources {
        match task.poll_target(rt, &cancel).await {
            Ok(changes) => {
                let _ = writeln!(text, "{rt}: ok, {changes} change(s)");
                if dry_run {
                    text.push_str(&summarize(&sink.take()));
                }
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(text, "{rt}: failed: {e}");
            }
        }
    }
    if !dry_run {
        text.push_str("changes are in the outbox: the daemon delivers them when it runs\n");
    }
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    // A shared state's lease is given up now, not left to expire.
    if let Some(lock) = writer {
        lock.release().await;
    }
    Ok(PollReport { text, ok })
}

/// One line per change: event, resource, version, and the hooks it goes to.
fn summarize(commits: &[PageCommit]) -> String {
    let mut out = String::new();
    let mut watermark = None;
    for c in commits {
        let mut hooks: BTreeMap<(String, Option<String>, &str), Vec<&str>> = BTreeMap::new();
        for m in &c.messages {
            let ch = &m.change;
            hooks
                .entry((ch.resource_id.clone(), ch.version_id.clone(), &ch.event))
                .or_default()
                .push(&m.hook);
        }
        for ((id, version, event), to) in &hooks {
            let _ = writeln!(
                out,
                "  {event} {}/{id}{} -> {}",
                c.resource_type,
                version
                    .as_deref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default(),
                to.join(", ")
            );
        }
        for (id, _) in c
            .seen
            .iter()
            .filter(|(id, _)| !hooks.keys().any(|k| &k.0 == id))
        {
            let _ = writeln!(out, "  {}/{id} -> no hook takes it", c.resource_type);
        }
        for (hook, n) in &c.filter_errors {
            let _ = writeln!(out, "  {hook}: {n} filter error(s)");
        }
        watermark = c.watermark.clone().or(watermark);
    }
    if let Some(w) = watermark {
        let _ = writeln!(out, "  the watermark would move to {w}");
    }
    out
}
