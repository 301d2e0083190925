//! Turns the raw file into a typed [`Config`], reporting the first problem
//! with the file name, line and key.

use super::raw::{RawConfig, RawHook, RawSource};
use super::{Config, ConfigError, Content, Hook, Schedule, Source, Start};
use crate::filter::Filter;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use url::Url;

const DEFAULT_RETRY: [u64; 5] = [5, 60, 300, 1800, 7200];

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let line = self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            message: message.into(),
        }
    }
}

pub fn validate(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { text, path };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, super::toml_error::describe(text, &e))
    })?;

    let base_dir = path.parent().unwrap_or(Path::new("."));
    let state_dir = match &raw.state_dir {
        Some(s) if s.get_ref().trim().is_empty() => {
            return Err(ctx.err(s.span(), "`state_dir` must not be empty"));
        }
        Some(s) => base_dir.join(s.get_ref()),
        None => base_dir.join("state"),
    };

    let mut sources = Vec::new();
    let mut names = HashSet::new();
    for s in &raw.source {
        let source = validate_source(&ctx, s)?;
        if !names.insert(source.name.clone()) {
            return Err(ctx.err(
                s.get_ref().name.span(),
                format!("source `{}`: `name` is used twice", source.name),
            ));
        }
        sources.push(source);
    }

    let mut hooks = Vec::new();
    let mut hook_names = HashSet::new();
    for h in &raw.hook {
        let hook = validate_hook(&ctx, h, &names)?;
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
        sources,
        hooks,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_url(ctx: &Ctx, what: &str, key: &str, s: &Spanned<String>) -> Result<Url, ConfigError> {
    let url = Url::parse(s.get_ref())
        .map_err(|e| ctx.err(s.span(), format!("{what}: `{key}` is not a valid URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ctx.err(s.span(), format!("{what}: `{key}` must be http or https")));
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
    let mut base_url = parse_url(ctx, &what, "base_url", &s.base_url)?;
    // A trailing slash makes joining `Type` onto the base unambiguous.
    if !base_url.path().ends_with('/') {
        let p = format!("{}/", base_url.path());
        base_url.set_path(&p);
    }

    let resources = s.resources.get_ref().clone();
    if resources.is_empty() {
        return Err(ctx.err(s.resources.span(), format!("{what}: `resources` is empty")));
    }
    for r in &resources {
        let ok = r.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && r.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(ctx.err(
                s.resources.span(),
                format!("{what}: `resources`: `{r}` is not a FHIR resource type"),
            ));
        }
    }
    if let Some(k) = s.params.keys().find(|k| !resources.contains(k)) {
        return Err(ctx.err(
            spanned.span(),
            format!("{what}: `params.{k}`: `{k}` is not one of `resources`"),
        ));
    }

    let schedule = match (&s.schedule, &s.every) {
        (Some(_), Some(e)) => {
            return Err(ctx.err(
                e.span(),
                format!("{what}: set either `schedule` or `every`, not both"),
            ));
        }
        (Some(c), None) => Schedule::cron(c.get_ref()).map_err(|e| {
            ctx.err(
                c.span(),
                format!("{what}: `schedule` is not a cron expression: {e}"),
            )
        })?,
        (None, Some(e)) if e.get_ref().0.is_zero() => {
            return Err(ctx.err(e.span(), format!("{what}: `every` must be positive")));
        }
        (None, Some(e)) => Schedule::Every(e.get_ref().0),
        (None, None) => Schedule::Every(Duration::from_secs(60)),
    };

    let page_size = match &s.page_size {
        Some(p) if !(1..=1000).contains(p.get_ref()) => {
            return Err(ctx.err(p.span(), format!("{what}: `page_size` must be 1..=1000")));
        }
        Some(p) => *p.get_ref(),
        None => 100,
    };

    let start = match &s.start {
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
    };

    Ok(Source {
        owner_id: s.owner_id.clone().unwrap_or_else(|| name.clone()),
        name,
        base_url,
        resources,
        schedule,
        page_size,
        overlap: s.overlap.map(|d| d.0).unwrap_or(Duration::from_secs(120)),
        start,
        timeout: s.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        params: s.params.clone(),
    })
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
    let url = parse_url(ctx, &what, "url", &h.url)?;

    let sources = match &h.sources {
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
    };

    let filter = match &h.filter {
        None => {
            Filter::compile("true").map_err(|e| ctx.err(spanned.span(), format!("{what}: {e}")))?
        }
        Some(code) => Filter::compile(code.get_ref()).map_err(|e| {
            ctx.err(
                code.span(),
                format!("{what}: `filter` does not compile: {e}"),
            )
        })?,
    };

    let content = match h.content.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
        None | Some(("full-resource", _)) => Content::FullResource,
        Some(("id-only", _)) => Content::IdOnly,
        Some((_, span)) => {
            return Err(ctx.err(
                span,
                format!("{what}: `content` must be \"full-resource\" or \"id-only\""),
            ));
        }
    };

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
    let retry_schedule: Vec<Duration> = match &h.retry_schedule {
        Some(r) if r.get_ref().is_empty() => {
            return Err(ctx.err(r.span(), format!("{what}: `retry_schedule` is empty")));
        }
        Some(r) => r.get_ref().iter().map(|d| d.0).collect(),
        None => DEFAULT_RETRY
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
    };
    let concurrency = match &h.concurrency {
        Some(c) if !(1..=256).contains(c.get_ref()) => {
            return Err(ctx.err(c.span(), format!("{what}: `concurrency` must be 1..=256")));
        }
        Some(c) => *c.get_ref() as usize,
        None => 4,
    };

    Ok(Hook {
        name,
        url,
        sources,
        filter: Arc::new(filter),
        content,
        max_attempts,
        retry_schedule,
        timeout: h.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(15)),
        concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "state"

[[source]]
name = "lab-ehr"
base_url = "http://127.0.0.1:8090/fhir"
resources = ["Observation", "Encounter"]
schedule = "*/10 * * * * *"
page_size = 100
overlap = "2m"
start = "now"
owner_id = "org/lab"
[source.params]
Observation = "category=laboratory"

[[hook]]
name = "critical-labs"
url = "http://127.0.0.1:9000/hooks/critical"
sources = ["lab-ehr"]
filter = '.resourceType == "Observation"'
content = "full-resource"
max_attempts = 6
retry_schedule = ["5s", "1m"]
timeout = "15s"
concurrency = 4
"#;

    fn load(text: &str) -> Result<Config, String> {
        validate(text, Path::new("bridges.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_loads() {
        let c = load(GOOD).unwrap();
        assert_eq!(
            c.sources[0].base_url.as_str(),
            "http://127.0.0.1:8090/fhir/"
        );
        assert_eq!(c.sources[0].owner_id, "org/lab");
        assert_eq!(c.hooks[0].retry_schedule.len(), 2);
        assert_eq!(c.hooks[0].sources, vec!["lab-ehr".to_string()]);
    }

    #[test]
    fn a_bad_filter_names_file_line_and_key() {
        let text = GOOD.replace(r#"'.resourceType == "Observation"'"#, "'.resourceType =='");
        let e = load(&text).unwrap_err();
        assert!(
            e.starts_with("bridges.toml:20: hook `critical-labs`: `filter` does not compile"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = load(&GOOD.replace("page_size = 100", "page_sise = 100")).unwrap_err();
        assert!(e.starts_with("bridges.toml:9:"), "{e}");
        assert!(e.contains("page_sise"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e =
            load(&GOOD.replace(r#"sources = ["lab-ehr"]"#, r#"sources = ["nope"]"#)).unwrap_err();
        assert!(
            e.contains(":19: hook `critical-labs`: `sources`: no source is named `nope`"),
            "{e}"
        );
        let e = load(&GOOD.replace("start = \"now\"", "start = \"yesterday\"")).unwrap_err();
        assert!(e.contains(":11: source `lab-ehr`: `start`"), "{e}");
        let e = load(&GOOD.replace("*/10 * * * * *", "every tuesday")).unwrap_err();
        assert!(e.contains(":8: source `lab-ehr`: `schedule`"), "{e}");
        let e = load(&GOOD.replace("name = \"lab-ehr\"", "name = \"Lab EHR\"")).unwrap_err();
        assert!(e.contains(":5: source `Lab EHR`: `name`"), "{e}");
        let e = load(&GOOD.replace("overlap = \"2m\"", "overlap = \"two\"")).unwrap_err();
        assert!(e.contains(":10:") && e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let c = load(
            "[[source]]\nname='a'\nbase_url='http://x/fhir'\nresources=['Patient']\n[[hook]]\nname='h'\nurl='http://y/'\n",
        )
        .unwrap();
        assert_eq!(c.sources[0].start, Start::Now);
        assert_eq!(c.sources[0].owner_id, "a");
        assert_eq!(c.hooks[0].max_attempts, 6);
        assert_eq!(c.hooks[0].sources, vec!["a".to_string()]);
        assert_eq!(c.state_dir, Path::new("state"));
    }
}
