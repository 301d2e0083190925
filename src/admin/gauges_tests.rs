use super::*;
use crate::telemetry::builder;
use crate::telemetry::gauges;
use crate::telemetry::test_util::{render, value};

#[test]
fn gauges_from_a_state_snapshot() {
    use crate::state::{GaugeSnapshot, HookDepth, TargetMark};
    let config = crate::config::Config::from_str(
        r#"
[[source]]
name = "epic"
base_url = "http://127.0.0.1:1/fhir"
resources = ["Observation", "Encounter"]
[[source]]
name = "cerner"
base_url = "http://127.0.0.1:3/fhir"
resources = ["Observation"]
patients = { group = "Group/1" }
[[hook]]
name = "care"
url = "http://127.0.0.1:2/hook"
"#,
        std::path::Path::new("bridges.toml"),
    )
    .unwrap();
    let now = crate::state::now_ms();
    let snap = GaugeSnapshot {
        hooks: vec![HookDepth {
            hook: "care".into(),
            pending: 7,
            dead: 2,
            oldest_pending_at_ms: Some(now - 90_000),
            disabled: true,
        }],
        targets: vec![
            TargetMark {
                source: "epic".into(),
                resource_type: "Observation".into(),
                watermark: Some(crate::fhir::format_instant(
                    chrono::Utc::now() - chrono::Duration::seconds(600),
                )),
                per_patient: false,
            },
            // Not configured any more: no series.
            TargetMark {
                source: "gone".into(),
                resource_type: "Observation".into(),
                watermark: Some("2020-01-01T00:00:00.000Z".into()),
                per_patient: false,
            },
            // A fan-out source: its patient furthest behind, not the
            // population-wide row left from before it fanned out.
            TargetMark {
                source: "cerner".into(),
                resource_type: "Observation".into(),
                watermark: Some("2020-01-01T00:00:00.000Z".into()),
                per_patient: false,
            },
            TargetMark {
                source: "cerner".into(),
                resource_type: "Observation".into(),
                watermark: Some(crate::fhir::format_instant(
                    chrono::Utc::now() - chrono::Duration::seconds(120),
                )),
                per_patient: true,
            },
        ],
    };
    let text = render(|| {
        Gauges::new(&config, &Default::default()).apply(&snap);
    });
    let h = r#"{hook="care"}"#;
    assert_eq!(
        value(&text, &format!("{}{h}", gauges::OUTBOX_PENDING)),
        Some(7.0)
    );
    assert_eq!(
        value(&text, &format!("{}{h}", gauges::DEAD_LETTERS)),
        Some(2.0)
    );
    assert_eq!(
        value(&text, &format!("{}{h}", gauges::HOOK_DISABLED)),
        Some(1.0)
    );
    let age = value(&text, &format!("{}{h}", gauges::OLDEST_PENDING_AGE)).unwrap();
    assert!((90.0..95.0).contains(&age), "{age}");
    let lag = value(
        &text,
        &format!(
            r#"{}{{source="epic",resource_type="Observation"}}"#,
            gauges::WATERMARK_LAG
        ),
    )
    .unwrap();
    assert!((600.0..605.0).contains(&lag), "{lag}");
    let lag = value(
        &text,
        &format!(
            r#"{}{{source="cerner",resource_type="Observation"}}"#,
            gauges::WATERMARK_LAG
        ),
    )
    .unwrap();
    assert!((120.0..125.0).contains(&lag), "{lag}");
    assert!(!text.contains(r#"source="gone""#), "{text}");
}

/// One gauge refresh at 10,000 targets (the state read and the gauge
/// updates) sees every target; its time is printed for the record (the
/// benchmark's `telemetry` row measures it in a release build).
#[tokio::test]
async fn a_gauge_refresh_covers_ten_thousand_targets() {
    let (_d, store) = crate::state::test_util::temp_store();
    let mut toml = String::from("[[hook]]\nname = \"h\"\nurl = \"http://127.0.0.1:1/\"\n");
    for s in 0..1000 {
        toml += &format!(
            "[[source]]\nname = \"s{s}\"\nbase_url = \"http://127.0.0.1:1/fhir\"\nresources = [{}]\n",
            (0..10)
                .map(|t| format!("\"T{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for t in 0..10 {
            let w = Some("2026-01-01T00:00:00.000Z".to_string());
            store
                .init_target(
                    &crate::state::Fence::private(),
                    &crate::state::TargetKey::population(&format!("s{s}"), &format!("T{t}")),
                    w,
                    None,
                )
                .await
                .unwrap();
        }
    }
    let config = crate::config::Config::from_str(&toml, std::path::Path::new("b.toml")).unwrap();
    let recorder = builder().build_recorder();
    let gauges =
        metrics::with_local_recorder(&recorder, || Gauges::new(&config, &Default::default()));
    let started = std::time::Instant::now();
    let snap = store.gauge_snapshot(vec!["h".into()]).await.unwrap();
    let read = started.elapsed();
    let started = std::time::Instant::now();
    gauges.apply(&snap);
    println!(
        "state read: {read:?}; gauge updates: {:?}; {} targets",
        started.elapsed(),
        snap.targets.len()
    );
    assert_eq!(snap.targets.len(), 10_000);
}
