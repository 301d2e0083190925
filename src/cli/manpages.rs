//! Man pages from the CLI definition: fhir-bridge(1) and one page per command
//! (`fhir-bridge-dlq-list(1)`), written by the hidden `fhir-bridge manpages
//! DIR` for the packages. The config reference, bridges.toml(5), is written by
//! hand in `packaging/man/`; a test below holds it to the README's tables.

use super::args::Cli;
use clap::CommandFactory;
use std::io;
use std::path::{Path, PathBuf};

/// The root page's closing sections: where things are and what to read next.
const ROOT_EXTRA: &str = r#".SH FILES
.TP
\fI./bridges.toml\fR, \fI/etc/fhir\-bridge/bridges.toml\fR
The configuration, see \fBbridges.toml\fR(5): \fB\-c\fR, else \fBFHIR_BRIDGE_CONFIG\fR,
else \fI./bridges.toml\fR when the working directory has one, else
\fI/etc/fhir\-bridge/bridges.toml\fR (a packaged install's). A \fI./bridges.toml\fR
owned by another user (not root) or writable by every user is refused unless named with \fB\-c\fR.
.TP
\fI/var/lib/fhir\-bridge/bridge.db\fR
The state (watermarks, seen versions, outbox) of a packaged install:
\fBstate_dir\fR defaults to \fB$STATE_DIRECTORY\fR under systemd, and to
\fI/var/lib/fhir\-bridge\fR for a config in \fI/etc/fhir\-bridge\fR.
.TP
\fIfhir\-bridge.service\fR
The hardened systemd unit (in the system unit directory); installed, not enabled.
.SH ENVIRONMENT
.TP
\fBFHIR_BRIDGE_CONFIG\fR
The config file when \fB\-c\fR is not given.
.TP
\fBFHIR_BRIDGE_LOG\fR
The log level, e.g. \fBinfo\fR or \fBfhir_bridge=debug\fR; an invalid value is an error.
.TP
\fBFHIR_BRIDGE_LOG_FORMAT\fR
\fBtext\fR or \fBjson\fR, as \fB\-\-log\-format\fR.
.TP
\fBNO_COLOR\fR
Set and not empty: no colour, even on a terminal.
.TP
\fBSTATE_DIRECTORY\fR, \fBCREDENTIALS_DIRECTORY\fR
Set by systemd: the default \fBstate_dir\fR, and where relative secret files are read.
.SH SEE ALSO
\fBbridges.toml\fR(5), \fBsystemctl\fR(1), \fBjournalctl\fR(1),
\fI/usr/share/doc/fhir\-bridge/README.md\fR
"#;

/// Every command's page ends pointing at the main page and the config reference.
const SUB_EXTRA: &str = ".SH SEE ALSO\n\\fBfhir\\-bridge\\fR(1), \\fBbridges.toml\\fR(5)\n";

/// Writes every page into `out_dir` (created if missing); returns their paths.
pub fn write_all(out_dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, true, out_dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    root: bool,
    out_dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, false, out_dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("fhir-bridge {}", super::version::LONG))
        .manual("fhir-bridge manual");
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(if root { ROOT_EXTRA } else { SUB_EXTRA }.as_bytes());
    let path = out_dir.join(man.get_filename());
    std::fs::write(&path, page)?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn every_visible_command_gets_a_page_and_hidden_ones_none() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        let names: BTreeSet<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for name in [
            "fhir-bridge.1",
            "fhir-bridge-run.1",
            "fhir-bridge-status.1",
            "fhir-bridge-dlq-list.1",
            "fhir-bridge-completions.1",
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("manpages")));
        let root = std::fs::read_to_string(dir.path().join("fhir-bridge.1")).unwrap();
        assert!(root.contains(super::super::version::LONG));
        assert!(root.contains(".SH FILES"));
        assert!(root.contains("/etc/fhir\\-bridge/bridges.toml"));
    }

    /// The keys of the README's configuration tables (`| key | default |
    /// meaning |`), by table: "Top level", "[admin]", "[[source]]", ...
    fn readme_keys(readme: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut heading = String::new();
        let mut table: Option<String> = None;
        for line in readme.lines() {
            if let Some(h) = line.strip_prefix("### ") {
                // "### `[admin]`: metrics ..." -> "[admin]"; "### Top level" stays.
                heading = h.split('`').nth(1).unwrap_or(h).to_string();
            }
            if line.starts_with("| key | default | meaning |") {
                table = Some(heading.clone());
                continue;
            }
            let Some(name) = &table else { continue };
            if !line.starts_with('|') {
                table = None;
                continue;
            }
            let first = line.split('|').nth(1).unwrap_or_default();
            for key in first.split('`').skip(1).step_by(2) {
                out.entry(name.clone()).or_default().insert(key.to_string());
            }
        }
        out.values_mut().for_each(|keys| {
            keys.remove("---");
        });
        out.retain(|_, keys| !keys.is_empty());
        out
    }

    /// The keys of the man page's `.SS` sections: each `.TP` entry's first line.
    fn man_keys(man: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut section: Option<String> = None;
        let mut lines = man.lines();
        while let Some(line) = lines.next() {
            if let Some(s) = line.strip_prefix(".SS ") {
                section = Some(s.trim_matches('"').to_string());
            } else if line.starts_with(".SH") {
                section = None;
            } else if line == ".TP"
                && let Some(s) = &section
                && let Some(tag) = lines.next()
            {
                for key in tag.split("\\fB").skip(1) {
                    let key = key.split("\\fR").next().unwrap_or_default();
                    out.entry(s.clone())
                        .or_default()
                        .insert(key.replace("\\-", "-"));
                }
            }
        }
        out
    }

    #[test]
    fn bridges_toml_5_documents_every_key_of_the_readme_and_no_other() {
        let readme = readme_keys(include_str!("../../README.md"));
        let man = man_keys(include_str!("../../packaging/man/bridges.toml.5"));
        assert!(readme.contains_key("[[source]]") && readme.contains_key("[[hook]]"));
        assert_eq!(
            readme, man,
            "packaging/man/bridges.toml.5 and README.md's configuration tables disagree"
        );
    }
}
