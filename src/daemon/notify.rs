//! systemd's notify protocol: READY once every component has started,
//! `STATUS=` with a one-line summary, and `WATCHDOG=1` only while no loop is
//! overdue (`progress`): a wedged task means no ping, and systemd restarts
//! the service. Without `NOTIFY_SOCKET` every call is a no-op.

use crate::progress::Progress;
use crate::state::Store;
use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often `STATUS=` is refreshed when nothing else happens.
const STATUS_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Notifier {
    store: Store,
    progress: Progress,
}

impl Notifier {
    pub fn new(store: Store, progress: Progress) -> Self {
        Notifier { store, progress }
    }

    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Pings the watchdog (when systemd asked for one) at half its period
    /// while every loop is on time, and refreshes `STATUS=`.
    pub async fn run(self, cancel: CancellationToken) {
        let watchdog = sd_notify::watchdog_enabled();
        let tick = watchdog
            .map(|p| p / 2)
            .unwrap_or(STATUS_EVERY)
            .min(STATUS_EVERY);
        let mut last_status = std::time::Instant::now();
        let mut reported_late: Vec<String> = vec![];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let late = self.progress.overdue();
            if late.is_empty() {
                if watchdog.is_some() {
                    send(&[NotifyState::Watchdog]);
                }
                reported_late.clear();
            } else {
                let names: Vec<String> = late.iter().map(|(n, _)| n.clone()).collect();
                if names != reported_late {
                    for (name, by) in &late {
                        tracing::error!(component = %name, overdue_s = by.as_secs(), "no progress: the watchdog is no longer pinged (systemd restarts the service)");
                    }
                    send(&[NotifyState::Status(&format!(
                        "wedged: {}",
                        names.join(", ")
                    ))]);
                    reported_late = names;
                }
                continue;
            }
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = std::time::Instant::now();
                if let Ok(summary) = self.store.summary().await {
                    send(&[NotifyState::Status(&summary.to_string())]);
                }
            }
        }
    }
}

/// A standby replica (another holds the state's lease): started, so READY,
/// with its status; the watchdog pinged while it waits.
pub fn standby(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    if sd_notify::watchdog_enabled().is_some() {
        send(&[NotifyState::Watchdog]);
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}
