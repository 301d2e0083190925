//! The daemon's heartbeat: one row saying which process runs on this state,
//! since when, and when it last said so (every few seconds).

use super::{SqliteStore, StateError, now_ms};
use crate::state::Heartbeat;
use rusqlite::{OptionalExtension, params};
use std::sync::atomic::Ordering;

impl SqliteStore {
    pub async fn record_daemon_start(&self, pid: u32, version: &str) -> Result<(), StateError> {
        let version = version.to_string();
        self.call(move |c| {
            let now = now_ms();
            c.prepare_cached(
                "INSERT INTO daemon (id, pid, started_at, last_seen_at, version)
                 VALUES (1, ?1, ?2, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET
                    pid = ?1, started_at = ?2, last_seen_at = ?2, version = ?3",
            )?
            .execute(params![pid, now, version])?;
            Ok(now)
        })
        .await
        .map(|at| self.heartbeat_ok_ms.store(at, Ordering::Relaxed))
    }

    pub async fn heartbeat(&self, pid: u32) -> Result<(), StateError> {
        self.call(move |c| {
            let now = now_ms();
            c.prepare_cached("UPDATE daemon SET last_seen_at = ?2 WHERE id = 1 AND pid = ?1")?
                .execute(params![pid, now])?;
            Ok(now)
        })
        .await
        .map(|at| self.heartbeat_ok_ms.store(at, Ordering::Relaxed))
    }

    pub fn last_heartbeat_ok_ms(&self) -> Option<i64> {
        Some(self.heartbeat_ok_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    pub async fn last_heartbeat(&self) -> Result<Option<Heartbeat>, StateError> {
        self.call(|c| {
            // A database last opened by an older fhir-bridge has no such table yet.
            let exists: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'daemon'",
                )?
                .query_row([], |r| r.get(0))?;
            if exists == 0 {
                return Ok(None);
            }
            c.prepare_cached(
                "SELECT pid, started_at, last_seen_at, version FROM daemon WHERE id = 1",
            )?
            .query_row([], |r| {
                Ok(Heartbeat {
                    pid: r.get(0)?,
                    started_at_ms: r.get(1)?,
                    last_seen_at_ms: r.get(2)?,
                    version: r.get(3)?,
                })
            })
            .optional()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::state::sqlite::test_util::temp_store;

    #[tokio::test]
    async fn start_then_beats_move_last_seen_only() {
        let (_d, store) = temp_store();
        assert_eq!(store.last_heartbeat().await.unwrap(), None);
        store.record_daemon_start(41, "0.1.0").await.unwrap();
        let first = store.last_heartbeat().await.unwrap().unwrap();
        assert_eq!((first.pid, first.version.as_str()), (41, "0.1.0"));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store.heartbeat(41).await.unwrap();
        let beat = store.last_heartbeat().await.unwrap().unwrap();
        assert_eq!(beat.started_at_ms, first.started_at_ms);
        assert!(beat.last_seen_at_ms > first.last_seen_at_ms);
        // Another process's beat does not touch the row; a new start replaces it.
        store.heartbeat(7).await.unwrap();
        assert_eq!(store.last_heartbeat().await.unwrap().unwrap(), beat);
        store.record_daemon_start(42, "0.2.0").await.unwrap();
        assert_eq!(store.last_heartbeat().await.unwrap().unwrap().pid, 42);
    }

    /// The heartbeat is readable through a read-only handle (status).
    #[tokio::test]
    async fn status_reads_it_read_only() {
        let (dir, store) = temp_store();
        store.record_daemon_start(9, "v").await.unwrap();
        let ro = crate::state::sqlite::SqliteStore::open_read_only(&dir.path().join("bridge.db"))
            .unwrap()
            .unwrap();
        assert_eq!(ro.last_heartbeat().await.unwrap().unwrap().pid, 9);
    }
}
