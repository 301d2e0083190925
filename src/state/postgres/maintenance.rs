//! Keeping the state bounded on PostgreSQL (as `sqlite/maintenance.rs`):
//! what can never matter again is deleted. Giving space back and the WAL
//! are the server's business here (see `reclaim_space`, `truncate_wal`).

use super::PgStore;
use crate::state::{SeenRow, StateError};
use deadpool_postgres::Transaction;

/// Rows deleted per transaction, so a large prune never holds locks for long.
const PRUNE_CHUNK: i64 = 5000;

impl PgStore {
    pub async fn prune_seen(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
    ) -> Result<usize, StateError> {
        self.prune_seen_rows(source, resource_type, &before, None)
            .await
    }

    pub async fn prune_tombstones(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
    ) -> Result<usize, StateError> {
        let hash = SeenRow::TOMBSTONE_HASH;
        self.prune_seen_rows(source, resource_type, &before, Some(&hash))
            .await
    }

    /// `prune_seen`, of the rows whose content hash is `only_hash` when
    /// given (a snapshot keeps every row but its deletes' tombstones). The
    /// kept bodies go with their rows.
    async fn prune_seen_rows(
        &self,
        source: &str,
        resource_type: &str,
        before: &str,
        only_hash: Option<&[u8]>,
    ) -> Result<usize, StateError> {
        let mut client = self.client().await?;
        let mut total = 0;
        loop {
            let tx = client.transaction().await?;
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM seen WHERE (source, resource_type, resource_id) IN (
                        SELECT source, resource_type, resource_id FROM seen
                        WHERE source = $1 AND resource_type = $2
                          AND last_updated COLLATE \"C\" < $3
                          AND ($5::bytea IS NULL OR content_hash = $5::bytea)
                        LIMIT $4)
                     RETURNING resource_id",
                )
                .await?;
            let rows = tx
                .query(
                    &stmt,
                    &[&source, &resource_type, &before, &PRUNE_CHUNK, &only_hash],
                )
                .await?;
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            forget_seen_bodies(&tx, source, resource_type, &refs).await?;
            tx.commit().await?;
            total += ids.len();
            if (ids.len() as i64) < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Nothing to do: PostgreSQL's autovacuum makes a deleted row's space
    /// reusable by the table, and giving it back to the file system takes
    /// `VACUUM FULL`, which locks the table against every replica (an
    /// operator's decision, not a housekeeping pass's). Returns 0.
    pub async fn reclaim_space(&self) -> Result<u64, StateError> {
        Ok(0)
    }

    /// Nothing to do: the server's WAL is recycled by its own checkpoints
    /// (and `CHECKPOINT` needs a privilege the bridge's role should not
    /// have). Its retention (archiving, replication) is the database
    /// operator's policy. Returns true: nothing is held back by us.
    pub async fn truncate_wal(&self) -> Result<bool, StateError> {
        Ok(true)
    }
}

/// Forgets these resources' kept bodies (a pruned chunk's, in one statement).
async fn forget_seen_bodies(
    tx: &Transaction<'_>,
    source: &str,
    resource_type: &str,
    ids: &[&str],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM seen_body
             WHERE source = $1 AND resource_type = $2 AND resource_id = ANY($3)",
        )
        .await?;
    tx.execute(&stmt, &[&source, &resource_type, &ids]).await
}

#[cfg(test)]
mod tests {
    use crate::state::postgres::test_util::fresh_store;
    use crate::state::{Fence, PageCommit, SeenRow};

    fn seen(lu: &str, hash: [u8; 32]) -> SeenRow {
        SeenRow {
            version_id: Some("1".into()),
            last_updated: Some(lu.into()),
            content_hash: hash,
            body: Some(b"{}".to_vec()),
        }
    }

    /// Old versions go in chunks, their kept bodies with them; newer ones
    /// and (for `prune_tombstones`) other rows stay. Space and WAL are the
    /// server's: nothing to give back, nothing held.
    #[tokio::test]
    async fn old_versions_and_their_bodies_are_forgotten_in_chunks() {
        let Some(store) = fresh_store().await else {
            return;
        };
        let tomb = SeenRow::TOMBSTONE_HASH;
        let mut rows = vec![];
        for i in 0..6000 {
            let lu = if i % 2 == 0 {
                "2026-01-01T00:00:00.000Z"
            } else {
                "2026-03-01T00:00:00.000Z"
            };
            rows.push((format!("r{i}"), seen(lu, [1; 32])));
        }
        rows.push(("t-old".into(), seen("2026-01-01T00:00:00.000Z", tomb)));
        rows.push(("t-new".into(), seen("2026-03-01T00:00:00.000Z", tomb)));
        let page = |rt: &str, seen| PageCommit {
            source: "s".into(),
            resource_type: rt.into(),
            seen,
            keep_bodies: true,
            ..Default::default()
        };
        let f = Fence::private();
        store
            .commit_page(&f, page("Observation", rows.clone()))
            .await
            .unwrap();
        store
            .commit_page(&f, page("Encounter", rows))
            .await
            .unwrap();
        let cut = || "2026-02-01T00:00:00.000Z".to_string();
        assert_eq!(
            store.prune_seen("s", "Observation", cut()).await.unwrap(),
            3001
        );
        let left = store
            .load_seen_for_page("s", "Observation", vec!["r0".into(), "r1".into()], true)
            .await
            .unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["r1"]);
        assert_eq!(
            store
                .prune_tombstones("s", "Encounter", cut())
                .await
                .unwrap(),
            1
        );
        let count = |sql: &'static str| {
            let store = store.clone();
            async move {
                let c = store.client().await.unwrap();
                c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
            }
        };
        let obs = "SELECT count(*) FROM seen_body WHERE resource_type = 'Observation'";
        assert_eq!(
            count(obs).await,
            3001,
            "the pruned rows' bodies went with them"
        );
        let enc = "SELECT count(*) FROM seen WHERE resource_type = 'Encounter'";
        assert_eq!(count(enc).await, 6001, "only the old tombstone went");
        assert_eq!(store.reclaim_space().await.unwrap(), 0);
        assert!(store.truncate_wal().await.unwrap());
    }
}
