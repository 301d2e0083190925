//! One message in full, for `dlq show`: its metadata, and what it sends (a
//! stored payload, or its change to render) only when the operator asks for
//! it (the resource is PHI).

use super::change::{BODY_COLUMNS, MessageBody, read_body};
use super::{StateError, Store};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

/// How the operator names a message: the row id `dlq list` shows, or its
/// `message_id` (several rows when a message was moved to another hook and
/// the old one was kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKey {
    Id(i64),
    MessageId(String),
}

impl MessageKey {
    /// A number is a row id; anything else a message_id.
    pub fn parse(s: &str) -> MessageKey {
        match s.parse::<i64>() {
            Ok(id) => MessageKey::Id(id),
            Err(_) => MessageKey::MessageId(s.to_string()),
        }
    }
}

/// Everything stored about a message except its payload.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    pub id: i64,
    pub hook: String,
    /// "pending", "delivered" or "dead".
    pub state: String,
    pub message_id: String,
    pub source: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: Option<String>,
    pub event: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub next_attempt_at_ms: i64,
    /// When it was delivered or dead-lettered.
    pub done_at_ms: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    /// Size of the stored payload (messages from before migration 7); `None`
    /// once it is gone (deleted on delivery) or for a message of a change.
    pub payload_bytes: Option<i64>,
    /// The change it was made for; its body is rendered when it is sent.
    pub change_id: Option<i64>,
    /// Size of the change's stored resource; `None` once no pending or dead
    /// message needs it, or when no hook could include it.
    pub resource_bytes: Option<i64>,
}

impl Store {
    /// The messages `key` names, of `hook` if given, oldest first.
    pub async fn message_details(
        &self,
        key: MessageKey,
        hook: Option<String>,
    ) -> Result<Vec<MessageDetail>, StateError> {
        self.call(move |c| {
            let (id, mid) = match key {
                MessageKey::Id(id) => (Some(id), None),
                MessageKey::MessageId(m) => (None, Some(m)),
            };
            let mut stmt = c.prepare_cached(
                "SELECT o.id, o.hook, o.state, o.message_id, o.source, o.resource_type,
                        o.resource_id, o.version_id, o.event, o.attempts, o.created_at,
                        o.next_attempt_at, o.done_at, o.last_status, o.last_error,
                        (SELECT length(b.payload) FROM outbox_payload b WHERE b.id = o.id),
                        o.change_id,
                        (SELECT length(cb.body) FROM change_body cb WHERE cb.id = o.change_id)
                 FROM outbox o
                 WHERE (?1 IS NULL OR o.id = ?1) AND (?2 IS NULL OR o.message_id = ?2)
                   AND (?3 IS NULL OR o.hook = ?3)
                 ORDER BY o.id",
            )?;
            let rows = stmt.query_map(params![id, mid, hook], |r| {
                Ok(MessageDetail {
                    id: r.get(0)?,
                    hook: r.get(1)?,
                    state: r.get(2)?,
                    message_id: r.get(3)?,
                    source: r.get(4)?,
                    resource_type: r.get(5)?,
                    resource_id: r.get(6)?,
                    version_id: r.get(7)?,
                    event: r.get(8)?,
                    attempts: r.get(9)?,
                    created_at_ms: r.get(10)?,
                    next_attempt_at_ms: r.get(11)?,
                    done_at_ms: r.get(12)?,
                    last_status: r.get(13)?,
                    last_error: r.get(14)?,
                    payload_bytes: r.get(15)?,
                    change_id: r.get(16)?,
                    resource_bytes: r.get(17)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// What message `id` sends: its stored payload or its change, body
    /// included. PHI: only for an operator's explicit request.
    pub async fn message_body(&self, id: i64) -> Result<MessageBody, StateError> {
        self.call(move |c| {
            c.prepare_cached(&format!(
                "SELECT {BODY_COLUMNS} FROM outbox o LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.id = ?1"
            ))?
            .query_row(params![id], |r| read_body(r, 0))
            .optional()
            .map(|b| b.unwrap_or(MessageBody::Missing))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_util::temp_store;
    use crate::state::{NewMessage, PageCommit};

    #[tokio::test]
    async fn a_message_by_row_id_or_message_id_and_its_payload() {
        let (_d, store) = temp_store();
        let m = NewMessage::test("h", "m-1", "Observation", "7").with_body(b"{\"x\":1}".to_vec());
        store
            .commit_page(PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages: vec![m],
                ..Default::default()
            })
            .await
            .unwrap();
        let by_mid = store
            .message_details(MessageKey::parse("m-1"), None)
            .await
            .unwrap();
        assert_eq!(by_mid.len(), 1);
        let d = &by_mid[0];
        assert_eq!((d.state.as_str(), d.payload_bytes), ("pending", None));
        assert_eq!(d.resource_bytes, Some(7));
        let by_id = store
            .message_details(MessageKey::parse(&d.id.to_string()), None)
            .await
            .unwrap();
        assert_eq!(by_id[0].message_id, "m-1");
        let other_hook = store
            .message_details(MessageKey::Id(d.id), Some("x".into()))
            .await
            .unwrap();
        assert!(other_hook.is_empty());
        assert_eq!(store.message_body(d.id).await.unwrap().raw(), b"{\"x\":1}");
        assert_eq!(store.message_body(-1).await.unwrap(), MessageBody::Missing);
    }
}
