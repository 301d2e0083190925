//! The daemon's heartbeat on PostgreSQL: one `replica` row per running
//! process (several replicas share the database), where SQLite keeps one
//! `daemon` row. `last_seen_at` is our clock (ms, for `status`, as SQLite);
//! `heartbeat_at` the database's (`clock_timestamp()`: liveness compared
//! across replicas must not depend on their clocks).

use super::{PgStore, lease};
use crate::state::{Heartbeat, StateError, now_ms};
use std::sync::atomic::Ordering;

impl PgStore {
    /// Inserts this process's row (its id is the store's: this process's
    /// replica, the owner its leases name).
    pub async fn record_daemon_start(&self, pid: u32, version: &str) -> Result<(), StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO replica (id, host, pid, version, started_at, last_seen_at, heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, $5, clock_timestamp())
                 ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                    version = EXCLUDED.version, started_at = EXCLUDED.started_at,
                    last_seen_at = EXCLUDED.last_seen_at, heartbeat_at = clock_timestamp()",
            )
            .await?;
        let now = now_ms();
        let replica: &str = &self.replica;
        client
            .execute(
                &stmt,
                &[
                    &replica,
                    &lease::this_replica().host,
                    &i64::from(pid),
                    &version,
                    &now,
                ],
            )
            .await?;
        self.heartbeat_ok_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Updates this process's row only (as SQLite: another pid's beat
    /// touches nothing).
    pub async fn heartbeat(&self, pid: u32) -> Result<(), StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE replica SET last_seen_at = $3, heartbeat_at = clock_timestamp()
                 WHERE id = $1 AND pid = $2",
            )
            .await?;
        let now = now_ms();
        let replica: &str = &self.replica;
        client
            .execute(&stmt, &[&replica, &i64::from(pid), &now])
            .await?;
        self.heartbeat_ok_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// The replica that beat last (by the database's clock).
    pub async fn last_heartbeat(&self) -> Result<Option<Heartbeat>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT pid, started_at, last_seen_at, version FROM replica
                 ORDER BY heartbeat_at DESC, last_seen_at DESC LIMIT 1",
            )
            .await?;
        let Some(r) = client.query_opt(&stmt, &[]).await? else {
            return Ok(None);
        };
        Ok(Some(Heartbeat {
            pid: u32::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0),
            started_at_ms: r.try_get(1)?,
            last_seen_at_ms: r.try_get(2)?,
            version: r.try_get(3)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::state::postgres::PgStore;
    use crate::state::postgres::test_util::fresh_store;

    /// Each replica has its own row: a start inserts it, a beat moves its
    /// `last_seen_at` only (another pid's beat touches nothing), and the
    /// last heartbeat is the replica that beat last.
    #[tokio::test]
    async fn each_replica_beats_in_its_own_row() {
        let Some(a) = fresh_store().await else {
            return;
        };
        assert_eq!(a.last_heartbeat().await.unwrap(), None);
        assert_eq!(a.last_heartbeat_ok_ms(), None);
        a.record_daemon_start(41, "0.1.0").await.unwrap();
        assert!(a.last_heartbeat_ok_ms().is_some());
        let first = a.last_heartbeat().await.unwrap().unwrap();
        assert_eq!((first.pid, first.version.as_str()), (41, "0.1.0"));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        a.heartbeat(41).await.unwrap();
        let beat = a.last_heartbeat().await.unwrap().unwrap();
        assert_eq!(beat.started_at_ms, first.started_at_ms);
        assert!(beat.last_seen_at_ms > first.last_seen_at_ms);
        a.heartbeat(7).await.unwrap();
        assert_eq!(a.last_heartbeat().await.unwrap().unwrap(), beat);

        // A second replica on the same database (its own replica id).
        let b = PgStore {
            replica: crate::state::postgres::lease::new_replica_id().into(),
            ..a.clone()
        };
        b.record_daemon_start(42, "0.2.0").await.unwrap();
        assert_eq!(a.last_heartbeat().await.unwrap().unwrap().pid, 42);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        a.heartbeat(41).await.unwrap();
        assert_eq!(b.last_heartbeat().await.unwrap().unwrap().pid, 41);
        let rows: i64 = a
            .client()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM replica", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 2);
    }
}
