//! Backfill jobs on PostgreSQL: the range a `fhir-bridge backfill` covers
//! per resource type, and how far it got, so that an interrupted backfill
//! resumes.

use super::PgStore;
use crate::state::{BackfillJob, BackfillProgress, PageCommit, StateError, now_ms};
use deadpool_postgres::Transaction;

impl PgStore {
    pub async fn backfill_job(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<BackfillJob>, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT since, until, cursor, done, pages, resources, changes
                 FROM backfill WHERE source = $1 AND resource_type = $2",
            )
            .await?;
        Ok(c.query_opt(&stmt, &[&source, &resource_type])
            .await?
            .map(|r| BackfillJob {
                since: r.get(0),
                until: r.get(1),
                cursor: r.get(2),
                done: r.get(3),
                pages: r.get(4),
                resources: r.get(5),
                changes: r.get(6),
            }))
    }

    pub async fn start_backfill(
        &self,
        source: &str,
        resource_type: &str,
        since: &str,
        until: &str,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        // SQLite's INSERT OR REPLACE: a job started over forgets its progress.
        let stmt = c
            .prepare_cached(
                "INSERT INTO backfill (source, resource_type, since, until, started_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)
                 ON CONFLICT (source, resource_type) DO UPDATE SET
                    since = $3, until = $4, cursor = NULL, done = false, pages = 0,
                    resources = 0, changes = 0, started_at = $5, updated_at = $5",
            )
            .await?;
        c.execute(&stmt, &[&source, &resource_type, &since, &until, &now_ms()])
            .await?;
        Ok(())
    }

    pub async fn finish_backfill(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE backfill SET done = true, updated_at = $3
                 WHERE source = $1 AND resource_type = $2",
            )
            .await?;
        c.execute(&stmt, &[&source, &resource_type, &now_ms()])
            .await?;
        Ok(())
    }

    /// Whether a backfill job has not reached its end (running, or stopped
    /// and waiting to be resumed): `source rename` waits for it.
    pub(crate) async fn backfills_unfinished(&self) -> Result<bool, StateError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT EXISTS (SELECT 1 FROM backfill WHERE NOT done)", &[])
            .await?;
        Ok(row.get(0))
    }
}

/// A backfill page's progress, in the page's own transaction (with its seen
/// versions and messages): a crash resumes from the last committed page.
pub(super) async fn record_page(
    tx: &Transaction<'_>,
    page: &PageCommit,
    progress: &BackfillProgress,
) -> Result<(), StateError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE backfill SET cursor = COALESCE($3, cursor), pages = pages + 1,
                resources = resources + $4, changes = changes + $5, updated_at = $6
             WHERE source = $1 AND resource_type = $2",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &page.source,
            &page.resource_type,
            &progress.cursor,
            &(page.resources_read as i64),
            &(page.changes as i64),
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}
