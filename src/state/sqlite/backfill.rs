//! Backfill jobs: the range a `fhir-bridge backfill` covers per resource
//! type, and how far it got, so that an interrupted backfill resumes.

use super::{SqliteStore, StateError, now_ms};
use crate::state::{BackfillJob, BackfillProgress, PageCommit};
use rusqlite::{OptionalExtension, Transaction, params};

impl SqliteStore {
    pub async fn backfill_job(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<BackfillJob>, StateError> {
        let (source, rt) = (source.to_string(), resource_type.to_string());
        self.call(move |c| {
            c.query_row(
                "SELECT since, until, cursor, done, pages, resources, changes
                 FROM backfill WHERE source = ?1 AND resource_type = ?2",
                params![source, rt],
                |r| {
                    Ok(BackfillJob {
                        since: r.get(0)?,
                        until: r.get(1)?,
                        cursor: r.get(2)?,
                        done: r.get::<_, i64>(3)? != 0,
                        pages: r.get(4)?,
                        resources: r.get(5)?,
                        changes: r.get(6)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    pub async fn start_backfill(
        &self,
        source: &str,
        resource_type: &str,
        since: &str,
        until: &str,
    ) -> Result<(), StateError> {
        let (source, rt, since, until) = (
            source.to_string(),
            resource_type.to_string(),
            since.to_string(),
            until.to_string(),
        );
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO backfill (source, resource_type, since, until, started_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![source, rt, since, until, now_ms()],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn finish_backfill(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<(), StateError> {
        let (source, rt) = (source.to_string(), resource_type.to_string());
        self.call(move |c| {
            c.execute(
                "UPDATE backfill SET done = 1, updated_at = ?3 WHERE source = ?1 AND resource_type = ?2",
                params![source, rt, now_ms()],
            )
            .map(|_| ())
        })
        .await
    }
}

/// A backfill page's progress, in the page's own transaction (with its seen
/// versions and messages): a crash resumes from the last committed page.
pub(super) fn record_page(
    tx: &Transaction,
    page: &PageCommit,
    progress: &BackfillProgress,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE backfill SET cursor = COALESCE(?3, cursor), pages = pages + 1,
            resources = resources + ?4, changes = changes + ?5, updated_at = ?6
         WHERE source = ?1 AND resource_type = ?2",
    )?
    .execute(params![
        page.source,
        page.resource_type,
        progress.cursor,
        page.resources_read as i64,
        page.changes as i64,
        now_ms()
    ])?;
    Ok(())
}
