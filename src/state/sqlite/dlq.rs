//! The dead-letter queue, and messages of *orphaned* hooks: hooks that still
//! have pending or dead messages in the outbox but are no longer in the
//! config (renamed or removed). No worker sends those; the operator moves
//! them to a configured hook (`move_to_hook`) or deletes them (`purge`).

use super::filter::condition;
use super::message::{read_message, select_messages};
use super::{SqliteStore, StateError, now_ms};
use crate::state::{
    DlqSelection, MessageFilter, MessageRecord, MessageState, Moved, OrphanedHook, WithBody,
};
use rusqlite::{Connection, ToSql, params};

/// Every hook with a message in the outbox, without scanning the table:
/// each step seeks the next name in the (hook, state, id) index.
fn hooks_in_outbox(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare_cached(
        "WITH RECURSIVE h(name) AS (
            SELECT (SELECT min(hook) FROM outbox)
            UNION ALL
            SELECT (SELECT min(hook) FROM outbox WHERE hook > h.name) FROM h
            WHERE h.name IS NOT NULL)
         SELECT name FROM h WHERE name IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

fn count(c: &Connection, hook: &str, state: &str) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT count(*) FROM outbox WHERE hook = ?1 AND state = ?2")?
        .query_row(params![hook, state], |r| r.get(0))
}

/// `?1` hook, `?2` state, then the filter's parameters.
// `&String`: a `&str` cannot become a `&dyn ToSql` (`str` is unsized).
#[allow(clippy::ptr_arg)]
fn with_filter<'a>(
    hook: &'a String,
    state: &'a &'a str,
    filter: &'a MessageFilter,
) -> Vec<&'a dyn ToSql> {
    let mut p: Vec<&dyn ToSql> = vec![hook, state];
    p.extend(filter.params());
    p
}

/// Ids (with message ids) of the selected messages, oldest first. With
/// `pending_of_orphans` false, dead letters of configured hooks only.
fn select(
    c: &Connection,
    sel: &DlqSelection,
    pending_of_orphans: bool,
) -> rusqlite::Result<Vec<(i64, String)>> {
    let explicit = sel.hook.is_some() || sel.ids.is_some();
    let mut out = Vec::new();
    let mut stmt = c.prepare_cached(&format!(
        "SELECT o.id, o.message_id FROM outbox o WHERE o.hook = ?1 AND o.state = ?2 AND {}
         ORDER BY o.id",
        condition(3)
    ))?;
    for hook in hooks_in_outbox(c)? {
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
            let rows = stmt.query_map(&*with_filter(&hook, &state, &sel.filter), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            for row in rows {
                let (id, mid): (i64, String) = row?;
                if sel.ids.as_ref().is_none_or(|ids| ids.contains(&id)) {
                    out.push((id, mid));
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl SqliteStore {
    pub async fn orphaned_hooks(
        &self,
        configured: Vec<String>,
    ) -> Result<Vec<OrphanedHook>, StateError> {
        self.call(move |c| {
            let mut out = Vec::new();
            for hook in hooks_in_outbox(c)? {
                if configured.contains(&hook) {
                    continue;
                }
                let (pending, dead) = (count(c, &hook, "pending")?, count(c, &hook, "dead")?);
                if pending + dead > 0 {
                    out.push(OrphanedHook {
                        hook,
                        pending,
                        dead,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn hook_has_messages(&self, hook: &str) -> Result<bool, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE hook = ?1)")?
                .query_row(params![hook], |r| r.get(0))
        })
        .await
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
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&select_messages(
                &format!(
                    "WHERE o.hook = ?1 AND o.state = ?2 AND {} ORDER BY o.id",
                    condition(3)
                ),
                WithBody::No,
            ))?;
            let mut out = Vec::new();
            for h in hooks_in_outbox(c)? {
                if hook.as_ref().is_some_and(|x| x != &h) {
                    continue;
                }
                let states: &[&str] = if configured.contains(&h) {
                    &["dead"]
                } else {
                    &["dead", "pending"]
                };
                for state in states {
                    let rows = stmt.query_map(&*with_filter(&h, state, &filter), |r| {
                        read_message(r, WithBody::No)
                    })?;
                    for row in rows {
                        out.push(row?);
                    }
                }
            }
            out.sort_unstable_by_key(|d| d.id);
            Ok(out)
        })
        .await
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
        self.call(move |c| {
            Ok(select(c, &sel, moving)?
                .into_iter()
                .map(|(id, _)| id)
                .collect())
        })
        .await
    }

    pub async fn redrive(&self, sel: DlqSelection) -> Result<usize, StateError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let rows = select(&tx, &sel, false)?;
            {
                let mut up = tx.prepare_cached(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                        done_at = NULL
                     WHERE id = ?1 AND state = 'dead'",
                )?;
                let now = now_ms();
                for (id, _) in &rows {
                    up.execute(params![id, now])?;
                }
            }
            tx.commit()?;
            Ok(rows.len())
        })
        .await
    }

    pub async fn purge(&self, sel: DlqSelection) -> Result<usize, StateError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let rows = select(&tx, &sel, true)?;
            {
                let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for (id, _) in &rows {
                    del.execute(params![id])?;
                }
            }
            tx.commit()?;
            Ok(rows.len())
        })
        .await
    }

    pub async fn move_to_hook(&self, sel: DlqSelection, to: &str) -> Result<Moved, StateError> {
        let to = to.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let rows = select(&tx, &sel, true)?;
            let mut done = Moved::default();
            let mut numbers = super::event_number::EventCounter::default();
            {
                let mut dup = tx.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM outbox WHERE hook = ?1 AND message_id = ?2
                                    AND id != ?3)",
                )?;
                let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                // A moved message is a new event of its new hook: it gets that
                // hook's next number, and belongs to none of its batches.
                let mut up = tx.prepare_cached(
                    "UPDATE outbox SET hook = ?2, state = 'pending', attempts = 0,
                        next_attempt_at = ?3, done_at = NULL, event_number = ?4, batch_id = NULL
                     WHERE id = ?1",
                )?;
                let now = now_ms();
                for (id, mid) in &rows {
                    if dup.query_row(params![to, mid, id], |r| r.get::<_, bool>(0))? {
                        del.execute(params![id])?;
                        done.duplicates += 1;
                    } else {
                        up.execute(params![id, to, now, numbers.peek(&tx, &to)?])?;
                        numbers.take(&to);
                        done.moved += 1;
                    }
                }
            }
            numbers.save(&tx)?;
            tx.commit()?;
            Ok(done)
        })
        .await
    }
}

#[cfg(test)]
#[path = "dlq_tests.rs"]
mod tests;
