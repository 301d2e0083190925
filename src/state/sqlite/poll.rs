//! Poll-side state: each poll target's watermark and status, the seen-versions
//! table, and the one transaction that commits a page.

use super::outbox::insert_messages;
use super::{SqliteStore, StateError};
use crate::state::Fence;
use crate::state::{PageCommit, PollOutcome, SeenRow, TargetKey, TargetState};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

impl TargetKey {
    /// The `patient` column's value (the state stores `None` as `''`).
    pub(super) fn patient_column(&self) -> &str {
        self.patient.as_deref().unwrap_or("")
    }
}

impl SqliteStore {
    pub async fn target_state(&self, key: &TargetKey) -> Result<TargetState, StateError> {
        let key = key.clone();
        self.call(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT initialized, watermark, floor, last_reconcile_at FROM poll_target
                     WHERE source = ?1 AND resource_type = ?2 AND patient = ?3",
                )?
                .query_row(
                    params![key.source, key.resource_type, key.patient_column()],
                    |r| {
                        Ok(TargetState {
                            initialized: r.get::<_, i64>(0)? != 0,
                            watermark: r.get(1)?,
                            floor: r.get(2)?,
                            reconciled_at_ms: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            Ok(row.unwrap_or_default())
        })
        .await
    }

    pub async fn init_target(
        &self,
        fence: &Fence,
        key: &TargetKey,
        watermark: Option<String>,
        floor: Option<String>,
    ) -> Result<(), StateError> {
        fence.check_watermarks()?;
        let key = key.clone();
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark, floor)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)
                 ON CONFLICT (source, resource_type, patient)
                 DO UPDATE SET initialized = 1, watermark = ?4, floor = ?5",
            )?
            .execute(params![
                key.source,
                key.resource_type,
                key.patient_column(),
                watermark,
                floor
            ])?;
            Ok(())
        })
        .await
    }

    pub async fn load_seen(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        let this = self.clone();
        let (source, rt) = (source.to_string(), resource_type.to_string());
        tokio::task::spawn_blocking(move || this.read_seen(&source, &rt, ids, false))
            .await
            .map_err(|e| StateError::Task(e.to_string()))?
    }

    pub async fn load_seen_for_page(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
        bodies: bool,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        let this = self.clone();
        let (source, rt) = (source.to_string(), resource_type.to_string());
        tokio::task::spawn_blocking(move || this.read_seen(&source, &rt, ids, bodies))
            .await
            .map_err(|e| StateError::Task(e.to_string()))?
    }

    /// The seen rows of `ids`, with their kept bodies if `bodies`, in one
    /// read transaction (on the blocking pool).
    pub(super) fn read_seen(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
        bodies: bool,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        let mut c = self.lock();
        // One read transaction for the whole page: one lock, not one per id.
        let tx = c.transaction()?;
        let mut stmt = tx.prepare_cached(
            "SELECT version_id, last_updated, content_hash FROM seen
             WHERE source = ?1 AND resource_type = ?2 AND resource_id = ?3",
        )?;
        let mut body_stmt = match bodies {
            true => Some(tx.prepare_cached(
                "SELECT body FROM seen_body
                 WHERE source = ?1 AND resource_type = ?2 AND resource_id = ?3",
            )?),
            false => None,
        };
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            let row = stmt
                .query_row(params![source, resource_type, id], |r| {
                    let hash: Vec<u8> = r.get(2)?;
                    let mut content_hash = [0u8; 32];
                    if hash.len() == 32 {
                        content_hash.copy_from_slice(&hash);
                    }
                    Ok(SeenRow {
                        version_id: r.get(0)?,
                        last_updated: r.get(1)?,
                        content_hash,
                        body: None,
                    })
                })
                .optional()?;
            if let Some(mut row) = row {
                if let Some(body_stmt) = body_stmt.as_mut() {
                    row.body = body_stmt
                        .query_row(params![source, resource_type, id], |r| r.get(0))
                        .optional()?;
                }
                out.insert(id, row);
            }
        }
        drop(stmt);
        drop(body_stmt);
        tx.commit()?;
        Ok(out)
    }

    pub async fn commit_page(&self, fence: &Fence, page: PageCommit) -> Result<(), StateError> {
        fence.check_page(&page)?;
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO seen (source, resource_type, resource_id, version_id, last_updated, content_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (source, resource_type, resource_id) DO UPDATE SET
                        version_id = excluded.version_id,
                        last_updated = excluded.last_updated,
                        content_hash = excluded.content_hash
                     -- Never back to an older version: a backfill and the
                     -- daemon may commit the same resource in either order.
                     WHERE seen.last_updated IS NULL OR excluded.last_updated IS NULL
                        OR excluded.last_updated >= seen.last_updated",
                )?;
                for (id, row) in &page.seen {
                    let moved = upsert.execute(params![
                        page.source,
                        page.resource_type,
                        id,
                        row.version_id,
                        row.last_updated,
                        &row.content_hash[..]
                    ])?;
                    // The body follows its seen row, older-version guard included.
                    if page.keep_bodies && moved > 0 {
                        let rt = &page.resource_type;
                        let body = row.body.as_deref();
                        super::seen_body::write(&tx, &page.source, rt, id, body)?;
                    }
                }
                insert_messages(&tx, &page.messages)?;
                if let Some(progress) = &page.backfill {
                    super::backfill::record_page(&tx, &page, progress)?;
                } else {
                tx.prepare_cached(
                    "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark)
                     VALUES (?1, ?2, ?6, 1, ?3)
                     ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                        watermark = COALESCE(?3, watermark),
                        changes_seen = changes_seen + ?4,
                        resources_read = resources_read + ?5",
                )?
                .execute(params![
                    page.source,
                    page.resource_type,
                    page.watermark,
                    page.changes as i64,
                    page.resources_read as i64,
                    page.patient.as_deref().unwrap_or("")
                ])?;
                }
                if let Some(progress) = &page.export {
                    super::export::record_chunk(&tx, &page.source, progress)?;
                }
                let mut errs = tx.prepare_cached(
                    "INSERT INTO hook_stats (hook, filter_errors) VALUES (?1, ?2)
                     ON CONFLICT (hook) DO UPDATE SET filter_errors = filter_errors + ?2",
                )?;
                for (hook, n) in &page.filter_errors {
                    errs.execute(params![hook, *n as i64])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub async fn lowest_patient_watermark(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<String>, StateError> {
        let (source, rt) = (source.to_string(), resource_type.to_string());
        self.call(move |c| {
            c.prepare_cached(
                "SELECT CASE WHEN count(*) = count(watermark) THEN min(watermark) END
                 FROM poll_target WHERE source = ?1 AND resource_type = ?2 AND patient != ''",
            )?
            .query_row(params![source, rt], |r| r.get(0))
        })
        .await
    }

    pub async fn record_polls(&self, outcomes: Vec<PollOutcome>) -> Result<(), StateError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut ok = tx.prepare_cached(
                    "INSERT INTO poll_target (source, resource_type, patient, last_poll_at, last_ok_at, last_outcome, resources_read)
                     VALUES (?1, ?2, ?5, ?3, ?3, 'ok', ?4)
                     ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                        last_poll_at = ?3, last_ok_at = ?3, last_outcome = 'ok',
                        consecutive_failures = 0, resources_read = resources_read + ?4",
                )?;
                let mut failed = tx.prepare_cached(
                    "INSERT INTO poll_target (source, resource_type, patient, last_poll_at, last_outcome, last_error, consecutive_failures)
                     VALUES (?1, ?2, ?5, ?3, 'error', ?4, 1)
                     ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                        last_poll_at = ?3, last_outcome = 'error', last_error = ?4,
                        consecutive_failures = consecutive_failures + 1",
                )?;
                // Rare: only polls that met a skipped or future-stamped entry.
                let mut noted = tx.prepare_cached(
                    "UPDATE poll_target SET
                        entries_skipped = entries_skipped + ?3,
                        entries_future = entries_future + ?4,
                        last_skip_at = CASE WHEN ?3 > 0 THEN ?5 ELSE last_skip_at END,
                        last_warning = COALESCE(?6, last_warning),
                        last_warning_at = CASE WHEN ?6 IS NULL THEN last_warning_at ELSE ?5 END
                     WHERE source = ?1 AND resource_type = ?2 AND patient = ?7",
                )?;
                for o in outcomes {
                    let (source, rt, at) = (o.source, o.resource_type, o.at_ms);
                    let patient = o.patient.unwrap_or_default();
                    match o.error {
                        None => {
                            ok.execute(params![source, rt, at, o.resources_read as i64, patient])?
                        }
                        Some(e) => failed.execute(params![source, rt, at, e, patient])?,
                    };
                    if o.skipped > 0 || o.future > 0 || o.warning.is_some() {
                        noted.execute(params![
                            source,
                            rt,
                            o.skipped as i64,
                            o.future as i64,
                            at,
                            o.warning,
                            patient
                        ])?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NewMessage;
    use crate::state::sqlite::test_util::temp_store;

    #[tokio::test]
    async fn a_page_commits_seen_outbox_and_watermark_together() {
        let (_d, store) = temp_store();
        let key = TargetKey::population("s", "Observation");
        assert_eq!(
            store.target_state(&key).await.unwrap(),
            TargetState::default()
        );
        store
            .init_target(
                &crate::state::Fence::private(),
                &key,
                Some("2026-01-01T00:00:00.000Z".into()),
                None,
            )
            .await
            .unwrap();
        let seen = SeenRow {
            version_id: Some("1".into()),
            last_updated: Some("t".into()),
            content_hash: [7; 32],
            body: None,
        };
        let page = PageCommit {
            source: "s".into(),
            resource_type: "Observation".into(),
            seen: vec![("a".into(), seen.clone())],
            messages: vec![NewMessage::test("h", "m1", "Observation", "a")],
            watermark: Some("2026-01-02T00:00:00.000Z".into()),
            changes: 1,
            resources_read: 1,
            ..Default::default()
        };
        store
            .commit_page(&crate::state::Fence::private(), page)
            .await
            .unwrap();
        let st = store.target_state(&key).await.unwrap();
        assert_eq!(st.watermark.as_deref(), Some("2026-01-02T00:00:00.000Z"));
        let got = store
            .load_seen("s", "Observation", vec!["a".into(), "b".into()])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["a"], seen);
    }

    #[tokio::test]
    async fn skipped_and_future_entries_are_counted_with_the_last_note() {
        let (_d, store) = temp_store();
        let outcome = |skipped, future, warning: Option<&str>, at_ms| PollOutcome {
            source: "s".into(),
            resource_type: "Observation".into(),
            at_ms,
            skipped,
            future,
            warning: warning.map(String::from),
            ..Default::default()
        };
        store
            .record_polls(vec![outcome(1, 0, Some("entry 2 skipped"), 1_000)])
            .await
            .unwrap();
        store
            .record_polls(vec![
                outcome(0, 2, Some("future"), 2_000),
                outcome(0, 0, None, 3_000),
            ])
            .await
            .unwrap();
        let r = store
            .target_report("s", "Observation")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.entries_skipped, r.entries_future), (1, 2));
        assert_eq!(r.last_skip_at_ms, Some(1_000));
        assert_eq!(r.last_warning.as_deref(), Some("future"));
        assert_eq!(r.last_warning_at_ms, Some(2_000));
    }

    #[tokio::test]
    async fn the_lowest_patient_watermark_waits_for_every_patient() {
        let (_d, store) = temp_store();
        let key = |p: &str| TargetKey {
            source: "s".into(),
            resource_type: "Observation".into(),
            patient: Some(p.into()),
        };
        let lowest = || store.lowest_patient_watermark("s", "Observation");
        assert_eq!(lowest().await.unwrap(), None, "no patients");
        store
            .init_target(
                &crate::state::Fence::private(),
                &key("a"),
                Some("2026-01-02T00:00:00.000Z".into()),
                None,
            )
            .await
            .unwrap();
        store
            .init_target(&crate::state::Fence::private(), &key("b"), None, None)
            .await
            .unwrap();
        assert_eq!(lowest().await.unwrap(), None, "b reads from its start");
        store
            .init_target(
                &crate::state::Fence::private(),
                &key("b"),
                Some("2026-01-01T00:00:00.000Z".into()),
                None,
            )
            .await
            .unwrap();
        store
            .init_target(
                &crate::state::Fence::private(),
                &TargetKey::population("s", "Observation"),
                Some("2020-01-01T00:00:00.000Z".into()),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            lowest().await.unwrap().as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
    }
}
