//! A `bulk-export` source's job in flight: its status URL, kept before the
//! first status request so that a restart resumes the job instead of
//! starting another, and how far its output files were read.

use super::{SqliteStore, StateError, now_ms};
use crate::state::Fence;
use crate::state::{ExportJob, ExportProgress};
use rusqlite::{OptionalExtension, Transaction, params};

impl SqliteStore {
    pub async fn export_job(&self, source: &str) -> Result<Option<ExportJob>, StateError> {
        let source = source.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT job_url, since, kicked_off_at, transaction_time, files_done, lines_done,
                    request, manifest
                 FROM export_job WHERE source = ?1",
                params![source],
                |r| {
                    Ok(ExportJob {
                        job_url: r.get(0)?,
                        since: r.get(1)?,
                        kicked_off_at: r.get(2)?,
                        transaction_time: r.get(3)?,
                        files_done: r.get(4)?,
                        lines_done: r.get(5)?,
                        request: r.get(6)?,
                        manifest: r.get(7)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    pub async fn save_export_job(
        &self,
        source: &str,
        job_url: &str,
        since: Option<String>,
        request: &str,
    ) -> Result<ExportJob, StateError> {
        let (source, url, req) = (source.to_string(), job_url.to_string(), request.to_string());
        let at = now_ms();
        let job = ExportJob {
            job_url: url.clone(),
            since: since.clone(),
            kicked_off_at: at,
            transaction_time: None,
            files_done: 0,
            lines_done: 0,
            request: Some(req.clone()),
            manifest: None,
        };
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO export_job (source, job_url, since, kicked_off_at, request)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![source, url, since, at, req],
            )
            .map(|_| ())
        })
        .await?;
        Ok(job)
    }

    pub async fn note_export_manifest(
        &self,
        source: &str,
        transaction_time: &str,
        fingerprint: &str,
        restart: bool,
    ) -> Result<(), StateError> {
        let (source, tt, fp) = (
            source.to_string(),
            transaction_time.to_string(),
            fingerprint.to_string(),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE export_job SET transaction_time = ?2, manifest = ?3,
                    files_done = CASE WHEN ?4 THEN 0 ELSE files_done END,
                    lines_done = CASE WHEN ?4 THEN 0 ELSE lines_done END
                 WHERE source = ?1",
                params![source, tt, fp, restart],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn export_file_done(&self, source: &str, files_done: i64) -> Result<(), StateError> {
        let source = source.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE export_job SET files_done = ?2, lines_done = 0 WHERE source = ?1",
                params![source, files_done],
            )
            .map(|_| ())
        })
        .await
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
        let (source, tt) = (source.to_string(), transaction_time.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut mark = tx.prepare_cached(
                    "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark)
                     VALUES (?1, ?2, '', 1, ?3)
                     ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                        watermark = CASE WHEN watermark IS NULL OR watermark < ?3 OR ?4
                                    THEN ?3 ELSE watermark END",
                )?;
                for rt in &types {
                    mark.execute(params![source, rt, tt, repaired.contains(rt)])?;
                }
            }
            tx.execute("DELETE FROM export_job WHERE source = ?1", params![source])?;
            tx.commit()
        })
        .await
    }

    pub async fn drop_export_job(&self, source: &str) -> Result<(), StateError> {
        let source = source.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM export_job WHERE source = ?1", params![source])
                .map(|_| ())
        })
        .await
    }
}

/// A chunk's progress, in the chunk's own transaction.
pub(super) fn record_chunk(
    tx: &Transaction,
    source: &str,
    progress: &ExportProgress,
) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE export_job SET files_done = ?2, lines_done = ?3 WHERE source = ?1")?
        .execute(params![source, progress.file, progress.lines])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::test_util::temp_store;
    use crate::state::{PageCommit, TargetKey};

    #[tokio::test]
    async fn a_job_keeps_its_progress_and_its_end_moves_every_watermark() {
        let (_dir, store) = temp_store();
        assert_eq!(store.export_job("s").await.unwrap(), None);
        let job = store
            .save_export_job(
                "s",
                "http://h/_export/1",
                None,
                "http://h/$export?_type=Patient",
            )
            .await
            .unwrap();
        assert_eq!(store.export_job("s").await.unwrap(), Some(job));
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Patient".into(),
                    export: Some(ExportProgress { file: 2, lines: 40 }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let got = store.export_job("s").await.unwrap().unwrap();
        assert_eq!((got.files_done, got.lines_done), (2, 40));
        store.export_file_done("s", 3).await.unwrap();
        let got = store.export_job("s").await.unwrap().unwrap();
        assert_eq!((got.files_done, got.lines_done), (3, 0));
        store
            .note_export_manifest("s", "2026-11-30T10:00:00.000Z", "f1", false)
            .await
            .unwrap();
        let got = store.export_job("s").await.unwrap().unwrap();
        assert_eq!((got.files_done, got.manifest.as_deref()), (3, Some("f1")));
        store
            .note_export_manifest("s", "2026-11-30T10:00:00.000Z", "f2", true)
            .await
            .unwrap();
        let got = store.export_job("s").await.unwrap().unwrap();
        assert_eq!((got.files_done, got.lines_done), (0, 0));
        assert_eq!(got.manifest.as_deref(), Some("f2"));
        store.export_file_done("s", 3).await.unwrap();

        let tt = "2026-11-30T10:00:00.000Z";
        store
            .finish_export(
                &crate::state::Fence::private(),
                "s",
                vec!["Patient".into(), "Observation".into()],
                tt,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(store.export_job("s").await.unwrap(), None);
        for rt in ["Patient", "Observation"] {
            let st = store
                .target_state(&TargetKey::population("s", rt))
                .await
                .unwrap();
            assert_eq!(st.watermark.as_deref(), Some(tt), "{rt}");
        }
        // Never back.
        store.save_export_job("s", "u", None, "r").await.unwrap();
        let older = "2026-11-29T10:00:00.000Z";
        store
            .finish_export(
                &crate::state::Fence::private(),
                "s",
                vec!["Patient".into()],
                older,
                vec![],
            )
            .await
            .unwrap();
        let st = store
            .target_state(&TargetKey::population("s", "Patient"))
            .await
            .unwrap();
        assert_eq!(st.watermark.as_deref(), Some(tt));
        // Except from a watermark in the future, which the export repairs.
        store.save_export_job("s", "u", None, "r").await.unwrap();
        store
            .finish_export(
                &crate::state::Fence::private(),
                "s",
                vec!["Patient".into()],
                older,
                vec!["Patient".into()],
            )
            .await
            .unwrap();
        let st = store
            .target_state(&TargetKey::population("s", "Patient"))
            .await
            .unwrap();
        assert_eq!(st.watermark.as_deref(), Some(older));
    }
}
