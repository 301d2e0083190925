//! The `fhir-bridge` binary: the command line and nothing else.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use fhir_bridge::cli::args::{
    Cli, Command, ConfigArg, DlqCommand, HookCommand, KeysCommand, ReplayArgs, Selection, Shell,
    SourceCommand, StatusArgs, WebhookSecretCommand,
};
use fhir_bridge::cli::{demo, dlq, logging, out, replay, status, watch};
use fhir_bridge::config::Config;
use fhir_bridge::state;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn selection(s: Selection) -> dlq::Selection {
    dlq::Selection {
        hook: s.hook,
        all: s.all,
        ids: s.ids,
        filter: dlq::filter(s.filters.source, s.filters.since, None, s.filters.resource),
        yes: s.yes,
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
            // The first line, before the config can fail: which build is running.
            tracing::info!(
                config = %c.config.display(),
                "fhir-bridge {} starting",
                fhir_bridge::cli::version::LONG
            );
            let config = load(&c)?;
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            fhir_bridge::daemon::run(config, shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => status_main(args).await,
        Command::Replay(args) => replay_main(args).await,
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fhir-bridge", &mut buf);
            emit(&String::from_utf8_lossy(&buf), ExitCode::SUCCESS)
        }
        Command::Manpages { out_dir } => {
            let written = fhir_bridge::cli::manpages::write_all(&out_dir)
                .with_context(|| format!("cannot write man pages into {}", out_dir.display()))?;
            emit(
                &format!("{} man pages in {}\n", written.len(), out_dir.display()),
                ExitCode::SUCCESS,
            )
        }
        Command::Validate(c) => validate_main(&c),
        Command::Dlq { command } => dlq_main(command).await,
        Command::Hook {
            command: HookCommand::Enable { config, name },
        } => hook_enable_main(&config, &name).await,
        Command::Source {
            command: SourceCommand::Rename { config, old, new },
        } => {
            let config = load(&config)?;
            let text = fhir_bridge::cli::source_rename::run(&config, &old, &new).await?;
            emit(&text, ExitCode::SUCCESS)
        }
        Command::Keys { command } => keys_main(command),
        Command::WebhookSecret {
            command: WebhookSecretCommand::Generate { asymmetric },
        } => webhook_secret_main(asymmetric),
        Command::Poll {
            config,
            source,
            once: _,
            dry_run,
        } => {
            let config = load(&config)?;
            let report = fhir_bridge::cli::poll_once::run(&config, &source, dry_run).await?;
            let code = if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            emit(&report.text, code)
        }
        Command::Backfill {
            config,
            source,
            since,
            types,
            rate,
        } => {
            let config = load(&config)?;
            let since = fhir_bridge::cli::backfill::parse_since(&since)?;
            let report =
                fhir_bridge::cli::backfill::run(&config, &source, since, &types, rate).await?;
            let code = if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            emit(&report.text, code)
        }
        Command::Topics => emit(&fhir_bridge::cli::topics::render(), ExitCode::SUCCESS),
        Command::TestFilter {
            config,
            hook,
            resource,
            previous,
        } => {
            let config = load(&config)?;
            let matched =
                fhir_bridge::cli::test_filter::run(&config, &hook, &resource, previous.as_deref())?;
            match matched {
                true => emit("match\n", ExitCode::SUCCESS),
                false => emit("no match\n", ExitCode::from(1)),
            }
        }
        Command::Demo { duration, rate } => {
            demo::run(demo::DemoOptions { duration, rate }, shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `validate`: the config loads, every filter compiles; warnings on stderr.
fn validate_main(c: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = load(c)?;
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

/// `hook enable NAME`: a hook disabled by a 410 Gone takes deliveries again.
async fn hook_enable_main(config: &ConfigArg, name: &str) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    if !config.hooks.iter().any(|h| h.name == name) {
        anyhow::bail!("no hook is named `{name}` in {}", config.path.display());
    }
    let store = state::open(&config, state::ReadWrite)
        .await
        .context("cannot open the state database")?;
    let text = if store.enable_hook(name).await? {
        format!("hook `{name}` enabled; a running daemon resumes deliveries within a second\n")
    } else {
        format!("hook `{name}` was not disabled\n")
    };
    emit(&text, ExitCode::SUCCESS)
}

/// `webhook-secret generate`: a new signing secret (and its public key).
fn webhook_secret_main(asymmetric: bool) -> anyhow::Result<ExitCode> {
    use fhir_bridge::signing::webhook::{generate_asymmetric, generate_symmetric};
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

async fn status_main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load(&args.config)?;
    if let Some(secs) = args.watch {
        let level = watch::run(&config, std::time::Duration::from_secs(secs)).await?;
        return Ok(ExitCode::from(level.exit_code()));
    }
    let report = status::collect(&config).await?;
    let code = ExitCode::from(report.level.exit_code());
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        status::render_text(&report, &status::Style::for_stdout())
    };
    emit(&text, code)
}

/// A declined confirmation is exit 1, not an error: nothing went wrong.
fn declined(r: Result<String, dlq::DlqError>) -> anyhow::Result<ExitCode> {
    match r {
        Ok(text) => emit(&text, ExitCode::SUCCESS),
        Err(dlq::DlqError::Declined) => {
            out::error_line("cancelled; nothing was changed");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

async fn dlq_main(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let r = match command {
        DlqCommand::List {
            config,
            hook,
            filters,
            json,
        } => {
            let f = dlq::filter(filters.source, filters.since, None, filters.resource);
            dlq::list(&load(&config)?, hook, f, json).await
        }
        DlqCommand::Show {
            config,
            message,
            hook,
            payload,
            json,
        } => dlq::show(&load(&config)?, &message, hook, payload, json).await,
        DlqCommand::Redrive {
            config,
            sel,
            to_hook,
        } => dlq::redrive(&load(&config)?, selection(sel), to_hook).await,
        DlqCommand::Purge { config, sel } => dlq::purge(&load(&config)?, selection(sel)).await,
    };
    declined(r)
}

async fn replay_main(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = load(&a.config)?;
    // clap requires exactly one of --since and --from-event.
    let which = match a.from_event {
        Some(from) => replay::Replayed::FromEvent {
            from,
            filter: dlq::filter(a.source, None, None, a.resource),
        },
        None => replay::Replayed::Delivered(dlq::filter(a.source, a.since, a.until, a.resource)),
    };
    let req = replay::Request {
        hook: a.hook,
        which,
        id_only: a.id_only,
        yes: a.yes,
    };
    declined(replay::replay(&config, req).await)
}

fn keys_main(command: KeysCommand) -> anyhow::Result<ExitCode> {
    use fhir_bridge::signing::smart::{KeyAlg, SmartKey, generate_pem};
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(why) = fhir_bridge::cli::args::check_implicit_config(&matches) {
        out::error_line(&format!("fhir-bridge: {why}"));
        return ExitCode::from(2);
    }
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
