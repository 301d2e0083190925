//! Storage faults: the database locked by another process, the disk full, and a
//! corrupted database file at start-up.

use crate::common;

use common::checker;
use common::writer::{Write, Writer};
use common::{Bridge, FhirServer, config, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use std::sync::Arc;
use std::time::Duration;

async fn converge(rx: &Receiver, writes: &[Write], secs: u64) {
    checker::converge(rx, writes, "/hooks/all", |_| true, secs)
        .await
        .assert_ok("storage/all");
}

/// Another process holds the write lock for longer than busy_timeout: polls and
/// deliveries fail with a clear "database is locked", nothing advances, and
/// everything flows once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_locked_by_another_process() {
    let fhir = Arc::new(FhirServer::sandbox().await);
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    ));
    let writer = Writer::start(fhir.clone(), 20.0, 1);
    wait_for(30, "first deliveries", || rx.count() > 5).await;

    let db = bridge.dir.path().join("state/bridge.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);

    let writes = writer.stop().await;
    converge(&rx, &writes, 60).await;
    assert!(
        bridge.exited().is_none(),
        "the bridge died while the database was locked"
    );
    assert!(
        bridge.logs().contains("database is locked"),
        "no clear error in the logs"
    );
    bridge.stop();
}

/// The state directory's disk fills up: the bridge stops advancing, says why,
/// stays up, and resumes with nothing lost when space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_then_space_returns() {
    let fhir = Arc::new(FhirServer::sandbox().await);
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hook("all", &rx.url("hooks/all"), "true", ""),
    );
    let mut bridge = Bridge::start(&cfg);
    bridge.kill9();
    let state = bridge.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _ = std::fs::remove_file(state.join("bridge.db"));
    let mounted = std::process::Command::new("mount")
        // mode 0700: a state directory every user may write is refused (a tmpfs root is 1777).
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        println!(
            "SKIPPED disk_full_then_space_returns: mounting a small tmpfs needs root (CAP_SYS_ADMIN); run the suite as root to cover it"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(state.clone());

    bridge.restart();
    let writer = Writer::start(fhir.clone(), 20.0, 2);
    wait_for(30, "first deliveries", || rx.count() > 5).await;

    // Fill the disk.
    let filler = state.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(bridge.exited().is_none(), "the bridge died on a full disk");
    let logs = bridge.logs();
    assert!(
        logs.contains("database or disk is full"),
        "no clear error about the full disk"
    );

    std::fs::remove_file(&filler).unwrap();
    let writes = writer.stop().await;
    converge(&rx, &writes, 60).await;
    bridge.stop();
}

/// A corrupted database at start-up: a clear error and a non-zero exit, never a
/// silent reset. The file is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let db = dir.path().join("state/bridge.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&db, &garbage).unwrap();
    let cfg = config(
        "http://127.0.0.1:9/fhir",
        &["Observation"],
        "now",
        &hook("h", "http://127.0.0.1:9/h", "true", ""),
    );
    std::fs::write(dir.path().join("bridges.toml"), cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("bridges.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bridge.db") && stderr.contains("not a fhir-bridge database"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the damaged file was modified"
    );
}
