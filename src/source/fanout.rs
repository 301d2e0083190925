//! Per-patient fan-out: the roster a source polls, refreshed on its own
//! schedule, and the targets it makes (one per patient and type, each with
//! its own watermark). A roster is not believed on one read: a read that
//! shrinks it by more than half keeps the last one (a Group caught empty, a
//! file mid-rewrite) until `SHRINK_CONFIRMATIONS` reads in a row say so
//! (meanwhile the patients such a read adds are polled too), and the first
//! read after a start is judged against the roster kept in the state. A
//! patient who leaves stops being polled; its targets are kept for
//! `roster_grace` (one who comes back resumes from its watermarks), then
//! forgotten. A new one starts at the source's `start`.

use super::fetch::Fetcher;
use super::roster::load_roster;
use crate::config::{FanOut, Source};
use crate::state::{Store, TargetKey, now_ms};
use std::collections::BTreeSet;
use std::time::Instant;

/// Reads in a row that must find the roster shrunk by more than half before
/// the bridge believes it.
pub(super) const SHRINK_CONFIRMATIONS: u32 = 3;

#[derive(Default)]
pub(super) struct RosterState {
    /// `None` until the roster was first read (or taken from the state).
    patients: Option<BTreeSet<String>>,
    /// Whether the roster in the state was looked at (once, at start).
    from_state: bool,
    read_at: Option<Instant>,
    /// Reads in a row that found the roster shrunk by more than half.
    suspect_reads: u32,
    /// A problem to show on the next target's status (PHI-free).
    note: Option<String>,
}

/// Whether a read of `read` patients, against a kept roster of `kept`, is
/// suspect: `Some(n)`, the n-th suspect read in a row (the kept roster
/// stays); `None`, the read is believed.
fn suspect_read(kept: Option<usize>, read: usize, suspect_reads: u32) -> Option<u32> {
    let kept = kept?;
    if read.saturating_mul(2) >= kept {
        return None;
    }
    let n = suspect_reads + 1;
    (n < SHRINK_CONFIRMATIONS).then_some(n)
}

impl RosterState {
    /// Reads the roster when it is due (at start, then every `refresh`). A
    /// failed read keeps the roster it had (and is retried next tick when
    /// there is none yet); a `Retry-After` pauses the source (`fetch`).
    /// `record`: the roster is written to the state (not on a dry run).
    /// Returns the patients forgotten (gone longer than `roster_grace`).
    pub async fn refresh_if_due(
        &mut self,
        fetcher: &Fetcher<'_>,
        store: &Store,
        fan_out: &FanOut,
        record: bool,
    ) -> Vec<String> {
        if self.read_at.is_some_and(|t| t.elapsed() < fan_out.refresh) {
            return Vec::new();
        }
        let name = &fetcher.source.name;
        // After a start (or a reload) the last roster believed is the one in
        // the state: the first read is judged against it like any other,
        // rather than believed whatever it says (a Group caught empty would
        // leave every patient unpolled until the next read).
        if !self.from_state {
            self.from_state = true;
            match store.roster_in_state(name).await {
                Ok(ids) if !ids.is_empty() => self.patients = Some(ids),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "cannot read the last roster from the state")
                }
            }
        }
        match load_roster(fetcher, &fan_out.roster).await {
            Ok(read) => {
                self.read_at = Some(Instant::now());
                if read.rejected > 0 {
                    self.note = Some(format!(
                        "roster: {} entries are not patient ids (skipped)",
                        read.rejected
                    ));
                }
                let kept = self.patients.as_ref().map(BTreeSet::len);
                let count = read.ids.len();
                if let Some(n) = suspect_read(kept, count, self.suspect_reads) {
                    self.suspect_reads = n;
                    // Kept, with whoever the read adds: a new patient is
                    // polled now, not only once the shrink is believed.
                    if let Some(patients) = &mut self.patients {
                        patients.extend(read.ids);
                    }
                    let kept = kept.unwrap_or_default();
                    tracing::warn!(source = %name, kept, read = count, "the roster shrank by more than half in one read; the last one is kept");
                    self.note = Some(format!(
                        "roster: this read has {count} patients, less than half of the last roster's {kept}; \
                         the last roster is kept (suspect read {n} of {SHRINK_CONFIRMATIONS} before it is believed)"
                    ));
                    return Vec::new();
                }
                if self.suspect_reads > 0 {
                    self.note = Some(format!(
                        "roster: {SHRINK_CONFIRMATIONS} reads in a row have {count} patients, less than half of \
                         the last roster's {}; believed (targets of those who left are kept for roster_grace)",
                        kept.unwrap_or_default()
                    ));
                }
                self.suspect_reads = 0;
                self.accept(name, store, fan_out, read.ids, record).await
            }
            Err(e) => {
                if self.patients.is_some() {
                    self.read_at = Some(Instant::now());
                }
                tracing::warn!(source = %name, error = %e, "cannot read the roster; keeping the last one");
                // A `Retry-After` paused the source in `fetch` already.
                self.note = Some(format!("{e}; the last roster is kept"));
                Vec::new()
            }
        }
    }

    /// A believed roster: patients who left keep their targets for
    /// `roster_grace`, those who came back go on from their watermarks, and
    /// those gone longer are forgotten (returned).
    async fn accept(
        &mut self,
        name: &str,
        store: &Store,
        fan_out: &FanOut,
        ids: BTreeSet<String>,
        record: bool,
    ) -> Vec<String> {
        tracing::debug!(source = %name, patients = ids.len(), "roster read");
        let mut forgotten = Vec::new();
        if record {
            let now = now_ms();
            let grace = i64::try_from(fan_out.grace.as_millis()).unwrap_or(i64::MAX);
            match store
                .sync_roster(name, ids.clone(), now, now.saturating_sub(grace))
                .await
            {
                Ok(sync) => {
                    if !(sync.left.is_empty() && sync.returned.is_empty()) {
                        tracing::info!(source = %name, left = sync.left.len(), returned = sync.returned.len(), "roster changed; the targets of patients who left are kept for roster_grace");
                    }
                    if !sync.forgotten.is_empty() {
                        tracing::info!(source = %name, patients = sync.forgotten.len(), "patients who left the roster longer than roster_grace ago; their targets are forgotten");
                    }
                    forgotten = sync.forgotten;
                }
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "cannot record who left or joined the roster");
                }
            }
        }
        self.patients = Some(ids);
        forgotten
    }

    /// This tick's targets: each type of the source, for each patient when
    /// the source fans out (none before the roster was first read).
    pub fn targets(&self, source: &Source) -> Vec<TargetKey> {
        let key = |rt: &String, patient: Option<&String>| TargetKey {
            source: source.name.clone(),
            resource_type: rt.clone(),
            patient: patient.cloned(),
        };
        if source.fan_out.is_none() {
            return source.resources.iter().map(|rt| key(rt, None)).collect();
        }
        let Some(patients) = &self.patients else {
            return Vec::new();
        };
        patients
            .iter()
            .flat_map(|p| source.resources.iter().map(move |rt| key(rt, Some(p))))
            .collect()
    }

    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }

    /// Whether a roster was read at all (until then, a fan-out source has no
    /// targets to poll, and its roster's error is all status can show).
    pub fn loaded(&self) -> bool {
        self.patients.is_some()
    }
}

/// This tick's targets in turn order: from `cursor` (the first target the
/// last tick did not reach, stopped by a pause or a shutdown) to the end, then
/// from the start. A source paused again and again still reaches every
/// target, instead of starting over with the first patient in id order.
pub(super) fn in_turn(mut targets: Vec<TargetKey>, cursor: Option<&TargetKey>) -> Vec<TargetKey> {
    let Some(c) = cursor else {
        return targets;
    };
    let at = targets
        .iter()
        .position(|k| k == c)
        // Its patient left meanwhile: the next patient in id order.
        .or_else(|| targets.iter().position(|k| k.patient > c.patient))
        .unwrap_or(0);
    targets.rotate_left(at);
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roster_shrunk_by_more_than_half_is_believed_only_when_read_again() {
        // Never read: any read is believed.
        assert_eq!(suspect_read(None, 0, 0), None);
        // Half is not more than half; growing is fine.
        assert_eq!(suspect_read(Some(10), 5, 0), None);
        assert_eq!(suspect_read(Some(10), 50, 0), None);
        assert_eq!(suspect_read(Some(0), 0, 0), None);
        // Empty, or 4 of 10: suspect, until read SHRINK_CONFIRMATIONS times.
        assert_eq!(suspect_read(Some(10), 0, 0), Some(1));
        assert_eq!(suspect_read(Some(1), 0, 0), Some(1));
        assert_eq!(suspect_read(Some(10), 4, 1), Some(2));
        assert_eq!(suspect_read(Some(10), 4, SHRINK_CONFIRMATIONS - 1), None);
    }

    #[test]
    fn the_turn_goes_on_from_where_the_last_one_stopped() {
        let key = |p: &str, rt: &str| TargetKey {
            source: "s".into(),
            resource_type: rt.into(),
            patient: Some(p.into()),
        };
        let all = || {
            vec![
                key("a", "Observation"),
                key("a", "Condition"),
                key("c", "Observation"),
                key("c", "Condition"),
                key("e", "Observation"),
            ]
        };
        let order = |ks: Vec<TargetKey>| -> Vec<String> {
            ks.iter()
                .map(|k| format!("{}/{}", k.patient.as_deref().unwrap_or(""), k.resource_type))
                .collect()
        };
        assert_eq!(order(in_turn(all(), None))[0], "a/Observation");
        assert_eq!(
            order(in_turn(all(), Some(&key("c", "Condition")))),
            [
                "c/Condition",
                "e/Observation",
                "a/Observation",
                "a/Condition",
                "c/Observation"
            ]
        );
        // "b" left the roster: its turn passes to the next patient.
        assert_eq!(
            order(in_turn(all(), Some(&key("b", "Observation"))))[0],
            "c/Observation"
        );
        // Past the last patient: from the start.
        assert_eq!(
            order(in_turn(all(), Some(&key("z", "Observation"))))[0],
            "a/Observation"
        );
    }
}
