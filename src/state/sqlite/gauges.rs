//! What the metrics' gauges read: outbox and dead-letter depth per hook, and
//! every target's watermark. Read-only, and cheap enough for every few
//! seconds at ten thousand targets: one statement per gauge set, each walking
//! an index or a small table once, never one statement per hook or target.

use super::{SqliteStore, StateError};
use crate::state::{GaugeSnapshot, HookDepth, TargetMark};
use rusqlite::params;

impl SqliteStore {
    pub async fn gauge_snapshot(&self, hooks: Vec<String>) -> Result<GaugeSnapshot, StateError> {
        self.call(move |c| {
            let names = serde_json::to_string(&hooks).unwrap_or_else(|_| "[]".into());
            // Per hook: index range counts on outbox_by_state (hook, state, id);
            // the oldest pending message is the first in id order, as `status` has it.
            let mut per_hook = c.prepare_cached(
                "SELECT j.value,
                    (SELECT count(*) FROM outbox o WHERE o.hook = j.value AND o.state = 'pending'),
                    (SELECT count(*) FROM outbox o WHERE o.hook = j.value AND o.state = 'dead'),
                    (SELECT o.created_at FROM outbox o INDEXED BY outbox_by_state
                        WHERE o.hook = j.value AND o.state = 'pending' ORDER BY o.id LIMIT 1),
                    (SELECT count(*) FROM hook_stats s
                        WHERE s.hook = j.value AND s.disabled_at IS NOT NULL)
                 FROM json_each(?1) j ORDER BY j.key",
            )?;
            let hooks = per_hook
                .query_map(params![names], |r| {
                    Ok(HookDepth {
                        hook: r.get(0)?,
                        pending: r.get(1)?,
                        dead: r.get(2)?,
                        oldest_pending_at_ms: r.get(3)?,
                        disabled: r.get::<_, i64>(4)? > 0,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Population-wide targets one row each; a fan-out type one row
            // for all its patients, with the lowest watermark (the patient
            // furthest behind is the type's lag: one series per patient
            // would be tens of thousands of series). Patients who left the
            // roster (kept for `roster_grace`) are not polled: not counted.
            let mut marks = c.prepare_cached(
                "SELECT source, resource_type, watermark, 0 FROM poll_target
                 WHERE initialized = 1 AND patient = ''
                 UNION ALL
                 SELECT source, resource_type, min(watermark), 1 FROM poll_target
                 WHERE initialized = 1 AND patient != '' AND watermark IS NOT NULL
                   AND left_roster_at IS NULL
                 GROUP BY source, resource_type",
            )?;
            let targets = marks
                .query_map([], |r| {
                    Ok(TargetMark {
                        source: r.get(0)?,
                        resource_type: r.get(1)?,
                        watermark: r.get(2)?,
                        per_patient: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(GaugeSnapshot { hooks, targets })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::test_util::{backdate, temp_store};
    use crate::state::{DeliveryRecord, NewMessage, PageCommit};

    #[tokio::test]
    async fn depths_per_hook_and_watermarks_per_target() {
        let (_d, store) = temp_store();
        store
            .init_target(
                &crate::state::Fence::private(),
                &crate::state::TargetKey::population("s", "Observation"),
                Some("2026-01-01T00:00:00.000Z".into()),
                None,
            )
            .await
            .unwrap();
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    messages: vec![
                        NewMessage::test("a", "m1", "Observation", "1"),
                        NewMessage::test("a", "m2", "Observation", "2"),
                        NewMessage::test("a", "m3", "Observation", "3"),
                        NewMessage::test("b", "m1", "Observation", "1"),
                    ],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        backdate(&store, "a", 60_000).await;
        let claimed = store.claim_due("a", vec![], 2).await.unwrap();
        store
            .record_delivery(
                &crate::state::Fence::private(),
                "a",
                claimed[0].id,
                DeliveryRecord::Delivered { status: 200 },
            )
            .await
            .unwrap();
        let dead = DeliveryRecord::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
            retry_at_ms: None,
        };
        store
            .record_delivery(&crate::state::Fence::private(), "a", claimed[1].id, dead)
            .await
            .unwrap();
        store.disable_hook("b", "gone").await.unwrap();

        let snap = store
            .gauge_snapshot(vec!["a".into(), "b".into(), "none".into()])
            .await
            .unwrap();
        let a = &snap.hooks[0];
        assert_eq!(
            (a.hook.as_str(), a.pending, a.dead, a.disabled),
            ("a", 1, 1, false)
        );
        assert!(a.oldest_pending_at_ms.unwrap() <= crate::state::now_ms() - 60_000);
        let b = &snap.hooks[1];
        assert_eq!((b.pending, b.dead, b.disabled), (1, 0, true));
        assert_eq!(
            snap.hooks[2],
            HookDepth {
                hook: "none".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            snap.targets,
            vec![TargetMark {
                source: "s".into(),
                resource_type: "Observation".into(),
                watermark: Some("2026-01-01T00:00:00.000Z".into()),
                per_patient: false,
            }]
        );
    }

    #[tokio::test]
    async fn a_fan_out_type_gets_its_lowest_patient_watermark() {
        let (_d, store) = temp_store();
        let key = |p: &str| crate::state::TargetKey {
            source: "s".into(),
            resource_type: "Observation".into(),
            patient: Some(p.into()),
        };
        for (p, wm) in [
            ("a", Some("2026-01-03T00:00:00.000Z")),
            ("b", Some("2026-01-02T00:00:00.000Z")),
            ("c", None),
        ] {
            store
                .init_target(
                    &crate::state::Fence::private(),
                    &key(p),
                    wm.map(String::from),
                    None,
                )
                .await
                .unwrap();
        }
        let snap = store.gauge_snapshot(vec![]).await.unwrap();
        assert_eq!(
            snap.targets,
            vec![TargetMark {
                source: "s".into(),
                resource_type: "Observation".into(),
                watermark: Some("2026-01-02T00:00:00.000Z".into()),
                per_patient: true,
            }]
        );
    }
}
