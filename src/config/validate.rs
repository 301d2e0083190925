//! Turns the raw file into a typed [`Config`], reporting the first problem
//! with the file name, line and key.

use super::ctx::{CRON_HORIZON, CRON_HORIZON_TEXT, Ctx, MIN_SECOND, check_cleartext};
use super::raw::{RawConfig, RawHook, RawSource};
use super::{Config, ConfigError, Hook, Schedule, Source, Start};
use crate::filter::Filter;
use crate::filter::topics::Topic;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use url::Url;

const DEFAULT_RETRY: [u64; 5] = [5, 60, 300, 1800, 7200];

/// The shortest `every`.
const MIN_EVERY: Duration = Duration::from_millis(100);
const DEFAULT_MAX_PAGES: u32 = 1000;
const MAX_PAGES: u32 = 100_000;
const DEFAULT_MAX_PENDING_AGE: Duration = Duration::from_secs(15 * 60);

/// Search parameters the bridge owns, or that would cut resources short; they
/// may not appear in `[source.params]`.
const RESERVED_PARAMS: [(&str, &str); 5] = [
    ("_count", "the bridge sets it from `page_size`"),
    ("_sort", "the bridge sorts by `_lastUpdated` itself"),
    ("_lastUpdated", "the bridge sets the poll window itself"),
    (
        "_summary",
        "it would make the server return partial resources",
    ),
    (
        "_elements",
        "it would make the server return partial resources",
    ),
];

/// The keys of a `[[hook]]` that say where and how its POSTs go: a reload
/// that changes one makes the hook's pending messages due at once.
const HOOK_ENDPOINT_KEYS: [&str; 7] = [
    "url",
    "headers",
    "auth",
    "signing_secrets",
    "ca_file",
    "client_cert",
    "client_key",
];

pub fn validate(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx::new(text, path);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, super::toml_error::message(text, &e))
    })?;

    let base_dir = path.parent().unwrap_or(Path::new("."));
    let state_dir = match &raw.state_dir {
        Some(s) if s.get_ref().trim().is_empty() => {
            return Err(ctx.err(s.span(), "`state_dir` must not be empty"));
        }
        Some(s) => base_dir.join(s.get_ref()),
        None => super::paths::default_state_dir(
            base_dir,
            std::env::current_dir().ok().as_deref(),
            std::env::var_os("STATE_DIRECTORY").as_deref(),
        ),
    };

    // Each component's table as text without positions, for its fingerprint:
    // moving a table in the file is not a change.
    let tables: toml::Table = toml::from_str(text).unwrap_or_default();
    let table_text = |kind: &str, i: usize| -> String {
        tables
            .get(kind)
            .and_then(|v| v.get(i))
            .map(|v| v.to_string())
            .unwrap_or_default()
    };

    let mut sources = Vec::new();
    let mut names = HashSet::new();
    for (i, s) in raw.source.iter().enumerate() {
        let (source, fingerprint) =
            super::fingerprint::measure(&table_text("source", i), || validate_source(&ctx, s));
        let mut source = source?;
        source.fingerprint = fingerprint;
        if !names.insert(source.name.clone()) {
            return Err(ctx.err(
                s.get_ref().name.span(),
                format!("source `{}`: `name` is used twice", source.name),
            ));
        }
        sources.push(source);
    }

    // A hook's endpoint: where and how its POSTs go (every secret and file a
    // hook reads is one of these).
    let endpoint_text = |i: usize| -> String {
        let table = tables.get("hook").and_then(|v| v.get(i));
        HOOK_ENDPOINT_KEYS
            .iter()
            .map(|k| {
                format!(
                    "{k}={}\n",
                    table
                        .and_then(|t| t.get(k))
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                )
            })
            .collect()
    };
    let mut hooks = Vec::new();
    let mut hook_names = HashSet::new();
    for (i, h) in raw.hook.iter().enumerate() {
        let ((hook, endpoint), fingerprint) =
            super::fingerprint::measure(&table_text("hook", i), || {
                super::fingerprint::measure(&endpoint_text(i), || validate_hook(&ctx, h, &names))
            });
        let mut hook = hook?;
        hook.fingerprint = fingerprint;
        hook.endpoint = endpoint;
        if !hook_names.insert(hook.name.clone()) {
            return Err(ctx.err(
                h.get_ref().name.span(),
                format!("hook `{}`: `name` is used twice", hook.name),
            ));
        }
        hooks.push(hook);
    }

    Ok(Config {
        path: path.to_path_buf(),
        state_dir,
        retention: raw
            .retention
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(14 * 24 * 3600)),
        shutdown_grace: raw
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10))
            .min(Duration::from_secs(3600)),
        warnings: warnings(&ctx, &raw, &sources, &hooks),
        state: super::state_backend::validate(&ctx, raw.state.as_ref())?,
        admin: match &raw.admin {
            Some(a) => super::admin::validate(&ctx, a)?,
            None => None,
        },
        sources,
        hooks,
    })
}

/// What loads but is probably a mistake: nothing to poll, nowhere to send.
fn warnings(ctx: &Ctx, raw: &RawConfig, sources: &[Source], hooks: &[Hook]) -> Vec<String> {
    let file = ctx.path().display();
    let mut out = Vec::new();
    if sources.is_empty() {
        out.push(format!("{file}: no [[source]]: nothing to poll"));
    }
    if hooks.is_empty() {
        out.push(format!(
            "{file}: no [[hook]]: changes are detected but sent nowhere"
        ));
    } else {
        for (raw_source, source) in raw.source.iter().zip(sources) {
            if !hooks.iter().any(|h| h.sources.contains(&source.name)) {
                out.push(ctx.warning(
                    raw_source.get_ref().name.span(),
                    &format!(
                        "source `{}`: no hook lists it in `sources`: its changes are sent nowhere",
                        source.name
                    ),
                ));
            }
        }
    }
    for raw_source in &raw.source {
        let raw = raw_source.get_ref();
        let literal = raw.auth.as_ref().is_some_and(|a| {
            let a = a.get_ref();
            [&a.password, &a.token, &a.client_secret, &a.private_key]
                .iter()
                .any(|s| s.as_ref().is_some_and(|s| s.is_literal()))
        }) || raw
            .client_key
            .as_ref()
            .is_some_and(|k| k.get_ref().is_literal());
        if literal && super::hook_security::readable_by_others(ctx.path()) {
            out.push(ctx.warning(
                raw_source.get_ref().name.span(),
                &format!(
                    "source `{}`: a secret is written in this file, which others can read: chmod 600 it, or use {{ env = \"...\" }} / {{ file = \"...\" }}",
                    raw_source.get_ref().name.get_ref()
                ),
            ));
        }
    }
    if let Some(token) = raw.admin.as_ref().and_then(|a| a.get_ref().token.as_ref())
        && token.get_ref().is_literal()
        && super::hook_security::readable_by_others(ctx.path())
    {
        out.push(ctx.warning(
            token.span(),
            "[admin]: `token` is written in this file, which others can read: chmod 600 it, or use { env = \"...\" } / { file = \"...\" }",
        ));
    }
    if let Some(url) = raw.state.as_ref().and_then(|s| s.get_ref().url.as_ref())
        && url.get_ref().is_literal()
        && super::hook_security::readable_by_others(ctx.path())
    {
        out.push(ctx.warning(
            url.span(),
            "[state]: `url` is written in this file, which others can read: chmod 600 it, or use { env = \"...\" } / { file = \"...\" }",
        ));
    }
    for (raw_hook, hook) in raw.hook.iter().zip(hooks) {
        if let Some(list) = &raw_hook.get_ref().sources
            && hook.sources.is_empty()
            && !sources.is_empty()
        {
            out.push(ctx.warning(
                list.span(),
                &format!(
                    "hook `{}`: `sources` is empty: it receives nothing",
                    hook.name
                ),
            ));
        }
        if let (Some(topic), Some(raw_topic)) = (hook.topic, &raw_hook.get_ref().topic)
            && !sources
                .iter()
                .filter(|s| hook.sources.contains(&s.name))
                .any(|s| s.resources.iter().any(|r| r == topic.resource_type))
            && !hook.sources.is_empty()
        {
            out.push(ctx.warning(
                raw_topic.span(),
                &format!(
                    "hook `{}`: topic `{}` is about {}, which none of its sources polls: it receives nothing",
                    hook.name, topic.name, topic.resource_type
                ),
            ));
        }
        if super::hook_security::has_literal_secret(raw_hook.get_ref())
            && super::hook_security::readable_by_others(ctx.path())
        {
            out.push(ctx.warning(
                raw_hook.get_ref().name.span(),
                &format!(
                    "hook `{}`: a secret is written in this file, which others can read: chmod 600 it, or use {{ env = \"...\" }} / {{ file = \"...\" }}",
                    hook.name
                ),
            ));
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An http(s) URL without credentials; `credentials_hint` says what to use instead.
/// The URL itself is never part of an error (it may hold a password).
fn parse_url(
    ctx: &Ctx,
    what: &str,
    key: &str,
    s: &Spanned<String>,
    credentials_hint: &str,
) -> Result<Url, ConfigError> {
    let url = Url::parse(s.get_ref())
        .map_err(|e| ctx.err(s.span(), format!("{what}: `{key}` is not a valid URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ctx.err(s.span(), format!("{what}: `{key}` must be http or https")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ctx.err(
            s.span(),
            format!("{what}: `{key}`: credentials in the URL are not supported{credentials_hint}"),
        ));
    }
    Ok(url)
}

fn validate_source(ctx: &Ctx, spanned: &Spanned<RawSource>) -> Result<Source, ConfigError> {
    let s = spanned.get_ref();
    let name = s.name.get_ref().clone();
    if !valid_name(&name) {
        return Err(ctx.err(
            s.name.span(),
            format!("source `{name}`: `name` must match [a-z0-9_-]+"),
        ));
    }
    let what = format!("source `{name}`");
    let base_url = base_url(ctx, &what, s)?;
    let resources = resources(ctx, &what, s)?;
    let schedule = schedule(ctx, &what, s)?;

    let page_size = match &s.page_size {
        Some(p) if !(1..=1000).contains(p.get_ref()) => {
            return Err(ctx.err(p.span(), format!("{what}: `page_size` must be 1..=1000")));
        }
        Some(p) => *p.get_ref(),
        None => 100,
    };
    let max_pages_per_poll = match &s.max_pages_per_poll {
        Some(p) if !(1..=MAX_PAGES).contains(p.get_ref()) => {
            return Err(ctx.err(
                p.span(),
                format!("{what}: `max_pages_per_poll` must be 1..={MAX_PAGES}"),
            ));
        }
        Some(p) => *p.get_ref(),
        None => DEFAULT_MAX_PAGES,
    };
    let timeout = match &s.timeout {
        Some(t) => ctx.at_least(&what, "timeout", t, MIN_SECOND)?,
        None => Duration::from_secs(30),
    };

    let start = start(ctx, &what, s)?;
    let strategies = super::strategy::validate(ctx, &what, s, &resources)?;
    let (fan_out, max_requests_per_second) = super::fanout::validate(ctx, &what, s)?;
    let reconcile = super::reconcile::validate(ctx, &what, s, &resources, &strategies)?;
    let (overlap, lag) = overlap_and_lag(ctx, &what, s)?;
    Ok(Source {
        owner_id: s.owner_id.clone().unwrap_or_else(|| name.clone()),
        name,
        base_url,
        resources,
        schedule,
        page_size,
        overlap,
        lag,
        fan_out,
        max_requests_per_second,
        start,
        timeout,
        params: s
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect(),
        max_pages_per_poll,
        strategies,
        reconcile,
        auth: super::source_auth::validate(
            ctx,
            &what,
            s.auth.as_ref(),
            s.allow_insecure_http.unwrap_or(false),
        )?,
        allowed_origins: super::origins::validate(
            ctx,
            &what,
            s.allowed_origins.as_ref(),
            s.allow_insecure_http.unwrap_or(false),
        )?,
        tls: super::tls::validate(ctx, &what, s.tls())?,
        fingerprint: Default::default(),
    })
}

/// `base_url`: a URL without query or credentials, HTTPS unless allowed, ending in `/`.
fn base_url(ctx: &Ctx, what: &str, s: &RawSource) -> Result<Url, ConfigError> {
    let mut base_url = parse_url(
        ctx,
        what,
        "base_url",
        &s.base_url,
        " (they would be sent on the first page only); use [source.auth] instead",
    )?;
    check_cleartext(
        ctx,
        what,
        "base_url",
        &base_url,
        s.base_url.span(),
        s.allow_insecure_http.unwrap_or(false),
    )?;
    // A trailing slash makes joining `Type` onto the base unambiguous.
    if !base_url.path().ends_with('/') {
        let p = format!("{}/", base_url.path());
        base_url.set_path(&p);
    }
    Ok(base_url)
}

/// `resources` (FHIR type names, each once) and the `params` given for them.
fn resources(ctx: &Ctx, what: &str, s: &RawSource) -> Result<Vec<String>, ConfigError> {
    if s.resources.get_ref().is_empty() {
        return Err(ctx.err(s.resources.span(), format!("{what}: `resources` is empty")));
    }
    let mut resources: Vec<String> = Vec::new();
    for r in s.resources.get_ref() {
        let ty = r.get_ref();
        let ok = ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && ty.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(ctx.err(
                r.span(),
                format!("{what}: `resources`: `{ty}` is not a FHIR resource type"),
            ));
        }
        if resources.contains(ty) {
            return Err(ctx.err(
                r.span(),
                format!("{what}: `resources`: `{ty}` is listed twice"),
            ));
        }
        resources.push(ty.clone());
    }
    for (k, v) in &s.params {
        if !resources.contains(k) {
            return Err(ctx.err(
                v.span(),
                format!("{what}: `params.{k}`: `{k}` is not one of `resources`"),
            ));
        }
        let query = v.get_ref().trim_start_matches('?');
        for (param, _) in url::form_urlencoded::parse(query.as_bytes()) {
            // `_lastUpdated:missing` is `_lastUpdated` with a modifier.
            let base = param.split(':').next().unwrap_or_default();
            if let Some((reserved, why)) = RESERVED_PARAMS.iter().find(|(p, _)| *p == base) {
                return Err(ctx.err(
                    v.span(),
                    format!("{what}: `params.{k}`: `{reserved}` is not allowed: {why}"),
                ));
            }
        }
    }
    Ok(resources)
}

/// `schedule` (cron, firing within the horizon) or `every`; a minute by default.
fn schedule(ctx: &Ctx, what: &str, s: &RawSource) -> Result<Schedule, ConfigError> {
    Ok(match (&s.schedule, &s.every) {
        (Some(_), Some(e)) => {
            return Err(ctx.err(
                e.span(),
                format!("{what}: set either `schedule` or `every`, not both"),
            ));
        }
        (Some(c), None) => {
            let schedule = Schedule::cron(c.get_ref()).map_err(|e| {
                ctx.err(
                    c.span(),
                    format!("{what}: `schedule` is not a cron expression: {e}"),
                )
            })?;
            if !schedule.fires_within(chrono::Utc::now(), CRON_HORIZON) {
                return Err(ctx.err(
                    c.span(),
                    format!(
                        "{what}: `schedule` never fires: `{}` has no tick in the next {CRON_HORIZON_TEXT}",
                        c.get_ref()
                    ),
                ));
            }
            schedule
        }
        (None, Some(e)) if e.get_ref().0.is_zero() => {
            return Err(ctx.err(e.span(), format!("{what}: `every` must be positive")));
        }
        (None, Some(e)) => Schedule::Every(ctx.at_least(what, "every", e, MIN_EVERY)?),
        (None, None) => Schedule::Every(Duration::from_secs(60)),
    })
}

/// `start`: `now` (the default), `beginning` or an RFC 3339 instant.
fn start(ctx: &Ctx, what: &str, s: &RawSource) -> Result<Start, ConfigError> {
    Ok(match &s.start {
        None => Start::Now,
        Some(st) => match st.get_ref().as_str() {
            "now" => Start::Now,
            "beginning" => Start::Beginning,
            other => Start::At(
                chrono::DateTime::parse_from_rfc3339(other)
                    .map_err(|_| {
                        ctx.err(
                            st.span(),
                            format!(
                                "{what}: `start` must be \"now\", \"beginning\" or an RFC 3339 instant"
                            ),
                        )
                    })?
                    .to_utc(),
            ),
        },
    })
}

/// `overlap` (2 min by default) and `lag`, which must not exceed it.
fn overlap_and_lag(
    ctx: &Ctx,
    what: &str,
    s: &RawSource,
) -> Result<(Duration, Duration), ConfigError> {
    let overlap = s.overlap.map(|d| d.0).unwrap_or(Duration::from_secs(120));
    let lag = s.lag.as_ref().map(|l| l.get_ref().0).unwrap_or_default();
    if let Some(l) = &s.lag
        && lag > overlap
    {
        // A write that becomes visible `lag` late is stamped up to `lag`
        // behind the watermark: only the overlap re-reads it.
        return Err(ctx.err(
            l.span(),
            format!(
                "{what}: `lag` ({}) must not exceed `overlap` ({})",
                humantime::format_duration(lag),
                humantime::format_duration(overlap)
            ),
        ));
    }
    Ok((overlap, lag))
}

fn validate_hook(
    ctx: &Ctx,
    spanned: &Spanned<RawHook>,
    source_names: &HashSet<String>,
) -> Result<Hook, ConfigError> {
    let h = spanned.get_ref();
    let name = h.name.get_ref().clone();
    if !valid_name(&name) {
        return Err(ctx.err(
            h.name.span(),
            format!("hook `{name}`: `name` must match [a-z0-9_-]+"),
        ));
    }
    let what = format!("hook `{name}`");
    let url = parse_url(ctx, &what, "url", &h.url, "; use [hook.auth] instead")?;
    check_cleartext(
        ctx,
        &what,
        "url",
        &url,
        h.url.span(),
        h.allow_insecure_http.unwrap_or(false),
    )?;

    let sources = hook_sources(ctx, &what, h, source_names)?;
    let (topic, filter) = topic_and_filter(ctx, &what, spanned)?;

    let (content, notification) = super::notification::validate(ctx, &what, h)?;

    let max_attempts = match &h.max_attempts {
        Some(m) if *m.get_ref() == 0 => {
            return Err(ctx.err(
                m.span(),
                format!("{what}: `max_attempts` must be at least 1"),
            ));
        }
        Some(m) => *m.get_ref(),
        None => 6,
    };
    let retry_schedule = retry_schedule(ctx, &what, h)?;
    let timeout = match &h.timeout {
        Some(t) => ctx.at_least(&what, "timeout", t, MIN_SECOND)?,
        None => Duration::from_secs(15),
    };
    let concurrency = match &h.concurrency {
        Some(c) if !(1..=256).contains(c.get_ref()) => {
            return Err(ctx.err(c.span(), format!("{what}: `concurrency` must be 1..=256")));
        }
        Some(c) => *c.get_ref() as usize,
        None => 4,
    };
    let max_pending_age = match &h.max_pending_age {
        Some(a) => ctx.at_least(&what, "max_pending_age", a, MIN_SECOND)?,
        None => DEFAULT_MAX_PENDING_AGE,
    };

    let security = super::hook_security::validate(ctx, &what, spanned)?;

    Ok(Hook {
        name,
        url,
        sources,
        filter: Arc::new(filter),
        topic,
        content,
        notification,
        max_attempts,
        retry_schedule,
        timeout,
        concurrency,
        max_pending_age,
        signing_keys: security.signing_keys,
        headers: security.headers,
        auth: security.auth,
        tls: super::tls::validate(ctx, &what, h.tls())?,
        fingerprint: Default::default(),
        endpoint: Default::default(),
    })
}

/// `sources`: the sources a hook takes changes from (all of them by default).
fn hook_sources(
    ctx: &Ctx,
    what: &str,
    h: &RawHook,
    source_names: &HashSet<String>,
) -> Result<Vec<String>, ConfigError> {
    Ok(match &h.sources {
        None => {
            let mut all: Vec<String> = source_names.iter().cloned().collect();
            all.sort();
            all
        }
        Some(list) => {
            if let Some(unknown) = list.get_ref().iter().find(|s| !source_names.contains(*s)) {
                return Err(ctx.err(
                    list.span(),
                    format!("{what}: `sources`: no source is named `{unknown}`"),
                ));
            }
            list.get_ref().clone()
        }
    })
}

/// `topic` and `filter`: the compiled filter (both must match when both are
/// given; `true` when neither is) and the topic it came from.
fn topic_and_filter(
    ctx: &Ctx,
    what: &str,
    spanned: &Spanned<RawHook>,
) -> Result<(Option<&'static Topic>, Filter), ConfigError> {
    let h = spanned.get_ref();
    let topic = match &h.topic {
        None => None,
        Some(t) => Some(crate::filter::topics::find(t.get_ref()).ok_or_else(|| {
            ctx.err(
                t.span(),
                format!(
                    "{what}: `topic`: no topic is named `{}`; known topics: {}",
                    t.get_ref(),
                    crate::filter::topics::names()
                ),
            )
        })?),
    };
    let filter = match &h.filter {
        None => None,
        Some(code) => Some(Filter::compile(code.get_ref()).map_err(|e| {
            ctx.err(
                code.span(),
                format!("{what}: `filter` does not compile: {e}"),
            )
        })?),
    };
    // A topic and a filter together: both must match.
    let filter = match (topic, filter) {
        (None, None) => {
            Filter::compile("true").map_err(|e| ctx.err(spanned.span(), format!("{what}: {e}")))?
        }
        (None, Some(f)) => f,
        (Some(t), f) => {
            let compiled = Filter::compile(t.jq)
                .map_err(|e| ctx.err(spanned.span(), format!("{what}: topic `{}`: {e}", t.name)))?;
            match f {
                Some(f) => compiled.and(f),
                None => compiled,
            }
        }
    };
    Ok((topic, filter))
}

/// `retry_schedule`: the delays between attempts, each at least a second.
fn retry_schedule(ctx: &Ctx, what: &str, h: &RawHook) -> Result<Vec<Duration>, ConfigError> {
    Ok(match &h.retry_schedule {
        Some(r) if r.get_ref().is_empty() => {
            return Err(ctx.err(r.span(), format!("{what}: `retry_schedule` is empty")));
        }
        Some(r) => {
            let mut delays = Vec::new();
            for d in r.get_ref() {
                if d.get_ref().0 < MIN_SECOND {
                    return Err(ctx.err(
                        d.span(),
                        format!(
                            "{what}: `retry_schedule`: each delay must be at least {}, not {}",
                            humantime::format_duration(MIN_SECOND),
                            humantime::format_duration(d.get_ref().0)
                        ),
                    ));
                }
                delays.push(d.get_ref().0);
            }
            delays
        }
        None => DEFAULT_RETRY
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
    })
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
