//! FHIR Subscriptions notifications: an R4 Subscriptions Backport IG Bundle
//! (`history`, a `Parameters` status first) or an R5 one (`subscription-notification`,
//! a `SubscriptionStatus` first), for one or more changes of one hook.
//!
//! The resources are embedded byte for byte, as the server sent them.

use super::MAX_INCLUDED_BYTES;
use crate::config::{Content, Format};
use crate::state::{ChangeRecord, MessageBody};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::borrow::Cow;
use uuid::Uuid;

/// The `Content-Type` of a FHIR notification Bundle.
pub const CONTENT_TYPE: &str = "application/fhir+json";

const NOTIFICATION_R4: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
const STATUS_R4: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// Namespace for the ids of status entries (UUIDv5 of the bundle id).
const STATUS_NS: Uuid = Uuid::from_u128(0x3f0e_8a41_7c2d_4b6e_9d15_a7c3_5e2f_8b90);

/// `notification-type` of the IG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationType {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationType {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationType::Handshake => "handshake",
            NotificationType::Heartbeat => "heartbeat",
            NotificationType::EventNotification => "event-notification",
            NotificationType::QueryStatus => "query-status",
            NotificationType::QueryEvent => "query-event",
        }
    }
}

/// The subscription a hook stands for, as its notifications state it.
#[derive(Debug, Clone)]
pub struct Channel<'a> {
    pub format: Format,
    /// A stable reference per hook: `[admin]`'s URL + `/hooks/{name}`, or a URN.
    pub subscription: &'a str,
    /// The topic's canonical URL.
    pub topic: &'a str,
    /// `requested` | `active` | `error` | `off`.
    pub status: &'a str,
    /// The hook's last event number (events so far).
    pub events_since_start: i64,
}

/// One change with its event number, and where its resource lives.
#[derive(Debug, Clone, Copy)]
pub struct NumberedEvent<'a> {
    pub number: i64,
    pub change: &'a ChangeRecord,
    /// The source's base URL (no trailing slash); `None` if the source is gone.
    pub base_url: Option<&'a str>,
}

impl NumberedEvent<'_> {
    /// The resource's absolute URL on its server, else a relative reference.
    fn resource_url(&self) -> String {
        let c = self.change;
        match self.base_url {
            Some(base) => format!("{base}/{}/{}", c.resource_type, c.resource_id),
            None => format!("{}/{}", c.resource_type, c.resource_id),
        }
    }

    /// When the event happened: the resource's `lastUpdated` when it is an
    /// instant, else when the bridge saw it.
    fn timestamp(&self) -> &str {
        let c = self.change;
        match c.last_updated.as_deref() {
            Some(lu) if chrono::DateTime::parse_from_rfc3339(lu).is_ok() => lu,
            _ => &c.detected_at,
        }
    }
}

/// The change of a message; a message stored before changes were (a
/// rendered payload) or whose change is gone is told by reference only.
pub fn change_of<'a>(
    body: &'a MessageBody,
    resource_type: &str,
    resource_id: &str,
) -> Cow<'a, ChangeRecord> {
    match body {
        MessageBody::Change(c) => Cow::Borrowed(c),
        MessageBody::Stored(_) | MessageBody::Missing => Cow::Owned(ChangeRecord {
            id: 0,
            source: String::new(),
            owner_id: String::new(),
            resource_type: resource_type.to_string(),
            resource_id: resource_id.to_string(),
            version_id: None,
            last_updated: None,
            event: "update".into(),
            detected_at: crate::fhir::format_instant(chrono::Utc::now()),
            body: None,
        }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle<'a> {
    resource_type: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Value>,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    entry: Vec<Entry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<EntryResource<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EntryResource<'a> {
    Raw(&'a RawValue),
    Built(Value),
}

/// The notification Bundle for `events` (none for a handshake, heartbeat or
/// query-status), `id` its Bundle.id, `now` its timestamp.
pub fn notification(
    channel: &Channel,
    kind: NotificationType,
    content: Content,
    events: &[NumberedEvent],
    id: &str,
    now: &str,
) -> Vec<u8> {
    let status_id = Uuid::new_v5(&STATUS_NS, id.as_bytes()).to_string();
    let r4 = channel.format != Format::FhirR5;
    let status = if r4 {
        status_r4(channel, kind, content, events, &status_id)
    } else {
        status_r5(channel, kind, content, events, &status_id)
    };
    let mut entry = vec![Entry {
        full_url: format!("urn:uuid:{status_id}"),
        resource: Some(EntryResource::Built(status)),
        // A history bundle's entries carry request and response (R4 bdl-3/4).
        request: r4
            .then(|| json!({"method": "GET", "url": format!("{}/$status", channel.subscription)})),
        response: r4.then(|| json!({"status": "200"})),
    }];
    if content != Content::Empty {
        entry.extend(events.iter().map(|e| focus_entry(e, content)));
    }
    let bundle = Bundle {
        resource_type: "Bundle",
        id,
        meta: r4.then(|| json!({"profile": [NOTIFICATION_R4]})),
        // R5 has a Bundle type of its own for notifications; the backport
        // (and R5's $events) use `history`.
        kind: if r4 || kind == NotificationType::QueryEvent {
            "history"
        } else {
            "subscription-notification"
        },
        timestamp: now,
        entry,
    };
    serde_json::to_vec(&bundle).unwrap_or_default()
}

/// The entry of one change: its URL, what happened (request, response), and
/// the resource when the content mode and its size allow and it is held.
fn focus_entry<'a>(e: &NumberedEvent<'a>, content: Content) -> Entry<'a> {
    let c = e.change;
    let (method, url, status) = match c.event.as_str() {
        "create" => ("POST", c.resource_type.clone(), "201"),
        "delete" => (
            "DELETE",
            format!("{}/{}", c.resource_type, c.resource_id),
            "204",
        ),
        _ => (
            "PUT",
            format!("{}/{}", c.resource_type, c.resource_id),
            "200",
        ),
    };
    // A deleted resource has no body to send (a history DELETE entry has none).
    let resource = match (&c.body, content) {
        (Some(body), Content::FullResource)
            if body.len() <= MAX_INCLUDED_BYTES && method != "DELETE" =>
        {
            std::str::from_utf8(body)
                .ok()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
                .map(EntryResource::Raw)
        }
        _ => None,
    };
    Entry {
        full_url: e.resource_url(),
        resource,
        request: Some(json!({"method": method, "url": url})),
        response: Some(json!({"status": status})),
    }
}

fn status_r4(
    channel: &Channel,
    kind: NotificationType,
    content: Content,
    events: &[NumberedEvent],
    status_id: &str,
) -> Value {
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {"reference": channel.subscription}}),
        json!({"name": "topic", "valueCanonical": channel.topic}),
        json!({"name": "status", "valueCode": channel.status}),
        json!({"name": "type", "valueCode": kind.as_str()}),
        json!({"name": "events-since-subscription-start",
               "valueString": channel.events_since_start.to_string()}),
    ];
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": e.timestamp()}),
        ];
        if content != Content::Empty {
            part.push(json!({"name": "focus", "valueReference": {"reference": e.resource_url()}}));
        }
        parameter.push(json!({"name": "notification-event", "part": part}));
    }
    json!({
        "resourceType": "Parameters",
        "id": status_id,
        "meta": {"profile": [STATUS_R4]},
        "parameter": parameter,
    })
}

fn status_r5(
    channel: &Channel,
    kind: NotificationType,
    content: Content,
    events: &[NumberedEvent],
    status_id: &str,
) -> Value {
    let notification_event: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut ev = json!({"eventNumber": e.number.to_string(), "timestamp": e.timestamp()});
            if content != Content::Empty {
                ev["focus"] = json!({"reference": e.resource_url()});
            }
            ev
        })
        .collect();
    let mut status = json!({
        "resourceType": "SubscriptionStatus",
        "id": status_id,
        "status": channel.status,
        "type": kind.as_str(),
        // integer64: a JSON string in R5.
        "eventsSinceSubscriptionStart": channel.events_since_start.to_string(),
        "subscription": {"reference": channel.subscription},
        "topic": channel.topic,
    });
    if !notification_event.is_empty() {
        status["notificationEvent"] = Value::Array(notification_event);
    }
    status
}

#[cfg(test)]
#[path = "fhir_tests.rs"]
mod tests;
