//! A webhook receiver that records what it gets, and can be told to fail.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::routing::post;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One webhook as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub message_id: String,
    pub resource_id: String,
    pub event: String,
    pub version_id: Option<String>,
    pub body: serde_json::Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    got: Mutex<Vec<Received>>,
    /// 0: acknowledge with 200; otherwise answer with this status.
    fail_status: AtomicU16,
    tap: Option<mpsc::UnboundedSender<Received>>,
}

impl Receiver {
    /// Starts on 127.0.0.1:`port` (0: any free port). With `tap`, every accepted
    /// webhook is also sent there (the demo prints them).
    pub async fn start(
        port: u16,
        tap: Option<mpsc::UnboundedSender<Received>>,
    ) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            got: Mutex::new(Vec::new()),
            fail_status: AtomicU16::new(0),
            tap,
        });
        let app = Router::new()
            .route("/{*path}", post(accept))
            .with_state(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "sandbox receiver stopped");
            }
        });
        Ok(Receiver { addr, shared })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Answer every webhook with `status` (e.g. 500) until set back to 0.
    pub fn set_failing(&self, status: u16) {
        self.shared.fail_status.store(status, Ordering::SeqCst);
    }

    /// How many webhooks were accepted (cheap; `received` clones them all).
    pub fn count(&self) -> usize {
        self.shared
            .got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared
            .got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn accept(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> StatusCode {
    let fail = shared.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(String::from);
    let rec = Received {
        path: uri.path().to_string(),
        message_id: text("message_id").unwrap_or_default(),
        resource_id: text("resourceId").unwrap_or_default(),
        event: text("event").unwrap_or_default(),
        version_id: text("versionId"),
        received_at: chrono::Utc::now(),
        body: json,
    };
    if let Some(tap) = &shared.tap {
        let _ = tap.send(rec.clone());
    }
    shared
        .got
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(rec);
    StatusCode::OK
}
