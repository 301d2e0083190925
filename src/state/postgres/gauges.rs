//! What the metrics' gauges read (as `sqlite/gauges.rs`): outbox and
//! dead-letter depth per hook, and every target's watermark, one statement
//! per gauge set.

use super::PgStore;
use crate::state::{GaugeSnapshot, HookDepth, StateError, TargetMark};

impl PgStore {
    pub async fn gauge_snapshot(&self, hooks: Vec<String>) -> Result<GaugeSnapshot, StateError> {
        let client = self.client().await?;
        // The oldest pending message is the first in id order, as `status` has it.
        let per_hook = client
            .prepare_cached(
                "SELECT j.hook,
                    (SELECT count(*) FROM outbox o WHERE o.hook = j.hook AND o.state = 'pending'),
                    (SELECT count(*) FROM outbox o WHERE o.hook = j.hook AND o.state = 'dead'),
                    (SELECT o.created_at FROM outbox o
                        WHERE o.hook = j.hook AND o.state = 'pending' ORDER BY o.id LIMIT 1),
                    EXISTS (SELECT 1 FROM hook_stats s
                        WHERE s.hook = j.hook AND s.disabled_at IS NOT NULL)
                 FROM unnest($1::text[]) WITH ORDINALITY AS j(hook, n) ORDER BY j.n",
            )
            .await?;
        let hooks = client
            .query(&per_hook, &[&hooks])
            .await?
            .iter()
            .map(|r| {
                Ok(HookDepth {
                    hook: r.try_get(0)?,
                    pending: r.try_get(1)?,
                    dead: r.try_get(2)?,
                    oldest_pending_at_ms: r.try_get(3)?,
                    disabled: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        // A fan-out type: one row for all its patients, with the lowest
        // watermark (byte order, as SQLite compares); patients who left the
        // roster are not polled: not counted.
        let marks = client
            .prepare_cached(
                "SELECT source, resource_type, watermark, false FROM poll_target
                 WHERE initialized AND patient = ''
                 UNION ALL
                 SELECT source, resource_type, min(watermark COLLATE \"C\"), true FROM poll_target
                 WHERE initialized AND patient <> '' AND watermark IS NOT NULL
                   AND left_roster_at IS NULL
                 GROUP BY source, resource_type",
            )
            .await?;
        let targets = client
            .query(&marks, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(TargetMark {
                    source: r.try_get(0)?,
                    resource_type: r.try_get(1)?,
                    watermark: r.try_get(2)?,
                    per_patient: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(GaugeSnapshot { hooks, targets })
    }
}

#[cfg(test)]
#[path = "gauges_tests.rs"]
mod tests;
