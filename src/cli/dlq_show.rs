//! `fhir-bridge dlq show MESSAGE_ID`: one message's metadata, and with
//! `--payload` the body it would send (it is PHI: the resource as the EHR
//! sent it), rendered for its hook as the worker does.

use super::dlq::DlqError;
use super::fmt_ms;
use crate::config::{Config, Content};
use crate::state::{MessageBody, MessageDetail, MessageKey, Store};
use serde::Serialize;
use std::fmt::Write;

#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    detail: &'a MessageDetail,
    /// Only with --payload: the body it would send, as JSON when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
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
    let Some(store) = Store::open_read_only(&config.db_path())? else {
        return Err(DlqError::NoSuchMessage(message.into()));
    };
    let found = store
        .message_details(MessageKey::parse(message), hook)
        .await?;
    if found.is_empty() {
        return Err(DlqError::NoSuchMessage(message.into()));
    }
    let mut payloads = Vec::new();
    for d in &found {
        payloads.push(if payload {
            // Rendered for its hook's content mode; a hook no longer in the
            // config (orphaned) shows what a full-resource hook would get.
            let content = config
                .hooks
                .iter()
                .find(|h| h.name == d.hook)
                .map_or(Content::FullResource, |h| h.content);
            match store.message_body(d.id).await? {
                MessageBody::Missing => None,
                body => Some(body.render(&d.message_id, content)),
            }
        } else {
            None
        });
    }
    if json {
        let shown: Vec<_> = found
            .iter()
            .zip(&payloads)
            .map(|(detail, p)| Shown {
                detail,
                payload: p.as_ref().map(|b| {
                    serde_json::from_slice(b).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                    })
                }),
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

fn render(o: &mut String, d: &MessageDetail, asked: bool, payload: Option<&[u8]>) {
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(o, "{k:<14}{v}");
    };
    line("id", &d.id.to_string());
    line("message_id", &d.message_id);
    line("hook", &d.hook);
    line("state", &d.state);
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
    if d.state == "pending" {
        line("next attempt", &fmt_ms(d.next_attempt_at_ms));
    }
    if let Some(t) = d.done_at_ms {
        let k = if d.state == "dead" {
            "dead since"
        } else {
            "delivered"
        };
        line(k, &fmt_ms(t));
    }
    let stored = match (d.payload_bytes, d.resource_bytes, d.change_id) {
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
