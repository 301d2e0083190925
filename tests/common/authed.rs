//! A FHIR server behind the auth proxy, with one registered client and the
//! `[source.auth]` the bridge needs for it. SMART keys come from the real
//! binary's `keys generate`, as an operator would make them.

use super::FhirServer;
use super::auth_server::{AuthServer, Client, Options, Stats, renewal_due};
use jsonwebtoken::jwk::JwkSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the bridge authenticates to the proxy.
#[derive(Debug, Clone, Copy)]
pub enum AuthKind {
    /// OAuth client credentials, secret in a file, client_secret_basic.
    ClientCredentials,
    /// SMART Backend Services with an `ES384` or `RS384` key; `discovery`:
    /// no `token_url`, the bridge reads `.well-known/smart-configuration`.
    Smart { alg: &'static str, discovery: bool },
}

/// As short as the bridge takes (it clamps to >= 5 s and renews at half of
/// it), so holding one page until renewal costs 2.5 s.
pub const LIFETIME: Duration = Duration::from_secs(5);
/// Early enough that even the shortest scenario sees a 401 then a refresh.
pub const REVOKE_AT: usize = 3;
const SCOPES: &str = "system/Observation.rs system/Encounter.rs";
/// Form-urlencoded in Basic by the bridge, decoded by the server.
const CLIENT_SECRET: &str = "cc-secret:with/odd+chars%";

pub struct Authed {
    /// Polled through the proxy, written to directly.
    pub fhir: FhirServer,
    pub auth: AuthServer,
    kind: AuthKind,
    started: Instant,
    /// Holds the secret and key files the config names.
    _dir: tempfile::TempDir,
}

/// `fhir-bridge keys generate --alg ALG --out DIR`: the private key file and
/// the JWKS to register.
pub fn generate_key(alg: &str, dir: &Path) -> (PathBuf, JwkSet) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
        .args(["keys", "generate", "--alg", alg, "--out"])
        .arg(dir)
        .output()
        .expect("run keys generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = serde_json::from_slice(&out.stdout).expect("a JWKS on stdout");
    let pem = dir.join(format!("fhir-bridge-{}.pem", alg.to_lowercase()));
    assert!(pem.exists(), "no {}", pem.display());
    (pem, jwks)
}

impl Authed {
    pub async fn start(inner: FhirServer, kind: AuthKind) -> Authed {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = AuthServer::start(
            &inner.base_url(),
            Options {
                scopes: SCOPES.split(' ').map(String::from).collect(),
                lifetime: LIFETIME,
                revoke_at: Some(REVOKE_AT),
                hold_a_page: true,
            },
        )
        .await;
        let auth_toml = match kind {
            AuthKind::ClientCredentials => {
                let secret = dir.path().join("client-secret");
                std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).expect("write secret");
                auth.register(Client::Secret {
                    id: "bridge-cc".into(),
                    secret: CLIENT_SECRET.into(),
                    audience: Some(auth.base_url()),
                });
                format!(
                    "[source.auth]\ntype = \"client-credentials\"\ntoken_url = \"{}\"\nclient_id = \"bridge-cc\"\nclient_secret = {{ file = \"{}\" }}\nscope = \"{SCOPES}\"\naudience = \"{}\"\nmethod = \"client_secret_basic\"\n",
                    auth.token_url(),
                    secret.display(),
                    auth.base_url(),
                )
            }
            AuthKind::Smart { alg, discovery } => {
                let (pem, jwks) = generate_key(alg, dir.path());
                let id = format!("smart-{}", alg.to_lowercase());
                auth.register(Client::Jwks {
                    id: id.clone(),
                    jwks,
                });
                let token_url = if discovery {
                    String::new()
                } else {
                    format!("token_url = \"{}\"\n", auth.token_url())
                };
                format!(
                    "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"{id}\"\nprivate_key = {{ file = \"{}\" }}\nscope = \"{SCOPES}\"\n{token_url}",
                    pem.display()
                )
            }
        };
        Authed {
            fhir: FhirServer::Authed {
                inner: Box::new(inner),
                proxy: auth.clone(),
                auth_toml,
            },
            auth,
            kind,
            started: Instant::now(),
            _dir: dir,
        }
    }

    /// Asserts what a good client must show; `pages`: the scenario pages,
    /// so a renewal between pages must have happened; `runs`: how many times
    /// the scenario started the daemon (each fetches its first token).
    pub fn check(&self, what: &str, pages: bool, runs: usize) -> Stats {
        let s = self.auth.stats();
        eprintln!(
            "{what} ({:.1} s): {} tokens issued, requests per token {:?}, 401s {:?}, {} renewed between pages, {} refreshed after a 401, {} page held, {} discovery reads",
            self.started.elapsed().as_secs_f64(),
            s.issued,
            s.per_token,
            s.unauthorized,
            s.renewed_between_pages,
            s.refreshed_after_401,
            s.held,
            s.discovery
        );
        // Tokens are cached: a new one per run, per revocation, per renewal
        // (at most one per half lifetime), plus one for a run killed while
        // fetching. A fetch per request would be far above this.
        let renewals = self.started.elapsed().as_secs_f64() / renewal_due(LIFETIME).as_secs_f64();
        let most = runs + s.revocations + renewals as usize + 1;
        assert!(
            s.issued <= most,
            "{what}: {} tokens, expected at most {most}: {s:?}",
            s.issued
        );
        s.assert_sound();
        match self.kind {
            AuthKind::Smart {
                discovery: true, ..
            } => {
                assert!(s.discovery >= 1, "no discovery: {s:?}")
            }
            _ => assert_eq!(s.discovery, 0, "discovery with a token_url: {s:?}"),
        }
        if pages {
            assert!(
                s.renewed_between_pages >= 1,
                "no renewal between pages: {s:?}"
            );
        }
        s
    }
}
