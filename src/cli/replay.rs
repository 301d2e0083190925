//! `fhir-bridge replay`: a hook's delivered messages (kept for `retention`)
//! sent again, each under its original row and message_id, so a receiver
//! that lost data gets it back and one that did not drops the duplicates.
//! Chosen by delivery time (`--since`), or by event number (`--from-event`:
//! delivered or dead messages numbered N on, keeping their numbers).
//!
//! What can be sent: a change's resource is deleted once no pending or dead
//! message needs it (no PHI at rest), and the seen table holds versions and
//! hashes only. So a message goes again in full when its resource is still
//! stored (another hook's message of the same change is undelivered), and
//! otherwise as an id-only notification (resourceIncluded: false) rendered
//! from its change: what an id-only hook sent in the first place; a
//! full-resource hook gets one only with `--id-only`. Messages from before
//! migration 7 (no change row) re-send a stored payload or an id-only one
//! rebuilt from the outbox row and the seen table. Re-fetching the resource
//! from the EHR (a vread of the delivered version) would lift this limit; it
//! is not done here.

use super::dlq::DlqError;
use super::fmt_ms;
use crate::config::{Config, Content, Hook};
use crate::payload;
use crate::route::message_id;
use crate::state::{self, ChangeRecord, MessageFilter, MessageRecord, Requeue, Store};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Which of a hook's messages to send again.
#[derive(Debug, Clone)]
pub enum Replayed {
    /// Delivered messages the filter selects (its time window is the
    /// delivery time), oldest first.
    Delivered(MessageFilter),
    /// Delivered or dead messages numbered `from` or later (of the filter's
    /// source and resource), in event-number order, keeping their numbers.
    FromEvent { from: i64, filter: MessageFilter },
}

pub struct Request {
    pub hook: String,
    pub which: Replayed,
    /// Re-render id-only notifications for a full-resource hook too.
    pub id_only: bool,
    /// Do not ask, even on a terminal.
    pub yes: bool,
}

pub async fn replay(config: &Config, req: Request) -> Result<String, DlqError> {
    let Some(hook) = config.hooks.iter().find(|h| h.name == req.hook) else {
        return Err(DlqError::NotConfigured {
            hook: req.hook,
            config: config.path.display().to_string(),
        });
    };
    let Some(store) = state::open(config, state::ReadOnly).await? else {
        return Ok(format!(
            "replayed 0 message(s): hook `{}` has delivered nothing yet\n",
            hook.name
        ));
    };
    let found = match &req.which {
        Replayed::Delivered(filter) => store.replay_candidates(&hook.name, filter.clone()).await?,
        Replayed::FromEvent { from, filter } => {
            store
                .replay_candidates_from_event(&hook.name, *from, filter.clone())
                .await?
        }
    };
    let render = req.id_only || hook.content == Content::IdOnly;
    let last_updated = if render {
        last_updated_of(&store, &hook.name, &found).await?
    } else {
        BTreeMap::new()
    };
    let Plan {
        requeues: plan,
        full,
        rendered,
        missing,
    } = plan(config, hook, &found, render, &last_updated);
    // What the messages are called in the output: `--since` keeps its words.
    let (what, numbered) = match &req.which {
        Replayed::Delivered(_) => ("delivered message(s)".to_string(), ""),
        Replayed::FromEvent { from, .. } => (
            format!("delivered or dead message(s) from event {from}"),
            " and event numbers",
        ),
    };
    let mut o = String::new();
    if !plan.is_empty() {
        let question = match &req.which {
            Replayed::Delivered(_) => format!(
                "Send {} delivered message(s) of hook `{}` again",
                plan.len(),
                hook.name
            ),
            Replayed::FromEvent { from, .. } => format!(
                "Send {} message(s) of hook `{}` from event {from} again",
                plan.len(),
                hook.name
            ),
        };
        super::dlq::confirm(&question, req.yes)?;
        // A writer only after the confirmation: declining changes nothing.
        let store = state::open(config, state::ReadWrite).await?;
        let planned = plan.len();
        let done = match &req.which {
            Replayed::Delivered(_) => store.requeue_delivered(plan).await?,
            Replayed::FromEvent { .. } => store.requeue_delivered_or_dead(plan).await?,
        };
        let _ = writeln!(
            o,
            "requeued {done} of {} {what} of hook `{}` with their message_ids{numbered} \
             ({full} with the resource, {rendered} as id-only notifications); a running daemon \
             sends them within a second",
            found.len(),
            hook.name
        );
        if done < planned {
            let _ = writeln!(
                o,
                "{} changed meanwhile (pruned past retention, already requeued, or the \
                 resource was deleted): left alone",
                planned - done
            );
        }
    } else {
        let _ = writeln!(
            o,
            "requeued 0 of {} {what} of hook `{}`",
            found.len(),
            hook.name
        );
    }
    if missing > 0 {
        let _ = writeln!(
            o,
            "{missing} message(s) cannot be replayed: their resource was deleted on delivery (no PHI \
             is kept at rest); --id-only sends them as id-only notifications \
             (resourceIncluded: false, the receiver fetches the resource by resourceId)"
        );
    }
    Ok(o)
}

/// What replaying the messages `found` takes, decided without I/O: each one
/// requeued as it is (a stored payload; a change rendered when sent, with
/// its resource for a full-resource hook), with an id-only payload made now
/// (a message whose change is gone, with `render`), or not at all.
struct Plan {
    requeues: Vec<Requeue>,
    /// Requeued with their resource.
    full: usize,
    /// Requeued as id-only notifications.
    rendered: usize,
    /// Not replayable: their resource was deleted on delivery.
    missing: usize,
}

fn plan(
    config: &Config,
    hook: &Hook,
    found: &[MessageRecord],
    render: bool,
    last_updated: &BTreeMap<i64, String>,
) -> Plan {
    let mut plan = Vec::new();
    let (mut full, mut rendered, mut missing) = (0, 0, 0);
    for c in found {
        let keep = |need_body| Requeue {
            id: c.id,
            payload: None,
            need_body,
        };
        let has_change = c.stored.change_id.is_some();
        if c.stored.has_payload() {
            plan.push(keep(false));
        } else if has_change && c.stored.has_resource() && hook.content == Content::FullResource {
            plan.push(keep(true));
            full += 1;
        } else if has_change && render {
            // Rendered when sent: without a stored resource, id-only.
            plan.push(keep(false));
            rendered += 1;
        } else if render {
            let lu = last_updated.get(&c.id).map(String::as_str);
            plan.push(Requeue {
                id: c.id,
                payload: Some(id_only_payload(config, c, lu)),
                need_body: false,
            });
            rendered += 1;
        } else {
            missing += 1;
        }
    }
    Plan {
        requeues: plan,
        full,
        rendered,
        missing,
    }
}

/// The `lastUpdated` of each candidate whose version is still the one the
/// seen table holds (recognised by its message_id), by row id.
async fn last_updated_of(
    store: &Store,
    hook: &str,
    found: &[MessageRecord],
) -> Result<BTreeMap<i64, String>, DlqError> {
    let mut by_target: BTreeMap<(&str, &str), Vec<&MessageRecord>> = BTreeMap::new();
    // Only messages from before migration 7: a change row has its own.
    for c in found
        .iter()
        .filter(|c| !c.stored.has_payload() && c.stored.change_id.is_none())
    {
        by_target
            .entry((&c.source, &c.resource_type))
            .or_default()
            .push(c);
    }
    let mut out = BTreeMap::new();
    for ((source, rt), cs) in by_target {
        let ids = cs.iter().map(|c| c.resource_id.clone()).collect();
        let seen = store.load_seen(source, rt, ids).await?;
        for c in cs {
            let Some(row) = seen.get(&c.resource_id) else {
                continue;
            };
            let key = match (&row.version_id, &row.last_updated) {
                (Some(v), _) => format!("v:{v}"),
                (None, lu) => format!(
                    "h:{}:{}",
                    hex(&row.content_hash),
                    lu.as_deref().unwrap_or("")
                ),
            };
            if message_id(hook, source, rt, &c.resource_id, &key) == c.message_id
                && let Some(lu) = &row.last_updated
            {
                out.insert(c.id, lu.clone());
            }
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The webhook an id-only hook sends, for a delivered message: its
/// message_id, resourceId, versionId, event, source and owner; `time` is
/// when the change was detected (the row's creation).
fn id_only_payload(config: &Config, c: &MessageRecord, last_updated: Option<&str>) -> Vec<u8> {
    let owner = config
        .sources
        .iter()
        .find(|s| s.name == c.source)
        .map_or(c.source.as_str(), |s| s.owner_id.as_str());
    let change = ChangeRecord {
        id: 0,
        source: c.source.clone(),
        owner_id: owner.to_string(),
        resource_type: c.resource_type.clone(),
        resource_id: c.resource_id.clone(),
        version_id: c.version_id.clone(),
        last_updated: last_updated.map(str::to_string),
        event: c.event.clone(),
        detected_at: fmt_ms(c.created_at_ms),
        body: None,
    };
    payload::render(&change, &c.message_id, Content::IdOnly)
}

#[cfg(test)]
mod tests {
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["fhir-bridge", "replay", "--hook", "h"];
        all.extend(args);
        Cli::try_parse_from(all)
    }

    /// Exactly one of --since and --from-event; --until only with --since.
    #[test]
    fn replay_starts_from_a_time_or_an_event_number() {
        let Ok(Cli {
            command: Command::Replay(a),
            ..
        }) = parse(&["--from-event", "7", "--resource", "Observation"])
        else {
            panic!("--from-event");
        };
        assert_eq!((a.from_event, a.since), (Some(7), None));
        assert!(parse(&["--since", "2h", "--until", "1h"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--since", "2h", "--from-event", "7"]).is_err());
        assert!(parse(&["--from-event", "7", "--until", "1h"]).is_err());
        assert!(parse(&["--from-event", "0"]).is_err());
        assert!(parse(&["--from-event", "x"]).is_err());
    }
}
