//! The admin listener's connections, bounded so that a local client can
//! never starve the pipeline of descriptors or hold the daemon at shutdown:
//! at most `max_connections` at once (more are answered 503 and closed at
//! once), a request's head must arrive within `header_read_timeout` (hyper
//! starts that clock whenever it waits for a head, so it is the keep-alive
//! idle timeout too), and a connection lives at most `lifetime` (a client
//! that stops reading a response). On shutdown every connection finishes
//! within one more header timeout; the daemon bounds the whole by its
//! shutdown grace (dropping this future closes them all).

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub lifetime: Duration,
}

impl Limits {
    /// A few scrapers and an operator's curl fit many times over; 64
    /// descriptors are nothing next to the pipeline's.
    pub const DEFAULT: Limits = Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(5),
        lifetime: Duration::from_secs(60),
    };
}

/// What a connection over the cap is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 45\r\n\r\nadmin listener: too many connections; retry.\n";

const MAX_BUF: usize = 64 * 1024;

/// At most one warning per this long about refused connections or accept
/// errors (a flood must not flood the log).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts and serves until `cancel`; then waits for the open connections
/// (each ends within `header_read_timeout` of it).
pub async fn run(listener: TcpListener, app: Router, limits: Limits, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut open = JoinSet::new();
    let mut refused_warned: Option<Instant> = None;
    let mut accept_warned: Option<Instant> = None;
    loop {
        while open.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    if due(&mut accept_warned) {
                        tracing::warn!(error = %e, "admin listener: cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Non-blocking: a client that reads nothing cannot hold us here.
            let _ = stream.try_write(REFUSED);
            if due(&mut refused_warned) {
                tracing::warn!(
                    max = limits.max_connections,
                    "admin listener: too many open connections; new ones are refused"
                );
            }
            continue;
        };
        open.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            cancel.clone(),
            slot,
        ));
    }
    drop(listener);
    // Dropped before the end (the grace ran out), the set aborts them all.
    while open.join_next().await.is_some() {}
}

fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().call(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Our requests are a line and a few headers: 64 KiB a connection
        // (hyper's default is 400 KiB) bounds the cap's memory too.
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(limits.lifetime) => {}
    }
    // A response being written finishes; a head still arriving gets the
    // rest of its header timeout; either way one header timeout at most.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        let cancel = CancellationToken::new();
        let server = tokio::spawn(run(listener, app, limits, cancel.clone()));
        (addr, cancel, server)
    }

    /// The whole answer to one request on a fresh connection ("" when the
    /// server closed without one).
    async fn ask(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until the server closes (true) or `within` passes (false).
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len());
    }

    #[tokio::test]
    async fn a_half_sent_head_is_closed_at_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::DEFAULT
        };
        let (addr, cancel, server) = start(limits).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /heal").await.unwrap();
        assert!(closed_within(&mut half, Duration::from_secs(10)).await);
        // An idle keep-alive connection too.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
        assert!(ask(addr).await.ends_with("ok\n"));
        cancel.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_refused_at_once() {
        let limits = Limits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(600),
            ..Limits::DEFAULT
        };
        let (addr, cancel, server) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /").await.unwrap();
            held.push(s);
        }
        // Refused before any header timeout could free a slot.
        let answer = tokio::time::timeout(Duration::from_secs(10), ask(addr))
            .await
            .unwrap();
        assert!(!answer.contains("ok\n"), "{answer}");
        drop(held);
        let mut ok = String::new();
        for _ in 0..100 {
            ok = ask(addr).await;
            if ok.ends_with("ok\n") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok.ends_with("ok\n"), "{ok}");
        cancel.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_half_sent_head_holds_the_shutdown_one_header_timeout_at_most() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(500),
            lifetime: Duration::from_secs(600),
            ..Limits::DEFAULT
        };
        let (addr, cancel, server) = start(limits).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /heal").await.unwrap();
        // The connection is being served before the shutdown starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the listener stopped")
            .unwrap();
        assert!(closed_within(&mut half, Duration::from_secs(10)).await);
    }
}
