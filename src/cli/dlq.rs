//! `fhir-bridge dlq list|redrive|purge`: the dead-letter queue, and the
//! messages of orphaned hooks (renamed or removed from the config), without SQL.
//! Each command returns the text to print.

use super::fmt_ms;
use super::when::ResourceRef;
use crate::config::Config;
use crate::state::{
    self, DlqSelection, MessageFilter, MessageRecord, MessageState, StateError, Store,
};
use serde::Serialize;
use std::fmt::Write;

pub use super::dlq_show::show;

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
    #[error("no message `{0}` in the state (see `fhir-bridge dlq list`)")]
    NoSuchMessage(String),
    #[error("cannot ask for confirmation: {0} (pass --yes)")]
    Prompt(#[source] std::io::Error),
    /// The operator answered no: nothing was changed.
    #[error("cancelled; nothing was changed")]
    Declined,
}

/// `--source`, `--since`, `--until` and `--resource` as the state takes them.
pub fn filter(
    source: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    resource: Option<ResourceRef>,
) -> MessageFilter {
    let (resource_type, resource_id) = match resource {
        Some(r) => (Some(r.resource_type), r.id),
        None => (None, None),
    };
    MessageFilter {
        source,
        resource_type,
        resource_id,
        since_ms,
        until_ms,
    }
}

/// Asks (on a terminal, without --yes) whether to go ahead.
pub(super) fn confirm(what: &str, yes: bool) -> Result<(), DlqError> {
    match super::confirm::proceed(what, yes) {
        Ok(true) => Ok(()),
        Ok(false) => Err(DlqError::Declined),
        Err(e) => Err(DlqError::Prompt(e)),
    }
}

/// Which messages: `--hook`, the filters, and `--all` or ids; `--yes`.
pub struct Selection {
    pub hook: Option<String>,
    pub all: bool,
    pub ids: Vec<i64>,
    pub filter: MessageFilter,
    /// Do not ask, even on a terminal.
    pub yes: bool,
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
        // Filters alone select like --all.
        ids: (!sel.all && !sel.ids.is_empty()).then_some(sel.ids),
        configured: configured(config),
        filter: sel.filter,
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

pub async fn list(
    config: &Config,
    hook: Option<String>,
    filter: MessageFilter,
    json: bool,
) -> Result<String, DlqError> {
    let items = match state::open(config, state::ReadOnly).await? {
        Some(store) => {
            store
                .dlq_list_filtered(hook, filter, configured(config))
                .await?
        }
        None => vec![],
    };
    Ok(if json {
        let listed: Vec<_> = items.iter().map(Listed::from).collect();
        serde_json::to_string_pretty(&listed)? + "\n"
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
            let orphaned = match state::open(config, state::ReadOnly).await? {
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
        let store = state::open(config, state::ReadWrite).await?;
        let yes = sel.yes;
        let mut chosen = selection(config, sel);
        let ids = store.dlq_selected(chosen.clone(), false).await?;
        if ids.is_empty() {
            return Ok("requeued 0 message(s): no dead letter matches\n".into());
        }
        confirm(
            &format!("Requeue {} dead letter(s) for delivery", ids.len()),
            yes,
        )?;
        // Exactly what was confirmed, not what arrived meanwhile.
        chosen.ids = Some(ids);
        let n = store.redrive(chosen).await?;
        return Ok(format!(
            "requeued {n} message(s); a running daemon delivers them within a second\n"
        ));
    };
    if !is_configured(config, &to) {
        return Err(not_configured(config, &to));
    }
    let store = state::open(config, state::ReadWrite).await?;
    check_known(&store, config, &sel.hook).await?;
    let yes = sel.yes;
    let mut chosen = selection(config, sel);
    let ids = store.dlq_selected(chosen.clone(), true).await?;
    if ids.is_empty() {
        return Ok(format!("moved 0 message(s) to hook `{to}`: none matches\n"));
    }
    confirm(
        &format!("Move {} message(s) to hook `{to}`", ids.len()),
        yes,
    )?;
    chosen.ids = Some(ids);
    let done = store.move_to_hook(chosen, &to).await?;
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
    let store = state::open(config, state::ReadWrite).await?;
    check_known(&store, config, &sel.hook).await?;
    let yes = sel.yes;
    let mut chosen = selection(config, sel);
    let ids = store.dlq_selected(chosen.clone(), true).await?;
    if ids.is_empty() {
        return Ok("deleted 0 message(s): none matches\n".into());
    }
    confirm(&format!("Delete {} message(s) for good", ids.len()), yes)?;
    chosen.ids = Some(ids);
    let n = store.purge(chosen).await?;
    Ok(format!("deleted {n} message(s)\n"))
}

/// A message as `dlq list --json` prints it (stable keys, see README).
#[derive(Serialize)]
struct Listed<'a> {
    id: i64,
    hook: &'a str,
    /// "dead", or "pending" (a message of an orphaned hook: never sent as is).
    state: MessageState,
    message_id: &'a str,
    source: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    version_id: Option<&'a str>,
    event: &'a str,
    attempts: i64,
    created_at_ms: i64,
    dead_at_ms: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<&'a str>,
}

impl<'a> From<&'a MessageRecord> for Listed<'a> {
    fn from(m: &'a MessageRecord) -> Self {
        Listed {
            id: m.id,
            hook: &m.hook,
            state: m.state,
            message_id: &m.message_id,
            source: &m.source,
            resource_type: &m.resource_type,
            resource_id: &m.resource_id,
            version_id: m.version_id.as_deref(),
            event: &m.event,
            attempts: m.attempts,
            created_at_ms: m.created_at_ms,
            dead_at_ms: m.done_at_ms,
            last_status: m.last_status,
            last_error: m.last_error.as_deref(),
        }
    }
}

pub fn render_list(items: &[MessageRecord]) -> String {
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
            d.done_at_ms.map(fmt_ms).unwrap_or_default(),
            d.message_id,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    let pending = items
        .iter()
        .filter(|d| d.state == MessageState::Pending)
        .count();
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
