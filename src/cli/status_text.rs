//! `fhir-bridge status` as text, for people: two tables (sources by target,
//! hooks), then what needs attention. Colour only when `Style` says so (a
//! terminal, no NO_COLOR): files, pipes and monitors get plain text.

use super::liveness;
use super::status_report::{Level, StatusReport};
use super::{ago_at, span};
use comfy_table::{Cell, CellAlignment, Color, Table, presets};
use std::fmt::Write;

/// How to draw: `now_ms` for the "3m ago" columns (fixed in tests), colour,
/// and box-drawing characters (a terminal) or ASCII.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub now_ms: i64,
    pub colour: bool,
    pub unicode: bool,
}

impl Style {
    /// For stdout as it is now: colour and box drawing on a terminal,
    /// colour only without NO_COLOR (https://no-color.org).
    pub fn for_stdout() -> Style {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            now_ms: crate::state::now_ms(),
            colour: tty && !no_color,
            unicode: tty,
        }
    }

    /// `text` in the level's colour, when colour is on.
    fn paint(&self, level: Level, text: &str) -> String {
        if !self.colour {
            return text.to_string();
        }
        let code = match level {
            Level::Ok => "32",
            Level::Warning => "33",
            Level::Critical => "1;31",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    fn cell(&self, text: impl ToString, level: Level) -> Cell {
        let cell = Cell::new(text);
        match (self.colour, level) {
            (false, _) | (true, Level::Ok) => cell,
            (true, Level::Warning) => cell.fg(Color::Yellow),
            (true, Level::Critical) => cell.fg(Color::Red),
        }
    }

    fn table(&self, header: &[&str], right: &[usize]) -> Table {
        let mut t = Table::new();
        t.load_style(if self.unicode {
            presets::UTF8_FULL_CONDENSED
        } else {
            presets::ASCII_FULL_CONDENSED
        });
        if self.colour {
            t.enforce_styling();
        } else {
            t.force_no_tty();
        }
        t.set_header(header.iter().map(Cell::new));
        for &i in right {
            if let Some(c) = t.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        t
    }
}

fn or_dash(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

fn since(t: &Option<String>, now_ms: i64) -> String {
    t.as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| ago_at(d.timestamp_millis(), now_ms))
        .unwrap_or_else(|| "-".into())
}

pub fn render_text(r: &StatusReport, st: &Style) -> String {
    let now = st.now_ms;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "fhir-bridge status: {}",
        st.paint(r.level, r.level.name())
    );
    let _ = writeln!(o, "config {}  state {}", r.config, r.database);
    let _ = writeln!(o, "daemon: {}", liveness::daemon_line(&r.daemon, now));
    if !r.has_state {
        let _ = writeln!(o, "(no state yet: the daemon has not run with this config)");
    }
    let mut notes = Vec::new();
    let _ = writeln!(o, "\nSOURCES");
    let _ = writeln!(o, "{}", sources_table(r, st, &mut notes));
    let _ = writeln!(o, "\nHOOKS");
    let _ = writeln!(o, "{}", hooks_table(r, st, &mut notes));
    if !r.orphaned_hooks.is_empty() {
        let _ = writeln!(
            o,
            "\nORPHANED HOOKS (in the state, not in the config: nothing sends these)"
        );
        for h in &r.orphaned_hooks {
            let _ = writeln!(
                o,
                "  {}: {} pending, {} dead-lettered; move them with `fhir-bridge dlq redrive --hook {} --to-hook NEW --all`, or delete them with `fhir-bridge dlq purge --hook {} --all`",
                h.name, h.pending, h.dead_lettered, h.name, h.name
            );
        }
    }
    if !r.problems.is_empty() {
        let _ = writeln!(o, "\nNEEDS ATTENTION");
        for p in &r.problems {
            let _ = writeln!(
                o,
                "  {}  {}: {}",
                st.paint(p.level, &format!("{:<8}", p.level.name())),
                p.subject,
                p.message
            );
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "\nNOTES");
        for n in notes {
            let _ = writeln!(o, "  {n}");
        }
    }
    o
}

/// One row per poll target, its source's name and URL on the first two;
/// what a target has to tell beyond its row goes to `notes`.
fn sources_table(r: &StatusReport, st: &Style, notes: &mut Vec<String>) -> Table {
    let now = st.now_ms;
    let mut t = st.table(
        &[
            "SOURCE",
            "TARGET",
            "WATERMARK",
            "LAST POLL",
            "LAST OK",
            "OUTCOME",
            "FAILS",
            "CHANGES",
            "ERROR",
        ],
        &[6, 7],
    );
    for s in &r.sources {
        for (i, tg) in s.targets.iter().enumerate() {
            let name = match i {
                0 => s.name.clone(),
                1 => s.base_url.clone(),
                _ => String::new(),
            };
            let failing = tg.last_outcome.as_deref() == Some("error");
            let level = match (failing, tg.consecutive_failures) {
                (true, n) if n >= super::health::CRITICAL_FAILURES => Level::Critical,
                (true, _) => Level::Warning,
                (false, _) if tg.lagging => Level::Warning,
                _ => Level::Ok,
            };
            let err = if failing { or_dash(&tg.last_error) } else { "" };
            t.add_row(vec![
                Cell::new(name),
                Cell::new(&tg.resource_type),
                Cell::new(or_dash(&tg.watermark)),
                Cell::new(since(&tg.last_poll_at, now)),
                st.cell(since(&tg.last_success_at, now), level),
                st.cell(or_dash(&tg.last_outcome), level),
                st.cell(tg.consecutive_failures, level),
                Cell::new(tg.changes_seen),
                st.cell(err, level),
            ]);
            if let (Some(at), Some(n)) = (&tg.last_reconcile_at, tg.last_reconcile_changes) {
                notes.push(format!(
                    "source {}/{}: last reconciliation {}, found {n} change(s) the polls had missed",
                    s.name,
                    tg.resource_type,
                    since(&Some(at.clone()), now)
                ));
            }
            if tg.entries_skipped > 0 || tg.entries_future > 0 {
                notes.push(format!(
                    "source {}/{}: {} entr(ies) skipped, {} stamped in the future; last: {} ({})",
                    s.name,
                    tg.resource_type,
                    tg.entries_skipped,
                    tg.entries_future,
                    or_dash(&tg.last_warning),
                    since(&tg.last_warning_at, now)
                ));
            }
        }
        if s.targets.len() == 1 {
            // The URL goes on the second row; give a lone target one.
            t.add_row(vec![s.base_url.as_str()]);
        }
    }
    t
}

/// One row per hook, its state judged as `health` judges it; a
/// subscription's status and filter failures go to `notes`.
fn hooks_table(r: &StatusReport, st: &Style, notes: &mut Vec<String>) -> Table {
    let now = st.now_ms;
    let mut t = st.table(
        &[
            "HOOK",
            "STATE",
            "PENDING",
            "DELIVERED",
            "FAILED",
            "DEAD",
            "OLDEST",
            "LAST SUCCESS",
            "LAST ERROR",
        ],
        &[2, 3, 4, 5, 6],
    );
    for h in &r.hooks {
        let (state, level) = if h.disabled {
            ("disabled", Level::Critical)
        } else if h.dead_lettered > 0 {
            ("dead letters", Level::Critical)
        } else if h.stale {
            ("stale", Level::Warning)
        } else if let Some(sub) = h.subscription.as_ref().filter(|s| s.status != "active") {
            (sub.status.as_str(), Level::Warning)
        } else {
            ("ok", Level::Ok)
        };
        let oldest = h
            .oldest_pending_age_seconds
            .map(|s| span(s * 1000))
            .unwrap_or_else(|| "-".into());
        let last_err = match (&h.last_error, &h.last_error_at) {
            (Some(e), at) => format!("{e} ({})", since(at, now)),
            _ => String::new(),
        };
        t.add_row(vec![
            Cell::new(&h.name),
            st.cell(state, level),
            Cell::new(h.pending),
            Cell::new(h.delivered),
            Cell::new(h.failed_attempts),
            st.cell(
                h.dead_lettered,
                if h.dead_lettered > 0 {
                    Level::Critical
                } else {
                    Level::Ok
                },
            ),
            st.cell(oldest, if h.stale { Level::Warning } else { Level::Ok }),
            Cell::new(since(&h.last_success_at, now)),
            Cell::new(last_err),
        ]);
        if let Some(sub) = &h.subscription {
            notes.push(format!(
                "hook {}: {} subscription {}, {} event(s) numbered",
                h.name, sub.format, sub.status, h.events
            ));
        }
        if h.filter_errors > 0 {
            notes.push(format!(
                "hook {}: {} resource(s) made the filter fail (counted as non-matches)",
                h.name, h.filter_errors
            ));
        }
    }
    t
}
