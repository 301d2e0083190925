//! A `bulk-export` source's job in flight on PostgreSQL: its status URL,
//! kept before the first status request so that a restart resumes the job
//! instead of starting another, and how far its output files were read.

use super::PgStore;
use crate::state::{ExportJob, ExportProgress, Fence, StateError, now_ms};
use deadpool_postgres::Transaction;

impl PgStore {
    pub async fn export_job(&self, source: &str) -> Result<Option<ExportJob>, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT job_url, since, kicked_off_at, transaction_time, files_done, lines_done,
                    request, manifest
                 FROM export_job WHERE source = $1",
            )
            .await?;
        Ok(c.query_opt(&stmt, &[&source]).await?.map(|r| ExportJob {
            job_url: r.get(0),
            since: r.get(1),
            kicked_off_at: r.get(2),
            transaction_time: r.get(3),
            files_done: r.get(4),
            lines_done: r.get(5),
            request: r.get(6),
            manifest: r.get(7),
        }))
    }

    pub async fn save_export_job(
        &self,
        source: &str,
        job_url: &str,
        since: Option<String>,
        request: &str,
    ) -> Result<ExportJob, StateError> {
        let at = now_ms();
        let c = self.client().await?;
        // SQLite's INSERT OR REPLACE: the new job starts with no progress.
        let stmt = c
            .prepare_cached(
                "INSERT INTO export_job (source, job_url, since, kicked_off_at, request)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (source) DO UPDATE SET
                    job_url = $2, since = $3, kicked_off_at = $4, request = $5,
                    transaction_time = NULL, files_done = 0, lines_done = 0, manifest = NULL",
            )
            .await?;
        c.execute(&stmt, &[&source, &job_url, &since, &at, &request])
            .await?;
        Ok(ExportJob {
            job_url: job_url.to_string(),
            since,
            kicked_off_at: at,
            transaction_time: None,
            files_done: 0,
            lines_done: 0,
            request: Some(request.to_string()),
            manifest: None,
        })
    }

    pub async fn note_export_manifest(
        &self,
        source: &str,
        transaction_time: &str,
        fingerprint: &str,
        restart: bool,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE export_job SET transaction_time = $2, manifest = $3,
                    files_done = CASE WHEN $4 THEN 0 ELSE files_done END,
                    lines_done = CASE WHEN $4 THEN 0 ELSE lines_done END
                 WHERE source = $1",
            )
            .await?;
        c.execute(&stmt, &[&source, &transaction_time, &fingerprint, &restart])
            .await?;
        Ok(())
    }

    pub async fn export_file_done(&self, source: &str, files_done: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE export_job SET files_done = $2, lines_done = 0 WHERE source = $1",
            )
            .await?;
        c.execute(&stmt, &[&source, &files_done]).await?;
        Ok(())
    }

    pub async fn finish_export(
        &self,
        fence: &Fence,
        source: &str,
        types: Vec<String>,
        transaction_time: &str,
        repaired: Vec<String>,
    ) -> Result<(), StateError> {
        fence.check_watermarks()?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        super::fence::check(&*tx, fence).await?;
        let mark = tx
            .prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark)
                 VALUES ($1, $2, '', true, $3)
                 ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                    watermark = CASE WHEN poll_target.watermark IS NULL
                                       OR poll_target.watermark < $3 OR $4
                                THEN $3 ELSE poll_target.watermark END",
            )
            .await?;
        // In a sorted order: two writers never lock the same rows crosswise.
        let mut sorted = types;
        sorted.sort();
        sorted.dedup();
        for rt in &sorted {
            let repair = repaired.contains(rt);
            tx.execute(&mark, &[&source, rt, &transaction_time, &repair])
                .await?;
        }
        tx.execute("DELETE FROM export_job WHERE source = $1", &[&source])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn drop_export_job(&self, source: &str) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute("DELETE FROM export_job WHERE source = $1", &[&source])
            .await?;
        Ok(())
    }
}

/// A chunk's progress, in the chunk's own transaction.
pub(super) async fn record_chunk(
    tx: &Transaction<'_>,
    source: &str,
    progress: &ExportProgress,
) -> Result<(), StateError> {
    let stmt = tx
        .prepare_cached("UPDATE export_job SET files_done = $2, lines_done = $3 WHERE source = $1")
        .await?;
    tx.execute(&stmt, &[&source, &progress.file, &progress.lines])
        .await?;
    Ok(())
}
