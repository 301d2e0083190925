//! TLS per source and per hook, against the real binary: HTTPS EHRs and
//! receivers whose certificates a test CA signed (not one the system trusts).
//! Without `ca_file` the bridge refuses them, with a readable certificate
//! error on status; with it, it polls and delivers. Servers that require a
//! client certificate refuse a bridge without `client_cert`/`client_key` and
//! accept one with them. Verification cannot be turned off.

mod common;

use common::scripted::{Scripted, Seen, bundle, now_instant, observation, status_with};
use common::{Bridge, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA with a server certificate (127.0.0.1, localhost) and a client
/// certificate it signed, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    /// The client key's PEM, to look for in logs.
    client_key_pem: String,
}

impl Pki {
    /// `ca_name`: the CA's common name (issuers are found by name).
    fn new(ca_name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![purpose];
            (params.signed_by(&key, &issuer).unwrap(), key)
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["fhir-bridge".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ca_file` only, or with the client certificate and key too.
    fn keys(&self, client_cert: bool) -> String {
        let mut keys = format!("ca_file = \"{}\"\n", self.file("ca.pem").display());
        if client_cert {
            keys.push_str(&format!(
                "client_cert = \"{}\"\nclient_key = {{ file = \"{}\" }}\n",
                self.file("client.pem").display(),
                self.file("client.key").display()
            ));
        }
        keys
    }

    /// An HTTPS server with the server certificate; with `require_client`,
    /// only clients with a certificate from the CA get past the handshake.
    async fn serve(
        &self,
        require_client: bool,
        script: impl Fn(&Seen) -> axum::response::Response + Send + Sync + 'static,
    ) -> (Scripted, Arc<Mutex<Vec<String>>>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let refused = Arc::new(Mutex::new(Vec::new()));
        let listener = TlsListener {
            tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            refused: refused.clone(),
        };
        (Scripted::serve(listener, "https", script), refused)
    }
}

/// Accepts TCP connections and completes their TLS handshakes; a refused
/// handshake is recorded, and the next connection accepted.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => self.refused.lock().unwrap().push(e.to_string()),
                Err(_) => self.refused.lock().unwrap().push("timed out".into()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

fn ehr_script(_: &Seen) -> axum::response::Response {
    bundle(
        &now_instant(),
        vec![observation("o1", "1", "2026-01-01T00:00:00Z")],
        None,
    )
}

fn source(name: &str, base: &str, tls: &str) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\nbase_url = \"{base}\"\nresources = [\"Observation\"]\nevery = \"300ms\"\nstart = \"beginning\"\ntimeout = \"2s\"\n{tls}\n"
    )
}

fn hook(name: &str, url: &str, tls: &str) -> String {
    format!(
        "[[hook]]\nname = \"{name}\"\nurl = \"{url}\"\nsources = [\"trusting\"]\nretry_schedule = [\"1s\"]\ntimeout = \"2s\"\n{tls}\n"
    )
}

fn source_status(bridge: &Bridge, name: &str) -> serde_json::Value {
    let st = bridge.status_json();
    st["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .map(|s| s["targets"][0].clone())
        .unwrap_or_default()
}

fn hook_status(bridge: &Bridge, name: &str) -> serde_json::Value {
    let st = bridge.status_json();
    st["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == name))
        .cloned()
        .unwrap_or_default()
}

fn error_of(v: &serde_json::Value) -> String {
    v["last_error"].as_str().unwrap_or_default().to_string()
}

/// Requests that reached `path` on `server` (past the TLS handshake).
fn requests_to(server: &Scripted, path: &str) -> usize {
    server.seen().iter().filter(|s| s.uri == path).count()
}

/// The hospital's CA is trusted with `ca_file`, and only there. The
/// "system" roots (another CA, through `SSL_CERT_FILE`) stay trusted beside
/// it: `ca_file` adds to them, it does not replace them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_only_with_ca_file() {
    let pki = Pki::new("test hospital CA");
    let system = Pki::new("test public CA");
    let (ehr, _) = pki.serve(false, ehr_script).await;
    let (rx, _) = pki.serve(false, |_| status_with(200, &[])).await;
    let (public_ehr, _) = system.serve(false, ehr_script).await;
    let (public_rx, _) = system.serve(false, |_| status_with(200, &[])).await;
    let config = format!(
        "state_dir = \"state\"\n\n{}{}{}{}{}{}",
        source("untrusting", &ehr.url("/fhir"), ""),
        source("trusting", &ehr.url("/fhir"), &pki.keys(false)),
        source("public", &public_ehr.url("/fhir"), &pki.keys(false)),
        hook("untrusting", &rx.url("/hooks/untrusting"), ""),
        hook("trusting", &rx.url("/hooks/trusting"), &pki.keys(false)),
        hook("public", &public_rx.url("/hooks/public"), &pki.keys(false)),
    );
    let system_roots = system.file("ca.pem");
    let mut bridge = Bridge::start_with_env(
        &config,
        &[("SSL_CERT_FILE", system_roots.to_str().unwrap())],
    );
    wait_for(15, "delivered through the trusted CA", || {
        hook_status(&bridge, "trusting")["delivered"] == 1
    })
    .await;
    wait_for(15, "delivered through the system's roots", || {
        hook_status(&bridge, "public")["delivered"] == 1
    })
    .await;
    wait_for(15, "the source on the system's roots polled", || {
        source_status(&bridge, "public")["last_outcome"] == "ok"
    })
    .await;
    wait_for(15, "the untrusting source's certificate error", || {
        error_of(&source_status(&bridge, "untrusting")).contains("certificate")
    })
    .await;
    wait_for(15, "the untrusting hook's certificate error", || {
        error_of(&hook_status(&bridge, "untrusting")).contains("certificate")
    })
    .await;
    let source_error = error_of(&source_status(&bridge, "untrusting"));
    let hook_error = error_of(&hook_status(&bridge, "untrusting"));
    eprintln!("source: {source_error}\nhook: {hook_error}");
    assert!(
        source_error.contains("connection failed: ") && source_error.contains("UnknownIssuer"),
        "{source_error}"
    );
    assert!(
        hook_error.starts_with("connection failed: ") && hook_error.contains("UnknownIssuer"),
        "{hook_error}"
    );
    wait_for(15, "the trusting source polled", || {
        source_status(&bridge, "trusting")["last_outcome"] == "ok"
    })
    .await;
    assert_eq!(hook_status(&bridge, "untrusting")["delivered"], 0);
    assert_eq!(requests_to(&rx, "/hooks/untrusting"), 0);
    assert_eq!(requests_to(&rx, "/hooks/trusting"), 1);
    bridge.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_client_cert_and_client_key() {
    let pki = Pki::new("test hospital CA");
    let (ehr, ehr_refused) = pki.serve(true, ehr_script).await;
    let (rx, rx_refused) = pki.serve(true, |_| status_with(200, &[])).await;
    // The hook's key is written into the config itself (a literal secret).
    let literal_key = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = '''\n{}'''\n",
        pki.file("ca.pem").display(),
        pki.file("client.pem").display(),
        pki.client_key_pem
    );
    let config = format!(
        "state_dir = \"state\"\n\n{}{}{}{}",
        source("anonymous", &ehr.url("/fhir"), &pki.keys(false)),
        source("trusting", &ehr.url("/fhir"), &pki.keys(true)),
        hook("anonymous", &rx.url("/hooks/anonymous"), &pki.keys(false)),
        hook("trusting", &rx.url("/hooks/trusting"), &literal_key),
    );
    let mut bridge = Bridge::start(&config);
    wait_for(15, "delivered with the client certificate", || {
        hook_status(&bridge, "trusting")["delivered"] == 1
    })
    .await;
    wait_for(15, "the anonymous source refused", || {
        !error_of(&source_status(&bridge, "anonymous")).is_empty()
    })
    .await;
    wait_for(15, "the anonymous hook refused", || {
        !error_of(&hook_status(&bridge, "anonymous")).is_empty()
    })
    .await;
    let source_error = error_of(&source_status(&bridge, "anonymous"));
    let hook_error = error_of(&hook_status(&bridge, "anonymous"));
    eprintln!("source: {source_error}\nhook: {hook_error}");
    for e in [&source_error, &hook_error] {
        assert!(e.to_lowercase().contains("certificate"), "{e}");
    }
    wait_for(15, "the trusting source polled", || {
        source_status(&bridge, "trusting")["last_outcome"] == "ok"
    })
    .await;
    assert_eq!(hook_status(&bridge, "anonymous")["delivered"], 0);
    assert_eq!(requests_to(&rx, "/hooks/anonymous"), 0);
    assert_eq!(requests_to(&rx, "/hooks/trusting"), 1);
    for refused in [&ehr_refused, &rx_refused] {
        let refused = refused.lock().unwrap();
        assert!(
            refused.iter().any(|e| e.contains("no certificates")),
            "{refused:?}"
        );
    }

    // The client key reaches neither logs nor status.
    let mut text = String::new();
    for args in [&["status"][..], &["status", "--json"], &["dlq", "list"]] {
        text.push_str(&String::from_utf8_lossy(&bridge.cli(args).stdout));
    }
    bridge.stop();
    text.push_str(&bridge.logs());
    for line in pki
        .client_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(
            !text.contains(line),
            "the client key reached logs or status"
        );
    }
}
