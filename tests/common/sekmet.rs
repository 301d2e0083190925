//! SEKMET (PyPI `sekmet-fhir`, FastAPI + SQLite): a third-party FHIR R4
//! server with type-level `_history` and asynchronous `$export`, which
//! Medplum's engine lacks. Installed in `tests/sekmet/venv` by
//! `scripts/sekmet-venv` (run by `scripts/test`); see tests/sekmet/README.md.

use super::fhir::str_at;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sekmet/venv");

/// `sekmet serve`, in the venv's Python, with a watcher that ends the server
/// when its stdin closes: a test process that dies leaves no server behind.
const SERVE: &str = "\
import os, sys, threading
def watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from sekmet.cli import app
sys.argv = ['sekmet', 'serve']
app()
";

/// How long the server may take to answer `metadata` (about 1 s when idle).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running SEKMET on 127.0.0.1, its database, keys and log in a tempdir.
/// Export jobs live in its memory: it must not restart during a test.
pub struct Sekmet {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
    /// Held open: the server exits when it closes (see `SERVE`).
    _stdin: Option<ChildStdin>,
}

/// One request to SEKMET, from its traffic log.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// Path and query, as received (`/fhir/$export?_type=…`).
    pub url: String,
    pub status: Option<u16>,
    pub response: Option<String>,
}

impl Sekmet {
    /// SEKMET without its traffic log.
    pub async fn start() -> Sekmet {
        Self::start_with(false).await
    }

    /// SEKMET recording every request it answers, with the response bodies
    /// (`log_inbound`), for `traffic`.
    pub async fn start_logging_traffic() -> Sekmet {
        Self::start_with(true).await
    }

    async fn start_with(log_inbound: bool) -> Sekmet {
        let serve = PathBuf::from(VENV).join("bin/sekmet");
        assert!(
            serve.exists(),
            "SEKMET not installed: run `scripts/sekmet-venv` (or ./scripts/test)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // A free port, given back for SEKMET to take.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let base = format!("http://127.0.0.1:{port}/fhir");
        // YAML's double-quoted strings are JSON's.
        let path = |p: &str| serde_json::to_string(&dir.path().join(p)).expect("path");
        let (data, key) = (path("data"), path("keys/sekmet_private.pem"));
        // The simulator off (it answers orders with writes of its own); its
        // delay is also how long an export job stays "in progress" (at most
        // 1 s), so that status polls see a 202 with Retry-After first.
        let settings = format!(
            "base_url: \"{base}\"\nhost: 127.0.0.1\nport: {port}\ndata_dir: {data}\n\
             own_private_key_path: {key}\nlog_inbound: {log_inbound}\n\
             simulator: {{enabled: false, delay_seconds: 0.5}}\n"
        );
        std::fs::write(dir.path().join("settings.yaml"), settings).expect("settings.yaml");
        let log = std::fs::File::create(dir.path().join("sekmet.log")).expect("log");
        let mut child = Command::new(PathBuf::from(VENV).join("bin/python"))
            .args(["-c", SERVE])
            .env("SEKMET_CONFIG", dir.path().join("settings.yaml"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start SEKMET");
        let stdin = child.stdin.take();
        let mut s = Sekmet {
            child,
            dir,
            base,
            _stdin: stdin,
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/metadata", self.base);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "SEKMET exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "SEKMET did not answer {url} within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The FHIR base, `http://127.0.0.1:{port}/fhir`.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    /// Everything SEKMET printed (uvicorn's access log among it).
    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.dir.path().join("sekmet.log"))
            .and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Value {
        let resp = req
            .header("content-type", "application/fhir+json")
            .header("accept", "application/fhir+json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status();
        let body = resp.bytes().await.expect("body");
        assert!(
            status.is_success(),
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }

    /// Creates a resource with POST (its history entry says POST: a create);
    /// returns (id, versionId).
    pub async fn create(&self, resource: Value) -> (String, String) {
        let rt = str_at(&resource, "/resourceType");
        let req = reqwest::Client::new()
            .post(format!("{}/{rt}", self.base))
            .body(resource.to_string());
        let v = self.send(req, &format!("POST {rt}")).await;
        (str_at(&v, "/id"), str_at(&v, "/meta/versionId"))
    }

    /// Updates a resource with PUT; returns its new versionId.
    pub async fn update(&self, id: &str, mut resource: Value) -> String {
        let rt = str_at(&resource, "/resourceType");
        resource["id"] = Value::from(id);
        let req = reqwest::Client::new()
            .put(format!("{}/{rt}/{id}", self.base))
            .body(resource.to_string());
        let v = self.send(req, &format!("PUT {rt}/{id}")).await;
        str_at(&v, "/meta/versionId")
    }

    /// Deletes a resource.
    pub async fn delete(&self, resource_type: &str, id: &str) {
        let req = reqwest::Client::new().delete(format!("{}/{resource_type}/{id}", self.base));
        self.send(req, &format!("DELETE {resource_type}/{id}"))
            .await;
    }

    /// GET of a URL on SEKMET (a bulk status URL, say): the HTTP status.
    pub async fn get_status(&self, url: &str) -> u16 {
        reqwest::Client::new()
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .status()
            .as_u16()
    }

    /// Every request recorded so far, oldest first (`start_logging_traffic`
    /// only). A request is recorded once its response has been sent.
    pub fn traffic(&self) -> Vec<Exchange> {
        let db = self.dir.path().join("data/sekmet.db");
        let conn = rusqlite::Connection::open(&db).expect("SEKMET's database");
        conn.busy_timeout(Duration::from_secs(10)).expect("timeout");
        let mut stmt = conn
            .prepare(
                "SELECT method, url, status, resp_body FROM traffic
                 WHERE direction = 'inbound' ORDER BY id",
            )
            .expect("traffic query");
        stmt.query_map([], |r| {
            Ok(Exchange {
                method: r.get(0)?,
                url: r.get(1)?,
                status: r.get::<_, Option<i64>>(2)?.map(|s| s as u16),
                response: r.get(3)?,
            })
        })
        .expect("traffic")
        .collect::<Result<_, _>>()
        .expect("traffic rows")
    }
}

impl Drop for Sekmet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("---- SEKMET log (last 80 lines) ----\n{tail}");
        }
    }
}
