//! The FHIR server under test: the in-crate sandbox, or Medplum's FHIR engine
//! (a real third-party implementation) behind tests/fhir-server/server.mjs.

use super::auth_server::AuthServer;
use fhir_bridge::sandbox::FhirSandbox;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub enum FhirServer {
    Sandbox(FhirSandbox),
    Medplum {
        child: Child,
        base: String,
        /// Held open: the server exits when it closes (if the test process dies).
        _stdin: Option<std::process::ChildStdin>,
    },
    /// `inner` behind the auth proxy: the bridge polls the proxy with
    /// `auth_toml` as its `[source.auth]`; the test's writes go to `inner`.
    Authed {
        inner: Box<FhirServer>,
        proxy: AuthServer,
        auth_toml: String,
    },
}

impl FhirServer {
    pub async fn sandbox() -> FhirServer {
        FhirServer::Sandbox(FhirSandbox::start(0).await.expect("sandbox"))
    }

    /// The in-crate sandbox this is (a test that writes to its store).
    pub fn as_sandbox(&self) -> &FhirSandbox {
        match self {
            FhirServer::Sandbox(s) => s,
            _ => panic!("a sandbox test"),
        }
    }

    /// Starts `node tests/fhir-server/server.mjs` (run `npm ci` there first).
    pub fn medplum(paging: &str) -> FhirServer {
        FhirServer::medplum_with(paging, &[])
    }

    /// `medplum`, with more of server.mjs's options (e.g. `--date-only`).
    pub fn medplum_with(paging: &str, options: &[&str]) -> FhirServer {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fhir-server");
        assert!(
            std::path::Path::new(dir).join("node_modules").exists(),
            "Medplum test server not installed: run `npm ci --prefix tests/fhir-server`"
        );
        let mut child = Command::new("node")
            .args([
                "server.mjs",
                "--port",
                "0",
                "--paging",
                paging,
                "--exit-on-stdin-eof",
            ])
            .args(options)
            .stdin(Stdio::piped())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(p) = line.strip_prefix("LISTENING ") {
                        break p.trim().to_string();
                    }
                }
                _ => panic!("Medplum test server exited before it was ready"),
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let stdin = child.stdin.take();
        FhirServer::Medplum {
            child,
            base: format!("http://127.0.0.1:{port}/fhir"),
            _stdin: stdin,
        }
    }

    /// The base the bridge polls.
    pub fn base_url(&self) -> String {
        match self {
            FhirServer::Sandbox(s) => s.base_url(),
            FhirServer::Medplum { base, .. } => base.clone(),
            FhirServer::Authed { proxy, .. } => proxy.base_url(),
        }
    }

    /// The base the test writes to: the server itself, never a proxy.
    pub fn upstream_url(&self) -> String {
        match self {
            FhirServer::Authed { inner, .. } => inner.upstream_url(),
            other => other.base_url(),
        }
    }

    /// The `[source.auth]` table the bridge needs for `base_url` (or "").
    pub fn source_auth_toml(&self) -> String {
        match self {
            FhirServer::Authed { auth_toml, .. } => auth_toml.clone(),
            _ => String::new(),
        }
    }

    /// Creates (`id` None) or updates a resource; returns what the server stored.
    pub async fn write(&self, id: Option<&str>, mut resource: Value) -> Value {
        let rt = resource["resourceType"]
            .as_str()
            .expect("resourceType")
            .to_string();
        let client = reqwest::Client::new();
        let req = match id {
            None => client.post(format!("{}/{rt}", self.upstream_url())),
            Some(id) => {
                resource["id"] = Value::from(id);
                client.put(format!("{}/{rt}/{id}", self.upstream_url()))
            }
        };
        let resp = req
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .expect("write");
        assert!(
            resp.status().is_success(),
            "write {rt}: HTTP {}",
            resp.status()
        );
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("written json")
    }

    /// Creates a resource; returns (id, versionId).
    pub async fn create(&self, resource: Value) -> (String, String) {
        let v = self.write(None, resource).await;
        (str_at(&v, "/id"), str_at(&v, "/meta/versionId"))
    }

    /// Updates a resource; returns its new versionId.
    pub async fn update(&self, id: &str, resource: Value) -> String {
        str_at(&self.write(Some(id), resource).await, "/meta/versionId")
    }
}

pub fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("{pointer} missing"))
        .to_string()
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        if let FhirServer::Medplum { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
