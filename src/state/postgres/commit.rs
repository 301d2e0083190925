//! The page commit on PostgreSQL: seen versions (and kept bodies), the
//! outbox's messages, and the watermark, backfill or export progress of the
//! page, in one fenced transaction (as `sqlite/poll.rs`'s `commit_page`).
//! The helpers SQLite keeps in `backfill.rs`, `export.rs` and
//! `seen_body.rs` are here, beside their one caller.
//!
//! Order inside the transaction: the fence first; the counter rows of the
//! hooks (`hook_seq`, in `insert_messages`) last, since they are held until
//! the commit and every enqueuer of the hook waits for them.

use super::outbox::insert_messages;
use super::{PgStore, errors, fence};
use crate::state::{BackfillProgress, ExportProgress, Fence, PageCommit, StateError, now_ms};
use deadpool_postgres::Transaction;

/// How often a page is tried when its transaction only met another (a
/// deadlock between two replicas upserting the same seen rows or message
/// ids in different orders): PostgreSQL aborted one, which is safe to run
/// again. SQLite never sees this (one writer).
const ATTEMPTS: usize = 5;

/// Why a page's transaction failed: the database (maybe a conflict worth
/// retrying), or a refusal (the fence).
enum Failure {
    Db(tokio_postgres::Error),
    Refused(StateError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl PgStore {
    pub async fn commit_page(&self, fence: &Fence, page: PageCommit) -> Result<(), StateError> {
        fence.check_page(&page)?;
        let mut client = self.client().await?;
        let mut attempt = 1;
        loop {
            let tx = client.transaction().await?;
            let done = match write_page(&tx, fence, &page).await {
                Ok(()) => tx.commit().await.map_err(Failure::Db),
                Err(e) => {
                    // The connection goes back to the pool clean.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match done {
                Ok(()) => return Ok(()),
                Err(Failure::Db(e)) if errors::is_transient(&e) && attempt < ATTEMPTS => {
                    attempt += 1;
                }
                Err(Failure::Db(e)) => return Err(e.into()),
                Err(Failure::Refused(e)) => return Err(e),
            }
        }
    }
}

/// Everything `page` changes, in `tx`.
async fn write_page(tx: &Transaction<'_>, fence: &Fence, page: &PageCommit) -> Result<(), Failure> {
    fence::check(&**tx, fence).await.map_err(Failure::Refused)?;
    let upsert = tx
        .prepare_cached(
            "INSERT INTO seen (source, resource_type, resource_id, version_id, last_updated, content_hash)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (source, resource_type, resource_id) DO UPDATE SET
                version_id = EXCLUDED.version_id,
                last_updated = EXCLUDED.last_updated,
                content_hash = EXCLUDED.content_hash
             -- Never back to an older version: a backfill and the daemon
             -- may commit the same resource in either order. Byte order
             -- (COLLATE \"C\"), as SQLite compares, whatever the database's.
             WHERE seen.last_updated IS NULL OR EXCLUDED.last_updated IS NULL
                OR EXCLUDED.last_updated COLLATE \"C\" >= seen.last_updated COLLATE \"C\"",
        )
        .await?;
    for (id, row) in &page.seen {
        let hash: &[u8] = &row.content_hash;
        let moved = tx
            .execute(
                &upsert,
                &[
                    &page.source,
                    &page.resource_type,
                    id,
                    &row.version_id,
                    &row.last_updated,
                    &hash,
                ],
            )
            .await?;
        // The body follows its seen row, older-version guard included.
        if page.keep_bodies && moved > 0 {
            let body = row.body.as_deref();
            write_seen_body(tx, &page.source, &page.resource_type, id, body).await?;
        }
    }
    match &page.backfill {
        Some(progress) => record_backfill_page(tx, page, progress).await?,
        None => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark)
                     VALUES ($1, $2, $6, true, $3)
                     ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                        watermark = COALESCE($3, poll_target.watermark),
                        changes_seen = poll_target.changes_seen + $4,
                        resources_read = poll_target.resources_read + $5",
                )
                .await?;
            let patient = page.patient.as_deref().unwrap_or("");
            let (changes, read) = (page.changes as i64, page.resources_read as i64);
            tx.execute(
                &stmt,
                &[
                    &page.source,
                    &page.resource_type,
                    &page.watermark,
                    &changes,
                    &read,
                    &patient,
                ],
            )
            .await?;
        }
    }
    if let Some(progress) = &page.export {
        record_export_chunk(tx, &page.source, progress).await?;
    }
    // Sorted: two pages counting errors of the same hooks lock their rows
    // in the same order.
    let mut errs: Vec<(&String, &u64)> = page.filter_errors.iter().collect();
    errs.sort();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO hook_stats (hook, filter_errors) VALUES ($1, $2)
             ON CONFLICT (hook) DO UPDATE SET
                filter_errors = hook_stats.filter_errors + EXCLUDED.filter_errors",
        )
        .await?;
    for (hook, n) in errs {
        tx.execute(&stmt, &[hook, &(*n as i64)]).await?;
    }
    insert_messages(tx, &page.messages).await?;
    Ok(())
}

/// Stores `body` as the resource's last one (`seen_body`); `None` (over the
/// size bound) forgets the older body, so `$previous` is null rather than
/// stale (as `sqlite/seen_body.rs`).
pub(super) async fn write_seen_body(
    tx: &Transaction<'_>,
    source: &str,
    resource_type: &str,
    id: &str,
    body: Option<&[u8]>,
) -> Result<(), tokio_postgres::Error> {
    match body {
        Some(body) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO seen_body (source, resource_type, resource_id, body)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (source, resource_type, resource_id)
                     DO UPDATE SET body = EXCLUDED.body",
                )
                .await?;
            tx.execute(&stmt, &[&source, &resource_type, &id, &body])
                .await?;
        }
        None => {
            let ids = [id];
            forget_seen_bodies(tx, source, resource_type, &ids).await?;
        }
    }
    Ok(())
}

/// Forgets these resources' kept bodies.
pub(super) async fn forget_seen_bodies(
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

/// A backfill page's progress, in the page's own transaction (with its seen
/// versions and messages): a crash resumes from the last committed page
/// (as `sqlite/backfill.rs`'s `record_page`).
pub(super) async fn record_backfill_page(
    tx: &Transaction<'_>,
    page: &PageCommit,
    progress: &BackfillProgress,
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "UPDATE backfill SET cursor = COALESCE($3, cursor), pages = pages + 1,
                resources = resources + $4, changes = changes + $5, updated_at = $6
             WHERE source = $1 AND resource_type = $2",
        )
        .await?;
    let (read, changes) = (page.resources_read as i64, page.changes as i64);
    tx.execute(
        &stmt,
        &[
            &page.source,
            &page.resource_type,
            &progress.cursor,
            &read,
            &changes,
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}

/// An export chunk's progress, in the chunk's own transaction (as
/// `sqlite/export.rs`'s `record_chunk`).
pub(super) async fn record_export_chunk(
    tx: &Transaction<'_>,
    source: &str,
    progress: &ExportProgress,
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached("UPDATE export_job SET files_done = $2, lines_done = $3 WHERE source = $1")
        .await?;
    tx.execute(&stmt, &[&source, &progress.file, &progress.lines])
        .await?;
    Ok(())
}
