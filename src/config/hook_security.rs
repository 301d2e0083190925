//! A hook's signing secrets, static headers and receiver authentication,
//! validated. Every secret resolves (and every signing key parses) when the
//! config loads, so `validate` catches a missing env var or a bad key.

use super::ctx::Ctx;
use super::raw::{RawHook, RawHookAuth};
use super::{ConfigError, HookAuth};
use crate::signing::webhook::SigningKey;
use secrecy::ExposeSecret;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

/// Headers the bridge sets itself: a static header must not replace them.
const OWN_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "transfer-encoding",
];

pub(super) struct HookSecurity {
    pub signing_keys: Arc<Vec<SigningKey>>,
    pub headers: Vec<(String, String)>,
    pub auth: Option<HookAuth>,
}

pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    spanned: &Spanned<RawHook>,
) -> Result<HookSecurity, ConfigError> {
    let h = spanned.get_ref();
    let dir = ctx.config_dir();
    let mut signing_keys = Vec::new();
    if let Some(secrets) = &h.signing_secrets {
        for (i, secret) in secrets.get_ref().iter().enumerate() {
            let value = secret.resolve(dir).map_err(|e| {
                ctx.err(
                    secrets.span(),
                    format!("{what}: `signing_secrets[{i}]`: {e}"),
                )
            })?;
            let key = SigningKey::parse(value.expose_secret()).map_err(|e| {
                ctx.err(
                    secrets.span(),
                    format!("{what}: `signing_secrets[{i}]`: {e}"),
                )
            })?;
            signing_keys.push(key);
        }
    }

    let mut headers = Vec::new();
    if let Some(map) = &h.headers {
        for (name, value) in map.get_ref() {
            let bad = |m: &str| ctx.err(map.span(), format!("{what}: `headers.{name}`: {m}"));
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad("not a valid header name"));
            }
            if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(bad("the bridge sets this header itself"));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(bad("not a valid header value"));
            }
            headers.push((name.clone(), value.clone()));
        }
    }

    let auth = match &h.auth {
        None => None,
        Some(a) => Some(auth(ctx, what, a, h.allow_insecure_http.unwrap_or(false))?),
    };
    Ok(HookSecurity {
        signing_keys: Arc::new(signing_keys),
        headers,
        auth,
    })
}

/// `[hook.auth]`: Basic, or OAuth client credentials.
fn auth(
    ctx: &Ctx,
    what: &str,
    a: &Spanned<RawHookAuth>,
    allow_insecure_http: bool,
) -> Result<HookAuth, ConfigError> {
    let raw = a.get_ref();
    let kind = raw.kind.get_ref().as_str();
    let err = |m: String| ctx.err(a.span(), format!("{what}: `auth`: {m}"));
    // Keys that belong to another type are a mistake worth reporting.
    let given = [
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("token_url", raw.token_url.is_some()),
        ("client_id", raw.client_id.is_some()),
        ("client_secret", raw.client_secret.is_some()),
        ("scope", raw.scope.is_some()),
        ("audience", raw.audience.is_some()),
        ("method", raw.method.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "basic" => &["username", "password"],
        "oauth" => &[
            "token_url",
            "client_id",
            "client_secret",
            "scope",
            "audience",
            "method",
        ],
        other => {
            return Err(ctx.err(
                raw.kind.span(),
                format!("{what}: `auth.type`: `{other}` is not one of \"basic\", \"oauth\""),
            ));
        }
    };
    if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(err(format!("`{key}` does not apply to type \"{kind}\"")));
    }
    if kind == "oauth" {
        let cc = super::source_auth::client_credentials(
            ctx,
            what,
            kind,
            super::source_auth::RawClientCredentials {
                token_url: raw.token_url.as_ref(),
                client_id: raw.client_id.as_ref(),
                client_secret: raw.client_secret.as_ref(),
                scope: raw.scope.as_ref(),
                audience: raw.audience.as_ref(),
                method: raw.method.as_ref(),
            },
            a.span(),
            allow_insecure_http,
        )?;
        return Ok(HookAuth::OAuth(cc));
    }
    let (Some(username), Some(password)) = (&raw.username, &raw.password) else {
        return Err(err("type \"basic\" needs `username` and `password`".into()));
    };
    let password = password
        .resolve(ctx.config_dir())
        .map_err(|e| ctx.err(a.span(), format!("{what}: `auth.password`: {e}")))?;
    Ok(HookAuth::Basic {
        username: username.clone(),
        password: Arc::new(password),
    })
}

/// Whether a hook writes a secret into the config file itself.
pub(super) fn has_literal_secret(h: &RawHook) -> bool {
    let signing = h
        .signing_secrets
        .as_ref()
        .is_some_and(|s| s.get_ref().iter().any(|x| x.is_literal()));
    let auth = h.auth.as_ref().is_some_and(|a| {
        let a = a.get_ref();
        [&a.password, &a.client_secret]
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| s.is_literal()))
    });
    let key = h
        .client_key
        .as_ref()
        .is_some_and(|k| k.get_ref().is_literal());
    signing || auth || key
}

/// Whether users other than the owner can read the file (unix).
pub(super) fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}
