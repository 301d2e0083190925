//! Event numbers: per hook, from 1, gap-free and never reused. A message gets
//! its number in the transaction that inserts it (or moves it to the hook),
//! so a crash, a retry or a redrive re-sends the same number. The last number
//! given lives in `hook_stats.events` and only grows; a pruned message never
//! frees its number.

use rusqlite::{OptionalExtension, Transaction, params};
use std::collections::HashMap;

/// Numbers handed out within one transaction; `save` writes them back.
#[derive(Default)]
pub(super) struct EventCounter {
    last: HashMap<String, i64>,
}

impl EventCounter {
    /// The number the next message of `hook` gets (not yet taken).
    pub fn peek(&mut self, tx: &Transaction, hook: &str) -> rusqlite::Result<i64> {
        if let Some(n) = self.last.get(hook) {
            return Ok(n + 1);
        }
        let n: i64 = tx
            .prepare_cached("SELECT events FROM hook_stats WHERE hook = ?1")?
            .query_row(params![hook], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        self.last.insert(hook.to_string(), n);
        Ok(n + 1)
    }

    /// Marks the number `peek` gave as used by an inserted message.
    pub fn take(&mut self, hook: &str) {
        if let Some(n) = self.last.get_mut(hook) {
            *n += 1;
        }
    }

    /// Writes the counters back (in the same transaction).
    pub fn save(self, tx: &Transaction) -> rusqlite::Result<()> {
        let mut up = tx.prepare_cached(
            "INSERT INTO hook_stats (hook, events) VALUES (?1, ?2)
             ON CONFLICT (hook) DO UPDATE SET events = max(events, excluded.events)",
        )?;
        for (hook, n) in self.last {
            up.execute(params![hook, n])?;
        }
        Ok(())
    }
}

/// The last event number given to `hook` (0: none yet).
pub(super) fn events_since_start(conn: &rusqlite::Connection, hook: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT events FROM hook_stats WHERE hook = ?1")?
        .query_row(params![hook], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}
