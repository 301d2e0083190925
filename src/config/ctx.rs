//! What every section's validation shares: [`Ctx`] (the file's text and
//! path, to put a line number on each error), the floors the sections hold
//! durations to, and the clear-text rule for URLs. Section files take these
//! from here; `validate.rs` calls the sections and nothing calls it back.

use super::ConfigError;
use super::duration::HumanDuration;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;
use url::Url;

/// Retry delays, request timeouts and `max_pending_age` below this are refused:
/// a `["0s"]` retry schedule hammers a failing receiver, a `"0s"` timeout fails
/// every request.
pub(super) const MIN_SECOND: Duration = Duration::from_secs(1);
/// A cron schedule must tick within this long from now, or it "never fires".
pub(super) const CRON_HORIZON: Duration = Duration::from_secs(5 * 366 * 24 * 3600);
pub(super) const CRON_HORIZON_TEXT: &str = "5 years";

/// The config file being validated: its text and path, so that an error or a
/// warning names the file and line of the key at fault.
pub(super) struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(text: &'a str, path: &'a Path) -> Self {
        Ctx { text, path }
    }

    /// The config file's path, as given.
    pub(super) fn path(&self) -> &'a Path {
        self.path
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.text.as_bytes()[..span.start.min(self.text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    pub(super) fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line: self.line(span),
            message: message.into(),
        }
    }

    /// The directory relative paths in the config resolve against.
    pub(super) fn config_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub(super) fn warning(&self, span: Range<usize>, message: &str) -> String {
        format!("{}:{}: {message}", self.path.display(), self.line(span))
    }

    /// A duration of at least `min`, or an error naming the key.
    pub(super) fn at_least(
        &self,
        what: &str,
        key: &str,
        d: &Spanned<HumanDuration>,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if value < min {
            return Err(self.err(
                d.span(),
                format!(
                    "{what}: `{key}` must be at least {}, not {}",
                    humantime::format_duration(min),
                    humantime::format_duration(value)
                ),
            ));
        }
        Ok(value)
    }
}

/// Whether a request to `url` may go: https, or plain http to this machine
/// (loopback), or anywhere with `allow_insecure_http`. `0.0.0.0` is not
/// loopback: it is "any address", and a URL naming it is no promise of
/// staying on this machine.
pub(super) fn cleartext_allowed(url: &Url, allow_insecure_http: bool) -> bool {
    if url.scheme() != "http" || allow_insecure_http {
        return true;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// [`cleartext_allowed`], or an error naming the key: PHI must not travel in
/// clear text by accident.
pub(super) fn check_cleartext(
    ctx: &Ctx,
    what: &str,
    key: &str,
    url: &Url,
    span: Range<usize>,
    allowed: bool,
) -> Result<(), ConfigError> {
    if cleartext_allowed(url, allowed) {
        return Ok(());
    }
    Err(ctx.err(
        span,
        format!(
            "{what}: `{key}`: plain http to another machine would carry PHI or credentials in clear text; use https, or set `allow_insecure_http = true`"
        ),
    ))
}
