//! The admin listener (`[admin] listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process answers), `/readyz` (it can do its work), and each
//! hook's `$status` and `$events` (`subscription`). One axum router on a
//! bounded listener (`listener`), loopback by default; nothing on it is PHI
//! (names of sources and hooks, resource types and ids, counts) except
//! resource bodies from `$events`, which go only to a peer on this machine
//! that presents `[admin] token`.

pub mod gauges;
mod listener;
pub mod subscription;

use crate::state::{Store, now_ms};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the daemon can do its work: `Err` carries a short plain-text
/// reason for `/readyz`. Called on every probe, on an async worker: it must
/// be quick and must not block (read atomics, not the database).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The heartbeat writes every 5 s; this many seconds without a successful
/// one means the database is not writable (full, locked, gone) or the
/// heartbeat task is stuck.
const HEARTBEAT_STALE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
#[error("admin listener {addr}: {error}")]
pub struct AdminError {
    addr: SocketAddr,
    error: std::io::Error,
}

/// Binds the listener: done before anything else starts, so that a taken
/// port stops the daemon at once rather than after it began polling.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, AdminError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|error| AdminError {
            addr: listen,
            error,
        })?;
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(%addr, "admin listener on http://{addr} (/metrics, /healthz, /readyz)");
    Ok(listener)
}

#[derive(Clone)]
struct Admin {
    handle: PrometheusHandle,
    readiness: Readiness,
}

/// Serves the admin endpoints on `listener` until `cancel`; then each open
/// connection ends within a header timeout (drop this future to end them
/// all at once).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: Readiness,
    hooks: Option<subscription::HookEndpoints>,
    cancel: CancellationToken,
) {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Admin { handle, readiness });
    if let Some(hooks) = hooks {
        app = app.merge(
            Router::new()
                .route("/hooks/{name}/$status", get(subscription::status))
                .route("/hooks/{name}/$events", get(subscription::events))
                .with_state(hooks),
        );
    }
    listener::run(listener, app, listener::Limits::DEFAULT, cancel).await;
}

async fn metrics(State(admin): State<Admin>) -> Response {
    // Rendering walks every series (tens of thousands at ten thousand
    // targets): on the blocking pool, not an async worker.
    match tokio::task::spawn_blocking(move || admin.handle.render()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response(),
    }
}

async fn ready(State(admin): State<Admin>) -> Response {
    match (admin.readiness)() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Readiness from the state database: its heartbeat, written every few
/// seconds, succeeded lately (the config was loaded: the daemon runs).
pub fn database_readiness(store: &Store) -> Readiness {
    let store = store.clone();
    Arc::new(move || heartbeat_fresh(store.last_heartbeat_ok_ms(), now_ms()))
}

fn heartbeat_fresh(last_ok_ms: Option<i64>, now: i64) -> Result<(), String> {
    match last_ok_ms {
        None => Err("the state database has not been written yet".into()),
        Some(at) if now - at > HEARTBEAT_STALE.as_millis() as i64 => Err(format!(
            "no successful write to the state database for {}s",
            (now - at) / 1000
        )),
        Some(_) => Ok(()),
    }
}

/// Every check must hold; the first failing one gives the reason. For plugging in more checks (a
/// watchdog of the daemon's tasks).
pub fn all(checks: Vec<Readiness>) -> Readiness {
    Arc::new(move || checks.iter().try_for_each(|c| c()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_heartbeat() {
        assert!(heartbeat_fresh(None, 1_000).is_err());
        assert!(heartbeat_fresh(Some(1_000), 6_000).is_ok());
        let e = heartbeat_fresh(Some(1_000), 31_000).unwrap_err();
        assert_eq!(e, "no successful write to the state database for 30s");
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = crate::telemetry::builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("fhir_bridge_test_total").increment(3)
        });
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let readiness: Readiness = Arc::new(move || {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        });
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, handle, readiness, None, cancel.clone()));
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            async move {
                let r = reqwest::get(url).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await, (200, "ok\n".into()));
        assert_eq!(get("/readyz").await, (503, "not ready: not yet\n".into()));
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get("/readyz").await.0, 200);
        let (status, text) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(text.contains("fhir_bridge_test_total 3"), "{text}");
        assert_eq!(get("/nope").await.0, 404);
        cancel.cancel();
        server.await.unwrap();
    }
}
