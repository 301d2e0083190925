//! The outbox on PostgreSQL: messages in (numbered per hook), claims,
//! delivery outcomes, a hook's disabling. Semantics are `sqlite/outbox.rs`'s;
//! what several replicas on one database change is said where it matters.

use super::change::{BODY_COLUMNS, delete_change, insert_change, read_body};
use super::{PgStore, fence};
use crate::state::{Claimed, DeliveryRecord, Fence, NewMessage, StateError, now_ms};
use deadpool_postgres::Transaction;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Delivery lanes per hook. A message's lane is fixed when it is enqueued
/// and must never change meaning: lanes are leased units (a resource's
/// messages stay in one lane, so one worker sends them, in order).
pub(super) const LANES: u64 = 16;

/// The lane of a resource's messages: FNV-1a (64 bits) of `type/id`, mod
/// [`LANES`]. Stable across versions, builds and machines (no std hasher,
/// whose seed and algorithm may change); nothing reads it yet.
pub(super) fn lane(resource_type: &str, resource_id: &str) -> i16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = resource_type
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(resource_id.bytes());
    let hash = bytes.fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % LANES) as i16
}

/// The columns `read_claimed` reads, for an outbox row `o` and its change `c`.
const CLAIMED_COLUMNS: &str = "o.id, o.message_id, o.resource_type, o.resource_id, o.attempts,
    o.created_at, o.event_number, o.batch_id";

fn read_claimed(r: &tokio_postgres::Row) -> Result<Claimed, tokio_postgres::Error> {
    Ok(Claimed {
        id: r.try_get(0)?,
        message_id: r.try_get(1)?,
        resource_type: r.try_get(2)?,
        resource_id: r.try_get(3)?,
        attempts: u32::try_from(r.try_get::<_, i32>(4)?).unwrap_or(0),
        created_at_ms: r.try_get(5)?,
        event_number: r.try_get(6)?,
        batch_id: r.try_get(7)?,
        body: read_body(r, 8)?,
    })
}

/// Skips a message whose resource has an older version still pending
/// (per-resource order), for an outbox row `o`. "Older" is the lower event
/// number where both messages have one, not the lower row id as on SQLite:
/// ids come from an identity column, taken at insert and not in commit
/// order, while a hook's numbers are handed out under its `hook_seq` row
/// lock, so their order is the order the messages were committed in (and
/// a message moved to the hook is behind the ones already there). Messages
/// from before numbers (moved in by `state migrate`) have none: row id.
const NO_OLDER_PENDING: &str = "NOT EXISTS (
    SELECT 1 FROM outbox p
    WHERE p.hook = o.hook AND p.resource_type = o.resource_type
      AND p.resource_id = o.resource_id AND p.state = 'pending'
      AND CASE WHEN p.event_number IS NOT NULL AND o.event_number IS NOT NULL
               THEN p.event_number < o.event_number
               ELSE p.id < o.id END)";

/// Takes `k` numbers of `hook` (k > 0); returns the first. Locks the hook's
/// `hook_seq` row until the transaction ends: numbers are gap-free (a
/// rollback gives them back), never reused, and commit in number order.
/// Callers take it last in their transaction (the lock is held until
/// commit) and, for several hooks, in sorted order (no deadlock).
pub(super) async fn take_numbers(
    tx: &Transaction<'_>,
    hook: &str,
    k: i64,
) -> Result<i64, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO hook_seq (hook, last) VALUES ($1, $2)
             ON CONFLICT (hook) DO UPDATE SET last = hook_seq.last + EXCLUDED.last
             RETURNING last",
        )
        .await?;
    let last: i64 = tx.query_one(&stmt, &[&hook, &k]).await?.try_get(0)?;
    Ok(last - k + 1)
}

/// Gives the rows `ids` the numbers `first..`, in that order.
pub(super) async fn number(
    tx: &Transaction<'_>,
    ids: &[i64],
    first: i64,
) -> Result<(), tokio_postgres::Error> {
    let numbers: Vec<i64> = (first..).take(ids.len()).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE outbox o SET event_number = v.n
             FROM unnest($1::bigint[], $2::bigint[]) AS v(id, n) WHERE o.id = v.id",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &numbers]).await?;
    Ok(())
}

/// Inserts a page's messages inside the page's transaction: one change row
/// per run of messages sharing a change (the same `Arc`), then one small
/// row per message. Same (hook, message_id) twice is ignored, as on SQLite:
/// re-reading a change (or another replica, a backfill, committing it at
/// the same time: the insert waits for the other transaction) never
/// enqueues it twice, takes no number, and a change no message kept is
/// removed. Numbers come last: per hook in sorted order, its `hook_seq`
/// row is locked and the inserted rows numbered in insertion order; the
/// hook's workers in other replicas are notified at commit.
pub(super) async fn insert_messages(
    tx: &Transaction<'_>,
    messages: &[NewMessage],
) -> Result<(), tokio_postgres::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    // Only a (hook, message_id) already there is ignored: any other
    // conflict is an error, never a silent drop.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO outbox
                (hook, message_id, source, resource_type, resource_id, version_id, event,
                 state, created_at, next_attempt_at, change_id, lane)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8, $9, $10)
             ON CONFLICT (hook, message_id) DO NOTHING
             RETURNING id",
        )
        .await?;
    let mut inserted: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut rest = messages;
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|m| Arc::ptr_eq(&m.change, &first.change))
            .count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let c = &first.change;
        let change_id = insert_change(tx, c).await?;
        let lane = lane(&c.resource_type, &c.resource_id);
        let mut kept = 0;
        for m in group {
            let row = tx
                .query_opt(
                    &stmt,
                    &[
                        &m.hook,
                        &m.message_id,
                        &c.source,
                        &c.resource_type,
                        &c.resource_id,
                        &c.version_id,
                        &c.event,
                        &now,
                        &change_id,
                        &lane,
                    ],
                )
                .await?;
            if let Some(row) = row {
                inserted.entry(&m.hook).or_default().push(row.try_get(0)?);
                kept += 1;
            }
        }
        if kept == 0 {
            delete_change(tx, change_id).await?;
        }
    }
    for (hook, ids) in inserted {
        let first = take_numbers(tx, hook, ids.len() as i64).await?;
        number(tx, &ids, first).await?;
        notify_due(tx, hook).await?;
    }
    Ok(())
}

/// Wakes the hook's workers in every replica once `tx` commits (nothing if
/// it rolls back; see `listen.rs`).
pub(super) async fn notify_due(
    tx: &Transaction<'_>,
    hook: &str,
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&stmt, &[&super::listen::CHANNEL, &hook]).await?;
    Ok(())
}

impl PgStore {
    /// A read, not a lock: the hook's (later: lane's) one worker keeps its
    /// in-flight ids, as on SQLite. In event-number order (messages from
    /// before numbers first), which on SQLite is row-id order but not here
    /// (ids are taken at insert, numbers at commit): a claim cut by its
    /// limit never takes a later event before an earlier one (and a message
    /// moved in, numbered as its new hook's newest, comes after the ones
    /// already there; SQLite sends it first, by its old id). Walks the
    /// pending messages' index in that order, so the LIMIT stops early.
    pub async fn claim_due(
        &self,
        hook: &str,
        in_flight: Vec<i64>,
        limit: usize,
    ) -> Result<Vec<Claimed>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {CLAIMED_COLUMNS}, {BODY_COLUMNS}
                 FROM outbox o LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.hook = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2
                   AND NOT (o.id = ANY($4))
                   AND {NO_OLDER_PENDING}
                 ORDER BY o.event_number NULLS FIRST, o.id LIMIT $3"
            ))
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&stmt, &[&hook, &now_ms(), &limit, &in_flight])
            .await?;
        let mut claimed = rows
            .iter()
            .map(read_claimed)
            .collect::<Result<Vec<_>, _>>()?;
        // A batch goes whole: its other members come along, even past the
        // limit or when one fell due a moment later.
        let batches: std::collections::BTreeSet<&str> = claimed
            .iter()
            .filter_map(|m| m.batch_id.as_deref())
            .collect();
        if batches.is_empty() {
            return Ok(claimed);
        }
        let batches: Vec<String> = batches.into_iter().map(String::from).collect();
        let taken: Vec<i64> = in_flight
            .iter()
            .copied()
            .chain(claimed.iter().map(|m| m.id))
            .collect();
        let mates = client
            .prepare_cached(&format!(
                "SELECT {CLAIMED_COLUMNS}, {BODY_COLUMNS}
                 FROM outbox o LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.batch_id = ANY($2) AND o.hook = $1 AND o.state = 'pending'
                   AND NOT (o.id = ANY($3))
                   AND {NO_OLDER_PENDING}
                 ORDER BY o.id"
            ))
            .await?;
        for row in client.query(&mates, &[&hook, &batches, &taken]).await? {
            claimed.push(read_claimed(&row)?);
        }
        Ok(claimed)
    }

    pub async fn assign_batches(&self, batches: Vec<(String, Vec<i64>)>) -> Result<(), StateError> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let up = tx
            .prepare_cached(
                "UPDATE outbox SET batch_id = $2 WHERE id = ANY($1) AND state = 'pending'",
            )
            .await?;
        for (batch_id, ids) in &batches {
            tx.execute(&up, &[ids, batch_id]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn pending_due_now(&self, hook: &str) -> Result<usize, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE outbox SET next_attempt_at = $2
                 WHERE hook = $1 AND state = 'pending' AND next_attempt_at > $2",
            )
            .await?;
        let n = client.execute(&stmt, &[&hook, &now_ms()]).await?;
        Ok(n as usize)
    }

    pub async fn next_due_ms(&self, hook: &str) -> Result<Option<i64>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT min(next_attempt_at) FROM outbox WHERE hook = $1 AND state = 'pending'",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&hook]).await?.try_get(0)?)
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

    /// Only a message still pending takes an outcome (`WHERE state =
    /// 'pending'`; not so on SQLite, whose one writer never sees a late
    /// one): an outcome arriving after the message was delivered, dead-lettered
    /// or purged by another (a lane taken over, an operator) changes nothing,
    /// and counts in no stat.
    pub async fn record_deliveries(
        &self,
        fence: &Fence,
        hook: &str,
        records: Vec<(i64, DeliveryRecord)>,
        channel: bool,
    ) -> Result<(), StateError> {
        fence.check_deliveries()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        fence::check(&*tx, fence).await?;
        let now = now_ms();
        let ok = tx
            .prepare_cached(
                "UPDATE outbox SET state = 'delivered', attempts = attempts + 1,
                    done_at = $2, last_status = $3, last_error = NULL, batch_id = NULL
                 WHERE id = $1 AND state = 'pending'",
            )
            .await?;
        let drop_payload = tx
            .prepare_cached("DELETE FROM outbox_payload WHERE id = $1")
            .await?;
        let fail = tx
            .prepare_cached(
                "UPDATE outbox SET state = $2, attempts = attempts + 1, next_attempt_at = $3,
                    done_at = $4, last_status = $5, last_error = $6
                 WHERE id = $1 AND state = 'pending'",
            )
            .await?;
        // The changes of the messages delivered here, locked in id order
        // before their delivery triggers lock them one by one (in the
        // records' order): two hooks' batches sharing changes never
        // deadlock.
        let ids: Vec<i64> = records
            .iter()
            .filter(|(_, r)| matches!(r, DeliveryRecord::Delivered { .. }))
            .map(|(id, _)| *id)
            .collect();
        if !ids.is_empty() {
            let lock = tx
                .prepare_cached(
                    "SELECT 1 FROM change WHERE id IN
                        (SELECT change_id FROM outbox WHERE id = ANY($1))
                     ORDER BY id FOR UPDATE",
                )
                .await?;
            tx.execute(&lock, &[&ids]).await?;
        }
        let (mut delivered, mut failed, mut last_error) = (0i64, 0i64, None);
        let mut last_ok = None;
        for (id, record) in records {
            match record {
                DeliveryRecord::Delivered { status } => {
                    let status = i32::from(status);
                    if tx.execute(&ok, &[&id, &now, &status]).await? > 0 {
                        tx.execute(&drop_payload, &[&id]).await?;
                        delivered += 1;
                        last_ok = Some(true);
                    }
                }
                DeliveryRecord::Failed {
                    status,
                    error,
                    retry_at_ms,
                } => {
                    let (state, next, done) = match retry_at_ms {
                        Some(at) => ("pending", at, None),
                        None => ("dead", now, Some(now)),
                    };
                    let status = status.map(i32::from);
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                        [&id, &state, &next, &done, &status, &error];
                    if tx.execute(&fail, &params).await? > 0 {
                        failed += 1;
                        last_error = Some(error);
                        last_ok = Some(false);
                    }
                }
            }
        }
        if delivered > 0 {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO hook_stats (hook, last_success_at) VALUES ($1, $2)
                     ON CONFLICT (hook) DO UPDATE SET last_success_at = EXCLUDED.last_success_at",
                )
                .await?;
            tx.execute(&stmt, &[&hook, &now]).await?;
        }
        if failed > 0 {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO hook_stats (hook, failed_attempts, last_error, last_error_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (hook) DO UPDATE SET
                        failed_attempts = hook_stats.failed_attempts + EXCLUDED.failed_attempts,
                        last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at",
                )
                .await?;
            tx.execute(&stmt, &[&hook, &failed, &last_error, &now])
                .await?;
        }
        if let (true, Some(ok)) = (channel, last_ok) {
            // `requested` changes only with a handshake.
            let stmt = tx
                .prepare_cached(
                    "UPDATE hook_stats SET subscription_status = $2, subscription_status_at = $3,
                        subscription_error = CASE WHEN $2 = 'error' THEN last_error END
                     WHERE hook = $1 AND subscription_status IN ('active', 'error')
                       AND subscription_status <> $2",
                )
                .await?;
            let status = if ok { "active" } else { "error" };
            tx.execute(&stmt, &[&hook, &status, &now]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn disable_hook(&self, hook: &str, reason: &str) -> Result<(), StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO hook_stats (hook, disabled_at, disabled_reason) VALUES ($1, $2, $3)
                 ON CONFLICT (hook) DO UPDATE SET disabled_at = EXCLUDED.disabled_at,
                    disabled_reason = EXCLUDED.disabled_reason",
            )
            .await?;
        client.execute(&stmt, &[&hook, &now_ms(), &reason]).await?;
        Ok(())
    }

    pub async fn enable_hook(&self, hook: &str) -> Result<bool, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                // A FHIR channel starts over with a handshake.
                "UPDATE hook_stats SET disabled_at = NULL, disabled_reason = NULL,
                    subscription_status = 'requested'
                 WHERE hook = $1 AND disabled_at IS NOT NULL",
            )
            .await?;
        Ok(client.execute(&stmt, &[&hook]).await? > 0)
    }

    pub async fn hook_disabled(&self, hook: &str) -> Result<bool, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM hook_stats WHERE hook = $1 AND disabled_at IS NOT NULL)",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&hook]).await?.try_get(0)?)
    }

    pub async fn prune_delivered(&self, older_than_ms: i64) -> Result<usize, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM outbox WHERE state = 'delivered' AND done_at < $1")
            .await?;
        Ok(client.execute(&stmt, &[&older_than_ms]).await? as usize)
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
