//! `fhir-bridge run`: wires sources, hooks and housekeeping together and runs
//! them until cancelled.

use crate::config::{Config, Source};
use crate::delivery::{HookWorker, Sender};
use crate::outbox::Route;
use crate::source::client::FhirClient;
use crate::source::outcomes::OutcomeRecorder;
use crate::source::{SourceTask, first_poll_spread};
use crate::state::{LockError, StateError, StateLock, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight deliveries may take to finish on shutdown. Whatever is
/// still in flight then stays pending in the outbox and is sent again later.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the daemon records that it is alive (`status` reads it).
const HEARTBEAT: Duration = Duration::from_secs(5);

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
}

pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    // Held until we return: one daemon per state directory.
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = Store::open(&config.db_path())?;
    let pid = std::process::id();
    if let Err(e) = store
        .record_daemon_start(pid, env!("CARGO_PKG_VERSION"))
        .await
    {
        tracing::warn!(error = %e, "cannot record the daemon's start");
    }
    tracing::info!(
        db = %store.path().display(),
        sources = config.sources.len(),
        hooks = config.hooks.len(),
        "fhir-bridge started"
    );
    // Bound before any task starts: a port in use stops the daemon at once.
    let admin = match &config.admin {
        Some(a) => Some((
            crate::admin::bind(a.listen).await?,
            crate::telemetry::install(),
        )),
        None => None,
    };
    let tracker = TaskTracker::new();
    let wakers: Arc<HashMap<String, Arc<Notify>>> = Arc::new(
        config
            .hooks
            .iter()
            .map(|h| (h.name.clone(), Arc::new(Notify::new())))
            .collect(),
    );

    let shared = Sender::client(None).map_err(DaemonError::Http)?;
    for hook in &config.hooks {
        let worker = HookWorker {
            hook: hook.clone(),
            store: store.clone(),
            sender: Sender::for_hook(hook, &shared)
                .map_err(|e| DaemonError::Http(format!("hook `{}`: {e}", hook.name)))?,
            wake: wakers[&hook.name].clone(),
        };
        tracker.spawn(worker.run(cancel.clone()));
    }

    let pool = FhirClient::shared_pool().map_err(|e| DaemonError::Http(e.to_string()))?;
    // Ends (after a last flush) once every source task has dropped its handle.
    let (recorder, recorder_done) = OutcomeRecorder::spawn(store.clone());
    // Each source's view of its server's clock, for the watermark lag gauge.
    let mut clocks = HashMap::new();
    for source in &config.sources {
        let client = source_client(source, &pool)?;
        clocks.insert(source.name.clone(), client.clone());
        let task = SourceTask {
            source: source.clone(),
            routes: Route::for_source(&config, &source.name),
            store: store.clone(),
            client,
            wakers: wakers.clone(),
            first_poll_spread: first_poll_spread(&source.schedule, config.sources.len()),
            known: Default::default(),
            outcomes: Some(recorder.clone()),
        };
        tracker.spawn(task.run(cancel.clone()));
    }
    drop(recorder);
    tracker.spawn(async move {
        let _ = recorder_done.await;
    });

    tracker.spawn(crate::housekeeping::run(
        store.clone(),
        config.sources.clone(),
        config.retention,
        cancel.clone(),
    ));
    tracker.spawn(heartbeat(store.clone(), pid, cancel.clone()));
    if let Some((listener, handle)) = admin {
        crate::telemetry::gauges::spawn(&tracker, &config, &clocks, handle.clone(), &cancel);
        let readiness = crate::admin::database_readiness(&store);
        tracker.spawn(crate::admin::serve(
            listener,
            handle,
            readiness,
            cancel.clone(),
        ));
    }
    tracker.close();

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    cancel.cancelled().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down: finishing in-flight work");
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; unfinished deliveries stay in the outbox");
    }
    Ok(())
}

/// A source's client: on the shared pool, or on its own when the source has
/// TLS settings; its token requests go through the same pool.
fn source_client(source: &Source, shared: &reqwest::Client) -> Result<FhirClient, DaemonError> {
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
