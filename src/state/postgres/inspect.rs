//! One message in full, for `dlq show` (as `sqlite/inspect.rs`): what it
//! sends only when the operator asks for it (the resource is PHI).

use super::PgStore;
use super::message::{read_messages, select_messages};
use crate::state::{MessageBody, MessageKey, MessageRecord, StateError, WithBody};

impl PgStore {
    pub async fn find_messages(
        &self,
        key: MessageKey,
        hook: Option<String>,
        body: WithBody,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let (id, mid) = match key {
            MessageKey::Id(id) => (Some(id), None),
            MessageKey::MessageId(m) => (None, Some(m)),
        };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&select_messages(
                "WHERE ($1::bigint IS NULL OR o.id = $1::bigint)
                   AND ($2::text IS NULL OR o.message_id = $2::text)
                   AND ($3::text IS NULL OR o.hook = $3::text)
                 ORDER BY o.id",
                body,
            ))
            .await?;
        let rows = client.query(&stmt, &[&id, &mid, &hook]).await?;
        read_messages(&rows, body)
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
#[path = "inspect_tests.rs"]
mod tests;
