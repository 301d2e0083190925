//! Hostile input: operate. See tests/hostile.rs. What an operator does and
//! sees: renamed hooks, a second daemon, files at rest, `status` when the
//! daemon is gone, output to closed pipes and full disks, SIGHUP, logs.

use crate::common::{self, Bridge, FhirServer, hook_of, wait_for};
use fhir_bridge::sandbox::{Behaviour, Receiver};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fhir-bridge");

fn obs(note: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "note": [{"text": note}]})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `fhir-bridge <args> -c <config>`.
fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run fhir-bridge")
}

fn status_json(config: &Path) -> (Value, Option<i32>) {
    let out = cli(config, &["status", "--json"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out.stderr)));
    (v, out.status.code())
}

fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Waits (up to `secs`) for a child to exit.
fn wait_exit(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fhir-bridge did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon started by hand: under another umask, or without the harness's
/// environment (`FHIR_BRIDGE_LOG`, `NO_COLOR` unset, so the defaults apply).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(config: &Path, log: &Path, umask: Option<&str>) -> Daemon {
        let mut cmd = match umask {
            Some(m) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("umask {m} && exec \"$0\" \"$@\""), BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["run", "-c"])
            .arg(config)
            .env_remove("FHIR_BRIDGE_LOG")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn fhir-bridge");
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; asserts a clean exit.
    fn stop(&mut self) {
        sigterm(self.child.id());
        let status = wait_exit(&mut self.child, 20);
        assert!(
            status.success(),
            "exit on SIGTERM: {status}\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- fhir-bridge log ----\n{}", self.log());
        }
    }
}

fn dlq_list(b: &Bridge) -> Vec<Value> {
    serde_json::from_slice(&b.cli(&["dlq", "list", "--json"]).stdout).unwrap_or_default()
}

/// 3. A hook renamed in the config leaves its pending and dead messages under
/// the old name: `status` names it as orphaned and needs attention, `dlq list`
/// shows them, `dlq purge --hook OLD` deletes them, `dlq redrive --to-hook NEW`
/// moves them and the running daemon delivers them with their message_ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_hook_messages_are_shown_purged_and_moved() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_behaviour_for("/hooks/old", Behaviour::Status(503));
    for i in 0..3 {
        fhir.create(obs(&format!("first {i}"))).await;
    }
    let cfg =
        |hooks: String| common::config(&fhir.base_url(), &["Observation"], "beginning", &hooks);
    let old = |extra: &str| common::hook("old", &rx.url("hooks/old"), "true", extra);
    // Three dead letters (one attempt each) ...
    let mut bridge = Bridge::start(&cfg(old("max_attempts = 1")));
    wait_for(10, "three dead letters", || dlq_list(&bridge).len() == 3).await;
    bridge.stop();
    // ... and two messages pending (their retry is an hour away).
    for i in 0..2 {
        fhir.create(obs(&format!("second {i}"))).await;
    }
    let slow = old("max_attempts = 5\nretry_schedule = [\"1h\"]");
    std::fs::write(bridge.config_path(), cfg(slow)).unwrap();
    bridge.restart();
    wait_for(10, "two failed pending messages", || {
        let st = bridge.status_json();
        let h = hook_of(&st, "old");
        h["pending"] == 2 && h["failed_attempts"].as_i64().unwrap_or(0) >= 5
    })
    .await;
    bridge.stop();

    // The hook is renamed.
    let new = common::hook("new", &rx.url("hooks/new"), "true", "");
    std::fs::write(bridge.config_path(), cfg(new)).unwrap();
    bridge.restart();
    wait_for(10, "the daemon to run", || {
        bridge.status_json()["daemon"]["running"] == true
    })
    .await;
    let out = bridge.cli(&["status"]);
    let shown = text(&out.stdout);
    // Critical: the orphaned hook holds dead letters.
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("old: 2 pending, 3 dead-lettered; move them with `fhir-bridge dlq redrive --hook old --to-hook NEW --all`"),
        "{shown}"
    );
    let st = bridge.status_json();
    assert_eq!(
        st["orphaned_hooks"],
        json!([{"name": "old", "pending": 2, "dead_lettered": 3}])
    );
    assert_eq!(st["healthy"], false);

    let listed = dlq_list(&bridge);
    let states: Vec<_> = listed
        .iter()
        .map(|d| d["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        states,
        ["dead", "dead", "dead", "pending", "pending"],
        "{listed:#?}"
    );
    assert!(listed.iter().all(|d| d["hook"] == "old"));

    // A pending message of the orphaned hook, deleted by id.
    let gone = listed[4]["id"].to_string();
    let out = bridge.cli(&["dlq", "purge", "--hook", "old", &gone]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deleted 1"),
        "{}",
        text(&out.stdout)
    );

    // Moving needs a configured target.
    let out = bridge.cli(&[
        "dlq",
        "redrive",
        "--hook",
        "old",
        "--to-hook",
        "nosuch",
        "--all",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no hook is named `nosuch`"));

    let out = bridge.cli(&[
        "dlq",
        "redrive",
        "--hook",
        "old",
        "--to-hook",
        "new",
        "--all",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("moved 4 message(s) to hook `new`"),
        "{}",
        text(&out.stdout)
    );
    wait_for(10, "the moved messages delivered", || rx.count() >= 4).await;
    let mut got: Vec<_> = rx.received().iter().map(|r| r.message_id.clone()).collect();
    let mut want: Vec<_> = listed[..4]
        .iter()
        .map(|d| d["message_id"].as_str().unwrap_or("").to_string())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "delivered to `new` with their message_ids");
    assert!(rx.received().iter().all(|r| r.path == "/hooks/new"));
    wait_for(10, "status healthy again", || {
        bridge.cli(&["status"]).status.code() == Some(0)
    })
    .await;
    assert_eq!(bridge.status_json()["orphaned_hooks"], json!([]));
    assert!(dlq_list(&bridge).is_empty());
    bridge.stop();
}

/// 4. A second daemon on the same state directory refuses to start (exit 2,
/// naming the first one's pid); the first carries on. After `kill -9` the
/// lock is gone with the process: a restart runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = common::hook("h", &rx.url("hooks/h"), "true", "");
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    let first = bridge.pid().unwrap();
    wait_for(10, "the first daemon to run", || {
        bridge.status_json()["daemon"]["running"] == true
    })
    .await;

    let mut second = Command::new(BIN)
        .args(["run", "-c"])
        .arg(bridge.config_path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut second, 10);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("another fhir-bridge (pid {first}) is running on")),
        "{err}"
    );
    assert_eq!(bridge.exited(), None, "the first daemon is still up");

    // Everything is delivered once, by the first daemon.
    fhir.create(obs("after the second start")).await;
    wait_for(10, "a delivery", || rx.count() == 1).await;

    bridge.kill9();
    let (st, code) = status_json(&bridge.config_path());
    assert_eq!(
        (st["daemon"]["state"].as_str(), code),
        (Some("stopped"), Some(1))
    );
    bridge.restart();
    wait_for(10, "the restarted daemon to run", || {
        let st = bridge.status_json();
        st["daemon"]["running"] == true && st["daemon"]["pid"] == bridge.pid().unwrap()
    })
    .await;
    bridge.stop();
    assert_eq!(rx.count(), 1);
}

/// 8. A delivered resource's text is not left in the database or its WAL
/// (secure_delete), and whatever the umask the state directory is 0700 and
/// its files 0600; a database made readable by others is narrowed again at
/// start, with a warning naming it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_phi_is_not_left_at_rest_and_state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridges.toml");
    let hooks = common::hook("h", &rx.url("hooks/h"), "true", "");
    std::fs::write(
        &config,
        common::config(&fhir.base_url(), &["Observation"], "beginning", &hooks),
    )
    .unwrap();
    const MARKER: &str = "PHI-MARKER-Zq7xK2-Jane-Doe-1970-01-01";
    fhir.create(obs(MARKER)).await;

    let mut d = Daemon::spawn(&config, &dir.path().join("run1.log"), Some("000"));
    wait_for(10, "the delivery", || rx.count() == 1).await;
    assert!(rx.received()[0].body.to_string().contains(MARKER));
    wait_for(10, "the delivery recorded", || {
        status_json(&config).0["hooks"][0]["delivered"] == 1
    })
    .await;

    let state = dir.path().join("state");
    let db = state.join("bridge.db");
    let wal = state.join("bridge.db-wal");
    let shm = state.join("bridge.db-shm");
    assert_eq!(mode(&state), 0o700, "state directory");
    for f in [&db, &wal, &shm, &state.join("lock")] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }

    // Fold the WAL into the database and truncate it, as SQLite does over time.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    wait_for(10, "a complete checkpoint", || {
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok_and(|busy| busy == 0)
    })
    .await;
    drop(c);
    for f in [&db, &wal] {
        let bytes = std::fs::read(f).unwrap_or_default();
        let found = bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
        assert!(
            !found,
            "the delivered resource's text is still in {}",
            f.display()
        );
    }
    d.stop();

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::spawn(&config, &dir.path().join("run2.log"), None);
    wait_for(10, "the warning", || {
        d.log().contains("its mode is now 0600")
    })
    .await;
    assert!(d.log().contains(&db.display().to_string()), "{}", d.log());
    assert_eq!(mode(&db), 0o600);
    d.stop();
}

/// 12. `status` tells a running daemon from a stopped, killed or never
/// started one, and only a running one is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_whether_the_daemon_runs() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = common::hook("h", &rx.url("hooks/h"), "true", "");
    let config = common::config(&fhir.base_url(), &["Observation"], "beginning", &hooks);
    let mut bridge = Bridge::start(&config);

    // Another config beside it, whose daemon never ran.
    let never = bridge.dir.path().join("never.toml");
    std::fs::write(
        &never,
        config.replace("state_dir = \"state\"", "state_dir = \"state2\""),
    )
    .unwrap();
    let out = cli(&never, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("daemon: never ran"),
        "{}",
        text(&out.stdout)
    );
    let (st, _) = status_json(&never);
    assert_eq!(
        st["daemon"],
        json!({"running": false, "state": "never-ran", "pid": null, "started_at": null, "last_seen_at": null})
    );

    let pid = bridge.pid().unwrap();
    let running = format!("daemon: running (pid {pid}, up ");
    wait_for(10, "status: running", || {
        let out = bridge.cli(&["status"]);
        out.status.code() == Some(0) && text(&out.stdout).contains(&running)
    })
    .await;
    let st = bridge.status_json();
    assert_eq!(st["daemon"]["state"], "running");
    assert_eq!(st["daemon"]["pid"], pid);
    assert!(st["daemon"]["started_at"].is_string() && st["daemon"]["last_seen_at"].is_string());
    assert_eq!(hook_of(&st, "h")["stale"], false);

    bridge.stop();
    let out = bridge.cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a stopped daemon needs attention"
    );
    assert!(
        text(&out.stdout).contains("daemon: NOT RUNNING (last seen "),
        "{}",
        text(&out.stdout)
    );
    let st = bridge.status_json();
    assert_eq!(
        (
            st["daemon"]["state"].as_str(),
            st["daemon"]["running"].as_bool()
        ),
        (Some("stopped"), Some(false))
    );
    assert_eq!(st["daemon"]["pid"], pid);

    bridge.restart();
    wait_for(10, "status: running again", || {
        bridge.cli(&["status"]).status.code() == Some(0)
    })
    .await;
    bridge.kill9();
    let (st, code) = status_json(&bridge.config_path());
    assert_eq!(
        (st["daemon"]["state"].as_str(), code),
        (Some("stopped"), Some(1)),
        "after kill -9"
    );
}

/// 12, second case: a daemon that runs but whose receiver has failed every
/// attempt is not OK. Once the oldest pending message is older than the
/// hook's `max_pending_age`, the hook is stale and `status` exits 1 while
/// the daemon runs; when the receiver recovers, status is OK again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_only_fails_is_stale_while_the_daemon_runs() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_failing(500);
    let hooks = common::hook(
        "h",
        &rx.url("hooks/h"),
        "true",
        "retry_schedule = [\"1s\"]\nmax_attempts = 100\nmax_pending_age = \"2s\"",
    );
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    fhir.create(obs("never acknowledged")).await;
    wait_for(20, "status: the hook stale (exit 1)", || {
        let out = bridge.cli(&["status"]);
        out.status.code() == Some(1)
            && text(&out.stdout).contains("STALE: the oldest pending message has waited")
    })
    .await;
    let st = bridge.status_json();
    assert_eq!(st["daemon"]["state"], "running", "{st:#}");
    assert_eq!(st["level"], "warning", "{st:#}");
    let h = hook_of(&st, "h");
    assert_eq!(h["stale"], true, "{h}");
    assert_eq!(h["delivered"], 0, "{h}");
    assert_eq!(h["last_success_at"], Value::Null, "{h}");
    assert!(h["failed_attempts"].as_i64().unwrap_or(0) >= 1, "{h}");
    assert_eq!(h["last_error"], "HTTP 500", "{h}");

    rx.set_failing(0);
    wait_for(20, "status OK once the receiver recovers", || {
        bridge.cli(&["status"]).status.code() == Some(0)
    })
    .await;
    assert_eq!(rx.count(), 1);
    assert_eq!(hook_of(&bridge.status_json(), "h")["stale"], false);
    bridge.stop();
}

/// 13. Output into a closed pipe (`status | head -1`) ends quietly with the
/// command's own exit code; into a full disk, one line on stderr and exit 2.
/// Never a panic (exit 101).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_a_closed_pipe_or_a_full_disk_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridges.toml");
    // Enough hooks that status prints more than a pipe holds (64 KiB).
    let hooks: String = (0..1000)
        .map(|i| common::hook(&format!("hook-{i:04}"), "http://127.0.0.1:9/h", "true", ""))
        .collect();
    std::fs::write(
        &config,
        common::config("http://127.0.0.1:9/fhir", &["Observation"], "now", &hooks),
    )
    .unwrap();

    for args in [&["status"][..], &["validate"][..]] {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away before a byte is written
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} ends quietly: {err}");
        // status: 1, the daemon never ran; validate: 0.
        let want = if args[0] == "status" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "{args:?}");
    }

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(BIN)
        .args(["status", "-c"])
        .arg(&config)
        .stdout(full)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot write to standard output") && err.contains("No space left"),
        "{err}"
    );
}

/// 14. SIGHUP reloads (here: an unchanged file, so nothing restarts): the
/// daemon stays up, keeps delivering, and still stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_daemon_running() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = common::hook("h", &rx.url("hooks/h"), "true", "");
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    fhir.create(obs("before")).await;
    wait_for(10, "the first delivery", || rx.count() == 1).await;
    let pid = bridge.pid().unwrap().to_string();
    let hups = |b: &Bridge| b.logs().matches("reload: nothing changed").count();
    for n in 1..=2 {
        Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        wait_for(10, "the SIGHUP logged", || hups(&bridge) == n).await;
    }
    assert_eq!(bridge.exited(), None, "still running after SIGHUP");
    fhir.create(obs("after")).await;
    wait_for(10, "a delivery after SIGHUP", || rx.count() == 2).await;
    bridge.stop();
}

/// 16. Logs in a file carry no colour codes; a failed delivery is logged at
/// info with its HTTP status, hook and message id; an invalid
/// `FHIR_BRIDGE_LOG` is an error (exit 2), not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_text_and_a_bad_log_filter_is_an_error() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_failing(500);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridges.toml");
    let hooks = common::hook(
        "h",
        &rx.url("hooks/h"),
        "true",
        "retry_schedule = [\"1s\"]\nmax_attempts = 50",
    );
    std::fs::write(
        &config,
        common::config(&fhir.base_url(), &["Observation"], "beginning", &hooks),
    )
    .unwrap();
    fhir.create(obs("x")).await;

    let mut d = Daemon::spawn(&config, &dir.path().join("run.log"), None);
    wait_for(10, "a failed attempt logged", || {
        d.log().contains("delivery failed; will retry")
    })
    .await;
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("delivery failed; will retry"))
        .unwrap_or("");
    assert!(line.contains(" INFO "), "{line}");
    for field in ["status=500", "hook=h", "message_id="] {
        assert!(line.contains(field), "{field} in {line}");
    }
    rx.set_failing(0);
    wait_for(10, "the delivery", || rx.count() == 1).await;
    d.stop();
    let log = d.log();
    assert!(log.contains("fhir-bridge started"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "no ANSI escapes in a log file: {log:?}"
    );

    let mut bad = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .env("FHIR_BRIDGE_LOG", "fhir_bridge=notalevel")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut bad, 10);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bad.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("FHIR_BRIDGE_LOG") && err.contains("notalevel"),
        "{err}"
    );
}
