//! Poll outcomes (for `status`) written in batches: at most one transaction
//! per `FLUSH_EVERY` for all sources, instead of one per source tick. With
//! thousands of quiet targets these writes were most of the bridge's SQLite
//! work. Outcomes are status, not pipeline state: losing the last second of
//! them in a crash loses nothing else.

use crate::state::{PollOutcome, Store};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Hands poll outcomes to the writer task. Cheap to clone, one per source.
#[derive(Clone)]
pub struct OutcomeRecorder {
    tx: mpsc::UnboundedSender<Vec<PollOutcome>>,
}

impl OutcomeRecorder {
    /// Starts the writer; it flushes and ends once every recorder is dropped.
    pub fn spawn(store: Store) -> (OutcomeRecorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (OutcomeRecorder { tx }, tokio::spawn(write(store, rx)))
    }

    pub fn record(&self, outcomes: Vec<PollOutcome>) {
        // Only fails once the writer is gone (shutdown): nothing to do then.
        let _ = self.tx.send(outcomes);
    }
}

async fn write(store: Store, mut rx: mpsc::UnboundedReceiver<Vec<PollOutcome>>) {
    let mut open = true;
    while open {
        let mut batch = match rx.recv().await {
            Some(b) => b,
            None => return,
        };
        // Gather whatever else arrives within the flush interval.
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(b) => batch.extend(b),
                    None => { open = false; break; }
                },
                _ = &mut deadline => break,
            }
        }
        if let Err(e) = store.record_polls(batch).await {
            tracing::error!(error = %e, "cannot record poll outcomes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_util::temp_store;

    #[tokio::test]
    async fn outcomes_reach_the_database_within_a_flush() {
        let (_d, store) = temp_store();
        let (rec, writer) = OutcomeRecorder::spawn(store.clone());
        for rt in ["Observation", "Encounter"] {
            rec.record(vec![PollOutcome {
                source: "s".into(),
                resource_type: rt.into(),
                error: (rt == "Encounter").then(|| "HTTP 500".to_string()),
                at_ms: 1_000,
                resources_read: 3,
                ..Default::default()
            }]);
        }
        drop(rec);
        writer.await.unwrap();
        let obs = store
            .target_report("s", "Observation")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(obs.last_outcome.as_deref(), Some("ok"));
        assert_eq!(obs.last_poll_at_ms, Some(1_000));
        assert_eq!(obs.resources_read, 3);
        let enc = store
            .target_report("s", "Encounter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(enc.last_error.as_deref(), Some("HTTP 500"));
    }
}
