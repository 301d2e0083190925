//! Per-patient fan-out: the roster a source polls, refreshed on its own
//! schedule, and the targets it makes (one per patient and type, each with
//! its own watermark). A patient who leaves the roster stops being polled and
//! its targets' state is pruned; a new one starts at the source's `start`.

use super::client::FetchError;
use super::poll::SourceTask;
use super::roster::RosterError;
use crate::config::{FanOut, Source};
use crate::state::TargetKey;
use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Default)]
pub(super) struct RosterState {
    /// `None` until the roster was first read.
    patients: Option<BTreeSet<String>>,
    read_at: Option<Instant>,
    /// A problem to show on the next target's status (PHI-free).
    note: Option<String>,
}

impl RosterState {
    /// Reads the roster when it is due (at start, then every `refresh`). A
    /// failed read keeps the roster it had (and is retried next tick when
    /// there is none yet). Returns the server's `Retry-After`, if it said so.
    pub async fn refresh_if_due(
        &mut self,
        task: &SourceTask,
        fan_out: &FanOut,
    ) -> Option<std::time::Duration> {
        if self.read_at.is_some_and(|t| t.elapsed() < fan_out.refresh) {
            return None;
        }
        let name = &task.source.name;
        match task.load_roster(&fan_out.roster).await {
            Ok(read) => {
                self.read_at = Some(Instant::now());
                if read.rejected > 0 {
                    self.note = Some(format!(
                        "roster: {} entries are not patient ids (skipped)",
                        read.rejected
                    ));
                }
                let gone: Vec<String> = self
                    .patients
                    .as_ref()
                    .map(|old| old.difference(&read.ids).cloned().collect())
                    .unwrap_or_default();
                if !gone.is_empty() {
                    for p in &gone {
                        for rt in &task.source.resources {
                            task.known.forget(&TargetKey {
                                source: name.clone(),
                                resource_type: rt.clone(),
                                patient: Some(p.clone()),
                            });
                        }
                    }
                    match task.store.forget_patients(name, gone.clone()).await {
                        Ok(n) => {
                            tracing::info!(source = %name, patients = gone.len(), targets = n, "patients left the roster; their targets are forgotten")
                        }
                        Err(e) => {
                            tracing::warn!(source = %name, error = %e, "cannot forget the targets of patients who left the roster")
                        }
                    }
                }
                tracing::debug!(source = %name, patients = read.ids.len(), "roster read");
                self.patients = Some(read.ids);
                None
            }
            Err(e) => {
                if self.patients.is_some() {
                    self.read_at = Some(Instant::now());
                }
                tracing::warn!(source = %name, error = %e, "cannot read the roster; keeping the last one");
                self.note = Some(format!("{e}; the last roster is kept"));
                match e {
                    RosterError::Fetch(FetchError::Status {
                        retry_after: Some(d),
                        ..
                    }) => Some(d),
                    _ => None,
                }
            }
        }
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
