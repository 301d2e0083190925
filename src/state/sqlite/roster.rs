//! The per-patient targets of a fan-out source against its roster: a patient
//! who leaves keeps its targets (marked with when it left) for
//! `roster_grace`, so that one who comes back resumes from its watermarks;
//! after that they are forgotten.

use super::{SqliteStore, StateError};
use crate::state::RosterSync;
use rusqlite::params;
use std::collections::{BTreeMap, BTreeSet};

impl SqliteStore {
    pub async fn roster_in_state(&self, source: &str) -> Result<BTreeSet<String>, StateError> {
        let source = source.to_string();
        self.call(move |c| {
            c.prepare_cached(
                "SELECT DISTINCT patient FROM poll_target
                 WHERE source = ?1 AND patient != '' AND left_roster_at IS NULL",
            )?
            .query_map(params![source], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()
        })
        .await
    }

    pub async fn sync_roster(
        &self,
        source: &str,
        roster: BTreeSet<String>,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<RosterSync, StateError> {
        let source = source.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let in_state: BTreeMap<String, Option<i64>> = tx
                .prepare_cached(
                    "SELECT patient, min(left_roster_at) FROM poll_target
                     WHERE source = ?1 AND patient != '' GROUP BY patient",
                )?
                .query_map(params![source], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let sync = RosterSync::plan(&in_state, &roster, forget_before_ms);
            {
                let mut left = tx.prepare_cached(
                    "UPDATE poll_target SET left_roster_at = ?3
                     WHERE source = ?1 AND patient = ?2 AND left_roster_at IS NULL",
                )?;
                for p in &sync.left {
                    left.execute(params![source, p, now_ms])?;
                }
                let mut back = tx.prepare_cached(
                    "UPDATE poll_target SET left_roster_at = NULL WHERE source = ?1 AND patient = ?2",
                )?;
                for p in &sync.returned {
                    back.execute(params![source, p])?;
                }
                let mut gone = tx.prepare_cached(
                    "DELETE FROM poll_target WHERE source = ?1 AND patient = ?2 AND patient != ''",
                )?;
                for p in &sync.forgotten {
                    gone.execute(params![source, p])?;
                }
            }
            tx.commit()?;
            Ok(sync)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TargetKey;
    use crate::state::sqlite::test_util::temp_store;

    #[tokio::test]
    async fn a_returning_patient_keeps_its_watermark_and_status_skips_the_absent() {
        let (_d, store) = temp_store();
        let key = |p: &str| TargetKey {
            source: "s".into(),
            resource_type: "Observation".into(),
            patient: Some(p.into()),
        };
        for p in ["a", "b"] {
            store
                .init_target(
                    &crate::state::Fence::private(),
                    &key(p),
                    Some("2026-01-02T00:00:00.000Z".into()),
                    None,
                )
                .await
                .unwrap();
        }
        let only_a: BTreeSet<String> = ["a".to_string()].into();
        let sync = store
            .sync_roster("s", only_a.clone(), 1_000, 0)
            .await
            .unwrap();
        assert_eq!(sync.left, ["b"]);
        // What a restart takes as the last roster: b is away.
        assert_eq!(store.roster_in_state("s").await.unwrap(), only_a);
        let report = store
            .patient_targets_report("s", "Observation")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.patients, Some(1), "b is away: not counted");
        // Within the grace: kept; b comes back with its watermark.
        let both: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let sync = store.sync_roster("s", both, 2_000, 500).await.unwrap();
        assert_eq!(sync.returned, ["b"]);
        let b = store.target_state(&key("b")).await.unwrap();
        assert_eq!(b.watermark.as_deref(), Some("2026-01-02T00:00:00.000Z"));
        // Leaves again, and the grace runs out.
        store
            .sync_roster("s", only_a.clone(), 3_000, 0)
            .await
            .unwrap();
        let sync = store.sync_roster("s", only_a, 9_000, 4_000).await.unwrap();
        assert_eq!(sync.forgotten, ["b"]);
        let b = store.target_state(&key("b")).await.unwrap();
        assert!(!b.initialized && b.watermark.is_none());
    }
}
