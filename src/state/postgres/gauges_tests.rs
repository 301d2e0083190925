//! `sqlite/gauges.rs`'s tests on PostgreSQL: the same cases, the same answers.

use super::*;
use crate::state::postgres::test_util::{backdate, fresh_store};
use crate::state::{DeliveryRecord, NewMessage, PageCommit};

#[tokio::test]
async fn depths_per_hook_and_watermarks_per_target() {
    let Some(store) = fresh_store().await else {
        return;
    };
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
    let Some(store) = fresh_store().await else {
        return;
    };
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
