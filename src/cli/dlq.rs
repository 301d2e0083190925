//! `fhir-bridge dlq list|redrive|purge`: the dead-letter queue, and the
//! messages of orphaned hooks (renamed or removed from the config), without SQL.
//! Each command returns the text to print.

use super::fmt_ms;
use crate::config::Config;
use crate::state::{DeadLetter, DlqSelection, StateError, Store};
use std::fmt::Write;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no hook is named `{hook}` in {config}")]
    NotConfigured { hook: String, config: String },
    #[error("no hook is named `{hook}` in {config}, and the state holds no message of it")]
    Unknown { hook: String, config: String },
    #[error(
        "hook `{hook}` is not in {config} any more: move its messages to a configured hook with \
         `fhir-bridge dlq redrive --hook {hook} --to-hook NEW`, or delete them with \
         `fhir-bridge dlq purge --hook {hook}`"
    )]
    Orphaned { hook: String, config: String },
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Which messages: `--hook`, and `--all` or ids.
pub struct Selection {
    pub hook: Option<String>,
    pub all: bool,
    pub ids: Vec<i64>,
}

fn configured(config: &Config) -> Vec<String> {
    config.hooks.iter().map(|h| h.name.clone()).collect()
}

fn is_configured(config: &Config, hook: &str) -> bool {
    config.hooks.iter().any(|h| h.name == hook)
}

fn selection(config: &Config, sel: Selection) -> DlqSelection {
    DlqSelection {
        hook: sel.hook,
        ids: (!sel.all).then_some(sel.ids),
        configured: configured(config),
    }
}

fn not_configured(config: &Config, hook: &str) -> DlqError {
    DlqError::NotConfigured {
        hook: hook.into(),
        config: config.path.display().to_string(),
    }
}

/// `--hook` of purge and `--to-hook` moves: a configured hook, or one the
/// state still holds messages of (an orphaned hook).
async fn check_known(
    store: &Store,
    config: &Config,
    hook: &Option<String>,
) -> Result<(), DlqError> {
    if let Some(h) = hook
        && !is_configured(config, h)
        && !store.hook_has_messages(h).await?
    {
        return Err(DlqError::Unknown {
            hook: h.clone(),
            config: config.path.display().to_string(),
        });
    }
    Ok(())
}

pub async fn list(config: &Config, hook: Option<String>, json: bool) -> Result<String, DlqError> {
    let items = match Store::open_read_only(&config.db_path())? {
        Some(store) => store.dlq_list(hook, configured(config)).await?,
        None => vec![],
    };
    Ok(if json {
        serde_json::to_string_pretty(&items)? + "\n"
    } else {
        render_list(&items)
    })
}

/// Requeues dead letters on their own hook, or (`to_hook`) moves dead letters
/// and an orphaned hook's pending messages to another, configured hook.
pub async fn redrive(
    config: &Config,
    sel: Selection,
    to_hook: Option<String>,
) -> Result<String, DlqError> {
    let Some(to) = to_hook else {
        if let Some(h) = &sel.hook
            && !is_configured(config, h)
        {
            let orphaned = match Store::open_read_only(&config.db_path())? {
                Some(s) => s.hook_has_messages(h).await?,
                None => false,
            };
            return Err(if orphaned {
                DlqError::Orphaned {
                    hook: h.clone(),
                    config: config.path.display().to_string(),
                }
            } else {
                not_configured(config, h)
            });
        }
        let store = Store::open(&config.db_path())?;
        let n = store.redrive(selection(config, sel)).await?;
        return Ok(format!(
            "requeued {n} message(s); a running daemon delivers them within a second\n"
        ));
    };
    if !is_configured(config, &to) {
        return Err(not_configured(config, &to));
    }
    let store = Store::open(&config.db_path())?;
    check_known(&store, config, &sel.hook).await?;
    let done = store.move_to_hook(selection(config, sel), &to).await?;
    let mut o = format!(
        "moved {} message(s) to hook `{to}`; a running daemon delivers them within a second\n",
        done.moved
    );
    if done.duplicates > 0 {
        let _ = writeln!(
            o,
            "dropped {} duplicate(s): hook `{to}` already had their message_id",
            done.duplicates
        );
    }
    Ok(o)
}

/// Deletes dead letters, and the pending messages of an orphaned hook when
/// that hook (or its messages' ids) is named.
pub async fn purge(config: &Config, sel: Selection) -> Result<String, DlqError> {
    let store = Store::open(&config.db_path())?;
    check_known(&store, config, &sel.hook).await?;
    let n = store.purge(selection(config, sel)).await?;
    Ok(format!("deleted {n} message(s)\n"))
}

pub fn render_list(items: &[DeadLetter]) -> String {
    if items.is_empty() {
        return "The dead-letter queue is empty.\n".into();
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>8}  {:<20} {:<7}  {:<32} {:<8} {:>8}  {:<20}  {:<36}  LAST ERROR",
        "ID", "HOOK", "STATE", "RESOURCE", "EVENT", "ATTEMPTS", "DEAD SINCE", "MESSAGE ID"
    );
    for d in items {
        let res = match &d.version_id {
            Some(v) => format!("{}/{} v{}", d.resource_type, d.resource_id, v),
            None => format!("{}/{}", d.resource_type, d.resource_id),
        };
        let _ = writeln!(
            o,
            "{:>8}  {:<20} {:<7}  {:<32} {:<8} {:>8}  {:<20}  {:<36}  {}",
            d.id,
            d.hook,
            d.state,
            res,
            d.event,
            d.attempts,
            d.dead_at_ms.map(fmt_ms).unwrap_or_default(),
            d.message_id,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    let pending = items.iter().filter(|d| d.state == "pending").count();
    let _ = writeln!(o, "{} dead letter(s)", items.len() - pending);
    if pending > 0 {
        let _ = writeln!(
            o,
            "{pending} pending message(s) of hooks no longer in the config (nothing sends them): \
             move them with `fhir-bridge dlq redrive --hook OLD --to-hook NEW --all`, \
             or delete them with `fhir-bridge dlq purge --hook OLD --all`"
        );
    }
    o
}
