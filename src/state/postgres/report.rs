//! Read models for `status` (as `sqlite/report.rs`). Watermarks compare in
//! byte order (`COLLATE "C"`), as SQLite compares them.

use super::PgStore;
use crate::state::{HookReport, StateError, TargetReport};

impl PgStore {
    pub async fn patient_targets_report(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<TargetReport>, StateError> {
        let newest = |col: &str, at: &str| {
            format!(
                "(SELECT {col} FROM poll_target WHERE source = $1 AND resource_type = $2
                  AND patient <> '' AND left_roster_at IS NULL AND {col} IS NOT NULL
                  ORDER BY {at} DESC NULLS LAST LIMIT 1)"
            )
        };
        let sql = format!(
            "SELECT count(*), min(watermark COLLATE \"C\"), max(last_poll_at), min(last_ok_at),
                    max(consecutive_failures), sum(changes_seen)::bigint,
                    sum(resources_read)::bigint, sum(entries_skipped)::bigint,
                    sum(entries_future)::bigint, max(last_skip_at),
                    {}, {}, max(last_warning_at),
                    CASE WHEN max(consecutive_failures) > 0 THEN 'error'
                         ELSE max(last_outcome COLLATE \"C\") END
             FROM poll_target WHERE source = $1 AND resource_type = $2 AND patient <> ''
               AND left_roster_at IS NULL",
            newest("last_error", "last_poll_at"),
            newest("last_warning", "last_warning_at"),
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let r = client.query_one(&stmt, &[&source, &resource_type]).await?;
        let n: i64 = r.try_get(0)?;
        if n == 0 {
            return Ok(None);
        }
        let zero = |i: usize| -> Result<i64, tokio_postgres::Error> {
            Ok(r.try_get::<_, Option<i64>>(i)?.unwrap_or(0))
        };
        Ok(Some(TargetReport {
            source: source.to_string(),
            resource_type: resource_type.to_string(),
            patients: Some(n),
            watermark: r.try_get(1)?,
            last_poll_at_ms: r.try_get(2)?,
            last_ok_at_ms: r.try_get(3)?,
            consecutive_failures: zero(4)?,
            changes_seen: zero(5)?,
            resources_read: zero(6)?,
            entries_skipped: zero(7)?,
            entries_future: zero(8)?,
            last_skip_at_ms: r.try_get(9)?,
            last_error: r.try_get(10)?,
            last_warning: r.try_get(11)?,
            last_warning_at_ms: r.try_get(12)?,
            last_outcome: r.try_get(13)?,
            // Reconciliation is for population-wide targets only.
            last_reconcile_at_ms: None,
            last_reconcile_changes: None,
        }))
    }

    pub async fn target_report(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<TargetReport>, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT watermark, last_poll_at, last_ok_at, last_outcome, last_error,
                        consecutive_failures, changes_seen, resources_read,
                        entries_skipped, entries_future, last_skip_at, last_warning, last_warning_at,
                        last_reconcile_at, last_reconcile_changes
                 FROM poll_target WHERE source = $1 AND resource_type = $2 AND patient = ''",
            )
            .await?;
        let Some(r) = client.query_opt(&stmt, &[&source, &resource_type]).await? else {
            return Ok(None);
        };
        Ok(Some(TargetReport {
            source: source.to_string(),
            resource_type: resource_type.to_string(),
            watermark: r.try_get(0)?,
            last_poll_at_ms: r.try_get(1)?,
            last_ok_at_ms: r.try_get(2)?,
            last_outcome: r.try_get(3)?,
            last_error: r.try_get(4)?,
            consecutive_failures: r.try_get(5)?,
            changes_seen: r.try_get(6)?,
            resources_read: r.try_get(7)?,
            entries_skipped: r.try_get(8)?,
            entries_future: r.try_get(9)?,
            last_skip_at_ms: r.try_get(10)?,
            last_warning: r.try_get(11)?,
            last_warning_at_ms: r.try_get(12)?,
            patients: None,
            last_reconcile_at_ms: r.try_get(13)?,
            last_reconcile_changes: r.try_get(14)?,
        }))
    }

    /// The hook's last event number is its `hook_seq` row.
    pub async fn hook_report(&self, hook: &str) -> Result<HookReport, StateError> {
        let client = self.client().await?;
        let mut rep = HookReport {
            hook: hook.to_string(),
            ..Default::default()
        };
        let counts = client
            .prepare_cached("SELECT state, count(*) FROM outbox WHERE hook = $1 GROUP BY state")
            .await?;
        for r in client.query(&counts, &[&hook]).await? {
            let (state, n): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            match state.as_str() {
                "pending" => rep.pending = n,
                "delivered" => rep.delivered = n,
                "dead" => rep.dead = n,
                _ => {}
            }
        }
        let oldest = client
            .prepare_cached(
                "SELECT created_at FROM outbox WHERE hook = $1 AND state = 'pending'
                 ORDER BY id LIMIT 1",
            )
            .await?;
        rep.oldest_pending_at_ms = match client.query_opt(&oldest, &[&hook]).await? {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        };
        let events = client
            .prepare_cached("SELECT COALESCE((SELECT last FROM hook_seq WHERE hook = $1), 0)")
            .await?;
        rep.events = client.query_one(&events, &[&hook]).await?.try_get(0)?;
        let stats = client
            .prepare_cached(
                "SELECT failed_attempts, filter_errors, last_success_at, last_error, last_error_at,
                        disabled_at, disabled_reason, subscription_status, subscription_error
                 FROM hook_stats WHERE hook = $1",
            )
            .await?;
        if let Some(r) = client.query_opt(&stats, &[&hook]).await? {
            rep.failed_attempts = r.try_get(0)?;
            rep.filter_errors = r.try_get(1)?;
            rep.last_success_at_ms = r.try_get(2)?;
            rep.last_error = r.try_get(3)?;
            rep.last_error_at_ms = r.try_get(4)?;
            rep.disabled_at_ms = r.try_get(5)?;
            rep.disabled_reason = r.try_get(6)?;
            rep.subscription_status = r.try_get(7)?;
            rep.subscription_error = r.try_get(8)?;
        }
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use crate::state::postgres::test_util::fresh_store;
    use crate::state::{DeliveryRecord, Fence, NewMessage, PageCommit, PollOutcome, TargetKey};

    /// `status`'s reports: a population target's row, a fan-out type summed
    /// over its patients (the stalest watermark, totals), a hook's counts,
    /// stats and last event number, and the summary line.
    #[tokio::test]
    async fn targets_and_hooks_are_reported() {
        let Some(store) = fresh_store().await else {
            return;
        };
        let f = Fence::private();
        let patient = |p: &str| TargetKey {
            source: "s".into(),
            resource_type: "Observation".into(),
            patient: Some(p.into()),
        };
        for (p, wm) in [
            ("a", "2026-01-03T00:00:00.000Z"),
            ("b", "2026-01-02T00:00:00.000Z"),
        ] {
            store
                .init_target(&f, &patient(p), Some(wm.into()), None)
                .await
                .unwrap();
        }
        let outcome = |p: &str, error: Option<&str>, at_ms| PollOutcome {
            source: "s".into(),
            resource_type: "Observation".into(),
            patient: Some(p.into()),
            error: error.map(String::from),
            at_ms,
            resources_read: 3,
            ..Default::default()
        };
        store
            .record_polls(vec![
                outcome("a", None, 1_000),
                outcome("b", Some("HTTP 503"), 2_000),
            ])
            .await
            .unwrap();
        let r = store
            .patient_targets_report("s", "Observation")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.patients, Some(2));
        assert_eq!(r.watermark.as_deref(), Some("2026-01-02T00:00:00.000Z"));
        assert_eq!(
            (r.last_poll_at_ms, r.last_ok_at_ms),
            (Some(2_000), Some(1_000))
        );
        assert_eq!((r.consecutive_failures, r.resources_read), (1, 3));
        assert_eq!(r.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(r.last_outcome.as_deref(), Some("error"));
        assert!(
            store
                .patient_targets_report("s", "Patient")
                .await
                .unwrap()
                .is_none()
        );

        let page = PageCommit {
            source: "s".into(),
            resource_type: "Encounter".into(),
            messages: vec![
                NewMessage::test("h", "m1", "Encounter", "1"),
                NewMessage::test("h", "m2", "Encounter", "2"),
            ],
            filter_errors: [("h".to_string(), 2)].into(),
            watermark: Some("2026-01-05T00:00:00.000Z".into()),
            changes: 2,
            resources_read: 2,
            ..Default::default()
        };
        let encounters = TargetKey::population("s", "Encounter");
        store
            .init_target(&f, &encounters, None, None)
            .await
            .unwrap();
        store.commit_page(&f, page).await.unwrap();
        let t = store
            .target_report("s", "Encounter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t.watermark.as_deref(), Some("2026-01-05T00:00:00.000Z"));
        assert_eq!((t.changes_seen, t.resources_read, t.patients), (2, 2, None));
        assert!(store.target_report("s", "Patient").await.unwrap().is_none());

        let id = store.claim_due("h", vec![], 1).await.unwrap()[0].id;
        store
            .record_delivery(&f, "h", id, DeliveryRecord::Delivered { status: 200 })
            .await
            .unwrap();
        let h = store.hook_report("h").await.unwrap();
        assert_eq!((h.pending, h.delivered, h.dead), (1, 1, 0));
        assert_eq!((h.filter_errors, h.events), (2, 2));
        assert!(h.last_success_at_ms.is_some() && h.oldest_pending_at_ms.is_some());
        let none = store.hook_report("none").await.unwrap();
        assert_eq!((none.pending, none.events), (0, 0));
        let s = store.summary().await.unwrap();
        assert_eq!(
            (s.targets, s.failing_targets, s.pending, s.dead),
            (3, 1, 1, 0)
        );
    }
}
