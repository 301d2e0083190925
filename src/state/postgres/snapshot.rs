//! Snapshot state on PostgreSQL: the seen resources a complete walk no
//! longer met (its deletes), and a reconciliation's record.

use super::PgStore;
use super::poll::{content_hash, patient_column};
use crate::state::{SeenRow, StateError, TargetKey};
use std::sync::Arc;

/// Seen rows read per statement: a walk of millions is read in chunks, with
/// no transaction held across them (as SQLite's backend does).
const SCAN_CHUNK: i64 = 20_000;

impl PgStore {
    pub async fn seen_not_walked(
        &self,
        source: &str,
        resource_type: &str,
        walked: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        bodies: bool,
    ) -> Result<Vec<(String, SeenRow)>, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT resource_id, version_id, last_updated, content_hash FROM seen
                 WHERE source = $1 AND resource_type = $2 AND resource_id > $3
                 ORDER BY resource_id LIMIT $4",
            )
            .await?;
        let body_stmt = c
            .prepare_cached(
                "SELECT resource_id, body FROM seen_body
                 WHERE source = $1 AND resource_type = $2 AND resource_id = ANY($3)",
            )
            .await?;
        let mut gone = Vec::new();
        let mut after = String::new();
        loop {
            let rows = c
                .query(&stmt, &[&source, &resource_type, &after, &SCAN_CHUNK])
                .await?;
            let full = rows.len() as i64 == SCAN_CHUNK;
            let mut found = Vec::new();
            for r in &rows {
                let id: String = r.get(0);
                let hash: &[u8] = r.get(3);
                if hash != SeenRow::TOMBSTONE_HASH && !walked(&id) {
                    let row = SeenRow {
                        version_id: r.get(1),
                        last_updated: r.get(2),
                        content_hash: content_hash(hash),
                        body: None,
                    };
                    found.push((id.clone(), row));
                }
                after = id;
            }
            // Bodies only for the rows the walk missed.
            if bodies && !found.is_empty() {
                let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
                let mut kept: std::collections::HashMap<String, Vec<u8>> = c
                    .query(&body_stmt, &[&source, &resource_type, &ids])
                    .await?
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                for (id, row) in found.iter_mut() {
                    row.body = kept.remove(id.as_str());
                }
            }
            gone.extend(found);
            if !full {
                return Ok(gone);
            }
        }
    }

    pub async fn record_reconcile(
        &self,
        key: &TargetKey,
        at_ms: i64,
        changes: u64,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, last_reconcile_at, last_reconcile_changes)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                    last_reconcile_at = $4, last_reconcile_changes = $5",
            )
            .await?;
        c.execute(
            &stmt,
            &[
                &key.source,
                &key.resource_type,
                &patient_column(key),
                &at_ms,
                &(changes as i64),
            ],
        )
        .await?;
        Ok(())
    }
}
