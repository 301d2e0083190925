//! The transactional outbox: messages waiting for, or done with, delivery.

use super::change::{BODY_COLUMNS, delete_change, insert_change, read_body};
use super::event_number::EventCounter;
use super::{SqliteStore, StateError, now_ms};
use crate::state::Fence;
use crate::state::{Claimed, DeliveryRecord, NewMessage};
use rusqlite::{Transaction, params};
use std::sync::Arc;

/// The columns `read_claimed` reads, for an outbox row `o` and its change `c`.
const CLAIMED_COLUMNS: &str = "o.id, o.message_id, o.resource_type, o.resource_id, o.attempts,
    o.created_at, o.event_number, o.batch_id";

fn read_claimed(r: &rusqlite::Row) -> rusqlite::Result<Claimed> {
    Ok(Claimed {
        id: r.get(0)?,
        message_id: r.get(1)?,
        resource_type: r.get(2)?,
        resource_id: r.get(3)?,
        attempts: r.get(4)?,
        created_at_ms: r.get(5)?,
        event_number: r.get(6)?,
        batch_id: r.get(7)?,
        body: read_body(r, 8)?,
    })
}

/// Skips a message whose resource has an older version still pending
/// (per-resource order), for an outbox row `o`.
const NO_OLDER_PENDING: &str = "NOT EXISTS (
    SELECT 1 FROM outbox p
    WHERE p.hook = o.hook AND p.resource_type = o.resource_type
      AND p.resource_id = o.resource_id AND p.state = 'pending' AND p.id < o.id)";

/// One change row per run of messages sharing a change, then one small row
/// per message. Same (hook, message_id) twice is ignored: re-reading a
/// change never enqueues it twice (and a change no message kept is removed).
pub(super) fn insert_messages(tx: &Transaction, messages: &[NewMessage]) -> rusqlite::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut stmt = tx.prepare_cached(
        // Only a (hook, message_id) already there is ignored: any other
        // conflict (an event number) is an error, never a silent drop.
        "INSERT INTO outbox
            (hook, message_id, source, resource_type, resource_id, version_id, event,
             state, created_at, next_attempt_at, change_id, event_number)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8, ?9, ?10)
         ON CONFLICT (hook, message_id) DO NOTHING",
    )?;
    let mut numbers = EventCounter::default();
    let mut rest = messages;
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|m| Arc::ptr_eq(&m.change, &first.change))
            .count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let c = &first.change;
        let change_id = insert_change(tx, c)?;
        let mut kept = 0;
        for m in group {
            let number = numbers.peek(tx, &m.hook)?;
            let inserted = stmt.execute(params![
                m.hook,
                m.message_id,
                c.source,
                c.resource_type,
                c.resource_id,
                c.version_id,
                c.event,
                now,
                change_id,
                number
            ])?;
            if inserted > 0 {
                numbers.take(&m.hook);
            }
            kept += inserted;
        }
        if kept == 0 {
            delete_change(tx, change_id)?;
        }
    }
    numbers.save(tx)
}

impl SqliteStore {
    /// Walks the id index, so the LIMIT stops the scan early: a plan that
    /// sorts every due row would cost O(backlog) per claim.
    pub async fn claim_due(
        &self,
        hook: &str,
        in_flight: Vec<i64>,
        limit: usize,
    ) -> Result<Vec<Claimed>, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            // In-flight ids are excluded in SQL so their payloads are not read again.
            // `+?1` and `LIMIT ?3 + 0` rather than bare parameters: SQLite re-plans a
            // statement whose plan may depend on a parameter's value (a LIMIT, or
            // a term it checks against the partial index's WHERE) every time the
            // statement cache hands it out, which cost more than the query itself.
            let in_flight_json = serde_json::to_string(&in_flight).unwrap_or_else(|_| "[]".into());
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CLAIMED_COLUMNS}, {BODY_COLUMNS}
                 FROM outbox o INDEXED BY outbox_by_state LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.hook = +?1 AND o.state = 'pending' AND o.next_attempt_at <= ?2
                   AND o.id NOT IN (SELECT value FROM json_each(?4))
                   AND {NO_OLDER_PENDING}
                 ORDER BY o.id LIMIT ?3 + 0"
            ))?;
            let mut claimed = stmt
                .query_map(
                    params![hook, now_ms(), limit as i64, in_flight_json],
                    read_claimed,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // A batch goes whole: its other members come along, even past
            // the limit or when one fell due a moment later.
            let batches: std::collections::BTreeSet<&str> = claimed
                .iter()
                .filter_map(|m| m.batch_id.as_deref())
                .collect();
            if batches.is_empty() {
                return Ok(claimed);
            }
            let batches = serde_json::to_string(&batches).unwrap_or_else(|_| "[]".into());
            let taken: Vec<i64> = in_flight
                .iter()
                .copied()
                .chain(claimed.iter().map(|m| m.id))
                .collect();
            let taken = serde_json::to_string(&taken).unwrap_or_else(|_| "[]".into());
            let mut mates = c.prepare_cached(&format!(
                "SELECT {CLAIMED_COLUMNS}, {BODY_COLUMNS}
                 FROM outbox o INDEXED BY outbox_by_batch LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.batch_id IN (SELECT value FROM json_each(?2))
                   AND o.hook = ?1 AND o.state = 'pending'
                   AND o.id NOT IN (SELECT value FROM json_each(?3))
                   AND {NO_OLDER_PENDING}
                 ORDER BY o.id"
            ))?;
            let more = mates.query_map(params![hook, batches, taken], read_claimed)?;
            for m in more {
                claimed.push(m?);
            }
            Ok(claimed)
        })
        .await
    }

    pub async fn assign_batches(&self, batches: Vec<(String, Vec<i64>)>) -> Result<(), StateError> {
        if batches.is_empty() {
            return Ok(());
        }
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut up = tx.prepare_cached(
                    "UPDATE outbox SET batch_id = ?2 WHERE id = ?1 AND state = 'pending'",
                )?;
                for (batch_id, ids) in &batches {
                    for id in ids {
                        up.execute(params![id, batch_id])?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    pub async fn pending_due_now(&self, hook: &str) -> Result<usize, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            let now = now_ms();
            c.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?2
                 WHERE hook = ?1 AND state = 'pending' AND next_attempt_at > ?2",
            )?
            .execute(params![hook, now])
        })
        .await
    }

    pub async fn next_due_ms(&self, hook: &str) -> Result<Option<i64>, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            c.prepare_cached(
                // `+?1`: see claim_due.
                "SELECT min(next_attempt_at) FROM outbox WHERE hook = +?1 AND state = 'pending'",
            )?
            .query_row(params![hook], |r| r.get(0))
        })
        .await
    }

    pub async fn record_delivery(
        &self,
        fence: &Fence,
        hook: &str,
        id: i64,
        record: DeliveryRecord,
    ) -> Result<(), StateError> {
        self.record_deliveries(fence, hook, vec![(id, record)], false)
            .await
    }

    pub async fn record_deliveries(
        &self,
        fence: &Fence,
        hook: &str,
        records: Vec<(i64, DeliveryRecord)>,
        channel: bool,
    ) -> Result<(), StateError> {
        fence.check_deliveries()?;
        let hook = hook.to_string();
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction()?;
            let last_ok = records
                .last()
                .map(|(_, r)| matches!(r, DeliveryRecord::Delivered { .. }));
            let (mut delivered, mut failed, mut last_error) = (0, 0, None);
            {
                let mut ok = tx.prepare_cached(
                    "UPDATE outbox SET state = 'delivered', attempts = attempts + 1,
                        done_at = ?2, last_status = ?3, last_error = NULL, batch_id = NULL
                     WHERE id = ?1",
                )?;
                let mut drop_payload =
                    tx.prepare_cached("DELETE FROM outbox_payload WHERE id = ?1")?;
                let mut fail = tx.prepare_cached(
                    "UPDATE outbox SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3,
                        done_at = ?4, last_status = ?5, last_error = ?6
                     WHERE id = ?1",
                )?;
                for (id, record) in records {
                    match record {
                        DeliveryRecord::Delivered { status } => {
                            ok.execute(params![id, now, status])?;
                            drop_payload.execute(params![id])?;
                            delivered += 1;
                        }
                        DeliveryRecord::Failed { status, error, retry_at_ms } => {
                            let (state, next, done) = match retry_at_ms {
                                Some(at) => ("pending", at, None),
                                None => ("dead", now, Some(now)),
                            };
                            fail.execute(params![id, state, next, done, status, error])?;
                            failed += 1;
                            last_error = Some(error);
                        }
                    }
                }
            }
            if delivered > 0 {
                tx.prepare_cached(
                    "INSERT INTO hook_stats (hook, last_success_at) VALUES (?1, ?2)
                     ON CONFLICT (hook) DO UPDATE SET last_success_at = ?2",
                )?
                .execute(params![hook, now])?;
            }
            if failed > 0 {
                tx.prepare_cached(
                    "INSERT INTO hook_stats (hook, failed_attempts, last_error, last_error_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (hook) DO UPDATE SET
                        failed_attempts = failed_attempts + ?2, last_error = ?3, last_error_at = ?4",
                )?
                .execute(params![hook, failed, last_error, now])?;
            }
            if let (true, Some(ok)) = (channel, last_ok) {
                // `requested` changes only with a handshake.
                tx.prepare_cached(
                    "UPDATE hook_stats SET subscription_status = ?2, subscription_status_at = ?3,
                        subscription_error = CASE WHEN ?2 = 'error' THEN last_error END
                     WHERE hook = ?1 AND subscription_status IN ('active', 'error')
                       AND subscription_status != ?2",
                )?
                .execute(params![hook, if ok { "active" } else { "error" }, now])?;
            }
            tx.commit()
        })
        .await
    }

    pub async fn disable_hook(&self, hook: &str, reason: &str) -> Result<(), StateError> {
        let (hook, reason) = (hook.to_string(), reason.to_string());
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO hook_stats (hook, disabled_at, disabled_reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT (hook) DO UPDATE SET disabled_at = ?2, disabled_reason = ?3",
            )?
            .execute(params![hook, now_ms(), reason])?;
            Ok(())
        })
        .await
    }

    pub async fn enable_hook(&self, hook: &str) -> Result<bool, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            let n = c
                .prepare_cached(
                    // A FHIR channel starts over with a handshake.
                    "UPDATE hook_stats SET disabled_at = NULL, disabled_reason = NULL,
                        subscription_status = 'requested'
                     WHERE hook = ?1 AND disabled_at IS NOT NULL",
                )?
                .execute(params![hook])?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn hook_disabled(&self, hook: &str) -> Result<bool, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            c.prepare_cached(
                "SELECT count(*) FROM hook_stats WHERE hook = ?1 AND disabled_at IS NOT NULL",
            )?
            .query_row(params![hook], |r| r.get::<_, i64>(0))
            .map(|n| n > 0)
        })
        .await
    }

    pub async fn prune_delivered(&self, older_than_ms: i64) -> Result<usize, StateError> {
        self.call(move |c| {
            c.prepare_cached("DELETE FROM outbox WHERE state = 'delivered' AND done_at < ?1")?
                .execute(params![older_than_ms])
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PageCommit;
    use crate::state::sqlite::test_util::temp_store;

    async fn enqueue(store: &SqliteStore, msgs: Vec<NewMessage>) {
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    messages: msgs,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn versions_of_one_resource_are_claimed_in_order() {
        let (_d, store) = temp_store();
        enqueue(
            &store,
            vec![
                NewMessage::test("h", "a1", "Observation", "a"),
                NewMessage::test("h", "a2", "Observation", "a"),
                NewMessage::test("h", "b1", "Observation", "b"),
                NewMessage::test("h", "a1", "Observation", "a"), // duplicate id: ignored
            ],
        )
        .await;
        let got = store.claim_due("h", vec![], 10).await.unwrap();
        let ids: Vec<_> = got.iter().map(|c| c.message_id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1"]);
        // While a1 is in flight it is not claimed again, and a2 waits for it.
        let again = store
            .claim_due("h", vec![got[0].id, got[1].id], 10)
            .await
            .unwrap();
        assert!(again.is_empty());
        store
            .record_delivery(
                &crate::state::Fence::private(),
                "h",
                got[0].id,
                DeliveryRecord::Delivered { status: 200 },
            )
            .await
            .unwrap();
        let next = store.claim_due("h", vec![got[1].id], 10).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].message_id, "a2");
    }

    #[tokio::test]
    async fn failures_wait_and_exhausted_ones_go_dead() {
        let (_d, store) = temp_store();
        enqueue(
            &store,
            vec![NewMessage::test("h", "a1", "Observation", "a")],
        )
        .await;
        let c = store.claim_due("h", vec![], 1).await.unwrap().remove(0);
        let later = now_ms() + 60_000;
        store
            .record_delivery(
                &crate::state::Fence::private(),
                "h",
                c.id,
                DeliveryRecord::Failed {
                    status: Some(500),
                    error: "HTTP 500".into(),
                    retry_at_ms: Some(later),
                },
            )
            .await
            .unwrap();
        assert!(store.claim_due("h", vec![], 1).await.unwrap().is_empty());
        assert_eq!(store.next_due_ms("h").await.unwrap(), Some(later));
        store
            .record_delivery(
                &crate::state::Fence::private(),
                "h",
                c.id,
                DeliveryRecord::Failed {
                    status: Some(500),
                    error: "HTTP 500".into(),
                    retry_at_ms: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(store.next_due_ms("h").await.unwrap(), None);
        let dead = store.dead_letters(None).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
    }

    /// A stored batch is claimed whole, past the limit and whatever its
    /// members' due times; delivery forgets it.
    #[tokio::test]
    async fn a_batch_is_claimed_whole() {
        let (_d, store) = temp_store();
        let msgs = (1..=5)
            .map(|i| NewMessage::test("h", &format!("m{i}"), "Observation", &format!("o{i}")))
            .collect();
        enqueue(&store, msgs).await;
        let all = store.claim_due("h", vec![], 10).await.unwrap();
        let ids: Vec<i64> = all.iter().map(|m| m.id).collect();
        store
            .assign_batches(vec![("b".into(), vec![ids[1], ids[3], ids[4]])])
            .await
            .unwrap();
        let later = now_ms() + 3_600_000;
        let failed = |id| {
            (
                id,
                DeliveryRecord::Failed {
                    status: Some(503),
                    error: "HTTP 503".into(),
                    retry_at_ms: Some(later),
                },
            )
        };
        // m5 falls due an hour after the others: it still comes with m2.
        store
            .record_deliveries(
                &crate::state::Fence::private(),
                "h",
                vec![failed(ids[4])],
                false,
            )
            .await
            .unwrap();
        let got = store.claim_due("h", vec![], 2).await.unwrap();
        let claimed: Vec<(&str, Option<&str>)> = got
            .iter()
            .map(|m| (m.message_id.as_str(), m.batch_id.as_deref()))
            .collect();
        assert_eq!(
            claimed,
            [
                ("m1", None),
                ("m2", Some("b")),
                ("m4", Some("b")),
                ("m5", Some("b"))
            ]
        );
        // In flight (in one POST), a batch's members are not claimed again.
        let in_flight = vec![ids[0], ids[1], ids[3], ids[4]];
        let again = store.claim_due("h", in_flight, 10).await.unwrap();
        assert_eq!(again.len(), 1, "m3 only");
        // Delivered, a message belongs to no batch.
        store
            .record_delivery(
                &crate::state::Fence::private(),
                "h",
                ids[1],
                DeliveryRecord::Delivered { status: 200 },
            )
            .await
            .unwrap();
        let id = ids[1];
        let batch: Option<String> = store
            .call(move |c| {
                c.query_row("SELECT batch_id FROM outbox WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
            })
            .await
            .unwrap();
        assert_eq!(batch, None);
    }

    /// A changed endpoint: waiting messages are due now; dead ones stay dead.
    #[tokio::test]
    async fn pending_messages_fall_due_now() {
        let (_d, store) = temp_store();
        enqueue(
            &store,
            vec![
                NewMessage::test("h", "a", "Observation", "a"),
                NewMessage::test("h", "b", "Observation", "b"),
            ],
        )
        .await;
        let got = store.claim_due("h", vec![], 10).await.unwrap();
        let fail = |retry_at_ms| DeliveryRecord::Failed {
            status: None,
            error: "connection failed".into(),
            retry_at_ms,
        };
        let records = vec![
            (got[0].id, fail(Some(now_ms() + 7_200_000))),
            (got[1].id, fail(None)),
        ];
        store
            .record_deliveries(&crate::state::Fence::private(), "h", records, false)
            .await
            .unwrap();
        assert!(store.claim_due("h", vec![], 10).await.unwrap().is_empty());
        assert_eq!(store.pending_due_now("h").await.unwrap(), 1);
        let due = store.claim_due("h", vec![], 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].message_id, "a");
        assert_eq!(store.dead_letters(None).await.unwrap().len(), 1);
    }

    /// Numbers per hook from 1, consecutive across transactions; a duplicate
    /// takes none; another hook counts on its own.
    #[tokio::test]
    async fn event_numbers_are_gap_free_per_hook() {
        let (_d, store) = temp_store();
        enqueue(
            &store,
            vec![
                NewMessage::test("h", "a1", "Observation", "a"),
                NewMessage::test("g", "a1", "Observation", "a"),
                NewMessage::test("h", "a1", "Observation", "a"), // duplicate
                NewMessage::test("h", "b1", "Observation", "b"),
            ],
        )
        .await;
        enqueue(
            &store,
            vec![
                NewMessage::test("h", "b1", "Observation", "b"), // duplicate
                NewMessage::test("h", "c1", "Observation", "c"),
            ],
        )
        .await;
        let numbers = |hook: &'static str| {
            let store = store.clone();
            async move {
                let got = store.claim_due(hook, vec![], 10).await.unwrap();
                got.iter()
                    .map(|c| (c.message_id.clone(), c.event_number.unwrap()))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            numbers("h").await,
            [("a1".into(), 1), ("b1".into(), 2), ("c1".into(), 3)]
        );
        assert_eq!(numbers("g").await, [("a1".to_string(), 1)]);
    }
}
