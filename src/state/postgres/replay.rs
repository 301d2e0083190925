//! `replay` on PostgreSQL (as `sqlite/replay.rs`): delivered messages (and,
//! from an event number on, dead ones) back to pending with their row, hook,
//! message_id and event number.

use super::PgStore;
use super::filter::{Param, condition, params};
use super::message::{read_messages, select_messages};
use crate::state::{MessageFilter, MessageRecord, Requeue, StateError, WithBody, now_ms};

impl PgStore {
    pub async fn replay_candidates(
        &self,
        hook: &str,
        filter: MessageFilter,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&select_messages(
                &format!(
                    "WHERE o.hook = $1 AND o.state = 'delivered' AND {} ORDER BY o.id",
                    condition(2)
                ),
                WithBody::No,
            ))
            .await?;
        let mut p: Vec<Param> = vec![&hook];
        p.extend(params(&filter));
        read_messages(&client.query(&stmt, &p).await?, WithBody::No)
    }

    pub async fn replay_candidates_from_event(
        &self,
        hook: &str,
        from: i64,
        filter: MessageFilter,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&select_messages(
                &format!(
                    "WHERE o.hook = $1 AND o.event_number >= $2
                       AND o.state IN ('delivered', 'dead') AND {}
                     ORDER BY o.event_number",
                    condition(3)
                ),
                WithBody::No,
            ))
            .await?;
        let mut p: Vec<Param> = vec![&hook, &from];
        p.extend(params(&filter));
        read_messages(&client.query(&stmt, &p).await?, WithBody::No)
    }

    pub async fn requeue_delivered(&self, items: Vec<Requeue>) -> Result<usize, StateError> {
        self.requeue(items, false).await
    }

    pub async fn requeue_delivered_or_dead(
        &self,
        items: Vec<Requeue>,
    ) -> Result<usize, StateError> {
        self.requeue(items, true).await
    }

    /// Requeues delivered messages, and dead ones too if `dead_too`.
    async fn requeue(&self, items: Vec<Requeue>, dead_too: bool) -> Result<usize, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Their changes locked first (in id order): a delivery of another
        // message of the same change, dropping the body nobody else needed,
        // commits before (and the body is seen gone) or after (and sees
        // this one pending again), never in between.
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let lock = tx
            .prepare_cached(
                "SELECT 1 FROM change WHERE id IN
                    (SELECT change_id FROM outbox WHERE id = ANY($1))
                 ORDER BY id FOR SHARE",
            )
            .await?;
        tx.execute(&lock, &[&ids]).await?;
        let store_payload = tx
            .prepare_cached(
                "INSERT INTO outbox_payload (id, payload)
                 SELECT $1, $2 WHERE EXISTS
                    (SELECT 1 FROM outbox WHERE id = $1
                        AND (state = 'delivered' OR ($3::boolean AND state = 'dead')))
                 ON CONFLICT (id) DO NOTHING",
            )
            .await?;
        // Never pending with nothing to send: the worker would POST an
        // empty body. Pending again, it keeps its change's resource.
        let up = tx
            .prepare_cached(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $2,
                    done_at = NULL, last_status = NULL, last_error = NULL
                 WHERE id = $1 AND (state = 'delivered' OR ($4::boolean AND state = 'dead'))
                   AND (EXISTS (SELECT 1 FROM outbox_payload WHERE id = $1)
                        OR (change_id IS NOT NULL AND (NOT $3::boolean OR EXISTS
                            (SELECT 1 FROM change_body cb WHERE cb.id = outbox.change_id))))",
            )
            .await?;
        let now = now_ms();
        let mut n = 0;
        for item in items {
            if let Some(payload) = &item.payload {
                tx.execute(&store_payload, &[&item.id, payload, &dead_too])
                    .await?;
            }
            n += tx
                .execute(&up, &[&item.id, &now, &item.need_body, &dead_too])
                .await? as usize;
        }
        tx.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
