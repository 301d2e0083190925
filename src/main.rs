//! The `fhir-bridge` binary: the command line and nothing else.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fhir_bridge::cli::{demo, dlq, status};
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
    /// Only this hook's dead letters.
    #[arg(long)]
    hook: Option<String>,
    /// Every dead letter (of --hook, if given).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Dead-letter ids, as shown by `dlq list`.
    #[arg(required_unless_present = "all")]
    ids: Vec<i64>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        hook: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead letters for delivery (same message_id, fresh attempts).
    Redrive {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        sel: Selection,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        sel: Selection,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FHIR_BRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

async fn open_rw(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.db_path()).context("cannot open the state database")
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(c) => {
            init_logging("info");
            let config = load(&c)?;
            fhir_bridge::daemon::run(config, shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let config = load(&config)?;
            let report = status::collect(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render_text(&report));
            }
            Ok(if report.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Validate(c) => {
            let config = load(&c)?;
            println!(
                "{}: OK ({} source(s), {} hook(s); every filter compiles)",
                c.config.display(),
                config.sources.len(),
                config.hooks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => dlq_main(command).await,
        Command::Hook {
            command: HookCommand::Enable { config, name },
        } => {
            let config = load(&config)?;
            check_hook(&config, &Some(name.clone()))?;
            let store = open_rw(&config).await?;
            if store.enable_hook(&name).await? {
                println!(
                    "hook `{name}` enabled; a running daemon resumes deliveries within a second"
                );
            } else {
                println!("hook `{name}` was not disabled");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { duration, rate } => {
            init_logging("warn");
            demo::run(demo::DemoOptions { duration, rate }, shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn dlq_main(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { config, hook, json } => {
            let config = load(&config)?;
            let items = match Store::open_read_only(&config.db_path())? {
                Some(store) => store.dead_letters(hook).await?,
                None => vec![],
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print!("{}", dlq::render_list(&items));
            }
        }
        DlqCommand::Redrive { config, sel } => {
            let config = load(&config)?;
            check_hook(&config, &sel.hook)?;
            let store = open_rw(&config).await?;
            let n = store
                .redrive(sel.hook, (!sel.all).then_some(sel.ids))
                .await?;
            println!("requeued {n} message(s); a running daemon delivers them within a second");
        }
        DlqCommand::Purge { config, sel } => {
            let config = load(&config)?;
            check_hook(&config, &sel.hook)?;
            let store = open_rw(&config).await?;
            let n = store
                .purge_dead(sel.hook, (!sel.all).then_some(sel.ids))
                .await?;
            println!("deleted {n} dead letter(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_hook(config: &Config, hook: &Option<String>) -> anyhow::Result<()> {
    if let Some(h) = hook {
        if !config.hooks.iter().any(|x| &x.name == h) {
            anyhow::bail!("no hook is named `{h}` in {}", config.path.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // jq filters are evaluated recursively: give worker threads room.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fhir-bridge: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhir-bridge: {e:#}");
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
