//! The SQLite backend of the state: one file (`<state_dir>/bridge.db`). The
//! only place that speaks SQL (and names rusqlite).
//!
//! Durability: WAL with `synchronous=NORMAL`. A commit survives a process crash
//! (`kill -9`). A power loss can roll back the last commits, but watermark,
//! seen-versions and outbox rows always roll back *together*, so the next poll
//! reads the same changes again: nothing is lost, at worst re-sent.

mod backfill;
mod change;
mod channel;
mod dlq;
mod event_number;
mod export;
mod filter;
mod gauges;
mod heartbeat;
mod inspect;
mod maintenance;
mod message;
mod outbox;
mod poll;
mod rename;
mod replay;
mod report;
mod roster;
mod schema;
mod seen_body;
#[cfg(test)]
mod size_tests;
mod snapshot;
mod summary;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{StateError, files, now_ms};

/// The SQLite backend: one connection to `<state_dir>/bridge.db`, cheap to
/// clone. Its public methods implement the role traits (`TargetStore`,
/// `DeliveryStore`, `OperatorStore`), where each is documented. Calls run on
/// tokio's blocking pool so SQLite never stalls the async workers.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// When the daemon's heartbeat was last written (ms; 0: never), for
    /// readiness: a write every few seconds that succeeds says the database
    /// is writable without a probe of its own.
    heartbeat_ok_ms: Arc<AtomicI64>,
    /// Each hook's wake-up, in this process (`notify_due`, `wait_due`).
    wakers: super::wake::Wakers,
}

impl SqliteStore {
    /// Opens (creating if needed: the directory 0700, the file 0600) and
    /// migrates the database. Existing database files readable by others are
    /// narrowed to 0600 (with a warning); the WAL and shared-memory files
    /// SQLite creates take the database's mode. Deleted content is zeroed
    /// (`secure_delete`): a delivered payload does not linger in free pages.
    pub fn open(path: &Path) -> Result<SqliteStore, StateError> {
        let err = |message: String| StateError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent() {
            files::create_state_dir(dir).map_err(|e| err(format!("state directory: {e}")))?;
        }
        files::create_private(path).map_err(|e| err(format!("cannot create: {e}")))?;
        files::tighten(path).map_err(|e| err(format!("cannot restrict permissions: {e}")))?;
        let mut conn = Connection::open(path).map_err(|e| err(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(describe_open_error(&e)))?;
        // The WAL and shm files exist now; whatever made them, they end up 0600.
        files::tighten(path).map_err(|e| err(format!("cannot restrict permissions: {e}")))?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(|e| err(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| err(e.to_string()))?;
        // After a checkpoint, truncate the WAL back to this size: a backlog's
        // burst of writes must not leave a large WAL file behind for good.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(|e| err(e.to_string()))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| err(e.to_string()))?;
        schema::migrate(&mut conn).map_err(|e| err(describe_open_error(&e)))?;
        enable_incremental_vacuum(&conn).map_err(|e| err(e.to_string()))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            heartbeat_ok_ms: Default::default(),
            wakers: Default::default(),
        })
    }

    /// Opens an existing database for reading only (status, dlq list), safe
    /// while the daemon writes. `Ok(None)` when there is no database yet.
    pub fn open_read_only(path: &Path) -> Result<Option<SqliteStore>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let err = |message: String| StateError::Open {
            path: path.display().to_string(),
            message,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| err(e.to_string()))?;
        if !schema::check_version(&conn).map_err(|e| err(describe_open_error(&e)))? {
            return Ok(None);
        }
        Ok(Some(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            heartbeat_ok_ms: Default::default(),
            wakers: Default::default(),
        }))
    }

    pub fn notify_due(&self, hook: &str) {
        self.wakers.notify(hook);
    }

    pub async fn wait_due(&self, hook: &str, timeout: Duration) -> bool {
        self.wakers.wait(hook, timeout).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for calls already on the blocking pool.
    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<R, F>(&self, f: F) -> Result<R, StateError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard).map_err(StateError::from)
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }
}

/// Lets `reclaim_space` return free pages to the file system. SQLite only
/// honours the setting from a VACUUM on: a database created before it is
/// rebuilt once, here (as long as a VACUUM of its size takes).
fn enable_incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode != INCREMENTAL {
        tracing::info!("preparing the state database for incremental vacuum (once)");
        conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

fn describe_open_error(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            format!(
                "{e}: the file is damaged or not a fhir-bridge database. \
                 It was left untouched; restore it from a backup or move it away to start afresh"
            )
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::temp_store;
    use super::*;
    use crate::state::{DeliveryRecord, NewMessage, PageCommit, PollOutcome};

    /// Sum of SQLITE_STMTSTATUS_REPREPARE over every statement the connection holds.
    fn reprepares(store: &SqliteStore) -> i32 {
        let c = store.conn.lock().unwrap();
        let mut total = 0;
        // SAFETY: the handle is only used while the connection is locked, and
        // only to walk and read its own statements.
        unsafe {
            let db = c.handle();
            let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let n = rusqlite::ffi::sqlite3_stmt_status(
                    stmt,
                    rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE,
                    0,
                );
                total += n;
                stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
            }
        }
        total
    }

    /// The hot statements are planned once, not on every use (a parameter
    /// that can change the plan, like `LIMIT ?`, makes the cache re-plan them).
    #[tokio::test]
    async fn hot_statements_are_not_replanned() {
        let (_d, store) = temp_store();
        let mut rounds = Vec::new();
        for round in 0..3 {
            let msgs = (0..10)
                .map(|i| {
                    NewMessage::test("h", &format!("m{round}-{i}"), "Observation", &i.to_string())
                })
                .collect();
            store
                .commit_page(
                    &crate::state::Fence::private(),
                    PageCommit {
                        source: "s".into(),
                        resource_type: "Observation".into(),
                        messages: msgs,
                        watermark: Some(format!("2026-01-0{}T00:00:00.000Z", round + 1)),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            store
                .load_seen("s", "Observation", vec!["1".into()])
                .await
                .unwrap();
            store
                .target_state(&crate::state::TargetKey::population("s", "Observation"))
                .await
                .unwrap();
            let claimed = store.claim_due("h", vec![], 5 + round).await.unwrap();
            let done = claimed
                .iter()
                .map(|c| (c.id, DeliveryRecord::Delivered { status: 200 }))
                .collect();
            store
                .record_deliveries(&crate::state::Fence::private(), "h", done, false)
                .await
                .unwrap();
            store.next_due_ms("h").await.unwrap();
            store.hook_disabled("h").await.unwrap();
            store
                .record_polls(vec![PollOutcome {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    error: None,
                    at_ms: now_ms(),
                    resources_read: 0,
                    ..Default::default()
                }])
                .await
                .unwrap();
            rounds.push(reprepares(&store));
        }
        // Whatever happened while warming up, later rounds add nothing.
        assert_eq!(rounds[1], rounds[2], "{rounds:?}");
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::SqliteStore;

    pub fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("bridge.db")).unwrap();
        (dir, store)
    }

    /// Makes a hook's messages look `ms` older than they are.
    pub async fn backdate(store: &SqliteStore, hook: &str, ms: i64) {
        let hook = hook.to_string();
        store
            .call(move |c| {
                c.execute(
                    "UPDATE outbox SET created_at = created_at - ?2 WHERE hook = ?1",
                    rusqlite::params![hook, ms],
                )
            })
            .await
            .unwrap();
    }
}
