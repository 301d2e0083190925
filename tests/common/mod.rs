//! Shared harness for end-to-end tests: the real `fhir-bridge` binary, a FHIR
//! server (the in-crate sandbox, Medplum's engine under Node, or SEKMET under
//! Python), and a real HTTP receiver, all on 127.0.0.1.
#![allow(dead_code)]

pub mod auth_server;
pub mod authed;
pub mod checker;
pub mod fanout;
pub mod fhir;
pub mod hostile;
pub mod proxy;
pub mod scenarios;
pub mod scripted;
pub mod sekmet;
pub mod validator;
pub mod writer;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use fhir::FhirServer;

/// A running `fhir-bridge run` process with its own config and state.
pub struct Bridge {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    runs: usize,
    /// Extra environment variables of the daemon.
    env: Vec<(String, String)>,
}

impl Bridge {
    /// Writes `config` (TOML) and starts the daemon on it.
    pub fn start(config: &str) -> Bridge {
        Self::start_with_env(config, &[])
    }

    /// As `start`, with extra environment variables for the daemon.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Bridge {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bridges.toml"), config).expect("write config");
        let mut b = Bridge {
            dir,
            child: None,
            runs: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        b.restart();
        b
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("bridges.toml")
    }

    /// Starts the daemon again (after a kill or stop), on the same state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "bridge already running");
        self.runs += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("run-{}.log", self.runs)))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
            .args(["run", "-c"])
            .arg(self.config_path())
            .env("FHIR_BRIDGE_LOG", "fhir_bridge=debug,info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fhir-bridge");
        self.child = Some(child);
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the daemon process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(
                        status.success(),
                        "fhir-bridge exited with {status} on SIGTERM"
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("fhir-bridge did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGHUP: reload the config.
    pub fn sighup(&self) {
        let pid = self.pid().expect("running");
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }

    /// Runs a CLI command (status, dlq ...) against this bridge's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
            .args(args)
            .arg("-c")
            .arg(self.config_path())
            .output()
            .expect("run fhir-bridge cli")
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Everything the daemon logged so far (all runs).
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("run-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- fhir-bridge logs ----\n{}", self.logs());
        }
    }
}

/// Polls `cond` every 100 ms until it holds or `secs` pass.
pub async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A config with one source and the given hooks (TOML snippets).
pub fn config(fhir_base: &str, resources: &[&str], start: &str, hooks: &str) -> String {
    config_with_auth(fhir_base, "", resources, start, hooks)
}

/// `config` for a server handle: its base and `[source.auth]`, if any.
pub fn config_for(fhir: &FhirServer, resources: &[&str], start: &str, hooks: &str) -> String {
    config_with_auth(
        &fhir.base_url(),
        &fhir.source_auth_toml(),
        resources,
        start,
        hooks,
    )
}

/// `config`, with `auth` (a `[source.auth]` table, or "") after the source.
pub fn config_with_auth(
    fhir_base: &str,
    auth: &str,
    resources: &[&str],
    start: &str,
    hooks: &str,
) -> String {
    let resources = resources
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{fhir_base}"
resources = [{resources}]
every = "300ms"
page_size = 7
overlap = "5s"
start = "{start}"
owner_id = "org/test"
{auth}
{hooks}
"#
    )
}

/// Asserts that `text` (status, the DLQ, logs) holds no token endpoint body
/// (the test servers mark it LEAKED-DESCRIPTION), none of `secrets` and
/// none of the `tokens` issued.
pub fn assert_no_secret_in(text: &str, secrets: &[&str], tokens: &[String]) {
    assert!(
        !text.contains("LEAKED-DESCRIPTION"),
        "the token endpoint's body reached status or logs"
    );
    for secret in secrets {
        assert!(!text.contains(secret), "a secret reached status or logs");
    }
    for t in tokens {
        assert!(!text.contains(t.as_str()), "a token reached status or logs");
    }
}

/// Stores a final Observation under `id` in the sandbox.
pub fn store_observation(store: &fhir_bridge::sandbox::SandboxStore, id: &str) {
    store.upsert(
        "Observation",
        Some(id),
        serde_json::json!({"resourceType": "Observation", "status": "final"}),
    );
}

/// The `hooks` entry of status named `name` (Null if none).
pub fn hook_of<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

pub fn hook(name: &str, url: &str, filter: &str, extra: &str) -> String {
    format!("[[hook]]\nname = \"{name}\"\nurl = \"{url}\"\nfilter = '{filter}'\n{extra}\n")
}

/// Per resource: the (event, versionId) pairs received, in arrival order,
/// duplicates (same message_id) removed.
pub fn by_resource(
    got: &[fhir_bridge::sandbox::Received],
) -> std::collections::BTreeMap<String, Vec<(String, Option<String>)>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for r in got {
        if seen.insert(r.message_id.clone()) {
            out.entry(r.resource_id.clone())
                .or_default()
                .push((r.event.clone(), r.version_id.clone()));
        }
    }
    out
}
