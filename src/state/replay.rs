//! `replay`: delivered messages (kept for `retention`) back to pending, with
//! their row, hook and message_id, so the daemon sends them again. A
//! delivered message's payload is deleted on delivery (no PHI at rest), so a
//! replay either finds it still stored (rare: delivered by an older version
//! before migration 3 dropped it, or re-rendered and not yet sent) or stores
//! a re-rendered one that the caller provides.

use super::filter::{MessageFilter, condition};
use super::{StateError, Store, now_ms};
use rusqlite::{ToSql, params};

/// A delivered message that `replay` may send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCandidate {
    pub id: i64,
    pub message_id: String,
    pub source: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: Option<String>,
    pub event: String,
    pub created_at_ms: i64,
    pub done_at_ms: Option<i64>,
    /// Whether its payload is still stored.
    pub has_payload: bool,
}

/// One message to requeue, with the payload to store when it has none.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub id: i64,
    /// `None`: send the payload still stored (a message without one is skipped).
    pub payload: Option<Vec<u8>>,
}

impl Store {
    /// Delivered messages of `hook` that `filter` selects (its time is the
    /// delivery time), oldest first.
    pub async fn replay_candidates(
        &self,
        hook: &str,
        filter: MessageFilter,
    ) -> Result<Vec<ReplayCandidate>, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT o.id, o.message_id, o.source, o.resource_type, o.resource_id,
                        o.version_id, o.event, o.created_at, o.done_at,
                        EXISTS (SELECT 1 FROM outbox_payload b WHERE b.id = o.id)
                 FROM outbox o WHERE o.hook = ?1 AND o.state = 'delivered' AND {}
                 ORDER BY o.id",
                condition(2)
            ))?;
            let mut p: Vec<&dyn ToSql> = vec![&hook];
            p.extend(filter.params());
            let rows = stmt.query_map(&*p, |r| {
                Ok(ReplayCandidate {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    source: r.get(2)?,
                    resource_type: r.get(3)?,
                    resource_id: r.get(4)?,
                    version_id: r.get(5)?,
                    event: r.get(6)?,
                    created_at_ms: r.get(7)?,
                    done_at_ms: r.get(8)?,
                    has_payload: r.get(9)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Makes these delivered messages pending again, due now, with a fresh
    /// attempt budget, in one transaction. A message that is no longer
    /// delivered (pruned meanwhile, or already requeued) or has no payload
    /// to send is left alone. Returns how many were requeued.
    pub async fn requeue_delivered(&self, items: Vec<Requeue>) -> Result<usize, StateError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut n = 0;
            {
                let mut store_payload = tx.prepare_cached(
                    "INSERT INTO outbox_payload (id, payload)
                     SELECT ?1, ?2 WHERE EXISTS
                        (SELECT 1 FROM outbox WHERE id = ?1 AND state = 'delivered')
                     ON CONFLICT (id) DO NOTHING",
                )?;
                // Never pending without a payload: the worker would POST an empty body.
                let mut up = tx.prepare_cached(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                        done_at = NULL, last_status = NULL, last_error = NULL
                     WHERE id = ?1 AND state = 'delivered'
                       AND EXISTS (SELECT 1 FROM outbox_payload WHERE id = ?1)",
                )?;
                let now = now_ms();
                for item in items {
                    if let Some(payload) = &item.payload {
                        store_payload.execute(params![item.id, payload])?;
                    }
                    n += up.execute(params![item.id, now])?;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_util::temp_store;
    use crate::state::{DeliveryRecord, NewMessage, PageCommit};

    async fn delivered(store: &Store, ids: &[&str]) {
        let msgs = ids
            .iter()
            .map(|m| NewMessage::test("h", m, "Observation", m))
            .collect();
        store
            .commit_page(PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages: msgs,
                ..Default::default()
            })
            .await
            .unwrap();
        let claimed = store.claim_due("h", vec![], 100).await.unwrap();
        let done = claimed
            .iter()
            .map(|c| (c.id, DeliveryRecord::Delivered { status: 200 }))
            .collect();
        store.record_deliveries("h", done).await.unwrap();
    }

    #[tokio::test]
    async fn delivered_messages_come_back_pending_with_a_payload_only() {
        let (_d, store) = temp_store();
        delivered(&store, &["a", "b"]).await;
        let found = store
            .replay_candidates("h", MessageFilter::default())
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|c| !c.has_payload), "deleted on delivery");
        let only_b = MessageFilter {
            resource_id: Some("b".into()),
            ..Default::default()
        };
        let b = store.replay_candidates("h", only_b).await.unwrap();
        assert_eq!(b.len(), 1);
        let future = MessageFilter {
            since_ms: Some(now_ms() + 60_000),
            ..Default::default()
        };
        assert!(
            store
                .replay_candidates("h", future)
                .await
                .unwrap()
                .is_empty()
        );

        // `a` has no payload and none is given: left delivered.
        let n = store
            .requeue_delivered(vec![
                Requeue {
                    id: found[0].id,
                    payload: None,
                },
                Requeue {
                    id: found[1].id,
                    payload: Some(b"{\"again\":true}".to_vec()),
                },
            ])
            .await
            .unwrap();
        assert_eq!(n, 1);
        let claimed = store.claim_due("h", vec![], 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].message_id, "b");
        assert_eq!(claimed[0].attempts, 0);
        assert_eq!(claimed[0].payload, b"{\"again\":true}");
        // Requeued once: not delivered any more, so not again.
        let again = store
            .requeue_delivered(vec![Requeue {
                id: found[1].id,
                payload: Some(b"{}".to_vec()),
            }])
            .await
            .unwrap();
        assert_eq!(again, 0);
    }
}
