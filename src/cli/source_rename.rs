//! `fhir-bridge source rename OLD NEW`: a source renamed in the config keeps
//! its watermarks, seen versions and pending messages (with their
//! message_ids), so the rename re-sends nothing and skips nothing. Offline:
//! it takes the state lock, so it is refused while the daemon runs, and the
//! backfill lock, so it is refused while a `backfill` runs; and it
//! runs only once the config names NEW and no longer OLD, so the daemon
//! never starts on a config and a state that disagree.

use crate::config::Config;
use crate::state::{self, LockError, OpenError, Rename, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    #[error(
        "{0}: stop it first (a rename moves the state under it), run this again, then start it"
    )]
    DaemonRunning(LockError),
    #[error(
        "a `fhir-bridge backfill` is running on {0}: it would go on writing under the old name; let it finish (or stop it: it resumes), then run this again"
    )]
    BackfillRunning(String),
    #[error(transparent)]
    Lock(LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "{config} still has a source named `{old}`: rename it there first (its `name`, and each hook's `sources`), then run this again"
    )]
    OldInConfig { config: String, old: String },
    #[error(
        "{config} has no source named `{new}`: rename `{old}` to `{new}` there first (its `name`, and each hook's `sources`), then run this again"
    )]
    NewNotInConfig {
        config: String,
        old: String,
        new: String,
    },
    #[error(
        "source `{old}` has no state in {db}: nothing to rename (renamed already, or never polled)"
    )]
    NoState { old: String, db: String },
    #[error(
        "source `{new}` already has state (in {tables}): a rename cannot merge two sources; nothing was changed"
    )]
    Taken { new: String, tables: String },
}

/// Moves `old`'s state to `new`; returns what to print.
pub async fn run(config: &Config, old: &str, new: &str) -> Result<String, RenameError> {
    let path = config.path.display().to_string();
    let named = |n: &str| config.sources.iter().any(|s| s.name == n);
    if named(old) {
        return Err(RenameError::OldInConfig {
            config: path,
            old: old.into(),
        });
    }
    if !named(new) {
        return Err(RenameError::NewNotInConfig {
            config: path,
            old: old.into(),
            new: new.into(),
        });
    }
    let (store, lock, _backfills) =
        state::open(config, state::SourceRename)
            .await
            .map_err(|e| match e {
                OpenError::Writer(e @ (LockError::Held { .. } | LockError::Leased { .. })) => {
                    RenameError::DaemonRunning(e)
                }
                OpenError::Backfills(LockError::Held { dir, .. }) => {
                    RenameError::BackfillRunning(dir)
                }
                OpenError::Writer(e) | OpenError::Backfills(e) => RenameError::Lock(e),
                OpenError::State(e) => RenameError::State(e),
            })?;
    let renamed = store.rename_source(old, new).await;
    // A shared state's lease is given up now, not left to expire.
    lock.release().await;
    match renamed? {
        Rename::Done(moved) => {
            let rows: Vec<String> = moved.iter().map(|(t, n)| format!("{t} {n}")).collect();
            Ok(format!(
                "source `{old}` renamed to `{new}` (rows moved: {}); start the daemon: `{new}` goes on where `{old}` stopped\n",
                rows.join(", ")
            ))
        }
        Rename::NoState => Err(RenameError::NoState {
            old: old.into(),
            db: store.path().display().to_string(),
        }),
        Rename::TargetHasState(tables) => Err(RenameError::Taken {
            new: new.into(),
            tables: tables.join(", "),
        }),
    }
}
