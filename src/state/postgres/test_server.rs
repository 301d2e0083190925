//! A real PostgreSQL for tests: the server binaries of Debian's `postgresql`
//! package, one cluster per test process in a temporary directory, listening
//! on a unix socket only; every caller gets a database of its own.
//!
//! `initdb` refuses to run as root (CI runs as root): the cluster then runs
//! as the `postgres` user. The server dies with the thread that started it
//! (a thread that never ends), so it stops when the test process does; the
//! directories of processes that are gone are removed on the next start.
//!
//! Without a server installed the tests that need one say so and pass, unless
//! `FHIR_BRIDGE_REQUIRE_POSTGRES=1` (CI sets it) makes that a failure.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

struct Server {
    dir: PathBuf,
    next: AtomicU32,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// A connection string to a new, empty database, or `None` (with a line on
/// stderr) where no PostgreSQL server is installed.
pub async fn fresh_database() -> Option<String> {
    let server = match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(why) if std::env::var_os("FHIR_BRIDGE_REQUIRE_POSTGRES").is_none() => {
            eprintln!("skipped: no PostgreSQL for this test ({why})");
            return None;
        }
        Err(why) => panic!("PostgreSQL required (FHIR_BRIDGE_REQUIRE_POSTGRES): {why}"),
    };
    let n = server.next.fetch_add(1, Ordering::Relaxed);
    let name = format!("t{n}");
    let admin = server.url("postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match create_database(&admin, &name).await {
            Ok(()) => return Some(server.url(&name)),
            // Still starting up.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("test PostgreSQL in {}: {e}", server.dir.display()),
        }
    }
}

async fn create_database(admin: &str, name: &str) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
}

impl Server {
    fn url(&self, db: &str) -> String {
        format!("host={} user=bridge dbname={db}", self.dir.display())
    }
}

/// The directory of the server binaries: the newest of Debian's versions.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no /usr/lib/postgresql (apt install postgresql)".to_string())?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no server binaries under /usr/lib/postgresql".into())
}

/// The uid and gid the server runs as: ours, or `postgres`'s when we are root.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| "running as root and no `postgres` user to run the server as".into())
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let user = server_user()?;
    let base = std::env::temp_dir();
    remove_stale(&base);
    let dir = base.join(format!("fhir-bridge-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some((uid, gid)) = user {
        chown(&dir, uid, gid)?;
    }
    let data = dir.join("data");
    init_cluster(&bin, &data, user)?;
    spawn_server(&bin, &data, &dir, &["listen_addresses="], user)?;
    Ok(Server {
        dir,
        next: AtomicU32::new(0),
    })
}

/// A new cluster in `data` (`trust` for every connection, user `bridge`).
fn init_cluster(bin: &Path, data: &Path, user: Option<(u32, u32)>) -> Result<(), String> {
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args([
            "-A",
            "trust",
            "-U",
            "bridge",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut initdb, user);
    let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Starts the server of `data` with its socket in `socket_dir` and these
/// settings besides the fast, unsafe ones of a test server.
fn spawn_server(
    bin: &Path,
    data: &Path,
    socket_dir: &Path,
    settings: &[&str],
    user: Option<(u32, u32)>,
) -> Result<(), String> {
    let postgres = bin.join("postgres");
    let (data, socket_dir) = (data.to_path_buf(), socket_dir.to_path_buf());
    let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    // The server's parent-death signal fires when this thread ends: it never does.
    std::thread::spawn(move || {
        let mut cmd = Command::new(postgres);
        cmd.arg("-D").arg(&data).arg("-k").arg(&socket_dir);
        let fixed = [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=300",
            "shared_buffers=32MB",
        ];
        for setting in fixed.iter().map(|s| s.to_string()).chain(settings) {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        as_user(&mut cmd, user);
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let child = cmd.spawn();
        let _ = tx.send(child.map(|_| ()).map_err(|e| format!("postgres: {e}")));
        loop {
            std::thread::park();
        }
    });
    rx.recv().map_err(|e| e.to_string())?
}

/// A second server, for TLS: on 127.0.0.1 (a free port, returned) with
/// `ssl = on` and this certificate chain and key (PEM); its cluster lives in
/// the test server's directory. `None` where no server is installed.
#[cfg(test)]
pub(crate) async fn tls_server(cert_pem: &str, key_pem: &str) -> Option<u16> {
    let server = match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(_) => return fresh_database().await.map(|_| 0),
    };
    let n = server.next.fetch_add(1, Ordering::Relaxed);
    let dir = server.dir.join(format!("tls{n}"));
    let bin = bin_dir().unwrap();
    let user = server_user().unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    if let Some((uid, gid)) = user {
        chown(&dir, uid, gid).unwrap();
    }
    init_cluster(&bin, &data, user).unwrap();
    for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
        let path = data.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        if let Some((uid, gid)) = user {
            chown(&path, uid, gid).unwrap();
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = [
        "listen_addresses=127.0.0.1".to_string(),
        format!("port={port}"),
        "ssl=on".to_string(),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    spawn_server(&bin, &data, &dir, &settings, user).unwrap();
    // Ready once it accepts a connection (over the socket, no TLS).
    let url = format!(
        "host={} port={port} user=bridge dbname=postgres",
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "TLS test server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(port)
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))
}

/// Directories left by test processes that are gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fhir-bridge-pg-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
