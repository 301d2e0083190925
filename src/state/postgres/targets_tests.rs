//! TargetStore on PostgreSQL, the methods the conformance suite reaches only
//! through a page commit: each against a real database, seen rows seeded
//! with plain SQL.

use super::{PgSettings, PgStore, test_server};
use crate::state::{Fence, PollOutcome, SeenRow, StateError, TargetKey};
use std::sync::Arc;

async fn store() -> Option<PgStore> {
    let url = test_server::fresh_database().await?;
    Some(
        PgStore::connect(&PgSettings {
            url,
            pool_size: 2,
            tls: None,
        })
        .unwrap(),
    )
}

async fn seed(s: &PgStore, rt: &str, id: &str, hash: [u8; 32], body: Option<&[u8]>) {
    let c = s.client().await.unwrap();
    c.execute(
        "INSERT INTO seen (source, resource_type, resource_id, version_id, last_updated, content_hash)
         VALUES ('s', $1, $2, '1', '2026-01-01T00:00:00Z', $3)",
        &[&rt, &id, &&hash[..]],
    )
    .await
    .unwrap();
    if let Some(body) = body {
        c.execute(
            "INSERT INTO seen_body (source, resource_type, resource_id, body) VALUES ('s', $1, $2, $3)",
            &[&rt, &id, &body],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn targets_start_once_and_the_lowest_patient_watermark_waits_for_all() {
    let Some(s) = store().await else { return };
    let f = Fence::private();
    let key = TargetKey::population("s", "Observation");
    assert_eq!(s.target_state(&key).await.unwrap(), Default::default());
    s.init_target(
        &f,
        &key,
        Some("2026-01-01T00:00:00Z".into()),
        Some("f".into()),
    )
    .await
    .unwrap();
    let st = s.target_state(&key).await.unwrap();
    assert!(st.initialized);
    assert_eq!(
        (st.watermark.as_deref(), st.floor.as_deref()),
        (Some("2026-01-01T00:00:00Z"), Some("f"))
    );
    let patient = |p: &str| TargetKey {
        patient: Some(p.into()),
        ..key.clone()
    };
    let lowest = || s.lowest_patient_watermark("s", "Observation");
    assert_eq!(lowest().await.unwrap(), None);
    s.init_target(
        &f,
        &patient("a"),
        Some("2026-01-02T00:00:00.000Z".into()),
        None,
    )
    .await
    .unwrap();
    s.init_target(&f, &patient("b"), None, None).await.unwrap();
    assert_eq!(lowest().await.unwrap(), None, "b reads from its start");
    // Byte order, as SQLite: "2026-01-02T00:00:00Z" > "2026-01-02T00:00:00.000Z".
    s.init_target(&f, &patient("b"), Some("2026-01-02T00:00:00Z".into()), None)
        .await
        .unwrap();
    assert_eq!(
        lowest().await.unwrap().as_deref(),
        Some("2026-01-02T00:00:00.000Z")
    );
    assert_eq!(s.sources_with_state().await.unwrap(), ["s"]);
    // A backfill's fence moves no watermark.
    let refused = s
        .init_target(
            &crate::state::BackfillLock::unlocked().fence(),
            &key,
            None,
            None,
        )
        .await;
    assert!(matches!(refused, Err(StateError::Fenced(_))));
}

#[tokio::test]
async fn polls_and_reconciliations_are_recorded() {
    let Some(s) = store().await else { return };
    let outcome = |error: Option<&str>, at_ms, skipped, warning: Option<&str>| PollOutcome {
        source: "s".into(),
        resource_type: "Observation".into(),
        error: error.map(String::from),
        at_ms,
        resources_read: 2,
        skipped,
        warning: warning.map(String::from),
        ..Default::default()
    };
    s.record_polls(vec![
        outcome(None, 1_000, 1, Some("entry 2 skipped")),
        outcome(Some("HTTP 500"), 2_000, 0, None),
        outcome(Some("HTTP 500"), 3_000, 0, None),
    ])
    .await
    .unwrap();
    let c = s.client().await.unwrap();
    let r = c
        .query_one(
            "SELECT last_poll_at, last_ok_at, last_outcome, last_error, consecutive_failures,
                    resources_read, entries_skipped, last_skip_at, last_warning
             FROM poll_target WHERE source = 's'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 3_000);
    assert_eq!(r.get::<_, i64>(1), 1_000);
    assert_eq!(r.get::<_, &str>(2), "error");
    assert_eq!(r.get::<_, &str>(3), "HTTP 500");
    assert_eq!((r.get::<_, i64>(4), r.get::<_, i64>(5)), (2, 2));
    assert_eq!((r.get::<_, i64>(6), r.get::<_, i64>(7)), (1, 1_000));
    assert_eq!(r.get::<_, &str>(8), "entry 2 skipped");
    let key = TargetKey::population("s", "Observation");
    s.record_reconcile(&key, 5_000, 3).await.unwrap();
    assert_eq!(
        s.target_state(&key).await.unwrap().reconciled_at_ms,
        Some(5_000)
    );
}

#[tokio::test]
async fn seen_rows_load_with_their_bodies_and_a_walk_finds_what_it_missed() {
    let Some(s) = store().await else { return };
    seed(&s, "Encounter", "a", [1; 32], Some(b"body-a")).await;
    seed(&s, "Encounter", "b", [2; 32], None).await;
    seed(&s, "Encounter", "dead", SeenRow::TOMBSTONE_HASH, None).await;
    let ids = vec!["a".to_string(), "b".into(), "nope".into()];
    let plain = s.load_seen("s", "Encounter", ids.clone()).await.unwrap();
    assert_eq!(plain.len(), 2);
    assert_eq!(
        (plain["a"].content_hash, plain["a"].body.as_deref()),
        ([1; 32], None)
    );
    let with = s
        .load_seen_for_page("s", "Encounter", ids, true)
        .await
        .unwrap();
    assert_eq!(with["a"].body.as_deref(), Some(&b"body-a"[..]));
    assert_eq!(with["b"].body, None);
    assert!(
        s.load_seen("s", "Encounter", vec![])
            .await
            .unwrap()
            .is_empty()
    );

    let missed = s
        .seen_not_walked("s", "Encounter", Arc::new(|id: &str| id == "b"), true)
        .await
        .unwrap();
    assert_eq!(missed.len(), 1, "tombstones and walked ids aside");
    assert_eq!(missed[0].0, "a");
    assert_eq!(missed[0].1.body.as_deref(), Some(&b"body-a"[..]));
    let none = s
        .seen_not_walked("s", "Observation", Arc::new(|_: &str| false), false)
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn backfill_and_export_jobs_keep_their_progress() {
    let Some(s) = store().await else { return };
    assert_eq!(s.backfill_job("s", "Observation").await.unwrap(), None);
    s.start_backfill("s", "Observation", "2025", "2026")
        .await
        .unwrap();
    let job = s.backfill_job("s", "Observation").await.unwrap().unwrap();
    assert_eq!(
        (job.since.as_str(), job.until.as_str(), job.done),
        ("2025", "2026", false)
    );
    assert!(s.backfills_unfinished().await.unwrap());
    s.finish_backfill("s", "Observation").await.unwrap();
    assert!(
        s.backfill_job("s", "Observation")
            .await
            .unwrap()
            .unwrap()
            .done
    );
    assert!(!s.backfills_unfinished().await.unwrap());
    s.start_backfill("s", "Observation", "2024", "2026")
        .await
        .unwrap();
    let again = s.backfill_job("s", "Observation").await.unwrap().unwrap();
    assert_eq!(
        (again.since.as_str(), again.done),
        ("2024", false),
        "started over"
    );

    let f = Fence::private();
    let job = s
        .save_export_job("s", "http://h/job/1", None, "req")
        .await
        .unwrap();
    assert_eq!(s.export_job("s").await.unwrap(), Some(job));
    s.export_file_done("s", 3).await.unwrap();
    s.note_export_manifest("s", "2026-11-30T10:00:00.000Z", "f1", false)
        .await
        .unwrap();
    let got = s.export_job("s").await.unwrap().unwrap();
    assert_eq!((got.files_done, got.manifest.as_deref()), (3, Some("f1")));
    s.note_export_manifest("s", "2026-11-30T10:00:00.000Z", "f2", true)
        .await
        .unwrap();
    assert_eq!(s.export_job("s").await.unwrap().unwrap().files_done, 0);
    // A new job forgets the old one's progress.
    s.export_file_done("s", 2).await.unwrap();
    let fresh = s
        .save_export_job("s", "http://h/job/2", Some("x".into()), "r")
        .await
        .unwrap();
    assert_eq!(s.export_job("s").await.unwrap(), Some(fresh));

    let tt = "2026-11-30T10:00:00.000Z";
    let types = vec!["Patient".to_string(), "Observation".into()];
    s.finish_export(&f, "s", types, tt, vec![]).await.unwrap();
    assert_eq!(s.export_job("s").await.unwrap(), None);
    let mark = |rt: &'static str| {
        let s = s.clone();
        async move {
            s.target_state(&TargetKey::population("s", rt))
                .await
                .unwrap()
                .watermark
        }
    };
    assert_eq!(mark("Observation").await.as_deref(), Some(tt));
    let older = "2026-11-29T10:00:00.000Z";
    s.finish_export(&f, "s", vec!["Patient".into()], older, vec![])
        .await
        .unwrap();
    assert_eq!(mark("Patient").await.as_deref(), Some(tt), "never back");
    s.finish_export(
        &f,
        "s",
        vec!["Patient".into()],
        older,
        vec!["Patient".into()],
    )
    .await
    .unwrap();
    assert_eq!(mark("Patient").await.as_deref(), Some(older), "repaired");
    s.save_export_job("s", "u", None, "r").await.unwrap();
    s.drop_export_job("s").await.unwrap();
    assert_eq!(s.export_job("s").await.unwrap(), None);
}

#[tokio::test]
async fn a_roster_sync_marks_returns_and_forgets_patients() {
    let Some(s) = store().await else { return };
    let f = Fence::private();
    let key = |p: &str, rt: &str| TargetKey {
        source: "s".into(),
        resource_type: rt.into(),
        patient: Some(p.into()),
    };
    for p in ["a", "b"] {
        for rt in ["Observation", "Encounter"] {
            s.init_target(&f, &key(p, rt), Some("w".into()), None)
                .await
                .unwrap();
        }
    }
    let only_a: std::collections::BTreeSet<String> = ["a".to_string()].into();
    let sync = s.sync_roster("s", only_a.clone(), 1_000, 0).await.unwrap();
    assert_eq!(sync.left, ["b"]);
    assert_eq!(s.roster_in_state("s").await.unwrap(), only_a);
    let both = ["a".to_string(), "b".to_string()].into();
    assert_eq!(
        s.sync_roster("s", both, 2_000, 500).await.unwrap().returned,
        ["b"]
    );
    s.sync_roster("s", only_a.clone(), 3_000, 0).await.unwrap();
    let sync = s.sync_roster("s", only_a, 9_000, 4_000).await.unwrap();
    assert_eq!(sync.forgotten, ["b"]);
    let b = s.target_state(&key("b", "Encounter")).await.unwrap();
    assert!(!b.initialized && b.watermark.is_none());
}
