//! `[admin]`: the listener for `/metrics`, `/healthz` and `/readyz`, and
//! the token `$events` asks for before it serves resource bodies.

use super::ConfigError;
use super::ctx::Ctx;
use super::raw::RawAdmin;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use toml::Spanned;

/// The admin listener, when `[admin] listen` is set (off by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// `[admin] token`: without it `$events` serves no resource bodies.
    pub token: Option<AdminToken>,
}

/// A shorter token could be guessed by a local account at loopback speed.
const MIN_TOKEN_LEN: usize = 16;

/// The admin token, kept only as its SHA-256: a presented token is hashed
/// and the digests compared in constant time (equal lengths, no early exit),
/// so neither the value nor its length leaks through timing. Debug shows
/// nothing of it.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    fn new(value: &str) -> AdminToken {
        AdminToken(Sha256::digest(value.as_bytes()).into())
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.0.ct_eq(&digest).into()
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AdminToken {}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(redacted)")
    }
}

/// The endpoints have no authentication, so they stay on this machine unless
/// the operator says otherwise (`allow_remote = true`, behind a firewall).
pub(super) fn validate(ctx: &Ctx, raw: &Spanned<RawAdmin>) -> Result<Option<Admin>, ConfigError> {
    let raw = raw.get_ref();
    let Some(listen) = &raw.listen else {
        return Ok(None);
    };
    let addr: SocketAddr = listen.get_ref().trim().parse().map_err(|_| {
        ctx.err(
            listen.span(),
            "[admin]: `listen` must be an IP address and a port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"",
        )
    })?;
    if !addr.ip().is_loopback() && raw.allow_remote != Some(true) {
        return Err(ctx.err(
            listen.span(),
            format!(
                "[admin]: `listen` = \"{addr}\" is reachable from other machines, and the admin endpoints have no authentication; use a loopback address (127.0.0.1), or set `allow_remote = true` (and firewall it)"
            ),
        ));
    }
    let token = match &raw.token {
        None => None,
        Some(secret) => {
            let err = |e: String| ctx.err(secret.span(), format!("[admin]: `token`: {e}"));
            let value = secret.get_ref().resolve(ctx.config_dir()).map_err(err)?;
            check_token(value.expose_secret()).map_err(|e| err(e.into()))?;
            Some(AdminToken::new(value.expose_secret()))
        }
    };
    Ok(Some(Admin {
        listen: addr,
        token,
    }))
}

/// A token a client can send as `Authorization: Bearer TOKEN` and nobody
/// guesses; the error never quotes it.
fn check_token(value: &str) -> Result<(), &'static str> {
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (it is sent in an HTTP header)");
    }
    if value.len() < MIN_TOKEN_LEN {
        return Err("must be at least 16 characters (e.g. `openssl rand -hex 32`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    fn load(admin: &str) -> Result<Config, ConfigError> {
        Config::from_str(&format!("state_dir = \"s\"\n{admin}"), Path::new("b.toml"))
    }

    fn error(admin: &str) -> String {
        load(admin).unwrap_err().to_string()
    }

    #[test]
    fn off_unless_listen_is_set() {
        assert_eq!(load("").unwrap().admin, None);
        assert_eq!(load("[admin]\n").unwrap().admin, None);
        let on = load("[admin]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(on.admin.unwrap().listen.to_string(), "127.0.0.1:9464");
        let v6 = load("[admin]\nlisten = \"[::1]:9464\"\n").unwrap();
        assert_eq!(v6.admin.unwrap().listen.port(), 9464);
    }

    #[test]
    fn a_bad_address_names_the_line_and_key() {
        for bad in ["localhost:9464", "127.0.0.1", "9464", "127.0.0.1:99999", ""] {
            let e = error(&format!("[admin]\nlisten = \"{bad}\"\n"));
            assert!(
                e.starts_with("b.toml:3: [admin]: `listen` must be an IP address and a port"),
                "{bad}: {e}"
            );
        }
        let e = error("[admin]\nlisten = \"127.0.0.1:9464\"\nport = 1\n");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn the_token_is_a_secret_kept_as_a_digest() {
        let on = |t: &str| {
            load(&format!(
                "[admin]\nlisten = \"127.0.0.1:9464\"\ntoken = {t}\n"
            ))
        };
        let admin = on("\"0123456789abcdef-tok\"").unwrap().admin.unwrap();
        let token = admin.token.unwrap();
        assert!(token.matches(b"0123456789abcdef-tok"));
        assert!(!token.matches(b"0123456789abcdef-to"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "AdminToken(redacted)");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
        let admin = on(&format!("{{ file = \"{}\" }}", file.display()))
            .unwrap()
            .admin
            .unwrap();
        assert!(admin.token.unwrap().matches(b"from-a-file-0123456789"));
        assert_eq!(
            load("[admin]\nlisten = \"127.0.0.1:9464\"\n")
                .unwrap()
                .admin
                .unwrap()
                .token,
            None
        );
        for (bad, why) in [
            ("\"short\"", "at least 16 characters"),
            ("\"with a space 0123456789\"", "printable ASCII"),
            (
                "{ env = \"FHIR_BRIDGE_TEST_NO_ADMIN_TOKEN\" }",
                "is not set",
            ),
        ] {
            let e = on(bad).unwrap_err().to_string();
            assert!(
                e.contains("[admin]: `token`: ") && e.contains(why),
                "{bad}: {e}"
            );
            assert!(!e.contains("0123456789"), "the error quotes the token: {e}");
        }
    }

    #[test]
    fn a_remote_address_needs_allow_remote() {
        for remote in ["0.0.0.0:9464", "192.0.2.10:9464", "[::]:9464"] {
            let e = error(&format!("[admin]\nlisten = \"{remote}\"\n"));
            assert!(e.contains("reachable from other machines"), "{e}");
            assert!(e.contains("allow_remote = true"), "{e}");
            let e = error(&format!(
                "[admin]\nlisten = \"{remote}\"\nallow_remote = false\n"
            ));
            assert!(e.contains("reachable from other machines"), "{e}");
            let ok = load(&format!(
                "[admin]\nlisten = \"{remote}\"\nallow_remote = true\n"
            ));
            assert_eq!(ok.unwrap().admin.unwrap().listen.to_string(), remote);
        }
    }
}
