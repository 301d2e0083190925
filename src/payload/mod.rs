//! Payload formats: the seam where a webhook's body is built, at send time,
//! from the stored change: ZusHook-style JSON, or a FHIR Subscriptions
//! notification Bundle (`fhir`).

pub mod fhir;

use crate::config::Content;
use crate::state::{ChangeRecord, MessageBody};
use serde::Serialize;
use serde_json::value::RawValue;

/// Resources larger than this are sent without their body (`resourceIncluded: false`).
pub const MAX_INCLUDED_BYTES: usize = 1_000_000;

/// The `Content-Type` of a ZusHook body.
pub const CONTENT_TYPE: &str = "application/json";

/// One change, as the ZusHook body needs it (borrowed from a stored change).
#[derive(Debug, Clone, Copy)]
struct ChangeView<'a> {
    pub message_id: &'a str,
    /// When the bridge detected the change (RFC 3339, UTC, seconds).
    pub time: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub owner_id: &'a str,
    pub source_name: &'a str,
    pub event: &'a str,
    pub version_id: Option<&'a str>,
    pub last_updated: Option<&'a str>,
    /// The resource as the server sent it.
    pub raw: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ZusHook<'a> {
    #[serde(rename = "message_id")]
    message_id: &'a str,
    source: &'static str,
    time: &'a str,
    resource_id: String,
    owner_id: &'a str,
    resource_included: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    event: &'a str,
    source_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_updated: Option<&'a str>,
}

/// The ZusHook-style JSON body. The resource is embedded byte for byte.
fn zus_hook(change: &ChangeView, content: Content) -> Vec<u8> {
    let include = content == Content::FullResource && change.raw.len() <= MAX_INCLUDED_BYTES;
    // `raw` came out of a parsed Bundle, so it is valid JSON; if it somehow is
    // not, the body is left out rather than sending broken JSON.
    let resource = if include {
        serde_json::from_str::<&RawValue>(change.raw).ok()
    } else {
        None
    };
    let body = ZusHook {
        message_id: change.message_id,
        source: "fhir-bridge",
        time: change.time,
        resource_id: format!("{}/{}", change.resource_type, change.resource_id),
        owner_id: change.owner_id,
        resource_included: resource.is_some(),
        resource,
        event: change.event,
        source_name: change.source_name,
        version_id: change.version_id,
        last_updated: change.last_updated,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The body a hook with `content` is sent for `change`, at send time. For
/// the same inputs it is byte for byte what was rendered and stored when the
/// change was detected before migration 7: a change keeps its body only when
/// some hook could include it, and a missing body leaves the resource out,
/// as the id-only and size rules did.
pub fn render(change: &ChangeRecord, message_id: &str, content: Content) -> Vec<u8> {
    // Stored from a `&str`, so UTF-8; if not, the resource is left out.
    let raw = change
        .body
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let view = ChangeView {
        message_id,
        time: &change.detected_at,
        resource_type: &change.resource_type,
        resource_id: &change.resource_id,
        owner_id: &change.owner_id,
        source_name: &change.source,
        event: &change.event,
        version_id: change.version_id.as_deref(),
        last_updated: change.last_updated.as_deref(),
        raw,
    };
    zus_hook(&view, content)
}

impl MessageBody {
    /// The bytes to send (and sign): a stored payload as is, else the change
    /// rendered for the hook.
    pub fn render(&self, message_id: &str, content: Content) -> Vec<u8> {
        match self {
            MessageBody::Stored(p) => p.clone(),
            MessageBody::Change(c) => render(c, message_id, content),
            MessageBody::Missing => Vec::new(),
        }
    }

    /// The resource's `lastUpdated`, for the end-to-end latency metric.
    pub fn last_updated(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            MessageBody::Stored(p) => last_updated(p),
            MessageBody::Change(c) => c
                .last_updated
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc()),
            MessageBody::Missing => None,
        }
    }
}

/// The resource's `lastUpdated` in a payload built by `zus_hook`, for the
/// end-to-end latency metric (the outbox does not store it apart). `None`
/// when the payload has none or is not one of ours.
pub fn last_updated(payload: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        // Every other field (the resource too) is scanned past, not built.
        #[serde(rename = "lastUpdated", borrow)]
        last_updated: Option<std::borrow::Cow<'a, str>>,
    }
    let stamp: Stamp = serde_json::from_slice(payload).ok()?;
    let text = stamp.last_updated?;
    chrono::DateTime::parse_from_rfc3339(&text)
        .ok()
        .map(|t| t.to_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(raw: &str) -> ChangeView<'_> {
        ChangeView {
            message_id: "m-1",
            time: "2026-11-21T13:48:32Z",
            resource_type: "Observation",
            resource_id: "123",
            owner_id: "org/lab",
            source_name: "lab-ehr",
            event: "update",
            version_id: Some("2"),
            last_updated: Some("2026-11-21T13:48:29.991Z"),
            raw,
        }
    }

    #[test]
    fn full_resource_payload_has_every_field() {
        let raw = r#"{"resourceType":"Observation","id":"123","valueQuantity":{"value":7.25}}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&zus_hook(&view(raw), Content::FullResource)).unwrap();
        assert_eq!(v["message_id"], "m-1");
        assert_eq!(v["source"], "fhir-bridge");
        assert_eq!(v["time"], "2026-11-21T13:48:32Z");
        assert_eq!(v["resourceId"], "Observation/123");
        assert_eq!(v["ownerId"], "org/lab");
        assert_eq!(v["resourceIncluded"], true);
        assert_eq!(v["resource"]["valueQuantity"]["value"], 7.25);
        assert_eq!(v["event"], "update");
        assert_eq!(v["sourceName"], "lab-ehr");
        assert_eq!(v["versionId"], "2");
        assert_eq!(v["lastUpdated"], "2026-11-21T13:48:29.991Z");
    }

    #[test]
    fn last_updated_is_read_back_from_a_payload() {
        // The resource's own meta.lastUpdated (nested) is not the one read.
        let raw = r#"{"resourceType":"Observation","id":"123","meta":{"lastUpdated":"2001-01-01T00:00:00Z"}}"#;
        let body = zus_hook(&view(raw), Content::FullResource);
        let lu = last_updated(&body).unwrap();
        assert_eq!(lu.to_rfc3339(), "2026-11-21T13:48:29.991+00:00");
        let mut none = view(raw);
        none.last_updated = None;
        assert_eq!(last_updated(&zus_hook(&none, Content::IdOnly)), None);
        assert_eq!(last_updated(b"not json"), None);
    }

    fn record(v: &ChangeView, body: Option<&str>) -> ChangeRecord {
        ChangeRecord {
            id: 1,
            source: v.source_name.into(),
            owner_id: v.owner_id.into(),
            resource_type: v.resource_type.into(),
            resource_id: v.resource_id.into(),
            version_id: v.version_id.map(String::from),
            last_updated: v.last_updated.map(String::from),
            event: v.event.into(),
            detected_at: v.time.into(),
            body: body.map(|b| b.as_bytes().to_vec()),
        }
    }

    /// Rendering at send time from the stored change gives exactly the bytes
    /// rendered at detection before: full, id-only, oversized, no versionId.
    #[test]
    fn rendering_from_a_change_matches_the_stored_payload() {
        let raw = r#"{"resourceType":"Observation", "id":"123","value":1.0000}"#;
        let big = format!(r#"{{"note":"{}"}}"#, "x".repeat(MAX_INCLUDED_BYTES));
        let mut bare = view(raw);
        (bare.version_id, bare.last_updated) = (None, None);
        for v in [view(raw), view(&big), bare] {
            for content in [Content::FullResource, Content::IdOnly] {
                let before = zus_hook(&v, content);
                let after = render(&record(&v, Some(v.raw)), v.message_id, content);
                assert_eq!(before, after, "{content:?}");
                // Without a stored body (no hook could include it): the same
                // id-only payload.
                let none = render(&record(&v, None), v.message_id, content);
                assert_eq!(none, zus_hook(&v, Content::IdOnly));
            }
        }
        let stored = MessageBody::Stored(b"{\"old\":1}".to_vec());
        assert_eq!(stored.render("m", Content::FullResource), b"{\"old\":1}");
    }

    #[test]
    fn the_resource_is_embedded_byte_for_byte() {
        let raw = r#"{"resourceType":"Observation","id":"123","value":1.0000}"#;
        let body = String::from_utf8(zus_hook(&view(raw), Content::FullResource)).unwrap();
        assert!(body.contains(raw), "{body}");
    }

    #[test]
    fn id_only_and_oversized_resources_are_left_out() {
        let raw = r#"{"resourceType":"Observation","id":"123"}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&zus_hook(&view(raw), Content::IdOnly)).unwrap();
        assert_eq!(v["resourceIncluded"], false);
        assert!(v.get("resource").is_none());
        let big = format!(
            r#"{{"resourceType":"Observation","id":"123","note":"{}"}}"#,
            "x".repeat(MAX_INCLUDED_BYTES)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&zus_hook(&view(&big), Content::FullResource)).unwrap();
        assert_eq!(v["resourceIncluded"], false);
        assert_eq!(v["resourceId"], "Observation/123");
    }

    /// A delete: `event = "delete"`, no resource, the delete's versionId.
    #[test]
    fn a_delete_carries_no_resource() {
        let mut v = view("");
        v.event = "delete";
        v.version_id = Some("3");
        let c = record(&v, None);
        let body: serde_json::Value =
            serde_json::from_slice(&render(&c, "m-1", Content::FullResource)).unwrap();
        assert_eq!(body["event"], "delete");
        assert_eq!(body["resourceIncluded"], false);
        assert!(body.get("resource").is_none());
        assert_eq!(body["versionId"], "3");
    }
}
