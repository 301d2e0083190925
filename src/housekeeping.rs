//! Housekeeping: keeps the state bounded while the daemon runs. Delivered
//! messages go after `retention`; a resource's seen version goes once it is
//! both outside every future poll window and older than `retention` (but a
//! full walk's seen versions are its snapshot: only their tombstones go); free
//! pages go back to the file system; the WAL is truncated, so the page images
//! of delivered payloads it holds do not linger.

use crate::config::Source;
use crate::fhir::{format_instant, parse_instant};
use crate::state::{Store, now_ms};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often housekeeping runs: a quarter of the retention, between 1 s and 10 min.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Seen versions last updated before this can never matter again: the poller
/// drops whatever lies before its window (watermark - overlap), and they are
/// older than the retention too (so create/update stays exact for that long).
pub fn seen_cutoff(
    watermark: Option<DateTime<Utc>>,
    overlap: Duration,
    retention: Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let window = watermark?.checked_sub_signed(chrono::Duration::from_std(overlap).ok()?)?;
    let kept = now.checked_sub_signed(chrono::Duration::from_std(retention).ok()?)?;
    Some(window.min(kept))
}

pub async fn run(
    store: Store,
    sources: Vec<Source>,
    retention: Duration,
    cancel: CancellationToken,
) {
    loop {
        once(&store, &sources, retention).await;
        tokio::select! {
            _ = tokio::time::sleep(interval(retention)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// A `snapshot` type, or one that `reconcile` walks in full: every seen
/// version is what the next walk is compared with. Forgotten, a resource
/// would be a create again, however old.
fn keeps_snapshot(source: &Source, resource_type: &str) -> bool {
    source.strategies.for_type(resource_type) == crate::config::Strategy::Snapshot
        || source.reconcile.is_some()
}

/// A full walk's deletes are forgotten after `retention` (their time is the
/// last version's): a resource met again after that is a first sighting.
async fn prune_tombstones(store: &Store, source: &Source, rt: &str, retention: Duration) {
    let Some(before) = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|r| Utc::now().checked_sub_signed(r))
    else {
        return;
    };
    match store
        .prune_tombstones(&source.name, rt, format_instant(before))
        .await
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(source = %source.name, resource_type = %rt, pruned = n, "forgot deletes older than retention")
        }
        Err(e) => {
            tracing::warn!(source = %source.name, resource_type = %rt, error = %e, "cannot prune deletes")
        }
    }
}

async fn once(store: &Store, sources: &[Source], retention: Duration) {
    let cutoff = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    match store.prune_delivered(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, "pruned delivered messages past retention"),
        Err(e) => tracing::warn!(error = %e, "cannot prune delivered messages"),
    }
    for source in sources {
        for rt in &source.resources {
            if keeps_snapshot(source, rt) {
                prune_tombstones(store, source, rt, retention).await;
                continue;
            }
            // The watermark below which no poll of the type reads again: the
            // population-wide target's, or with fan-out the lowest of the
            // patients' targets (none while any has yet to get one).
            let key = crate::state::TargetKey::population(&source.name, rt);
            let read = if source.fan_out.is_some() {
                store.lowest_patient_watermark(&source.name, rt).await
            } else {
                store.target_state(&key).await.map(|st| st.watermark)
            };
            let watermark = match read {
                Ok(w) => w.as_deref().and_then(parse_instant),
                Err(e) => {
                    tracing::warn!(source = %source.name, resource_type = %rt, error = %e, "cannot read target state");
                    continue;
                }
            };
            let Some(before) = seen_cutoff(watermark, source.overlap, retention, Utc::now()) else {
                continue;
            };
            match store
                .prune_seen(&source.name, rt, format_instant(before))
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(source = %source.name, resource_type = %rt, pruned = n, "forgot seen versions outside the poll window and retention")
                }
                Err(e) => {
                    tracing::warn!(source = %source.name, resource_type = %rt, error = %e, "cannot prune seen versions")
                }
            }
        }
    }
    match store.reclaim_space().await {
        Ok(0) => {}
        Ok(bytes) => tracing::info!(bytes, "returned free database pages to the file system"),
        Err(e) => tracing::warn!(error = %e, "cannot reclaim database space"),
    }
    match store.truncate_wal().await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("WAL checkpoint held back by a reader; next pass"),
        Err(e) => tracing::warn!(error = %e, "cannot checkpoint the WAL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_instant(s).unwrap()
    }

    #[test]
    fn seen_versions_go_once_outside_the_window_and_the_retention() {
        let now = at("2026-06-30T00:00:00.000Z");
        let day = Duration::from_secs(86_400);
        // A busy target: the retention is the binding limit.
        assert_eq!(
            seen_cutoff(Some(now), Duration::from_secs(120), 14 * day, now),
            Some(at("2026-06-16T00:00:00.000Z"))
        );
        // A target quiet for a month: the window is.
        assert_eq!(
            seen_cutoff(
                Some(at("2026-05-01T00:02:00.000Z")),
                Duration::from_secs(120),
                14 * day,
                now
            ),
            Some(at("2026-05-01T00:00:00.000Z"))
        );
        // Never polled: nothing to prune.
        assert_eq!(seen_cutoff(None, Duration::ZERO, day, now), None);
        // Absurd durations do not panic.
        assert_eq!(seen_cutoff(Some(now), Duration::MAX, day, now), None);
    }

    /// A snapshot's seen versions stay however old (only its old deletes
    /// go); a last-updated type's go once outside its window and retention.
    #[tokio::test]
    async fn a_snapshot_keeps_its_seen_versions_but_not_its_old_deletes() {
        use crate::state::{PageCommit, SeenRow, TargetKey};
        let (_d, store) = crate::state::test_util::temp_store();
        let config = crate::config::Config::from_str(
            "state_dir = \"s\"\n\
             [[source]]\nname = \"snap\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
             resources = [\"Coverage\"]\nstrategy = \"snapshot\"\n\
             [[source]]\nname = \"lu\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
             resources = [\"Coverage\"]\n",
            std::path::Path::new("b.toml"),
        )
        .unwrap();
        let old = "2020-01-01T00:00:00.000Z";
        let row = |hash: [u8; 32]| SeenRow {
            version_id: Some("1".into()),
            last_updated: Some(old.into()),
            content_hash: hash,
            body: None,
        };
        for source in ["snap", "lu"] {
            let seen = vec![
                ("live".to_string(), row([1; 32])),
                ("dead".to_string(), row(crate::diff::content_hash(b""))),
            ];
            let key = TargetKey::population(source, "Coverage");
            store
                .init_target(
                    &crate::state::Fence::private(),
                    &key,
                    Some(format_instant(Utc::now())),
                    None,
                )
                .await
                .unwrap();
            let page = PageCommit {
                source: source.into(),
                resource_type: "Coverage".into(),
                seen,
                ..Default::default()
            };
            store
                .commit_page(&crate::state::Fence::private(), page)
                .await
                .unwrap();
        }
        once(&store, &config.sources, Duration::from_secs(86_400)).await;
        let ids = || vec!["live".to_string(), "dead".to_string()];
        let snap = store.load_seen("snap", "Coverage", ids()).await.unwrap();
        assert_eq!(snap.keys().collect::<Vec<_>>(), ["live"]);
        let lu = store.load_seen("lu", "Coverage", ids()).await.unwrap();
        assert!(lu.is_empty(), "{lu:?}");
    }

    #[test]
    fn runs_a_few_times_per_retention() {
        assert_eq!(
            interval(Duration::from_secs(14 * 86_400)),
            Duration::from_secs(600)
        );
        assert_eq!(interval(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(interval(Duration::ZERO), Duration::from_secs(1));
    }
}
