//! `[source.auth]`, validated: every secret resolves when the config loads.

use super::ctx::Ctx;
use super::raw::RawSourceAuth;
use super::secret::RawSecret;
use super::{ClientCredentials, ConfigError, SourceAuth};
use std::ops::Range;
use std::sync::Arc;
use toml::Spanned;

/// The OAuth client credentials keys of an `auth` table (`[source.auth]`
/// or `[hook.auth]`).
pub(super) struct RawClientCredentials<'a> {
    pub token_url: Option<&'a Spanned<String>>,
    pub client_id: Option<&'a String>,
    pub client_secret: Option<&'a RawSecret>,
    pub scope: Option<&'a String>,
    pub audience: Option<&'a String>,
    pub method: Option<&'a Spanned<String>>,
}

/// Client credentials, validated: `token_url` is https (or loopback, or
/// allowed), the secret resolves. `span` is the auth table's; `kind` its type.
pub(super) fn client_credentials(
    ctx: &Ctx,
    what: &str,
    kind: &str,
    a: RawClientCredentials,
    span: Range<usize>,
    allow_insecure_http: bool,
) -> Result<ClientCredentials, ConfigError> {
    let err = |m: String| ctx.err(span.clone(), format!("{what}: `auth`: {m}"));
    let need = |field: &str| err(format!("type \"{kind}\" needs `{field}`"));
    let raw_url = a.token_url.ok_or_else(|| need("token_url"))?;
    let token_url = token_url(ctx, what, raw_url, allow_insecure_http)?;
    let secret_in_header = match a.method.map(|m| m.get_ref().as_str()) {
        None | Some("client_secret_basic") => true,
        Some("client_secret_post") => false,
        Some(other) => {
            return Err(err(format!(
                "`method`: `{other}` is not \"client_secret_basic\" or \"client_secret_post\""
            )));
        }
    };
    let client_id = a.client_id.cloned().ok_or_else(|| need("client_id"))?;
    let client_secret = a
        .client_secret
        .ok_or_else(|| need("client_secret"))?
        .resolve(ctx.config_dir())
        .map_err(|e| err(format!("`client_secret`: {e}")))?;
    Ok(ClientCredentials {
        token_url,
        client_id,
        client_secret: Arc::new(client_secret),
        scope: a.scope.cloned(),
        audience: a.audience.cloned(),
        secret_in_header,
    })
}

pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    auth: Option<&Spanned<RawSourceAuth>>,
    allow_insecure_http: bool,
) -> Result<SourceAuth, ConfigError> {
    let Some(spanned) = auth else {
        return Ok(SourceAuth::None);
    };
    let a = spanned.get_ref();
    let kind = a.kind.get_ref().as_str();
    let err = |m: String| ctx.err(spanned.span(), format!("{what}: `auth`: {m}"));
    let need = |field: &str| err(format!("type \"{kind}\" needs `{field}`"));
    let secret = |key: &str, s: &super::secret::RawSecret| {
        s.resolve(ctx.config_dir())
            .map(Arc::new)
            .map_err(|e| err(format!("`{key}`: {e}")))
    };
    // Keys that belong to another type are a mistake worth reporting.
    let given: Vec<(&str, bool)> = vec![
        ("username", a.username.is_some()),
        ("password", a.password.is_some()),
        ("token", a.token.is_some()),
        ("token_url", a.token_url.is_some()),
        ("client_id", a.client_id.is_some()),
        ("client_secret", a.client_secret.is_some()),
        ("scope", a.scope.is_some()),
        ("audience", a.audience.is_some()),
        ("method", a.method.is_some()),
        ("private_key", a.private_key.is_some()),
        ("kid", a.kid.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "none" => &[],
        "basic" => &["username", "password"],
        "bearer" => &["token"],
        "client-credentials" => &[
            "token_url",
            "client_id",
            "client_secret",
            "scope",
            "audience",
            "method",
        ],
        "smart-backend" => &["client_id", "private_key", "kid", "scope", "token_url"],
        other => {
            return Err(ctx.err(
                a.kind.span(),
                format!(
                    "{what}: `auth.type`: `{other}` is not one of \"none\", \"basic\", \"bearer\", \"client-credentials\", \"smart-backend\""
                ),
            ));
        }
    };
    if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(err(format!("`{key}` does not apply to type \"{kind}\"")));
    }
    Ok(match kind {
        "basic" => SourceAuth::Basic {
            username: a.username.clone().ok_or_else(|| need("username"))?,
            password: secret(
                "password",
                a.password.as_ref().ok_or_else(|| need("password"))?,
            )?,
        },
        "bearer" => SourceAuth::Bearer {
            token: secret("token", a.token.as_ref().ok_or_else(|| need("token"))?)?,
        },
        "smart-backend" => {
            let pem = secret(
                "private_key",
                a.private_key.as_ref().ok_or_else(|| need("private_key"))?,
            )?;
            let key = crate::signing::smart::SmartKey::from_pem(
                secrecy::ExposeSecret::expose_secret(&*pem),
                a.kid.as_deref(),
            )
            .map_err(|e| err(format!("`private_key`: {e}")))?;
            SourceAuth::SmartBackend {
                client_id: a.client_id.clone().ok_or_else(|| need("client_id"))?,
                key: Arc::new(key),
                scope: a.scope.clone(),
                token_url: match &a.token_url {
                    Some(u) => Some(token_url(ctx, what, u, allow_insecure_http)?),
                    None => None,
                },
                allow_insecure_http,
            }
        }
        "client-credentials" => SourceAuth::ClientCredentials(client_credentials(
            ctx,
            what,
            kind,
            RawClientCredentials {
                token_url: a.token_url.as_ref(),
                client_id: a.client_id.as_ref(),
                client_secret: a.client_secret.as_ref(),
                scope: a.scope.as_ref(),
                audience: a.audience.as_ref(),
                method: a.method.as_ref(),
            },
            spanned.span(),
            allow_insecure_http,
        )?),
        _ => SourceAuth::None,
    })
}

fn token_url(
    ctx: &Ctx,
    what: &str,
    raw: &Spanned<String>,
    allow_insecure_http: bool,
) -> Result<url::Url, ConfigError> {
    let refused =
        |why: TokenUrlRefusal| ctx.err(raw.span(), format!("{what}: `auth.token_url`: {why}"));
    let url = url::Url::parse(raw.get_ref()).map_err(|_| refused(TokenUrlRefusal::NotHttp))?;
    check_token_url(&url, allow_insecure_http).map_err(refused)?;
    Ok(url)
}

/// Why a token URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenUrlRefusal {
    #[error("must be an http(s) URL without credentials")]
    NotHttp,
    #[error(
        "plain http to another machine would carry credentials in clear text; use https, or set `allow_insecure_http = true`"
    )]
    Cleartext,
}

/// The one rule for where a token request may go, a configured `token_url`
/// and a `token_endpoint` found by SMART discovery alike: an http(s) URL
/// without credentials in it, https unless the host is this machine
/// (loopback) or the source (hook) sets `allow_insecure_http`.
pub fn check_token_url(url: &url::Url, allow_insecure_http: bool) -> Result<(), TokenUrlRefusal> {
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || url.host().is_none()
    {
        return Err(TokenUrlRefusal::NotHttp);
    }
    if !super::ctx::cleartext_allowed(url, allow_insecure_http) {
        return Err(TokenUrlRefusal::Cleartext);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_configured_and_discovered_token_urls() {
        let check = |u: &str, insecure| check_token_url(&u.parse().unwrap(), insecure);
        assert_eq!(check("https://idp.example/token", false), Ok(()));
        assert_eq!(check("http://127.0.0.1:8080/token", false), Ok(()));
        assert_eq!(check("http://localhost/token", false), Ok(()));
        assert_eq!(check("http://[::1]/token", false), Ok(()));
        for clear in ["http://0.0.0.0:8080/token", "http://idp.example/token"] {
            assert_eq!(
                check(clear, false),
                Err(TokenUrlRefusal::Cleartext),
                "{clear}"
            );
            assert_eq!(check(clear, true), Ok(()), "{clear}");
        }
        for bad in [
            "ftp://idp/token",
            "https://u:p@idp/token",
            "data:text/plain,x",
        ] {
            assert_eq!(check(bad, true), Err(TokenUrlRefusal::NotHttp), "{bad}");
        }
    }
}
