//! Owns every running component (a task per source, a worker per hook,
//! housekeeping), each with its own cancellation token, and applies a config
//! diff on reload: added, removed and changed components start and stop;
//! unchanged ones keep running untouched (as vector's topology does).

use super::DaemonError;
use crate::config::{Config, ConfigDiff, Hook, Source};
use crate::delivery::{ChannelInfo, HookWorker, Sender};
use crate::progress::Progress;
use crate::route::Route;
use crate::source::client::FhirClient;
use crate::source::outcomes::OutcomeRecorder;
use crate::source::{Routing, SourceTask, first_poll_spread};
use crate::state::{Fence, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running component: how to stop it, and how to know it stopped.
struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Running
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(f(cancel.clone()));
        Running { cancel, handle }
    }

    /// Cancels and waits up to `within`; a task that does not end by then
    /// is aborted (its uncommitted work is redone by its successor), as is
    /// one whose wait is given up (a reload cut short by a lost lease).
    async fn stop(self, what: &str, within: Duration) {
        self.cancel.cancel();
        let handle = tokio_util::task::AbortOnDropHandle::new(self.handle);
        if tokio::time::timeout(within, handle).await.is_err() {
            tracing::warn!(component = what, "did not stop in time; aborted");
        }
    }
}

pub struct Supervisor {
    config: Config,
    store: Store,
    /// The writer lock's fence, handed to every poller and hook worker.
    fence: Fence,
    progress: Progress,
    /// The connection pools shared by sources and by hooks without TLS settings.
    source_pool: reqwest::Client,
    hook_client: reqwest::Client,
    recorder: Option<OutcomeRecorder>,
    recorder_done: Option<JoinHandle<()>>,
    sources: HashMap<String, Running>,
    hooks: HashMap<String, Running>,
    routing: HashMap<String, watch::Sender<Arc<Routing>>>,
    housekeeping: Option<Running>,
    /// Each running source's client: its view of the server's clock feeds
    /// the watermark-lag gauge.
    clients: HashMap<String, FhirClient>,
    /// With `[admin]`: the metrics, and the task refreshing their gauges
    /// (restarted when sources or hooks change).
    metrics: Option<PrometheusHandle>,
    gauges: Option<Running>,
    /// The running config, for readers outside (the admin hook endpoints).
    published: watch::Sender<Arc<Config>>,
    /// The admin listener's bound address, when it runs.
    admin_addr: Option<std::net::SocketAddr>,
}

impl Supervisor {
    pub fn start(
        config: Config,
        store: Store,
        fence: Fence,
        progress: Progress,
        metrics: Option<PrometheusHandle>,
        admin_addr: Option<std::net::SocketAddr>,
    ) -> Result<Self, DaemonError> {
        let (recorder, recorder_done) = OutcomeRecorder::spawn(store.clone());
        let mut sup = Supervisor {
            source_pool: FhirClient::shared_pool().map_err(|e| DaemonError::Http(e.to_string()))?,
            hook_client: Sender::client(None).map_err(DaemonError::Http)?,
            config: config.clone(),
            store,
            fence,
            progress,
            recorder: Some(recorder),
            recorder_done: Some(recorder_done),
            sources: HashMap::new(),
            hooks: HashMap::new(),
            routing: HashMap::new(),
            housekeeping: None,
            clients: HashMap::new(),
            metrics,
            gauges: None,
            published: watch::Sender::new(Arc::new(config.clone())),
            admin_addr,
        };
        let hooks: Vec<_> = config
            .hooks
            .iter()
            .map(|h| Ok((h.clone(), Sender::for_hook(h, &sup.hook_client)?)))
            .collect::<Result<_, String>>()
            .map_err(DaemonError::Http)?;
        let sources: Vec<_> = config
            .sources
            .iter()
            .map(|s| Ok((s.clone(), sup.source_client(s)?)))
            .collect::<Result<_, DaemonError>>()?;
        for (hook, sender) in hooks {
            sup.start_hook(hook, sender);
        }
        for (source, client) in sources {
            sup.start_source(source, client);
        }
        sup.start_housekeeping();
        sup.start_gauges();
        Ok(sup)
    }

    /// The running config, as it changes with reloads.
    pub fn config_watch(&self) -> watch::Receiver<Arc<Config>> {
        self.published.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies `new`: everything that cannot start (a client that cannot be
    /// built) is found before anything stops, so a refused reload leaves the
    /// running configuration as it was.
    pub async fn apply(&mut self, new: Config) -> Result<ConfigDiff, String> {
        let diff = ConfigDiff::between(&self.config, &new).map_err(|e| e.to_string())?;
        let mut hooks = Vec::new();
        for h in new.hooks.iter().filter(|h| diff.hooks.starts(&h.name)) {
            let sender = Sender::for_hook(h, &self.hook_client)
                .map_err(|e| format!("hook `{}`: {e}", h.name))?;
            hooks.push((h.clone(), sender));
        }
        let mut sources = Vec::new();
        for s in new.sources.iter().filter(|s| diff.sources.starts(&s.name)) {
            sources.push((s.clone(), self.source_client(s).map_err(|e| e.to_string())?));
        }

        // A changed hook's old worker finishes its in-flight deliveries before
        // the new one claims: one worker per hook, so no message goes twice.
        for name in diff.hooks.removed.iter().chain(&diff.hooks.changed) {
            if let Some(running) = self.hooks.remove(name) {
                let within = self.hook_stop_time(name);
                running.stop(&format!("hook {name}"), within).await;
            }
        }
        for name in diff.sources.removed.iter().chain(&diff.sources.changed) {
            if let Some(running) = self.sources.remove(name) {
                running
                    .stop(&format!("source {name}"), Duration::from_secs(30))
                    .await;
            }
            self.routing.remove(name);
            self.clients.remove(name);
        }
        // A changed endpoint (a fixed URL, new credentials): what waits out a
        // backoff earned against the old one is due now. Dead letters stay.
        for name in &diff.endpoints {
            match self.store.pending_due_now(name).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(hook = %name, messages = n,
                    "the hook's endpoint changed: its pending messages are due now"),
                Err(e) => tracing::error!(hook = %name, error = %e,
                    "cannot make the hook's pending messages due now"),
            }
        }
        self.config = new;
        self.published.send_replace(Arc::new(self.config.clone()));
        for (hook, sender) in hooks {
            self.start_hook(hook, sender);
        }
        // Every source polls with the new hooks from its next poll on.
        for (name, tx) in &self.routing {
            tx.send_replace(Arc::new(self.routing_for(name)));
        }
        for (source, client) in sources {
            self.start_source(source, client);
        }
        if diff.retention || !diff.sources.is_empty() {
            if let Some(h) = self.housekeeping.take() {
                h.stop("housekeeping", Duration::from_secs(30)).await;
            }
            self.start_housekeeping();
        }
        if !diff.sources.is_empty() || !diff.hooks.is_empty() {
            if let Some(g) = self.gauges.take() {
                g.stop("gauges", Duration::from_secs(10)).await;
            }
            self.start_gauges();
        }
        Ok(diff)
    }

    /// SIGTERM: polling stops at once; hook workers stop claiming and get
    /// `grace` to finish what is in flight; the rest stays in the outbox.
    pub async fn shutdown(mut self, grace: Duration) {
        for r in self.sources.values() {
            r.cancel.cancel();
        }
        for r in self.hooks.values() {
            r.cancel.cancel();
        }
        if let Some(h) = &self.housekeeping {
            h.cancel.cancel();
        }
        if let Some(g) = self.gauges.take() {
            g.cancel.cancel();
        }
        let all: Vec<_> = self
            .sources
            .drain()
            .chain(self.hooks.drain())
            .map(|(_, r)| r.handle)
            .chain(self.housekeeping.take().map(|r| r.handle))
            .collect();
        let aborts: Vec<_> = all.iter().map(|h| h.abort_handle()).collect();
        let all_done = async {
            for h in all {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            // Aborted, not left running: a hook worker's POSTs in flight go
            // with it (after a lost lease the next owner sends them).
            for a in aborts {
                a.abort();
            }
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "shutdown grace period over; unfinished deliveries stay in the outbox"
            );
        }
        // The last poll outcomes are written once every source is gone.
        self.recorder.take();
        if let Some(done) = self.recorder_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
    }

    fn source_client(&self, source: &Source) -> Result<FhirClient, DaemonError> {
        super::source_client(source, &self.source_pool)
    }

    fn routing_for(&self, source: &str) -> Routing {
        Routing {
            routes: Route::for_source(&self.config, source),
        }
    }

    fn hook_stop_time(&self, name: &str) -> Duration {
        let timeout = self
            .config
            .hooks
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.timeout)
            .unwrap_or(Duration::from_secs(30));
        timeout * 3 + Duration::from_secs(5)
    }

    fn start_hook(&mut self, hook: Hook, sender: Sender) {
        let worker = HookWorker {
            beat: self
                .progress
                .register(format!("hook {}", hook.name), Duration::from_secs(60)),
            hook: hook.clone(),
            store: self.store.clone(),
            fence: self.fence.clone(),
            sender,
            channel: hook
                .notification
                .format
                .is_fhir()
                .then(|| ChannelInfo::for_hook(&self.config, &hook, self.admin_addr)),
        };
        self.hooks
            .insert(hook.name.clone(), Running::spawn(|c| worker.run(c)));
        // Messages may have waited while the hook was away.
        self.store.notify_due(&hook.name);
    }

    fn start_source(&mut self, source: Source, client: FhirClient) {
        let (tx, rx) = watch::channel(Arc::new(self.routing_for(&source.name)));
        let spread = first_poll_spread(&source.schedule, self.config.sources.len());
        let limiter = client.limiter();
        let task = SourceTask {
            beat: self.progress.register(
                format!("source {}", source.name),
                spread + Duration::from_secs(60),
            ),
            routing: rx,
            store: self.store.clone(),
            fence: self.fence.clone(),
            client,
            first_poll_spread: spread,
            known: Default::default(),
            limiter,
            outcomes: self.recorder.clone(),
            source: source.clone(),
            dry_run: None,
            left_search: Default::default(),
        };
        self.routing.insert(source.name.clone(), tx);
        self.clients
            .insert(source.name.clone(), task.client.clone());
        self.sources
            .insert(source.name.clone(), Running::spawn(|c| task.run(c)));
    }

    fn start_gauges(&mut self) {
        let Some(handle) = self.metrics.clone() else {
            return;
        };
        let gauges = crate::admin::gauges::Gauges::new(&self.config, &self.clients);
        let config = self.config.clone();
        // Opened by the task: opening may wait on a database.
        self.gauges = Some(Running::spawn(move |c| async move {
            let store = match crate::state::open(&config, crate::state::ReadOnly).await {
                Ok(Some(store)) => store,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the state database for the metrics' gauges");
                    return;
                }
            };
            crate::admin::gauges::run(store, gauges, handle, c).await
        }));
    }

    fn start_housekeeping(&mut self) {
        let (store, sources, retention) = (
            self.store.clone(),
            self.config.sources.clone(),
            self.config.retention,
        );
        self.housekeeping = Some(Running::spawn(move |c| {
            crate::housekeeping::run(store, sources, retention, c)
        }));
    }
}
