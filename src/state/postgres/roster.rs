//! The per-patient targets of a fan-out source against its roster, on
//! PostgreSQL (the decision is `RosterSync::plan`, shared with SQLite).

use super::PgStore;
use crate::state::{RosterSync, StateError};
use std::collections::{BTreeMap, BTreeSet};

impl PgStore {
    pub async fn roster_in_state(&self, source: &str) -> Result<BTreeSet<String>, StateError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT DISTINCT patient FROM poll_target
                 WHERE source = $1 AND patient <> '' AND left_roster_at IS NULL",
            )
            .await?;
        Ok(c.query(&stmt, &[&source])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn sync_roster(
        &self,
        source: &str,
        roster: BTreeSet<String>,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<RosterSync, StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The source's targets locked while the plan is made and applied
        // (in the primary key's order): a second writer waits, then plans on
        // what this one left.
        let lock = tx
            .prepare_cached(
                "SELECT patient, left_roster_at FROM poll_target
                 WHERE source = $1 AND patient <> ''
                 ORDER BY resource_type, patient FOR UPDATE",
            )
            .await?;
        let mut in_state: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for r in tx.query(&lock, &[&source]).await? {
            let (patient, left): (String, Option<i64>) = (r.get(0), r.get(1));
            // min(left_roster_at) per patient, NULLs aside (as SQLite's min).
            let entry = in_state.entry(patient).or_insert(None);
            *entry = match (*entry, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let sync = RosterSync::plan(&in_state, &roster, forget_before_ms);
        let left = tx
            .prepare_cached(
                "UPDATE poll_target SET left_roster_at = $3
                 WHERE source = $1 AND patient = $2 AND left_roster_at IS NULL",
            )
            .await?;
        for p in &sync.left {
            tx.execute(&left, &[&source, p, &now_ms]).await?;
        }
        let back = tx
            .prepare_cached(
                "UPDATE poll_target SET left_roster_at = NULL WHERE source = $1 AND patient = $2",
            )
            .await?;
        for p in &sync.returned {
            tx.execute(&back, &[&source, p]).await?;
        }
        let gone = tx
            .prepare_cached(
                "DELETE FROM poll_target WHERE source = $1 AND patient = $2 AND patient <> ''",
            )
            .await?;
        for p in &sync.forgotten {
            tx.execute(&gone, &[&source, p]).await?;
        }
        tx.commit().await?;
        Ok(sync)
    }
}
