//! `fhir-bridge dlq show MESSAGE_ID`: one message's metadata, and with
//! `--payload` the body it would send (it is PHI: the resource as the EHR
//! sent it), rendered for its hook as the worker does.

use super::dlq::DlqError;
use super::fmt_ms;
use crate::config::{Config, Content};
use crate::state::{self, MessageBody, MessageKey, MessageRecord, MessageState, WithBody};
use serde::Serialize;
use std::fmt::Write;

/// A message as `dlq show --json` prints it (stable keys, see README).
#[derive(Serialize)]
struct Shown<'a> {
    id: i64,
    hook: &'a str,
    /// The hook's event number for it; null for a message from before numbers.
    event_number: Option<i64>,
    state: MessageState,
    message_id: &'a str,
    source: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    version_id: Option<&'a str>,
    event: &'a str,
    attempts: i64,
    created_at_ms: i64,
    next_attempt_at_ms: i64,
    done_at_ms: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<&'a str>,
    payload_bytes: Option<i64>,
    change_id: Option<i64>,
    resource_bytes: Option<i64>,
    /// Only with --payload: the body it would send, as JSON when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
}

impl<'a> Shown<'a> {
    fn new(m: &'a MessageRecord, payload: Option<serde_json::Value>) -> Self {
        Shown {
            id: m.id,
            hook: &m.hook,
            event_number: m.event_number,
            state: m.state,
            message_id: &m.message_id,
            source: &m.source,
            resource_type: &m.resource_type,
            resource_id: &m.resource_id,
            version_id: m.version_id.as_deref(),
            event: &m.event,
            attempts: m.attempts,
            created_at_ms: m.created_at_ms,
            next_attempt_at_ms: m.next_attempt_at_ms,
            done_at_ms: m.done_at_ms,
            last_status: m.last_status,
            last_error: m.last_error.as_deref(),
            payload_bytes: m.stored.payload_bytes,
            change_id: m.stored.change_id,
            resource_bytes: m.stored.resource_bytes,
            payload,
        }
    }
}

/// The messages `message` (a row id or a message_id) names, of `hook` if
/// given: metadata, and with `payload` the stored payload.
pub async fn show(
    config: &Config,
    message: &str,
    hook: Option<String>,
    payload: bool,
    json: bool,
) -> Result<String, DlqError> {
    let Some(store) = state::open(config, state::ReadOnly).await? else {
        return Err(DlqError::NoSuchMessage(message.into()));
    };
    let with_body = if payload { WithBody::Yes } else { WithBody::No };
    let found = store
        .find_messages(MessageKey::parse(message), hook, with_body)
        .await?;
    if found.is_empty() {
        return Err(DlqError::NoSuchMessage(message.into()));
    }
    let payloads: Vec<_> = found
        .iter()
        .map(|d| {
            // Rendered for its hook's content mode; a hook no longer in the
            // config (orphaned) shows what a full-resource hook would get.
            let content = config
                .hooks
                .iter()
                .find(|h| h.name == d.hook)
                .map_or(Content::FullResource, |h| h.content);
            match &d.body {
                None | Some(MessageBody::Missing) => None,
                Some(body) => Some(body.render(&d.message_id, content)),
            }
        })
        .collect();
    if json {
        let shown: Vec<_> = found
            .iter()
            .zip(&payloads)
            .map(|(m, p)| {
                let payload = p.as_ref().map(|b| {
                    serde_json::from_slice(b).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                    })
                });
                Shown::new(m, payload)
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&shown)? + "\n");
    }
    let mut o = String::new();
    for (d, p) in found.iter().zip(&payloads) {
        render(&mut o, d, payload, p.as_deref());
    }
    Ok(o)
}

fn render(o: &mut String, d: &MessageRecord, asked: bool, payload: Option<&[u8]>) {
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(o, "{k:<14}{v}");
    };
    line("id", &d.id.to_string());
    line("message_id", &d.message_id);
    line("hook", &d.hook);
    line(
        "event number",
        &d.event_number.map_or("-".into(), |n| n.to_string()),
    );
    line("state", d.state.as_str());
    line("source", &d.source);
    let res = format!("{}/{}", d.resource_type, d.resource_id);
    line(
        "resource",
        &match &d.version_id {
            Some(v) => format!("{res} (versionId {v})"),
            None => res,
        },
    );
    line("event", &d.event);
    line("attempts", &d.attempts.to_string());
    line(
        "last status",
        &d.last_status.map(|s| s.to_string()).unwrap_or("-".into()),
    );
    line("last error", d.last_error.as_deref().unwrap_or("-"));
    line("created", &fmt_ms(d.created_at_ms));
    if d.state == MessageState::Pending {
        line("next attempt", &fmt_ms(d.next_attempt_at_ms));
    }
    if let Some(t) = d.done_at_ms {
        let k = if d.state == MessageState::Dead {
            "dead since"
        } else {
            "delivered"
        };
        line(k, &fmt_ms(t));
    }
    let s = &d.stored;
    let stored = match (s.payload_bytes, s.resource_bytes, s.change_id) {
        (Some(n), _, _) if asked => format!("{n} bytes, below"),
        (Some(n), _, _) => format!("{n} bytes stored (--payload prints it; it contains PHI)"),
        (None, Some(_), _) if asked => "rendered from the stored resource, below".into(),
        (None, Some(n), _) => format!(
            "rendered when sent; the resource: {n} bytes stored \
             (--payload prints it; it contains PHI)"
        ),
        (None, None, Some(_)) if asked => "rendered without the resource, below".into(),
        (None, None, Some(_)) => {
            "rendered when sent, without the resource (not stored: id-only hooks, \
             too large, or deleted on delivery)"
                .into()
        }
        (None, None, None) => "none stored (deleted on delivery)".into(),
    };
    line("payload", &stored);
    if let Some(p) = payload {
        let _ = writeln!(o, "{}", String::from_utf8_lossy(p));
    }
    let _ = writeln!(o);
}
