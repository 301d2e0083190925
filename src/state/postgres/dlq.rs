//! The dead-letter queue and the messages of orphaned hooks on PostgreSQL
//! (as `sqlite/dlq.rs`). The operator's moves run beside the daemon's
//! replicas: the rows they act on are locked (`FOR UPDATE`) when selected,
//! so a message is moved in the state it was selected in.

use super::PgStore;
use super::filter::{Param, condition, params};
use super::message::{read_messages, select_messages};
use super::outbox::{notify_due, number, take_numbers};
use crate::state::{
    DlqSelection, MessageFilter, MessageRecord, MessageState, Moved, OrphanedHook, StateError,
    WithBody, now_ms,
};
use tokio_postgres::GenericClient;

/// Every hook with a message in the outbox, without scanning the table:
/// each step seeks the next name in the (hook, state, id) index.
async fn hooks_in_outbox<C: GenericClient>(c: &C) -> Result<Vec<String>, StateError> {
    let rows = c
        .query(
            "WITH RECURSIVE h(name) AS (
                SELECT (SELECT min(hook) FROM outbox)
                UNION ALL
                SELECT (SELECT min(hook) FROM outbox WHERE hook > h.name) FROM h
                WHERE h.name IS NOT NULL)
             SELECT name FROM h WHERE name IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// `$1` hook, `$2` state, then the filter's parameters.
fn with_filter<'a>(
    hook: &'a String,
    state: &'a &'a str,
    filter: &'a MessageFilter,
) -> Vec<Param<'a>> {
    let mut p: Vec<Param> = vec![hook, state];
    p.extend(params(filter));
    p
}

/// Ids (with message ids) of the selected messages, oldest first. With
/// `pending_of_orphans` false, dead letters of configured hooks only.
/// `lock`: the rows are locked until the transaction ends.
async fn select<C: GenericClient>(
    c: &C,
    sel: &DlqSelection,
    pending_of_orphans: bool,
    lock: bool,
) -> Result<Vec<(i64, String)>, StateError> {
    let explicit = sel.hook.is_some() || sel.ids.is_some();
    let mut out = Vec::new();
    let sql = format!(
        "SELECT o.id, o.message_id FROM outbox o WHERE o.hook = $1 AND o.state = $2 AND {}
         ORDER BY o.id{}",
        condition(3),
        if lock { " FOR UPDATE" } else { "" }
    );
    for hook in hooks_in_outbox(c).await? {
        if sel.hook.as_ref().is_some_and(|h| h != &hook) {
            continue;
        }
        let orphan = !sel.configured.contains(&hook);
        let mut states = vec![];
        if orphan && pending_of_orphans && explicit {
            states.push("pending");
        }
        if !orphan || pending_of_orphans {
            states.push("dead");
        }
        for state in states {
            for r in c
                .query(&sql, &with_filter(&hook, &state, &sel.filter))
                .await?
            {
                let (id, mid): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
                if sel.ids.as_ref().is_none_or(|ids| ids.contains(&id)) {
                    out.push((id, mid));
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

async fn count<C: GenericClient>(c: &C, hook: &str, state: &str) -> Result<i64, StateError> {
    let r = c
        .query_one(
            "SELECT count(*) FROM outbox WHERE hook = $1 AND state = $2",
            &[&hook, &state],
        )
        .await?;
    Ok(r.try_get(0)?)
}

impl PgStore {
    pub async fn orphaned_hooks(
        &self,
        configured: Vec<String>,
    ) -> Result<Vec<OrphanedHook>, StateError> {
        let client = self.client().await?;
        let c = &**client;
        let mut out = Vec::new();
        for hook in hooks_in_outbox(c).await? {
            if configured.contains(&hook) {
                continue;
            }
            let (pending, dead) = (
                count(c, &hook, "pending").await?,
                count(c, &hook, "dead").await?,
            );
            if pending + dead > 0 {
                out.push(OrphanedHook {
                    hook,
                    pending,
                    dead,
                });
            }
        }
        Ok(out)
    }

    pub async fn hook_has_messages(&self, hook: &str) -> Result<bool, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE hook = $1)")
            .await?;
        Ok(client.query_one(&stmt, &[&hook]).await?.try_get(0)?)
    }

    pub async fn dlq_list(
        &self,
        hook: Option<String>,
        configured: Vec<String>,
    ) -> Result<Vec<MessageRecord>, StateError> {
        self.dlq_list_filtered(hook, MessageFilter::default(), configured)
            .await
    }

    pub async fn dlq_list_filtered(
        &self,
        hook: Option<String>,
        filter: MessageFilter,
        configured: Vec<String>,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&select_messages(
                &format!(
                    "WHERE o.hook = $1 AND o.state = $2 AND {} ORDER BY o.id",
                    condition(3)
                ),
                WithBody::No,
            ))
            .await?;
        let mut out = Vec::new();
        for h in hooks_in_outbox(&**client).await? {
            if hook.as_ref().is_some_and(|x| x != &h) {
                continue;
            }
            let states: &[&str] = if configured.contains(&h) {
                &["dead"]
            } else {
                &["dead", "pending"]
            };
            for state in states {
                let rows = client
                    .query(&stmt, &with_filter(&h, state, &filter))
                    .await?;
                out.extend(read_messages(&rows, WithBody::No)?);
            }
        }
        out.sort_unstable_by_key(|d| d.id);
        Ok(out)
    }

    pub async fn dead_letters(
        &self,
        hook: Option<String>,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let all = self.dlq_list(hook, vec![]).await?;
        Ok(all
            .into_iter()
            .filter(|d| d.state == MessageState::Dead)
            .collect())
    }

    pub async fn dlq_selected(
        &self,
        sel: DlqSelection,
        moving: bool,
    ) -> Result<Vec<i64>, StateError> {
        let client = self.client().await?;
        Ok(select(&**client, &sel, moving, false)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    pub async fn redrive(&self, sel: DlqSelection) -> Result<usize, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = select(&*tx, &sel, false, true).await?;
        let up = tx
            .prepare_cached(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $2,
                    done_at = NULL
                 WHERE id = $1 AND state = 'dead'",
            )
            .await?;
        let now = now_ms();
        for (id, _) in &rows {
            tx.execute(&up, &[id, &now]).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    pub async fn purge(&self, sel: DlqSelection) -> Result<usize, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = select(&*tx, &sel, true, true).await?;
        let del = tx
            .prepare_cached("DELETE FROM outbox WHERE id = $1")
            .await?;
        for (id, _) in &rows {
            tx.execute(&del, &[id]).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    pub async fn move_to_hook(&self, sel: DlqSelection, to: &str) -> Result<Moved, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = select(&*tx, &sel, true, true).await?;
        let mut done = Moved::default();
        let dup = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE hook = $1 AND message_id = $2
                                AND id <> $3)",
            )
            .await?;
        let del = tx
            .prepare_cached("DELETE FROM outbox WHERE id = $1")
            .await?;
        // A moved message is a new event of its new hook: it gets that hook's
        // next number (below, last: see `take_numbers`), and belongs to none
        // of its batches. Its lane stays: it is its resource's.
        let up = tx
            .prepare_cached(
                "UPDATE outbox SET hook = $2, state = 'pending', attempts = 0,
                    next_attempt_at = $3, done_at = NULL, event_number = NULL, batch_id = NULL
                 WHERE id = $1",
            )
            .await?;
        let now = now_ms();
        let mut moved = Vec::new();
        for (id, mid) in &rows {
            if tx.query_one(&dup, &[&to, mid, id]).await?.try_get(0)? {
                tx.execute(&del, &[id]).await?;
                done.duplicates += 1;
            } else {
                tx.execute(&up, &[id, &to, &now]).await?;
                moved.push(*id);
            }
        }
        if !moved.is_empty() {
            let first = take_numbers(&tx, to, moved.len() as i64).await?;
            number(&tx, &moved, first).await?;
            notify_due(&tx, to).await?;
        }
        done.moved = moved.len();
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
#[path = "dlq_tests.rs"]
mod tests;
