//! A webhook receiver that records what it gets, and can be told to misbehave
//! (fail, stall, reset, say 410 Gone or 429 with Retry-After), per path.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One webhook as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub message_id: String,
    /// The `webhook-id` header.
    pub webhook_id: Option<String>,
    pub resource_id: String,
    pub event: String,
    pub version_id: Option<String>,
    pub body: serde_json::Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// Every request, whatever the answer: for checking retry timing.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub webhook_id: Option<String>,
    pub at: std::time::Instant,
    pub behaviour: Behaviour,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Record and answer 200.
    Accept,
    /// Answer with this status, record nothing.
    Status(u16),
    /// Answer with this status and a `Retry-After: secs` header.
    RetryAfter { status: u16, secs: u64 },
    /// Wait this long, then record and answer 200 (if the caller still listens).
    Stall(Duration),
    /// Break the connection mid-response.
    Reset,
}

#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    got: Mutex<Vec<Received>>,
    hits: Mutex<Vec<Hit>>,
    /// By path; the empty key is the default for every path.
    behaviours: Mutex<HashMap<String, Behaviour>>,
    tap: Option<mpsc::UnboundedSender<Received>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            hits: Mutex::new(Vec::new()),
            behaviours: Mutex::new(HashMap::new()),
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
        let b = if status == 0 {
            Behaviour::Accept
        } else {
            Behaviour::Status(status)
        };
        self.set_behaviour(b);
    }

    /// The default behaviour, for every path without its own.
    pub fn set_behaviour(&self, b: Behaviour) {
        lock(&self.shared.behaviours).insert(String::new(), b);
    }

    /// The behaviour for one path, e.g. `/hooks/slow`.
    pub fn set_behaviour_for(&self, path: &str, b: Behaviour) {
        lock(&self.shared.behaviours).insert(path.to_string(), b);
    }

    /// How many webhooks were accepted (cheap; `received` clones them all).
    pub fn count(&self) -> usize {
        lock(&self.shared.got).len()
    }

    /// Every request so far, accepted or not.
    pub fn hits(&self) -> Vec<Hit> {
        lock(&self.shared.hits).clone()
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.got).clone()
    }
}

async fn accept(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behaviour = {
        let b = lock(&shared.behaviours);
        b.get(uri.path())
            .or_else(|| b.get(""))
            .copied()
            .unwrap_or(Behaviour::Accept)
    };
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    lock(&shared.hits).push(Hit {
        path: uri.path().to_string(),
        webhook_id: webhook_id.clone(),
        at: std::time::Instant::now(),
        behaviour,
    });
    match behaviour {
        Behaviour::Accept => {}
        Behaviour::Status(s) => {
            return StatusCode::from_u16(s)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
        }
        Behaviour::RetryAfter { status, secs } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            return (status, [(header::RETRY_AFTER, secs.to_string())]).into_response();
        }
        Behaviour::Stall(d) => tokio::time::sleep(d).await,
        Behaviour::Reset => {
            // A body that fails mid-stream: the connection is cut mid-response.
            let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                Ok("{\"resourceType\":\"Bundle\",\"entry\":["),
                Err(std::io::Error::other("connection reset")),
            ];
            return Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
        }
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(String::from);
    let rec = Received {
        path: uri.path().to_string(),
        message_id: text("message_id").unwrap_or_default(),
        webhook_id,
        resource_id: text("resourceId").unwrap_or_default(),
        event: text("event").unwrap_or_default(),
        version_id: text("versionId"),
        received_at: chrono::Utc::now(),
        body: json,
    };
    if let Some(tap) = &shared.tap {
        let _ = tap.send(rec.clone());
    }
    lock(&shared.got).push(rec);
    StatusCode::OK.into_response()
}
