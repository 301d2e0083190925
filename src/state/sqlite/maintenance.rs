//! Keeping the state bounded: what can never matter again is deleted, and the
//! space it held goes back to the file system.

use super::{SqliteStore, StateError};
use rusqlite::params;

/// Rows deleted per transaction, so a large prune never holds the database
/// for long.
const PRUNE_CHUNK: i64 = 5000;

impl SqliteStore {
    pub async fn prune_seen(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
    ) -> Result<usize, StateError> {
        self.prune_seen_rows(source, resource_type, before, None)
            .await
    }

    /// `prune_seen`, of the rows whose content hash is `only_hash` when
    /// given (a snapshot keeps every row but its deletes' tombstones).
    pub(super) async fn prune_seen_rows(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
        only_hash: Option<[u8; 32]>,
    ) -> Result<usize, StateError> {
        let (source, rt) = (source.to_string(), resource_type.to_string());
        self.call(move |c| {
            let only = only_hash.map(|h| h.to_vec());
            let mut total = 0;
            loop {
                let tx = c.transaction()?;
                let bodies = super::seen_body::any(&tx, &source, &rt)?;
                let ids: Vec<String> = tx
                    .prepare_cached(
                        "DELETE FROM seen WHERE (source, resource_type, resource_id) IN (
                            SELECT source, resource_type, resource_id FROM seen
                            WHERE source = ?1 AND resource_type = ?2 AND last_updated < ?3
                              AND (?5 IS NULL OR content_hash = ?5)
                            LIMIT ?4 + 0)
                         RETURNING resource_id",
                    )?
                    .query_map(params![source, rt, before, PRUNE_CHUNK, only], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                if bodies {
                    for id in &ids {
                        super::seen_body::forget(&tx, &source, &rt, id)?;
                    }
                }
                tx.commit()?;
                total += ids.len();
                if (ids.len() as i64) < PRUNE_CHUNK {
                    return Ok(total);
                }
            }
        })
        .await
    }

    pub async fn reclaim_space(&self) -> Result<u64, StateError> {
        self.call(|c| {
            let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
            let free: i64 = c.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
            let page_size: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
            if free < 256 || free * 4 < pages {
                return Ok(0);
            }
            // Not a bindable parameter; `free` is our own integer.
            let mut stmt = c.prepare(&format!("PRAGMA incremental_vacuum({free})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            let after: i64 = c.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
            // The vacuum went through the WAL; fold it into the database now
            // and truncate it, or the WAL keeps the size the database gave up.
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(((free - after).max(0) * page_size) as u64)
        })
        .await
    }

    pub async fn truncate_wal(&self) -> Result<bool, StateError> {
        self.call(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0).map(|busy| busy == 0)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::state::sqlite::test_util::temp_store;
    use crate::state::{NewMessage, PageCommit, SeenRow};

    #[tokio::test]
    async fn old_versions_are_forgotten_and_space_comes_back() {
        let (dir, store) = temp_store();
        let seen = |lu: &str| SeenRow {
            version_id: Some("1".into()),
            last_updated: Some(lu.into()),
            content_hash: [1; 32],
            body: None,
        };
        let big = vec![b'x'; 2000];
        let mut rows = vec![];
        let mut msgs = vec![];
        for i in 0..6000 {
            let lu = if i % 2 == 0 {
                "2026-01-01T00:00:00.000Z"
            } else {
                "2026-03-01T00:00:00.000Z"
            };
            rows.push((format!("r{i}"), seen(lu)));
            let m = NewMessage::test("h", &format!("m{i}"), "Observation", &format!("r{i}"))
                .with_body(big.clone());
            msgs.push(m);
        }
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    seen: rows,
                    messages: msgs,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let n = store
            .prune_seen("s", "Observation", "2026-02-01T00:00:00.000Z".into())
            .await
            .unwrap();
        assert_eq!(n, 3000);
        let left = store
            .load_seen("s", "Observation", vec!["r0".into(), "r1".into()])
            .await
            .unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["r1"]);

        // Deliver everything: payloads are dropped, then the space is returned.
        let all = store.claim_due("h", vec![], 10_000).await.unwrap();
        let done = all
            .iter()
            .map(|c| {
                (
                    c.id,
                    crate::state::DeliveryRecord::Delivered { status: 200 },
                )
            })
            .collect();
        store
            .record_deliveries(&crate::state::Fence::private(), "h", done, false)
            .await
            .unwrap();
        let freed = store.reclaim_space().await.unwrap();
        assert!(freed > 6_000_000, "{freed}");
        // Nothing more to give back right after.
        assert_eq!(store.reclaim_space().await.unwrap(), 0);
        drop(dir);
    }

    #[tokio::test]
    async fn truncating_the_wal_leaves_it_empty() {
        let (dir, store) = temp_store();
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    messages: vec![NewMessage::test("h", "m", "Observation", "1")],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let wal = dir.path().join("bridge.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        assert!(store.truncate_wal().await.unwrap());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    }
}
