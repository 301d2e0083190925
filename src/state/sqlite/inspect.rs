//! One message in full, for `dlq show`: its metadata, and what it sends (a
//! stored payload, or its change to render) only when the operator asks for
//! it (the resource is PHI).

use super::message::{read_message, select_messages};
use super::{SqliteStore, StateError};
use crate::state::{MessageBody, MessageKey, MessageRecord, WithBody};
use rusqlite::params;

impl SqliteStore {
    pub async fn find_messages(
        &self,
        key: MessageKey,
        hook: Option<String>,
        body: WithBody,
    ) -> Result<Vec<MessageRecord>, StateError> {
        self.call(move |c| {
            let (id, mid) = match key {
                MessageKey::Id(id) => (Some(id), None),
                MessageKey::MessageId(m) => (None, Some(m)),
            };
            let mut stmt = c.prepare_cached(&select_messages(
                "WHERE (?1 IS NULL OR o.id = ?1) AND (?2 IS NULL OR o.message_id = ?2)
                   AND (?3 IS NULL OR o.hook = ?3)
                 ORDER BY o.id",
                body,
            ))?;
            let rows = stmt.query_map(params![id, mid, hook], |r| read_message(r, body))?;
            rows.collect()
        })
        .await
    }

    pub async fn message_body(&self, id: i64) -> Result<MessageBody, StateError> {
        let found = self
            .find_messages(MessageKey::Id(id), None, WithBody::Yes)
            .await?;
        Ok(found
            .into_iter()
            .next()
            .and_then(|m| m.body)
            .unwrap_or(MessageBody::Missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::test_util::temp_store;
    use crate::state::{NewMessage, PageCommit};

    #[tokio::test]
    async fn a_message_by_row_id_or_message_id_and_its_payload() {
        let (_d, store) = temp_store();
        let m = NewMessage::test("h", "m-1", "Observation", "7").with_body(b"{\"x\":1}".to_vec());
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    messages: vec![m],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let by_mid = store
            .find_messages(MessageKey::parse("m-1"), None, WithBody::No)
            .await
            .unwrap();
        assert_eq!(by_mid.len(), 1);
        let d = &by_mid[0];
        assert_eq!(
            (d.state.as_str(), d.stored.payload_bytes),
            ("pending", None)
        );
        assert_eq!(d.stored.resource_bytes, Some(7));
        assert_eq!((d.event_number, d.body.as_ref()), (Some(1), None));
        let by_id = store
            .find_messages(MessageKey::parse(&d.id.to_string()), None, WithBody::Yes)
            .await
            .unwrap();
        assert_eq!(by_id[0].message_id, "m-1");
        assert_eq!(
            by_id[0].body.as_ref().map(|b| b.raw()),
            Some(b"{\"x\":1}".to_vec())
        );
        let other_hook = store
            .find_messages(MessageKey::Id(d.id), Some("x".into()), WithBody::No)
            .await
            .unwrap();
        assert!(other_hook.is_empty());
        assert_eq!(store.message_body(d.id).await.unwrap().raw(), b"{\"x\":1}");
        assert_eq!(store.message_body(-1).await.unwrap(), MessageBody::Missing);
    }
}
