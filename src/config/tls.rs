//! `ca_file`, `client_cert` and `client_key` of a source or a hook: extra
//! trust anchors (a hospital's own PKI) and a client certificate for mutual
//! TLS. Certificate verification is always on; these keys only add to what
//! is trusted and what the bridge presents. Every file is read, and every
//! certificate and key parsed, when the config loads.

use super::ConfigError;
use super::ctx::Ctx;
use super::raw::RawTls;
use crate::http::error_text;
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::sync::Arc;

/// A source's or hook's TLS settings beyond the system's defaults.
#[derive(Clone)]
pub struct Tls {
    /// Added to the system's roots (through the platform verifier), never
    /// instead of them: an EHR behind a public certificate keeps working.
    ca_certs: Vec<reqwest::Certificate>,
    client: Option<ClientIdentity>,
}

/// A client certificate chain (PEM) and its private key.
#[derive(Clone)]
struct ClientIdentity {
    chain_pem: String,
    key: Arc<SecretString>,
}

impl ClientIdentity {
    fn identity(&self) -> Result<reqwest::Identity, reqwest::Error> {
        // reqwest takes certificate and key as one PEM; the copy that holds
        // the key is zeroed when dropped.
        let both = SecretString::from(format!(
            "{}\n{}\n",
            self.chain_pem,
            self.key.expose_secret()
        ));
        reqwest::Identity::from_pem(both.expose_secret().as_bytes())
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_certs", &self.ca_certs.len())
            .field("client_cert", &self.client.is_some())
            .field("client_key", &self.client.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Tls {
    /// `builder` with these settings: the extra roots merged into the
    /// system's, and the client certificate.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        let mut builder = builder;
        if !self.ca_certs.is_empty() {
            builder = builder.tls_certs_merge(self.ca_certs.iter().cloned());
        }
        if let Some(client) = &self.client {
            builder = builder.identity(client.identity()?);
        }
        Ok(builder)
    }
}

/// The TLS keys of one source or hook, or `None` when it sets none.
pub(super) fn validate(ctx: &Ctx, what: &str, raw: RawTls) -> Result<Option<Tls>, ConfigError> {
    let dir = ctx.config_dir();
    let ca_certs = match raw.ca_file {
        None => Vec::new(),
        Some(file) => {
            let err = |m: String| ctx.err(file.span(), format!("{what}: `ca_file`: {m}"));
            let path = dir.join(file.get_ref());
            let (certs, _) = read_certs(&path).map_err(err)?;
            // Parses every certificate (a PEM block of garbage is an error
            // here, not at the first connection). `tls_certs_only` builds
            // without reading the system's roots: a check, not the client.
            reqwest::Client::builder()
                .tls_certs_only(certs.iter().cloned())
                .build()
                .map_err(|e| {
                    err(format!(
                        "a certificate in {} does not parse ({})",
                        path.display(),
                        error_text(&e)
                    ))
                })?;
            certs
        }
    };
    let client = match (raw.client_cert, raw.client_key) {
        (None, None) => None,
        (Some(cert), None) => {
            return Err(ctx.err(
                cert.span(),
                format!("{what}: `client_cert` needs `client_key` (its private key)"),
            ));
        }
        (None, Some(key)) => {
            return Err(ctx.err(
                key.span(),
                format!("{what}: `client_key` needs `client_cert` (its certificate chain)"),
            ));
        }
        (Some(cert), Some(key)) => {
            let cert_err = |m: String| ctx.err(cert.span(), format!("{what}: `client_cert`: {m}"));
            let key_err = |m: String| ctx.err(key.span(), format!("{what}: `client_key`: {m}"));
            let path = dir.join(cert.get_ref());
            let (_, bytes) = read_certs(&path).map_err(cert_err)?;
            let chain_pem = String::from_utf8(bytes)
                .map_err(|_| cert_err(format!("{} is not a PEM file", path.display())))?;
            let key_pem = key.get_ref().resolve(dir).map_err(key_err)?;
            // Said without quoting the value: it is the private key.
            if !has_private_key(key_pem.expose_secret()) {
                return Err(key_err(
                    "not a PEM private key (PKCS#8, PKCS#1 or SEC1; encrypted keys are not supported)"
                        .into(),
                ));
            }
            let client = ClientIdentity {
                chain_pem,
                key: Arc::new(key_pem),
            };
            let identity = client.identity().map_err(|e| {
                key_err(format!(
                    "does not make an identity with `client_cert` {}: {}",
                    path.display(),
                    error_text(&e)
                ))
            })?;
            // The key must parse and belong to the chain's first certificate;
            // rustls checks both when the client is built.
            reqwest::Client::builder()
                .tls_certs_only(Vec::new())
                .identity(identity)
                .build()
                .map_err(|e| {
                    key_err(format!(
                        "not usable with `client_cert` {} ({})",
                        path.display(),
                        error_text(&e)
                    ))
                })?;
            Some(client)
        }
    };
    if ca_certs.is_empty() && client.is_none() {
        return Ok(None);
    }
    Ok(Some(Tls { ca_certs, client }))
}

/// The certificates of a PEM file (at least one), and the file.
fn read_certs(path: &Path) -> Result<(Vec<reqwest::Certificate>, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    super::fingerprint::record(&bytes);
    let certs = reqwest::Certificate::from_pem_bundle(&bytes)
        .map_err(|e| format!("{} is not PEM: {}", path.display(), error_text(&e)))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok((certs, bytes))
}

/// Whether `pem` has a private key block of a kind reqwest reads.
fn has_private_key(pem: &str) -> bool {
    pem.lines().any(|l| {
        matches!(
            l.trim(),
            "-----BEGIN PRIVATE KEY-----"
                | "-----BEGIN RSA PRIVATE KEY-----"
                | "-----BEGIN EC PRIVATE KEY-----"
        )
    })
}
