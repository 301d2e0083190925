//! `[admin]`: the listener for `/metrics`, `/healthz` and `/readyz`.

use super::ConfigError;
use super::raw::RawAdmin;
use super::validate::Ctx;
use std::net::SocketAddr;
use toml::Spanned;

/// The admin listener, when `[admin] listen` is set (off by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
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
    Ok(Some(Admin { listen: addr }))
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
