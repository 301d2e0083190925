//! What one POST carries: one claimed message rendered for its hook, or
//! (FHIR formats) up to `max_events_per_bundle` of them in one notification.

use super::channel::ChannelNow;
use crate::config::Hook;
use crate::payload::fhir::{NotificationType, NumberedEvent, change_of, notification};
use crate::state::{ChangeRecord, Claimed};
use std::borrow::Cow;
use uuid::Uuid;

/// Namespace for the ids of notifications that carry several messages.
const BUNDLE_NS: Uuid = Uuid::from_u128(0x9b2e_51c4_0d7a_4e38_b6f1_2a9c_e4d0_7f15);

/// A POST ready to go: its webhook id and body.
pub(super) struct Outgoing {
    pub id: String,
    pub body: Vec<u8>,
    /// Chosen with the body, by its payload format.
    pub content_type: &'static str,
}

/// The id of a notification of these messages: the message's own id for
/// one, a stable id derived from all of them for several (a retry of the
/// same batch carries the same id).
pub(super) fn notification_id(msgs: &[Claimed]) -> String {
    match msgs {
        [one] => one.message_id.clone(),
        many => {
            let ids: Vec<&str> = many.iter().map(|m| m.message_id.as_str()).collect();
            Uuid::new_v5(&BUNDLE_NS, ids.join("\n").as_bytes()).to_string()
        }
    }
}

/// Renders `msgs` (one, unless the hook batches) for `hook`.
pub(super) fn render(hook: &Hook, channel: Option<&ChannelNow>, msgs: &[Claimed]) -> Outgoing {
    let id = notification_id(msgs);
    let Some(channel) = channel.filter(|_| hook.notification.format.is_fhir()) else {
        let body = msgs
            .first()
            .map(|m| m.body.render(&m.message_id, hook.content))
            .unwrap_or_default();
        // A FHIR hook's type even before its channel is known (as before).
        let content_type = if hook.notification.format.is_fhir() {
            crate::payload::fhir::CONTENT_TYPE
        } else {
            crate::payload::CONTENT_TYPE
        };
        return Outgoing {
            id,
            body,
            content_type,
        };
    };
    let records: Vec<Cow<ChangeRecord>> = msgs
        .iter()
        .map(|m| change_of(&m.body, &m.resource_type, &m.resource_id))
        .collect();
    let events: Vec<NumberedEvent> = msgs
        .iter()
        .zip(&records)
        .map(|(m, c)| NumberedEvent {
            number: m.event_number.unwrap_or(0),
            change: c,
            base_url: channel.info.bases.get(&c.source).map(String::as_str),
        })
        .collect();
    // `events_since_start` is the keeper's (`Keeper::stamp`): never below
    // these events' numbers nor below what an earlier notification said.
    let ch = channel.channel(hook);
    let now = crate::fhir::format_instant(chrono::Utc::now());
    let body = notification(
        &ch,
        NotificationType::EventNotification,
        hook.content,
        &events,
        &id,
        &now,
    );
    Outgoing {
        id,
        body,
        content_type: crate::payload::fhir::CONTENT_TYPE,
    }
}
