//! The command line: every command, its options, and an example in each
//! `--help`. `main.rs` dispatches; shell completions are generated from this.

use super::when::{ResourceRef, parse_resource, parse_time};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// `-c` when neither it nor `FHIR_BRIDGE_CONFIG` is given.
fn default_config() -> PathBuf {
    let local = crate::config::paths::LOCAL_CONFIG;
    crate::config::paths::default_config(Path::new(local).is_file())
}

/// Refuses the implicit `./bridges.toml` when another user owns it or every
/// user may write it (see `paths::local_config_refusal`). `matches` tells
/// whether `-c` came from neither the command line nor the environment.
pub fn check_implicit_config(matches: &clap::ArgMatches) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mut m = matches;
    let source = loop {
        if let Ok(Some(_)) = m.try_get_raw("config") {
            break m.value_source("config");
        }
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => return Ok(()),
        }
    };
    let local = crate::config::paths::LOCAL_CONFIG;
    let implicit = source == Some(clap::parser::ValueSource::DefaultValue)
        && m.get_one::<PathBuf>("config").map(PathBuf::as_path) == Some(Path::new(local));
    if !implicit {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(local) else {
        return Ok(()); // gone since: the read reports it
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match crate::config::paths::local_config_refusal(meta.uid(), me, meta.mode()) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

#[derive(Parser)]
#[command(
    name = "fhir-bridge",
    version = super::version::LONG,
    about = "Webhooks for EHRs that have none: polls FHIR search, pushes changes",
    after_help = "Examples:\n  fhir-bridge validate -c bridges.toml\n  fhir-bridge run -c bridges.toml\n  fhir-bridge status --watch\n\n`-c` defaults to $FHIR_BRIDGE_CONFIG, else ./bridges.toml if it exists, else\n/etc/fhir-bridge/bridges.toml (a packaged install's)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr: `text` (without timestamps under journald) or
    /// `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "FHIR_BRIDGE_LOG_FORMAT",
        default_value_t = super::logging::LogFormat::Text
    )]
    pub log_format: super::logging::LogFormat,
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// Path to the config file [default: ./bridges.toml if it exists, else
    /// /etc/fhir-bridge/bridges.toml].
    #[arg(
        short,
        long,
        env = "FHIR_BRIDGE_CONFIG",
        default_value_os_t = default_config(),
        hide_default_value = true
    )]
    pub config: PathBuf,
}

const STATUS_HELP: &str = "\
Exit codes (for monitors):
  0  OK
  1  warning: the daemon is not running; a hook is stale (its oldest pending
     message is older than its max_pending_age); a source target's last poll
     failed (fewer than 3 times in a row) or its last successful poll is older
     than 3 poll intervals (at least 5 min); an entry was skipped in the last
     24 h; an orphaned hook (in the state, not in the config)
  2  critical: a source target failed 3 or more polls in a row; dead letters
     (any hook's); a hook disabled by a 410 Gone; or status itself failed

Examples:
  fhir-bridge status
  fhir-bridge status --json | jq .level
  fhir-bridge status --watch 5";

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: poll every source, deliver to every hook.
    #[command(after_help = "Example:\n  fhir-bridge run -c /etc/fhir-bridge/bridges.toml")]
    Run(ConfigArg),
    /// Show every source and hook; exits 0 (OK), 1 (warning) or 2 (critical).
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// Check the config file (every filter compiles) and exit.
    #[command(after_help = "Example:\n  fhir-bridge validate -c bridges.toml")]
    Validate(ConfigArg),
    /// The dead-letter queue: list, show, redrive, purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Send a hook's delivered messages again (same message_id), within the retention.
    #[command(after_help = REPLAY_HELP)]
    Replay(ReplayArgs),
    /// Hooks: re-enable one that a receiver disabled with 410 Gone.
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
    /// Sources: rename one, keeping its watermarks, seen versions and messages.
    Source {
        #[command(subcommand)]
        command: SourceCommand,
    },
    /// SMART Backend Services keys: make one, or print a configured key's JWKS.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Webhook signing secrets (Standard Webhooks).
    WebhookSecret {
        #[command(subcommand)]
        command: WebhookSecretCommand,
    },
    /// Print shell completions.
    #[command(
        after_help = "Examples:\n  fhir-bridge completions bash > /etc/bash_completion.d/fhir-bridge\n  fhir-bridge completions zsh > \"${fpath[1]}/_fhir-bridge\"\n  fhir-bridge completions fish > ~/.config/fish/completions/fhir-bridge.fish\n\nA package installs them for bash, zsh and fish."
    )]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages (fhir-bridge(1), one per command) into DIR: for
    /// packaging (scripts/package).
    #[command(
        hide = true,
        after_help = "Example:\n  fhir-bridge manpages target/man && man -l target/man/fhir-bridge-status.1"
    )]
    Manpages {
        /// Where to write them (created if missing).
        out_dir: PathBuf,
    },
    /// One poll of one source now, printing the changes found and the hooks
    /// they go to. Exits 1 if a resource type failed.
    #[command(
        after_help = "Examples:\n  fhir-bridge poll --source epic --once --dry-run   # beside a running daemon; writes nothing\n  fhir-bridge poll --source epic --once             # daemon stopped; changes go to the outbox"
    )]
    Poll {
        #[command(flatten)]
        config: ConfigArg,
        /// The source to poll.
        #[arg(long)]
        source: String,
        /// Poll once and exit (the only mode: the daemon polls on schedule).
        #[arg(long, required = true)]
        once: bool,
        /// Read the EHR and the state, write nothing, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// An initial load: every resource of a source last updated since TIME,
    /// enqueued for the hooks (the running daemon delivers them), beside
    /// ordinary polling. Rate-limited; run it again to resume after an
    /// interruption. Exits 1 unless every resource type is done.
    #[command(
        after_help = "Examples:\n  fhir-bridge backfill --source epic --since 2026-01-01T00:00:00Z\n  fhir-bridge backfill --source epic --since beginning --type Observation --rate 2"
    )]
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
        /// The source to load.
        #[arg(long)]
        source: String,
        /// An RFC 3339 time, or `beginning`: the same value resumes a stopped run.
        #[arg(long)]
        since: String,
        /// Only these resource types (repeatable); default: all of the source's.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Search pages per second, at most.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
    },
    /// List the named topics a hook can set (`topic = "..."`), with their jq.
    #[command(after_help = "Example:\n  fhir-bridge topics")]
    Topics,
    /// Run a hook's filter (its topic and/or `filter`, on the daemon's
    /// budget) on a resource: prints `match` (exit 0) or `no match` (exit 1).
    /// A filter error or an unreadable file exits 2.
    #[command(
        after_help = "Examples:\n  fhir-bridge test-filter --hook discharges encounter.json --previous encounter-v1.json\n  fhir-bridge test-filter -c bridges.toml --hook critical-labs observation.json"
    )]
    TestFilter {
        #[command(flatten)]
        config: ConfigArg,
        /// The hook whose filter runs.
        #[arg(long)]
        hook: String,
        /// A JSON file holding the resource (`.`).
        resource: PathBuf,
        /// A JSON file holding its previous version (`$previous`); default: null.
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// Zero-setup demo: sandbox EHR -> real pipeline -> printing receiver.
    #[command(after_help = "Example:\n  fhir-bridge demo --duration 30s --rate 20")]
    Demo {
        /// Stop after this long (e.g. "30s"); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Synthetic resources written per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Machine-readable output (stable keys, see README).
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw every SECONDS (default 2) until Ctrl-C; exits with the last code.
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Writes a new private key (PKCS#8 PEM, mode 0600) into DIR and prints
    /// its public JWKS, to register with the EHR's app registration.
    #[command(
        after_help = "Example:\n  fhir-bridge keys generate --alg ES384 --out /etc/fhir-bridge"
    )]
    Generate {
        /// ES384 (P-384) or RS384 (RSA 3072).
        #[arg(long, value_parser = ["ES384", "RS384"])]
        alg: String,
        /// Directory for the key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the public JWKS of a source's configured `private_key`.
    #[command(after_help = "Example:\n  fhir-bridge keys jwks -c bridges.toml --source epic")]
    Jwks {
        #[command(flatten)]
        config: ConfigArg,
        /// The source's name.
        #[arg(long)]
        source: String,
    },
}

#[derive(Subcommand)]
pub enum WebhookSecretCommand {
    /// Prints a new secret for a hook's `signing_secrets`: `whsec_...` (HMAC,
    /// shared with the receiver), or with --asymmetric a `whsk_...` key for the
    /// bridge and the `whpk_...` public key to give the receiver.
    #[command(
        after_help = "Examples:\n  fhir-bridge webhook-secret generate\n  fhir-bridge webhook-secret generate --asymmetric"
    )]
    Generate {
        /// Ed25519 (`v1a` signatures) instead of HMAC-SHA256 (`v1`).
        #[arg(long)]
        asymmetric: bool,
    },
}

#[derive(Subcommand)]
pub enum HookCommand {
    /// Resume deliveries to a hook disabled by a 410 Gone.
    #[command(after_help = "Example:\n  fhir-bridge hook enable care-team-app")]
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        /// The hook's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Move a source's state (watermarks, seen versions, pending messages
    /// with their message_ids) from OLD to NEW, so that a rename re-sends
    /// nothing and skips nothing. Stop the daemon and rename the source in
    /// the config first (its `name` and each hook's `sources`); then start it.
    #[command(
        after_help = "Example:\n  systemctl stop fhir-bridge\n  sed -i 's/name = \"epic\"/name = \"epic-prod\"/' bridges.toml   # and each hook's `sources`\n  fhir-bridge source rename epic epic-prod -c bridges.toml\n  systemctl start fhir-bridge"
    )]
    Rename {
        #[command(flatten)]
        config: ConfigArg,
        /// The name the state is kept under now.
        old: String,
        /// The source's name in the config.
        new: String,
    },
}

/// Which messages, besides the hook: source, resource, since when.
#[derive(clap::Args, Clone, Default)]
pub struct Filters {
    /// Only this source's messages.
    #[arg(long)]
    pub source: Option<String>,
    /// Only messages dead-lettered at or after TIME (RFC 3339, or a duration
    /// ago: 2h, 30m, 1d); a pending message of an orphaned hook counts from
    /// when it was created.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only this resource (Observation/123), or resource type (Observation).
    #[arg(long, value_name = "TYPE[/ID]", value_parser = parse_resource)]
    pub resource: Option<ResourceRef>,
}

#[derive(clap::Args)]
pub struct Selection {
    /// Only this hook's messages (a hook no longer in the config, too).
    #[arg(long)]
    pub hook: Option<String>,
    #[command(flatten)]
    pub filters: Filters,
    /// Every dead letter (of --hook, if given; with an orphaned --hook, its
    /// pending messages too); not needed with --source, --since or --resource.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Message ids, as shown by `dlq list`.
    #[arg(required_unless_present_any = ["all", "source", "since", "resource"])]
    pub ids: Vec<i64>,
    /// Do not ask for confirmation. Only a terminal is asked: scripts and
    /// pipes proceed, and the command prints what it did.
    #[arg(short, long)]
    pub yes: bool,
}

const DLQ_LIST_HELP: &str = "\
Examples:
  fhir-bridge dlq list
  fhir-bridge dlq list --hook care-team-app --since 2h
  fhir-bridge dlq list --resource Observation/123 --json";

const DLQ_SHOW_HELP: &str = "\
Without --payload, no resource content is printed: ids, types, attempts,
errors (HTTP status codes, connection failures) and times only.

Examples:
  fhir-bridge dlq show 42
  fhir-bridge dlq show 0b8f2c8e-6f1f-5c3a-9e0e-2f1d3c4b5a69 --payload";

const DLQ_REDRIVE_HELP: &str = "\
On a terminal, asks before acting unless --yes; otherwise proceeds.

Examples:
  fhir-bridge dlq redrive --all
  fhir-bridge dlq redrive --hook care-team-app --since 2h --yes
  fhir-bridge dlq redrive 42 43
  fhir-bridge dlq redrive --hook old-name --to-hook new-name --all";

const DLQ_PURGE_HELP: &str = "\
On a terminal, asks before acting unless --yes; otherwise proceeds.

Examples:
  fhir-bridge dlq purge 42
  fhir-bridge dlq purge --resource Observation/123 --yes
  fhir-bridge dlq purge --hook removed-hook --all";

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered messages, and pending messages of hooks no longer in the config.
    #[command(after_help = DLQ_LIST_HELP)]
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this hook's messages.
        #[arg(long)]
        hook: Option<String>,
        #[command(flatten)]
        filters: Filters,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: hook, source, resource, attempts, last error, times.
    #[command(after_help = DLQ_SHOW_HELP)]
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The id `dlq list` shows, or the message_id.
        #[arg(value_name = "MESSAGE_ID")]
        message: String,
        /// Only this hook's message (a message_id moved between hooks is under both).
        #[arg(long)]
        hook: Option<String>,
        /// Also print the stored payload. It contains PHI (the resource as the
        /// EHR sent it): mind where the output goes.
        #[arg(long)]
        payload: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead letters for delivery (same message_id, fresh attempts),
    /// or move them (and an orphaned hook's pending messages) to another hook.
    #[command(after_help = DLQ_REDRIVE_HELP)]
    Redrive {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        sel: Selection,
        /// Move the messages to this configured hook instead.
        #[arg(long, value_name = "NEW")]
        to_hook: Option<String>,
    },
    /// Delete dead letters (and an orphaned hook's pending messages) for good.
    #[command(after_help = DLQ_PURGE_HELP)]
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        sel: Selection,
    },
}

const REPLAY_HELP: &str = "\
Delivered messages are kept for `retention` (14d by default), but their
payloads are deleted on delivery (no PHI at rest). So a replay sends:
  - the stored payload, when one is still stored;
  - for a hook with content = \"id-only\", the same id-only notification;
  - for a full-resource hook, with --id-only: an id-only notification
    (resourceIncluded: false; the receiver fetches the resource by resourceId).
The rest cannot be replayed and are counted. The message_id is always the
original one: a receiver that deduplicates drops what it already has.
--from-event N instead of --since: the hook's messages numbered N or later
that are still kept (delivered, or dead), in event-number order, each with
its original message_id and event number; pending ones are left to the
worker, and messages from before event numbers have none.
On a terminal, asks before acting unless --yes; otherwise proceeds. A running
daemon sends the messages within a second.

Examples:
  fhir-bridge replay --hook care-team-app --since 2h
  fhir-bridge replay --hook care-team-app --since 2026-11-30T08:00:00Z --until 2026-11-30T09:00:00Z --id-only --yes
  fhir-bridge replay --hook care-team-app --since 1d --resource Observation/123
  fhir-bridge replay --hook care-team-app --from-event 1042";

#[derive(clap::Args)]
#[group(id = "start", required = true, multiple = false, args = ["since", "from_event"])]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The configured hook whose delivered messages to send again.
    #[arg(long)]
    pub hook: String,
    /// Messages delivered at or after TIME (RFC 3339, or a duration ago: 2h, 30m, 1d).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// ... and before TIME (default: now).
    #[arg(
        long,
        value_name = "TIME",
        value_parser = parse_time,
        requires = "since",
        conflicts_with = "from_event"
    )]
    pub until: Option<i64>,
    /// Messages with the hook's event number N or later, delivered or dead,
    /// in event-number order, keeping their numbers (instead of --since).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub from_event: Option<i64>,
    /// Only this source's messages.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this resource (Observation/123), or resource type (Observation).
    #[arg(long, value_name = "TYPE[/ID]", value_parser = parse_resource)]
    pub resource: Option<ResourceRef>,
    /// Send messages whose payload is gone as id-only notifications, also to
    /// a hook configured with full resources.
    #[arg(long)]
    pub id_only: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub yes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            let subs: Vec<_> = cmd.get_subcommands().collect();
            if subs.is_empty() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Example"), "{path}: no example");
            }
            for s in subs {
                walk(s, &path);
            }
        }
        walk(&Cli::command(), "");
    }

    #[test]
    fn watch_defaults_to_two_seconds_and_filters_select_without_all() {
        let Command::Status(s) = Cli::parse_from(["fhir-bridge", "status", "--watch"]).command
        else {
            panic!("status");
        };
        assert_eq!(s.watch, Some(2));
        assert!(Cli::try_parse_from(["fhir-bridge", "dlq", "purge"]).is_err());
        assert!(Cli::try_parse_from(["fhir-bridge", "dlq", "purge", "--since", "2h"]).is_ok());
        assert!(Cli::try_parse_from(["fhir-bridge", "dlq", "purge", "--hook", "h"]).is_err());
        assert!(Cli::try_parse_from(["fhir-bridge", "status", "--json", "--watch"]).is_err());
    }
}
