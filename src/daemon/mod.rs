//! `fhir-bridge run`: opens the state, starts every component under the
//! supervisor, tells systemd how it is doing, reloads on SIGHUP and shuts
//! down on SIGTERM (or the caller's cancellation).

mod notify;
mod supervisor;

use crate::config::{Config, Source};
use crate::progress::Progress;
use crate::source::client::FhirClient;
use crate::state::{self, Exclusive, LockError, OpenError, StateError, Store};
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio_util::sync::CancellationToken;

/// How often the daemon records that it is alive (`status` reads it).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How often a standby replica tries to take the state's lease (a failover
/// takes at most the lease's TTL plus this).
const STANDBY_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot build HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// A shared state's lease was lost (taken over, or not renewed in time):
    /// polling and delivering stopped at once; a restart waits as a standby.
    #[error(
        "the state's lease was lost: stopped polling and delivering (another replica takes over)"
    )]
    LeaseLost,
}

pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    // Held until we return: one daemon per state directory (on a shared
    // state, one writing replica: the others wait as standbys).
    let Some((store, lock)) = writer_lock(&config, &cancel).await? else {
        return Ok(());
    };
    let pid = std::process::id();
    if let Err(e) = store
        .record_daemon_start(pid, env!("CARGO_PKG_VERSION"))
        .await
    {
        tracing::warn!(error = %e, "cannot record the daemon's start");
    }
    warn_of_renames(&store, &config).await;
    tracing::info!(
        db = %store.path().display(),
        sources = config.sources.len(),
        hooks = config.hooks.len(),
        "fhir-bridge started"
    );
    // Bound before any task starts: a port in use stops the daemon at once.
    if config.admin.as_ref().is_some_and(|a| a.token.is_none()) {
        tracing::info!("[admin] has no `token`: `$events` serves no resource bodies");
    }
    // A start that fails from here gives the lease up before it returns
    // (`main` ends the runtime, and with it the keeper, right after).
    let admin = match &config.admin {
        Some(a) => match crate::admin::bind(a.listen).await {
            Ok(listener) => Some((listener, crate::telemetry::install())),
            Err(e) => {
                lock.release().await;
                return Err(e.into());
            }
        },
        None => None,
    };
    let progress = Progress::default();
    let admin_addr = admin
        .as_ref()
        .and_then(|(listener, _)| listener.local_addr().ok());
    let started = Supervisor::start(
        config,
        store.clone(),
        lock.fence(),
        progress.clone(),
        admin.as_ref().map(|(_, handle)| handle.clone()),
        admin_addr,
    );
    let mut sup = match started {
        Ok(sup) => sup,
        Err(e) => {
            lock.release().await;
            return Err(e);
        }
    };
    let background = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let admin_server = admin.map(|(listener, handle)| {
        serve_admin(
            listener,
            handle,
            &store,
            &sup,
            &progress,
            admin_stop.clone(),
        )
    });
    let heartbeat = tokio::spawn(heartbeat(store.clone(), pid, background.clone()));
    let notifier = notify::Notifier::new(store.clone(), progress.clone());
    let reporter = tokio::spawn(notifier.clone().run(background.clone()));
    notifier.ready(&format!(
        "running: {} sources, {} hooks",
        sup.config().sources.len(),
        sup.config().hooks.len()
    ));

    let mut reloads = reload_signals();
    let mut lost = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = lock.lost() => {
                lost = true;
                break;
            }
            Some(()) = reloads.recv() => {
                // A reload may wait long (a changed hook's deliveries in
                // flight): a lease lost meanwhile stops everything at once.
                tokio::select! {
                    () = reload(&mut sup, &notifier) => {}
                    () = lock.lost() => {
                        lost = true;
                        break;
                    }
                }
            }
        }
    }
    notifier.stopping();
    // A lost lease: another replica may be taking over now, so nothing more
    // is polled or sent (in-flight POSTs are dropped; their fenced outcome
    // could not be recorded anyway, and the next owner sends them again).
    let grace = match lost {
        true => Duration::ZERO,
        false => sup.config().shutdown_grace,
    };
    if lost {
        tracing::error!("the state's lease was lost: stopping at once");
    } else {
        tracing::info!("shutting down: finishing in-flight work");
    }
    stop_within(grace, sup, admin_server, admin_stop).await;
    background.cancel();
    let _ = reporter.await;
    let _ = heartbeat.await;
    if lost {
        return Err(DaemonError::LeaseLost);
    }
    lock.release().await;
    Ok(())
}

/// The admin listener's task: metrics, health (the database and every
/// task's progress) and the hooks' `$status`/`$events`.
fn serve_admin(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    store: &Store,
    sup: &Supervisor,
    progress: &Progress,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let readiness = crate::admin::all(vec![
        crate::admin::database_readiness(store),
        progress_readiness(progress.clone()),
    ]);
    let hooks = crate::admin::subscription::HookEndpoints {
        store: store.clone(),
        config: sup.config_watch(),
        addr,
    };
    tokio::spawn(crate::admin::serve(
        listener,
        handle,
        readiness,
        Some(hooks),
        stop,
    ))
}

/// Stops the sources, the hooks and the admin listener, giving in-flight
/// work `grace`. The admin listener stops with the rest, within the same
/// grace: a client holding a connection open cannot hold the process.
async fn stop_within(
    grace: Duration,
    sup: Supervisor,
    admin_server: Option<tokio::task::JoinHandle<()>>,
    admin_stop: CancellationToken,
) {
    admin_stop.cancel();
    let admin_stopped = async {
        if let Some(mut server) = admin_server
            && tokio::time::timeout(grace, &mut server).await.is_err()
        {
            server.abort();
            tracing::info!(
                "admin listener: connections still open after the shutdown grace are closed"
            );
        }
    };
    tokio::join!(sup.shutdown(grace), admin_stopped);
}

/// The writer lock of the state. On a shared state held by another replica's
/// lease, waits as a standby (said once, then a try every `STANDBY_RETRY`)
/// until it is ours; `None`: cancelled meanwhile.
async fn writer_lock(
    config: &Config,
    cancel: &CancellationToken,
) -> Result<Option<(Store, state::StateLock)>, DaemonError> {
    let (mut waiting, mut unreachable) = (false, false);
    loop {
        match state::open(config, Exclusive).await {
            Ok(opened) => {
                if waiting {
                    tracing::info!(
                        "took over the state's lease: this replica polls and delivers now"
                    );
                }
                return Ok(Some(opened));
            }
            Err(OpenError::Writer(e @ LockError::Leased { .. })) => {
                unreachable = false;
                if !waiting {
                    tracing::info!(reason = %e, "standby: another replica writes the state; taking over when its lease ends");
                    waiting = true;
                }
                notify::standby("standby: another replica holds the state's lease");
            }
            Err(OpenError::Writer(e) | OpenError::Backfills(e)) => {
                return Err(DaemonError::Locked(e));
            }
            // A standby rides out the database's restarts; at start an
            // unreachable database is an error, as on SQLite.
            Err(OpenError::State(e)) if waiting => {
                if !unreachable {
                    tracing::warn!(error = %e, "standby: cannot reach the state; trying again");
                    unreachable = true;
                }
            }
            Err(OpenError::State(e)) => return Err(DaemonError::State(e)),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(STANDBY_RETRY) => {}
        }
    }
}

/// A source renamed in the config across a restart, without `source
/// rename`, starts afresh while its old state is orphaned. A restart cannot
/// tell that from one source removed and another added, so it warns.
async fn warn_of_renames(store: &Store, config: &Config) {
    let Ok(with_state) = store.sources_with_state().await else {
        return;
    };
    let configured: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    let (gone, fresh) = unmatched(&with_state, &configured);
    if gone.is_empty() || fresh.is_empty() {
        return;
    }
    tracing::warn!(
        "the state holds sources the config no longer names ({}) and the config names sources without state ({}): \
         if one is a rename, stop the daemon now and run `fhir-bridge source rename OLD NEW` before the new name \
         polls (it starts from `start` otherwise, and the old name's watermarks and pending messages are orphaned)",
        gone.join(", "),
        fresh.join(", ")
    );
}

/// (sources with state the config does not name, configured sources without state).
fn unmatched<'a>(with_state: &'a [String], configured: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let gone = with_state
        .iter()
        .map(String::as_str)
        .filter(|s| !configured.contains(s))
        .collect();
    let fresh = configured
        .iter()
        .copied()
        .filter(|c| !with_state.iter().any(|s| s == c))
        .collect();
    (gone, fresh)
}

/// SIGHUP: re-read the config file, validate it, apply the difference. A
/// config that does not load is refused and the running one stays.
async fn reload(sup: &mut Supervisor, notifier: &notify::Notifier) {
    let path = sup.config().path.clone();
    notifier.reloading();
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let outcome = match Config::load(&path) {
        Err(e) => Err(e.to_string()),
        Ok(new) => {
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            sup.apply(new).await
        }
    };
    match outcome {
        Ok(diff) if diff.is_empty() && !diff.admin => {
            tracing::info!("reload: nothing changed");
            notifier.ready("reloaded: nothing changed");
        }
        Ok(diff) => {
            if diff.admin_token {
                tracing::info!("reload: `$events` checks the new [admin] token from now on");
            }
            if diff.admin {
                tracing::warn!("[admin] changed: the listener keeps its address until a restart");
            }
            tracing::info!(changes = %diff.summary(), "reload applied");
            notifier.ready(&format!("reloaded: {}", diff.summary()));
        }
        Err(e) => {
            let e = crate::logsafe::escape(&e);
            tracing::error!(error = %e, "reload refused; the previous configuration keeps running");
            notifier.ready(&format!(
                "reload refused ({e}); previous configuration running"
            ));
        }
    }
}

/// `/readyz` fails while a poll loop or delivery worker is overdue (the
/// same test that stops the watchdog pings).
fn progress_readiness(progress: Progress) -> crate::admin::Readiness {
    Arc::new(move || {
        let late = progress.overdue();
        if late.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = late.into_iter().map(|(n, _)| n).collect();
        Err(format!("no progress: {}", names.join(", ")))
    })
}

/// SIGHUP, as a stream of reload requests.
fn reload_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // A reload already queued covers this one too.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; reload is off"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// A source's FHIR client: its own connection pool when it has TLS
/// settings, else `shared`; its token requests go through the same one.
pub(crate) fn source_client(
    source: &Source,
    shared: &reqwest::Client,
) -> Result<FhirClient, DaemonError> {
    let http = match &source.tls {
        Some(tls) => FhirClient::pool(Some(tls))
            .map_err(|e| DaemonError::Http(format!("source `{}`: {e}", source.name)))?,
        None => shared.clone(),
    };
    let auth = crate::auth::Authenticator::new(
        source.auth.clone(),
        source.base_url.clone(),
        http.clone(),
        source.timeout,
    )
    .owned_by(crate::telemetry::auth::Owner::source(&source.name));
    Ok(FhirClient::with_pool(http, source.timeout)
        .with_request_budget(source.max_requests_per_second)
        .with_origins(source.origins())
        .with_auth(Arc::new(auth)))
}

/// Says every `HEARTBEAT` that this process is alive, and once more on the way out.
async fn heartbeat(store: Store, pid: u32, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if let Err(e) = store.heartbeat(pid).await {
            tracing::warn!(error = %e, "cannot record the heartbeat");
        }
    }
    let _ = store.heartbeat(pid).await;
}

#[cfg(test)]
mod tests {
    use super::unmatched;

    #[test]
    fn a_rename_across_a_restart_shows_as_one_gone_and_one_fresh() {
        let state = vec!["a".to_string(), "b".to_string()];
        assert_eq!(unmatched(&state, &["a", "b2"]), (vec!["b"], vec!["b2"]));
        assert_eq!(unmatched(&state, &["a", "b"]), (vec![], vec![]));
        assert_eq!(unmatched(&state, &["a", "b", "c"]), (vec![], vec!["c"]));
        assert_eq!(unmatched(&[], &["a"]), (vec![], vec!["a"]));
    }

    /// A daemon that cannot start after taking the state's lease (its admin
    /// port is taken) gives the lease up before it returns, as `main` ends
    /// the runtime right after: a standby takes over at once, not after the
    /// lease's expiry.
    #[cfg(feature = "postgres")]
    #[test]
    fn a_daemon_that_cannot_start_gives_its_lease_up() {
        use crate::config::Config;
        use crate::state::ReadWrite;
        use crate::state::test_util::{fresh_postgres, state_lease};
        use tokio_util::sync::CancellationToken;
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let Some(url) = runtime().block_on(fresh_postgres()) else {
            return;
        };
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n\n[admin]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        );
        let config = Config::from_str(&text, &dir.path().join("bridges.toml")).unwrap();
        // As `main`: the daemon's runtime ends when `run` returns.
        let daemon = runtime();
        let ended = daemon.block_on(super::run(config.clone(), CancellationToken::new()));
        drop(daemon);
        assert!(ended.is_err(), "the admin port is taken");
        let lease = runtime().block_on(async {
            let store = crate::state::open(&config, ReadWrite).await.unwrap();
            state_lease(&store).await
        });
        let (owner, epoch) = lease.expect("it held the lease");
        assert_eq!((owner, epoch), (None, 1), "released before returning");
    }

    /// A lease lost while a reload waits for a removed hook's deliveries in
    /// flight (up to three of its timeouts) stops the daemon at once, not
    /// once the reload is done: nothing goes on past the lease, the removed
    /// hook's POST included.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_lost_during_a_reload_stops_the_daemon_at_once() {
        use crate::config::Config;
        use crate::state::test_util::{fresh_postgres, state_lease, take_state_lease};
        use crate::state::{Fence, NewMessage, PageCommit, ReadWrite};
        use std::time::Duration;
        use tokio::io::AsyncReadExt;
        use tokio_util::sync::CancellationToken;
        let Some(url) = fresh_postgres().await else {
            return;
        };
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridges.toml");
        let base = format!(
            "state_dir = \"state\"\n\n[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n\n\
             [[source]]\nname = \"s\"\nbase_url = \"http://127.0.0.1:9/fhir\"\n\
             resources = [\"Observation\"]\n"
        );
        let hook = format!(
            "\n[[hook]]\nname = \"h\"\nurl = \"http://{}/h\"\ntimeout = \"60s\"\n",
            receiver.local_addr().unwrap()
        );
        std::fs::write(&path, format!("{base}{hook}")).unwrap();
        let config = Config::load(&path).unwrap();
        let store = crate::state::open(&config, ReadWrite).await.unwrap();
        let page = PageCommit {
            source: "s".into(),
            resource_type: "Observation".into(),
            messages: vec![NewMessage::test("h", "m1", "Observation", "o1")],
            ..Default::default()
        };
        store.commit_page(&Fence::private(), page).await.unwrap();

        let daemon = tokio::spawn(super::run(config, CancellationToken::new()));
        let (mut post, _) = tokio::time::timeout(Duration::from_secs(20), receiver.accept())
            .await
            .expect("the message is POSTed")
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = post.read(&mut buf).await.unwrap();
        // The hook removed: the reload waits for its POST (3 × 60 s + 5 s).
        std::fs::write(&path, &base).unwrap();
        // SIGHUP handled here too, so it never ends the test process; and
        // a moment for the daemon to have its own handler.
        let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tokio::time::sleep(Duration::from_millis(300)).await;
        // SAFETY: a signal to this process, whose SIGHUP is handled.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        tokio::time::sleep(Duration::from_millis(500)).await;
        take_state_lease(&store).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), daemon)
            .await
            .expect("a lost lease stops the daemon during a reload");
        assert!(matches!(ended.unwrap(), Err(super::DaemonError::LeaseLost)));
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match post.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the removed hook's POST went on");
        assert!(state_lease(&store).await.is_some());
    }

    /// Past the shutdown grace (zero after a lost lease) a POST still in
    /// flight is dropped, not left running after the daemon said it stopped:
    /// its receiver sees the connection closed, and the message stays
    /// pending for whoever writes next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_post_in_flight_past_the_grace_is_dropped() {
        use crate::config::Config;
        use crate::state::{Fence, NewMessage, PageCommit, Store};
        use std::time::Duration;
        use tokio::io::AsyncReadExt;
        use tokio_util::sync::CancellationToken;
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = \"state\"\nshutdown_grace = \"1s\"\n\n[[source]]\nname = \"s\"\n\
             base_url = \"http://127.0.0.1:9/fhir\"\nresources = [\"Observation\"]\n\n\
             [[hook]]\nname = \"h\"\nurl = \"http://{}/h\"\ntimeout = \"60s\"\n",
            receiver.local_addr().unwrap()
        );
        let config = Config::from_str(&text, &dir.path().join("bridges.toml")).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let store = Store::open(&config.db_path()).unwrap();
        let page = PageCommit {
            source: "s".into(),
            resource_type: "Observation".into(),
            messages: vec![NewMessage::test("h", "m1", "Observation", "o1")],
            ..Default::default()
        };
        store.commit_page(&Fence::private(), page).await.unwrap();

        let stop = CancellationToken::new();
        let daemon = tokio::spawn(super::run(config, stop.clone()));
        let (mut post, _) = tokio::time::timeout(Duration::from_secs(20), receiver.accept())
            .await
            .expect("the message is POSTed")
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = post.read(&mut buf).await.unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), daemon)
            .await
            .expect("the daemon stops within its grace")
            .unwrap()
            .unwrap();
        // The receiver never answered: the daemon has returned, so the
        // POST must be gone too (read sees the end, or a reset).
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match post.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the POST went on after the daemon stopped");
        let report = store.hook_report("h").await.unwrap();
        assert_eq!(
            (report.pending, report.delivered),
            (1, 0),
            "it stays pending"
        );
    }

    /// Two daemons on one PostgreSQL state: the second waits as a standby,
    /// takes over once the first stops cleanly (its lease released), and
    /// stops with an error once its own lease is taken from it.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standby_takes_over_and_a_lost_lease_stops_the_daemon() {
        use crate::config::Config;
        use crate::state::ReadWrite;
        use crate::state::test_util::{fresh_postgres, state_lease, take_state_lease};
        use std::time::{Duration, Instant};
        use tokio_util::sync::CancellationToken;
        let Some(url) = fresh_postgres().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
        let config = Config::from_str(&text, &dir.path().join("bridges.toml")).unwrap();
        let store = crate::state::open(&config, ReadWrite).await.unwrap();
        let lease = || state_lease(&store);
        let until = |epoch: i64| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some((Some(_), e)) = lease().await
                    && e == epoch
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the lease never reached epoch {epoch}");
        };

        let (stop1, stop2) = (CancellationToken::new(), CancellationToken::new());
        let first = tokio::spawn(super::run(config.clone(), stop1.clone()));
        until(1).await;
        let second = tokio::spawn(super::run(config.clone(), stop2.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "the second waits as a standby");
        assert_eq!(lease().await.map(|l| l.1), Some(1));

        stop1.cancel();
        first.await.unwrap().unwrap();
        until(2).await;
        assert!(!second.is_finished());

        // Another takes the lease (as after a stall past its expiry): the
        // second's next renewal is refused, and it stops with an error.
        take_state_lease(&store).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("a lost lease stops the daemon");
        assert!(matches!(ended.unwrap(), Err(super::DaemonError::LeaseLost)));
        drop(stop2);
    }
}
