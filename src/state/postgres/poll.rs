//! Poll-side state on PostgreSQL: each poll target's watermark and status,
//! and the seen-versions table (the page commit is `commit_page`'s).

use super::PgStore;
use crate::state::{Fence, PollOutcome, SeenRow, StateError, TargetKey, TargetState};
use std::collections::HashMap;

/// The `patient` column's value (the state stores `None` as `''`).
pub(super) fn patient_column(key: &TargetKey) -> &str {
    key.patient.as_deref().unwrap_or("")
}

/// A `seen` row's content hash as stored: 32 bytes, or zeros for anything
/// else (as SQLite's backend reads it).
pub(super) fn content_hash(bytes: &[u8]) -> [u8; 32] {
    let mut hash = [0u8; 32];
    if bytes.len() == 32 {
        hash.copy_from_slice(bytes);
    }
    hash
}

impl PgStore {
    pub async fn target_state(&self, key: &TargetKey) -> Result<TargetState, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT initialized, watermark, floor, last_reconcile_at FROM poll_target
                 WHERE source = $1 AND resource_type = $2 AND patient = $3",
            )
            .await?;
        let row = c
            .query_opt(
                &stmt,
                &[&key.source, &key.resource_type, &patient_column(key)],
            )
            .await?;
        Ok(row
            .map(|r| TargetState {
                initialized: r.get(0),
                watermark: r.get(1),
                floor: r.get(2),
                reconciled_at_ms: r.get(3),
            })
            .unwrap_or_default())
    }

    pub async fn init_target(
        &self,
        fence: &Fence,
        key: &TargetKey,
        watermark: Option<String>,
        floor: Option<String>,
    ) -> Result<(), StateError> {
        fence.check_watermarks()?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        super::fence::check(&*tx, fence).await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark, floor)
                 VALUES ($1, $2, $3, true, $4, $5)
                 ON CONFLICT (source, resource_type, patient)
                 DO UPDATE SET initialized = true, watermark = $4, floor = $5",
            )
            .await?;
        tx.execute(
            &stmt,
            &[
                &key.source,
                &key.resource_type,
                &patient_column(key),
                &watermark,
                &floor,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn load_seen(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        self.read_seen(source, resource_type, ids, false).await
    }

    pub async fn load_seen_for_page(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
        bodies: bool,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        self.read_seen(source, resource_type, ids, bodies).await
    }

    /// The seen rows of `ids`, with their kept bodies if `bodies`: one
    /// statement, so rows and bodies come from one snapshot.
    pub(super) async fn read_seen(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
        bodies: bool,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT s.resource_id, s.version_id, s.last_updated, s.content_hash,
                        CASE WHEN $4 THEN b.body END
                 FROM seen s LEFT JOIN seen_body b
                   ON $4 AND b.source = s.source AND b.resource_type = s.resource_type
                      AND b.resource_id = s.resource_id
                 WHERE s.source = $1 AND s.resource_type = $2 AND s.resource_id = ANY($3)",
            )
            .await?;
        let rows = c
            .query(&stmt, &[&source, &resource_type, &ids, &bodies])
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let row = SeenRow {
                    version_id: r.get(1),
                    last_updated: r.get(2),
                    content_hash: content_hash(r.get(3)),
                    body: r.get(4),
                };
                (r.get(0), row)
            })
            .collect())
    }

    pub async fn lowest_patient_watermark(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<String>, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT CASE WHEN count(*) = count(watermark) THEN min(watermark) END
                 FROM poll_target WHERE source = $1 AND resource_type = $2 AND patient <> ''",
            )
            .await?;
        Ok(c.query_one(&stmt, &[&source, &resource_type]).await?.get(0))
    }

    pub async fn record_polls(&self, outcomes: Vec<PollOutcome>) -> Result<(), StateError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let ok = tx
            .prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, last_poll_at, last_ok_at, last_outcome, resources_read)
                 VALUES ($1, $2, $5, $3, $3, 'ok', $4)
                 ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                    last_poll_at = $3, last_ok_at = $3, last_outcome = 'ok',
                    consecutive_failures = 0,
                    resources_read = poll_target.resources_read + $4",
            )
            .await?;
        let failed = tx
            .prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, last_poll_at, last_outcome, last_error, consecutive_failures)
                 VALUES ($1, $2, $5, $3, 'error', $4, 1)
                 ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                    last_poll_at = $3, last_outcome = 'error', last_error = $4,
                    consecutive_failures = poll_target.consecutive_failures + 1",
            )
            .await?;
        // Rare: only polls that met a skipped or future-stamped entry.
        let noted = tx
            .prepare_cached(
                "UPDATE poll_target SET
                    entries_skipped = entries_skipped + $3,
                    entries_future = entries_future + $4,
                    last_skip_at = CASE WHEN $3 > 0 THEN $5 ELSE last_skip_at END,
                    last_warning = COALESCE($6, last_warning),
                    last_warning_at = CASE WHEN $6::text IS NULL THEN last_warning_at ELSE $5 END
                 WHERE source = $1 AND resource_type = $2 AND patient = $7",
            )
            .await?;
        for o in outcomes {
            let patient = o.patient.unwrap_or_default();
            let at = o.at_ms;
            match &o.error {
                None => {
                    let read = o.resources_read as i64;
                    tx.execute(&ok, &[&o.source, &o.resource_type, &at, &read, &patient])
                        .await?
                }
                Some(e) => {
                    tx.execute(&failed, &[&o.source, &o.resource_type, &at, e, &patient])
                        .await?
                }
            };
            if o.skipped > 0 || o.future > 0 || o.warning.is_some() {
                let (skipped, future) = (o.skipped as i64, o.future as i64);
                tx.execute(
                    &noted,
                    &[
                        &o.source,
                        &o.resource_type,
                        &skipped,
                        &future,
                        &at,
                        &o.warning,
                        &patient,
                    ],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn sources_with_state(&self) -> Result<Vec<String>, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT DISTINCT source FROM poll_target ORDER BY source")
            .await?;
        Ok(c.query(&stmt, &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
