//! `status --watch [SECONDS]`: the status table, redrawn until Ctrl-C. A
//! failed read (the database briefly locked, say) is shown on the screen and
//! retried next round rather than ending the watch.

use super::out::{self, OutputError};
use super::status::{self, Style};
use super::status_report::Level;
use crate::config::Config;
use std::io::IsTerminal;
use std::time::Duration;

/// Clear the screen and move to its top-left corner.
const CLEAR: &str = "\x1b[2J\x1b[H";

/// Redraws every `every` until Ctrl-C (or SIGTERM), then returns the level
/// last shown (a failed read counts as critical, as `status` exits 2 on it).
pub async fn run(config: &Config, every: Duration) -> Result<Level, OutputError> {
    // Not a terminal (a log file): no escape codes, reports one after another.
    let clear = std::io::stdout().is_terminal();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let (level, body) = match status::collect(config).await {
            Ok(r) => (r.level, status::render_text(&r, &Style::for_stdout())),
            Err(e) => (Level::Critical, format!("fhir-bridge status: {e}\n")),
        };
        let text = format!(
            "{}{body}\nevery {}s; Ctrl-C to exit\n",
            if clear { CLEAR } else { "\n" },
            every.as_secs()
        );
        out::print(&text)?;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut stop => return Ok(level),
        }
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
