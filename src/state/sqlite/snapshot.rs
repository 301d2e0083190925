//! Snapshot state: the seen resources a complete walk no longer met (its
//! deletes), the pruning of their tombstones, and a reconciliation's record.

use super::{SqliteStore, StateError};
use crate::state::{SeenRow, TargetKey};
use rusqlite::params;
use std::sync::Arc;

/// Seen rows read per lock: the scan gives the connection back between
/// chunks, so deliveries are not held up by a walk of millions.
const SCAN_CHUNK: i64 = 20_000;

/// What a delete leaves in `seen` (see [`SeenRow::TOMBSTONE_HASH`]).
fn tombstone_hash() -> [u8; 32] {
    SeenRow::TOMBSTONE_HASH
}

impl SqliteStore {
    pub async fn seen_not_walked(
        &self,
        source: &str,
        resource_type: &str,
        walked: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        bodies: bool,
    ) -> Result<Vec<(String, SeenRow)>, StateError> {
        let mut gone = Vec::new();
        let mut after = String::new();
        loop {
            let (source, rt, walked) = (
                source.to_string(),
                resource_type.to_string(),
                walked.clone(),
            );
            let from = after.clone();
            let (last, found) = self
                .call(move |c| {
                    let tx = c.transaction()?;
                    let mut stmt = tx.prepare_cached(
                        "SELECT resource_id, version_id, last_updated, content_hash FROM seen
                         WHERE source = ?1 AND resource_type = ?2 AND resource_id > ?3
                         ORDER BY resource_id LIMIT ?4",
                    )?;
                    let mut rows = stmt.query(params![source, rt, from, SCAN_CHUNK])?;
                    let (mut last, mut found, mut n) = (None, Vec::new(), 0);
                    let tombstone = tombstone_hash();
                    while let Some(r) = rows.next()? {
                        n += 1;
                        let id: String = r.get(0)?;
                        let hash: Vec<u8> = r.get(3)?;
                        if hash != tombstone && !walked(&id) {
                            let mut content_hash = [0u8; 32];
                            if hash.len() == 32 {
                                content_hash.copy_from_slice(&hash);
                            }
                            let row = SeenRow {
                                version_id: r.get(1)?,
                                last_updated: r.get(2)?,
                                content_hash,
                                body: None,
                            };
                            found.push((id.clone(), row));
                        }
                        last = Some(id);
                    }
                    drop(rows);
                    drop(stmt);
                    if bodies {
                        let mut body = tx.prepare_cached(
                            "SELECT body FROM seen_body
                             WHERE source = ?1 AND resource_type = ?2 AND resource_id = ?3",
                        )?;
                        for (id, row) in found.iter_mut() {
                            let mut rows = body.query(params![source, rt, id.as_str()])?;
                            if let Some(r) = rows.next()? {
                                row.body = Some(r.get(0)?);
                            }
                        }
                    }
                    tx.commit()?;
                    Ok(((n == SCAN_CHUNK).then_some(last).flatten(), found))
                })
                .await?;
            gone.extend(found);
            match last {
                Some(id) => after = id,
                None => return Ok(gone),
            }
        }
    }

    pub async fn prune_tombstones(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
    ) -> Result<usize, StateError> {
        self.prune_seen_rows(source, resource_type, before, Some(tombstone_hash()))
            .await
    }

    pub async fn record_reconcile(
        &self,
        key: &TargetKey,
        at_ms: i64,
        changes: u64,
    ) -> Result<(), StateError> {
        let key = key.clone();
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, last_reconcile_at, last_reconcile_changes)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                    last_reconcile_at = ?4, last_reconcile_changes = ?5",
            )?
            .execute(params![
                key.source,
                key.resource_type,
                key.patient_column(),
                at_ms,
                changes as i64
            ])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PageCommit;
    use crate::state::sqlite::test_util::temp_store;

    fn row(lu: &str, hash: [u8; 32]) -> SeenRow {
        SeenRow {
            version_id: Some("1".into()),
            last_updated: Some(lu.into()),
            content_hash: hash,
            body: None,
        }
    }

    async fn seed(store: &SqliteStore, rows: Vec<(String, SeenRow)>) {
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    seen: rows,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    /// Across chunks: every seen id not walked, tombstones aside, in id order.
    #[tokio::test]
    async fn the_seen_ids_a_walk_did_not_meet_are_found_across_chunks() {
        let (_d, store) = temp_store();
        let n = SCAN_CHUNK as usize * 2 + 7;
        let mut rows: Vec<_> = (0..n)
            .map(|i| (format!("r{i:06}"), row("2026-01-01T00:00:00.000Z", [1; 32])))
            .collect();
        rows.push((
            "dead".into(),
            row("2026-01-01T00:00:00.000Z", tombstone_hash()),
        ));
        seed(&store, rows).await;
        // Walked: every id but multiples of 10_000 (and not the tombstone).
        let walked = Arc::new(|id: &str| {
            id.strip_prefix('r')
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n % 10_000 != 0)
        });
        let gone = store
            .seen_not_walked("s", "Observation", walked, false)
            .await
            .unwrap();
        let ids: Vec<_> = gone.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["r000000", "r010000", "r020000", "r030000", "r040000"]);
        assert_eq!(gone[0].1.version_id.as_deref(), Some("1"));
        // Nothing seen: nothing gone.
        let none = store
            .seen_not_walked("s", "Encounter", Arc::new(|_: &str| false), false)
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn only_old_tombstones_are_pruned_and_reconciliations_are_recorded() {
        let (_d, store) = temp_store();
        let old = "2026-01-01T00:00:00.000Z";
        let new = "2026-03-01T00:00:00.000Z";
        seed(
            &store,
            vec![
                ("live-old".into(), row(old, [1; 32])),
                ("dead-old".into(), row(old, tombstone_hash())),
                ("dead-new".into(), row(new, tombstone_hash())),
            ],
        )
        .await;
        let n = store
            .prune_tombstones("s", "Observation", "2026-02-01T00:00:00.000Z".into())
            .await
            .unwrap();
        assert_eq!(n, 1);
        let ids = ["live-old", "dead-old", "dead-new"]
            .map(String::from)
            .to_vec();
        let left = store.load_seen("s", "Observation", ids).await.unwrap();
        let mut left: Vec<_> = left.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["dead-new", "live-old"]);

        let key = TargetKey::population("s", "Observation");
        store.record_reconcile(&key, 1_000, 3).await.unwrap();
        assert_eq!(
            store.target_state(&key).await.unwrap().reconciled_at_ms,
            Some(1_000)
        );
        let r = store
            .target_report("s", "Observation")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.last_reconcile_at_ms, r.last_reconcile_changes),
            (Some(1_000), Some(3))
        );
    }
}
