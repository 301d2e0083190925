//! Read models for `status`.

use super::{SqliteStore, StateError};
use crate::state::{HookReport, TargetReport};
use rusqlite::{OptionalExtension, params};

impl SqliteStore {
    pub async fn patient_targets_report(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<TargetReport>, StateError> {
        let (source, rt) = (source.to_string(), resource_type.to_string());
        self.call(move |c| {
            let newest = |col: &str, at: &str| {
                format!(
                    "(SELECT {col} FROM poll_target WHERE source = ?1 AND resource_type = ?2
                      AND patient != '' AND left_roster_at IS NULL AND {col} IS NOT NULL
                      ORDER BY {at} DESC LIMIT 1)"
                )
            };
            let sql = format!(
                "SELECT count(*), min(watermark), max(last_poll_at), min(last_ok_at),
                        max(consecutive_failures), sum(changes_seen), sum(resources_read),
                        sum(entries_skipped), sum(entries_future), max(last_skip_at),
                        {}, {}, max(last_warning_at),
                        CASE WHEN max(consecutive_failures) > 0 THEN 'error' ELSE max(last_outcome) END
                 FROM poll_target WHERE source = ?1 AND resource_type = ?2 AND patient != ''
                   AND left_roster_at IS NULL",
                newest("last_error", "last_poll_at"),
                newest("last_warning", "last_warning_at"),
            );
            let row = c.prepare_cached(&sql)?.query_row(params![source, rt], |r| {
                let n: i64 = r.get(0)?;
                Ok((n > 0).then(|| TargetReport {
                    source: source.clone(),
                    resource_type: rt.clone(),
                    patients: Some(n),
                    watermark: r.get(1).ok().flatten(),
                    last_poll_at_ms: r.get(2).ok().flatten(),
                    last_ok_at_ms: r.get(3).ok().flatten(),
                    consecutive_failures: r.get::<_, Option<i64>>(4).ok().flatten().unwrap_or(0),
                    changes_seen: r.get::<_, Option<i64>>(5).ok().flatten().unwrap_or(0),
                    resources_read: r.get::<_, Option<i64>>(6).ok().flatten().unwrap_or(0),
                    entries_skipped: r.get::<_, Option<i64>>(7).ok().flatten().unwrap_or(0),
                    entries_future: r.get::<_, Option<i64>>(8).ok().flatten().unwrap_or(0),
                    last_skip_at_ms: r.get(9).ok().flatten(),
                    last_error: r.get(10).ok().flatten(),
                    last_warning: r.get(11).ok().flatten(),
                    last_warning_at_ms: r.get(12).ok().flatten(),
                    last_outcome: r.get(13).ok().flatten(),
                    // Reconciliation is for population-wide targets only.
                    last_reconcile_at_ms: None,
                    last_reconcile_changes: None,
                }))
            })?;
            Ok(row)
        })
        .await
    }

    pub async fn target_report(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<TargetReport>, StateError> {
        let (source, rt) = (source.to_string(), resource_type.to_string());
        self.call(move |c| {
            c.prepare_cached(
                "SELECT watermark, last_poll_at, last_ok_at, last_outcome, last_error,
                        consecutive_failures, changes_seen, resources_read,
                        entries_skipped, entries_future, last_skip_at, last_warning, last_warning_at,
                        last_reconcile_at, last_reconcile_changes
                 FROM poll_target WHERE source = ?1 AND resource_type = ?2 AND patient = ''",
            )?
            .query_row(params![source, rt], |r| {
                Ok(TargetReport {
                    source: source.clone(),
                    resource_type: rt.clone(),
                    watermark: r.get(0)?,
                    last_poll_at_ms: r.get(1)?,
                    last_ok_at_ms: r.get(2)?,
                    last_outcome: r.get(3)?,
                    last_error: r.get(4)?,
                    consecutive_failures: r.get(5)?,
                    changes_seen: r.get(6)?,
                    resources_read: r.get(7)?,
                    entries_skipped: r.get(8)?,
                    entries_future: r.get(9)?,
                    last_skip_at_ms: r.get(10)?,
                    last_warning: r.get(11)?,
                    last_warning_at_ms: r.get(12)?,
                    patients: None,
                    last_reconcile_at_ms: r.get(13)?,
                    last_reconcile_changes: r.get(14)?,
                })
            })
            .optional()
        })
        .await
    }

    pub async fn hook_report(&self, hook: &str) -> Result<HookReport, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            let mut rep = HookReport { hook: hook.clone(), ..Default::default() };
            let mut counts = c.prepare_cached(
                "SELECT state, count(*) FROM outbox WHERE hook = ?1 GROUP BY state",
            )?;
            let rows = counts.query_map(params![hook], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                match state.as_str() {
                    "pending" => rep.pending = n,
                    "delivered" => rep.delivered = n,
                    "dead" => rep.dead = n,
                    _ => {}
                }
            }
            rep.oldest_pending_at_ms = c
                .prepare_cached(
                    "SELECT created_at FROM outbox WHERE hook = ?1 AND state = 'pending' ORDER BY id LIMIT 1",
                )?
                .query_row(params![hook], |r| r.get(0))
                .optional()?;
            let mut stats = c.prepare_cached(
                "SELECT failed_attempts, filter_errors, last_success_at, last_error, last_error_at,
                        disabled_at, disabled_reason, events, subscription_status,
                        subscription_error
                 FROM hook_stats WHERE hook = ?1",
            )?;
            let mut rows = stats.query(params![hook])?;
            if let Some(r) = rows.next()? {
                rep.failed_attempts = r.get(0)?;
                rep.filter_errors = r.get(1)?;
                rep.last_success_at_ms = r.get(2)?;
                rep.last_error = r.get(3)?;
                rep.last_error_at_ms = r.get(4)?;
                rep.disabled_at_ms = r.get(5)?;
                rep.disabled_reason = r.get(6)?;
                rep.events = r.get(7)?;
                rep.subscription_status = r.get(8)?;
                rep.subscription_error = r.get(9)?;
            }
            Ok(rep)
        })
        .await
    }
}
