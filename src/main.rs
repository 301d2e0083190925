//! The `fhir-bridge` binary: the command line and nothing else.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fhir_bridge::cli::{demo, dlq, logging, out, status};
use fhir_bridge::config::Config;
use fhir_bridge::state::Store;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fhir-bridge",
    version,
    about = "Webhooks for EHRs that have none: polls FHIR search, pushes changes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: `text` (without timestamps under journald) or
    /// `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "FHIR_BRIDGE_LOG_FORMAT",
        default_value_t = logging::LogFormat::Text
    )]
    log_format: logging::LogFormat,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Path to the config file.
    #[arg(
        short,
        long,
        env = "FHIR_BRIDGE_CONFIG",
        default_value = "bridges.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll every source, deliver to every hook.
    Run(ConfigArg),
    /// Show every source and hook; exits 1 when something needs attention.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output (stable keys, see README).
        #[arg(long)]
        json: bool,
    },
    /// Check the config file (every filter compiles) and exit.
    Validate(ConfigArg),
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Hooks: re-enable one that a receiver disabled with 410 Gone.
    Hook {
        #[command(subcommand)]
        command: HookCommand,
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
    /// Zero-setup demo: sandbox EHR -> real pipeline -> printing receiver.
    Demo {
        /// Stop after this long (e.g. "30s"); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Synthetic resources written per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Writes a new private key (PKCS#8 PEM, mode 0600) into DIR and prints
    /// its public JWKS, to register with the EHR's app registration.
    Generate {
        /// ES384 (P-384) or RS384 (RSA 3072).
        #[arg(long, value_parser = ["ES384", "RS384"])]
        alg: String,
        /// Directory for the key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the public JWKS of a source's configured `private_key`.
    Jwks {
        #[command(flatten)]
        config: ConfigArg,
        /// The source's name.
        #[arg(long)]
        source: String,
    },
}

#[derive(Subcommand)]
enum WebhookSecretCommand {
    /// Prints a new secret for a hook's `signing_secrets`: `whsec_...` (HMAC,
    /// shared with the receiver), or with --asymmetric a `whsk_...` key for the
    /// bridge and the `whpk_...` public key to give the receiver.
    Generate {
        /// Ed25519 (`v1a` signatures) instead of HMAC-SHA256 (`v1`).
        #[arg(long)]
        asymmetric: bool,
    },
}

#[derive(Subcommand)]
enum HookCommand {
    /// Resume deliveries to a hook disabled by a 410 Gone.
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        /// The hook's name.
        name: String,
    },
}

#[derive(clap::Args)]
struct Selection {
    /// Only this hook's messages (a hook no longer in the config, too).
    #[arg(long)]
    hook: Option<String>,
    /// Every dead letter (of --hook, if given; with an orphaned --hook, its pending messages too).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Message ids, as shown by `dlq list`.
    #[arg(required_unless_present = "all")]
    ids: Vec<i64>,
}

impl From<Selection> for dlq::Selection {
    fn from(s: Selection) -> Self {
        dlq::Selection {
            hook: s.hook,
            all: s.all,
            ids: s.ids,
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages, and pending messages of hooks no longer in the config.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        hook: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead letters for delivery (same message_id, fresh attempts),
    /// or move them (and an orphaned hook's pending messages) to another hook.
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
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        sel: Selection,
    },
}

/// Until live reload exists, SIGHUP (which would otherwise end the process
/// without a clean shutdown) is logged and ignored, every time.
fn keep_running_on_sighup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::warn!(
                            "SIGHUP received: live reload is not supported yet; keeping the running configuration"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP"),
        }
    }
}

/// Cancels on SIGINT or SIGTERM.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}

fn load(c: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&c.config)?)
}

/// Prints `text`; a reader that went away ends the command quietly with `code`.
fn emit(text: &str, code: ExitCode) -> anyhow::Result<ExitCode> {
    match out::print(text) {
        Ok(()) => Ok(code),
        Err(e) if e.is_broken_pipe() => Ok(code),
        Err(e) => Err(e.into()),
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    logging::init(
        match cli.command {
            Command::Run(_) => "info",
            _ => "warn",
        },
        cli.log_format,
    )?;
    match cli.command {
        Command::Run(c) => {
            keep_running_on_sighup();
            let config = load(&c)?;
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            fhir_bridge::daemon::run(config, shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let config = load(&config)?;
            let report = status::collect(&config).await?;
            let code = if report.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            let text = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                status::render_text(&report)
            };
            emit(&text, code)
        }
        Command::Validate(c) => {
            let config = load(&c)?;
            for w in &config.warnings {
                fhir_bridge::cli::out::error_line(&format!("warning: {w}"));
            }
            let text = format!(
                "{}: OK ({} source(s), {} hook(s); every filter compiles)\n",
                c.config.display(),
                config.sources.len(),
                config.hooks.len()
            );
            emit(&text, ExitCode::SUCCESS)
        }
        Command::Dlq { command } => {
            let text = match command {
                DlqCommand::List { config, hook, json } => {
                    dlq::list(&load(&config)?, hook, json).await?
                }
                DlqCommand::Redrive {
                    config,
                    sel,
                    to_hook,
                } => dlq::redrive(&load(&config)?, sel.into(), to_hook).await?,
                DlqCommand::Purge { config, sel } => {
                    dlq::purge(&load(&config)?, sel.into()).await?
                }
            };
            emit(&text, ExitCode::SUCCESS)
        }
        Command::Hook {
            command: HookCommand::Enable { config, name },
        } => {
            let config = load(&config)?;
            if !config.hooks.iter().any(|h| h.name == name) {
                anyhow::bail!("no hook is named `{name}` in {}", config.path.display());
            }
            let store = Store::open(&config.db_path()).context("cannot open the state database")?;
            let text = if store.enable_hook(&name).await? {
                format!(
                    "hook `{name}` enabled; a running daemon resumes deliveries within a second\n"
                )
            } else {
                format!("hook `{name}` was not disabled\n")
            };
            emit(&text, ExitCode::SUCCESS)
        }
        Command::Keys { command } => keys_main(command),
        Command::WebhookSecret {
            command: WebhookSecretCommand::Generate { asymmetric },
        } => {
            use fhir_bridge::delivery::signature::{generate_asymmetric, generate_symmetric};
            let text = if asymmetric {
                let (secret, public) = generate_asymmetric()?;
                format!(
                    "signing secret (the hook's signing_secrets; keep it secret): {secret}\n\
                     public key (give it to the receiver, to verify v1a signatures): {public}\n"
                )
            } else {
                format!("{}\n", generate_symmetric()?)
            };
            emit(&text, ExitCode::SUCCESS)
        }
        Command::Demo { duration, rate } => {
            demo::run(demo::DemoOptions { duration, rate }, shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn keys_main(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use fhir_bridge::auth::smart::{KeyAlg, SmartKey, generate_pem};
    let jwks = match command {
        KeysCommand::Generate { alg, out } => {
            let alg = if alg == "RS384" {
                KeyAlg::Rs384
            } else {
                KeyAlg::Es384
            };
            let pem = generate_pem(alg)?;
            let key = SmartKey::from_pem(&pem, None)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join(format!("fhir-bridge-{}.pem", alg.name().to_lowercase()));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts.open(&path).with_context(|| {
                format!(
                    "cannot create {} (an existing key is never overwritten)",
                    path.display()
                )
            })?;
            std::io::Write::write_all(&mut file, pem.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            out::error_line(&format!(
                "private key written to {} (kid {}); register the JWKS below with the EHR",
                path.display(),
                key.kid()
            ));
            key.jwks()
        }
        KeysCommand::Jwks { config, source } => {
            let config = load(&config)?;
            let Some(s) = config.sources.iter().find(|s| s.name == source) else {
                anyhow::bail!("no source is named `{source}` in {}", config.path.display());
            };
            match &s.auth {
                fhir_bridge::config::SourceAuth::SmartBackend { key, .. } => key.jwks(),
                _ => anyhow::bail!("source `{source}` has no smart-backend `private_key`"),
            }
        }
    };
    emit(
        &format!("{}\n", serde_json::to_string_pretty(&jwks)?),
        ExitCode::SUCCESS,
    )
}

/// glibc gives each thread that allocates its own arena (up to 8 per core) and
/// keeps their freed memory. Pages are parsed and filtered on the blocking
/// pool, so many threads allocate: the backlog bench's peak RSS went from 28
/// to 43 MB, and back to 28 MB (at the same throughput) with two arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // jq filters are evaluated recursively: give worker threads room.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out::error_line(&format!("fhir-bridge: cannot start the runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(real_main(cli)) {
        Ok(code) => code,
        // The reader went away (`| head`) during a command that exits 0 when it
        // completes (status handles its own): end quietly.
        Err(e)
            if e.downcast_ref::<out::OutputError>()
                .is_some_and(|o| o.is_broken_pipe()) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            out::error_line(&format!("fhir-bridge: {e:#}"));
            ExitCode::from(2)
        }
    };
    // Dropping the runtime would wait for every thread, without limit: one
    // stuck in a filter's unmetered native code (README, `filter`) would keep
    // the process from exiting on SIGTERM. The daemon has already had its
    // grace period; give stragglers a moment, then exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
