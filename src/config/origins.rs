//! `allowed_origins`: the hosts besides `base_url`'s that a source may follow
//! next links and redirects to (a CDN for paging, a second host of the same
//! EHR). Each is an origin only (scheme, host, port): a path would suggest a
//! narrower permission than the bridge enforces.

use super::ConfigError;
use super::ctx::{Ctx, check_cleartext};
use toml::Spanned;
use url::{Origin, Url};

pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    allow_insecure_http: bool,
) -> Result<Vec<Origin>, ConfigError> {
    let Some(list) = raw else {
        return Ok(vec![]);
    };
    let mut origins = Vec::new();
    for (i, entry) in list.get_ref().iter().enumerate() {
        let key = format!("allowed_origins[{i}]");
        let bad = |m: &str| ctx.err(entry.span(), format!("{what}: `{key}`: {m}"));
        let url = Url::parse(entry.get_ref())
            .map_err(|_| bad("not a URL; write an origin such as \"https://fhir2.example.org\""))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must be an http or https origin"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not supported"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "an origin is scheme, host and port only (no path, query or fragment)",
            ));
        }
        check_cleartext(ctx, what, &key, &url, entry.span(), allow_insecure_http)?;
        origins.push(url.origin());
    }
    Ok(origins)
}
