//! Bad input: property tests (proptest used as a fuzzer) for the two parsers
//! that read text from outside the process.
//!
//! - `fhir::bundle::parse_page` (search Bundles from the EHR): arbitrary
//!   bytes, JSON-token soup, and generated Bundles (well-formed, oddly typed,
//!   then mangled byte-wise). It must never panic; a well-formed Bundle parses
//!   to exactly the entries, next link and server time it holds; whenever a
//!   parse succeeds every entry's raw text is the JSON of that resource.
//! - `config::Config::from_str` (`bridges.toml`): arbitrary text, TOML-token
//!   soup and mangled versions of valid configs. It must never panic; every
//!   error is `bridges.toml:<line>: <message>` with the line inside the text;
//!   a config that loads holds validated values, and its durations can be used
//!   (schedule, retry delays) without panicking.
//! - jq filters: `Filter::compile` on arbitrary strings and jq-token soup never
//!   panics, and through the config a filter either loads or is reported at its
//!   own line. Deeply nested or very long filters must not crash the process
//!   (checked in a child process, since a stack overflow aborts).

use fhir_bridge::config::{Config, ConfigError, Schedule};
use fhir_bridge::delivery::retry::next_delay;
use fhir_bridge::fhir::bundle::{BundleError, parse_page};
use fhir_bridge::fhir::{is_fhir_id, parse_instant};
use fhir_bridge::filter::{Filter, parse_resource};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PtConfig, TestCaseError};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Duration;

/// `PROPTEST_CASES` overrides the case count (e.g. for a long soak run).
fn pt_config(cases: u32) -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    }
}

// ===========================================================================
// Bundles
// ===========================================================================

/// Whatever `parse_page` returns must be coherent with the body it was given.
fn check_page(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_page(body) {
        Ok(page) => {
            for e in &page.entries {
                // Nothing that is not a FHIR id gets through: ids reach
                // logs, status, payloads and message ids.
                prop_assert!(is_fhir_id(&e.id), "id {:?} passed", e.id);
                if let Some(v) = &e.version_id {
                    prop_assert!(is_fhir_id(v), "versionId {:?} passed", v);
                }
                // `raw` is one JSON value of the body, and it is the resource
                // whose type and id the entry reports.
                let start = e.raw.as_ptr() as usize - body.as_ptr() as usize;
                prop_assert!(start + e.raw.len() <= body.len());
                // Read as a head with the rest skipped: a number beyond f64's
                // range is valid JSON that a `Value` cannot hold.
                #[derive(serde::Deserialize)]
                struct Head {
                    #[serde(rename = "resourceType")]
                    resource_type: Option<String>,
                    id: Option<String>,
                }
                let v: Head = serde_json::from_str(e.raw)
                    .map_err(|err| TestCaseError::fail(format!("raw is not JSON: {err}")))?;
                prop_assert_eq!(v.resource_type.as_deref(), Some(e.resource_type.as_str()));
                prop_assert_eq!(v.id.as_deref(), Some(e.id.as_str()));
                prop_assert_eq!(
                    e.last_updated,
                    e.last_updated_raw.as_deref().and_then(parse_instant)
                );
            }
        }
        Err(BundleError::NotJson(at)) => {
            prop_assert!(
                at <= body.len() + 1,
                "error offset {at} past the body ({})",
                body.len()
            );
        }
        Err(_) => {}
    }
    Ok(())
}

fn instant() -> impl Strategy<Value = String> {
    let valid = (
        0u32..=9999,
        1u32..=12,
        1u32..=28,
        0u32..=23,
        0u32..=59,
        0u32..=60,
        prop::option::of("[0-9]{1,9}"),
        prop_oneof![
            Just("Z".to_string()),
            Just("+00:00".to_string()),
            (0u32..=23, 0u32..=59, any::<bool>())
                .prop_map(|(h, m, neg)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        });
    prop_oneof![
        6 => valid,
        1 => prop::sample::select(vec![
            "0000-01-01T00:00:00Z",
            "0000-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59.999999999-23:59",
            "2026-02-30T00:00:00Z",
            "2026-11-21",
            "2026-11-21T10:00:00",
            "2026-11-21t10:00:00z",
            "2026-11-21 10:00:00Z",
            "+12026-11-21T10:00:00Z",
            "",
            "yesterday",
        ])
        .prop_map(String::from),
        1 => "\\PC{0,30}",
    ]
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "resourceType", "id", "meta", "versionId", "lastUpdated", "entry", "link",
            "relation", "url", "resource", "search", "mode", "fullUrl", "type",
        ])
        .prop_map(String::from),
        1 => "\\PC{0,8}",
    ]
}

/// A value of the expected type most of the time, anything otherwise.
fn mostly<T: Strategy<Value = Value> + 'static>(good: T) -> BoxedStrategy<Value> {
    prop_oneof![6 => good, 1 => any_json()].boxed()
}

fn object(fields: Vec<(&'static str, Option<Value>)>, extra: Map<String, Value>) -> Value {
    let mut m = extra;
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

/// Fields the parser does not read (a random `meta: false` beside a Bundle's
/// fields made a "well-formed" Bundle that is not one; CI found it).
fn extra_fields() -> impl Strategy<Value = Map<String, Value>> {
    const READ: &[&str] = &[
        "meta", "entry", "link", "total", "id", "type", "search", "mode", "url",
    ];
    let unread =
        "[a-z]{1,6}".prop_filter("a field the parser reads", |k| !READ.contains(&k.as_str()));
    prop::collection::btree_map(unread, any_json(), 0..3).prop_map(|m| m.into_iter().collect())
}

/// A Bundle shaped like a search result; `clean` keeps every field the parser
/// reads well-typed (so the expected result can be computed).
fn bundle(clean: bool) -> BoxedStrategy<Value> {
    let s = |v: BoxedStrategy<Value>| if clean { v } else { mostly(v) };
    let string = |re: &'static str| re.prop_map(Value::String).boxed();
    let meta = (
        prop::option::of(s(string("[0-9a-f-]{1,8}"))),
        prop::option::of(s(instant().prop_map(Value::String).boxed())),
        extra_fields(),
    )
        .prop_map(|(v, lu, extra)| object(vec![("versionId", v), ("lastUpdated", lu)], extra));
    let resource = (
        s(
            prop::sample::select(vec!["Observation", "Patient", "OperationOutcome", ""])
                .prop_map(Value::from)
                .boxed(),
        ),
        s(prop_oneof![
            8 => "[A-Za-z0-9.-]{1,8}".prop_map(Value::String),
            // Ids a hostile server could send: control characters, escapes,
            // newlines that would forge a log line, paths, too long.
            1 => "[A-Za-z0-9]{0,3}[\\x00-\\x1f\\x7f\\u{1b}\\n/ %][A-Za-z0-9\\[\\]]{0,4}".prop_map(Value::String),
            1 => "[a-z]{65,70}".prop_map(Value::String),
        ]
        .boxed()),
        prop::option::of(s(meta.boxed())),
        extra_fields(),
    )
        .prop_map(|(rt, id, meta, extra)| {
            object(
                vec![("resourceType", Some(rt)), ("id", Some(id)), ("meta", meta)],
                extra,
            )
        });
    let search = (prop::option::of(s(prop::sample::select(vec![
        "match", "include", "outcome", "x",
    ])
    .prop_map(Value::from)
    .boxed())),)
        .prop_map(|(mode,)| object(vec![("mode", mode)], Map::new()));
    let entry = (
        prop_oneof![8 => resource.prop_map(Some), 1 => Just(Some(Value::Null)), 1 => Just(None)],
        prop::option::of(s(search.boxed())),
    )
        .prop_map(|(r, se)| object(vec![("resource", r), ("search", se)], Map::new()));
    let link = (
        s(
            prop::sample::select(vec!["next", "self", "previous", "Next"])
                .prop_map(Value::from)
                .boxed(),
        ),
        prop::option::of(s(prop_oneof![
            Just(Value::from("")),
            "http://x/fhir/Observation\\?_cursor=[0-9]{1,4}".prop_map(Value::String),
        ]
        .boxed())),
    )
        .prop_map(|(rel, url)| object(vec![("relation", Some(rel)), ("url", url)], Map::new()));
    let rt = if clean {
        Just(Value::from("Bundle")).boxed()
    } else {
        prop_oneof![
            8 => Just(Value::from("Bundle")),
            1 => Just(Value::from("OperationOutcome")),
            1 => any_json(),
        ]
        .boxed()
    };
    let server_meta = (prop::option::of(s(instant()
        .prop_map(Value::String)
        .boxed())),)
        .prop_map(|(lu,)| object(vec![("lastUpdated", lu)], Map::new()));
    let rt = if clean {
        rt.prop_map(Some).boxed()
    } else {
        prop::option::weighted(0.9, rt).boxed()
    };
    (
        rt,
        prop::option::of(s(server_meta.boxed())),
        prop::option::of(s(prop::collection::vec(link, 0..4)
            .prop_map(Value::Array)
            .boxed())),
        prop::option::of(s(prop::collection::vec(entry, 0..6)
            .prop_map(Value::Array)
            .boxed())),
        extra_fields(),
    )
        .prop_map(|(rt, meta, link, entry, extra)| {
            object(
                vec![
                    ("resourceType", rt),
                    ("type", Some(json!("searchset"))),
                    ("meta", meta),
                    ("link", link),
                    ("entry", entry),
                ],
                extra,
            )
        })
        .boxed()
}

/// Byte-level damage to a serialized body.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(Index),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    Duplicate(Index, usize),
    Flip(Index, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            "null",
            "\"id\":",
            "\"resource\":",
            "\"meta\":{\"lastUpdated\":\"x\"}",
            "\"\\ud800\"",
            "\"\\u0000\"",
            "1e999",
            "-",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop_oneof![
        any::<Index>().prop_map(Damage::Truncate),
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| Damage::Delete(i, n)),
        (any::<Index>(), token).prop_map(|(i, t)| Damage::Insert(i, t)),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Damage::Duplicate(i, n)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
    ]
}

fn apply_damage(mut body: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match d {
            Damage::Truncate(i) => body.truncate(at(i, body.len())),
            Damage::Delete(i, n) => {
                let s = at(i, body.len());
                body.drain(s..(s + n).min(body.len()));
            }
            Damage::Insert(i, t) => {
                let s = at(i, body.len());
                body.splice(s..s, t.iter().copied());
            }
            Damage::Duplicate(i, n) => {
                let s = at(i, body.len());
                let piece = body[s..(s + n).min(body.len())].to_vec();
                body.splice(s..s, piece);
            }
            Damage::Flip(i, b) => {
                if !body.is_empty() {
                    let s = i.index(body.len());
                    body[s] ^= b | 1;
                }
            }
        }
    }
    body
}

/// One entry `parse_page` must return.
struct ExpectedEntry {
    resource_type: String,
    id: String,
    version_id: Option<String>,
    last_updated: Option<String>,
    raw: String,
}

/// What `parse_page` must return for a `bundle(true)` value.
struct Expected {
    entries: Vec<ExpectedEntry>,
    skipped: usize,
    next: Option<String>,
    server_time: Option<String>,
}

fn expected(b: &Value) -> Expected {
    let mut entries = Vec::new();
    let mut skipped = 0;
    for e in b["entry"].as_array().into_iter().flatten() {
        if e["search"]["mode"].as_str().is_some_and(|m| m != "match") {
            continue;
        }
        let r = &e["resource"];
        if r.is_null() {
            continue;
        }
        // Entries whose id or versionId is not a FHIR id are skipped.
        let id = r["id"].as_str().unwrap();
        let version_ok = r["meta"]["versionId"].as_str().is_none_or(is_fhir_id);
        if !is_fhir_id(id) || !version_ok {
            skipped += 1;
            continue;
        }
        entries.push(ExpectedEntry {
            resource_type: r["resourceType"].as_str().unwrap().to_string(),
            id: r["id"].as_str().unwrap().to_string(),
            version_id: r["meta"]["versionId"].as_str().map(String::from),
            last_updated: r["meta"]["lastUpdated"].as_str().map(String::from),
            raw: serde_json::to_string(r).unwrap(),
        });
    }
    let next = b["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .filter(|u| !u.is_empty())
        .map(String::from);
    Expected {
        entries,
        skipped,
        next,
        server_time: b["meta"]["lastUpdated"].as_str().map(String::from),
    }
}

proptest! {
    #![proptest_config(pt_config(1000))]

    #[test]
    fn parse_page_survives_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        check_page(&body)?;
    }

    #[test]
    fn parse_page_survives_json_token_soup(
        // Soup alone rarely gets past the first byte; after a Bundle's opening
        // it reaches the entry, resource and meta parsing.
        prefix in prop::sample::select(vec![
            "",
            r#"{"resourceType":"Bundle","entry":["#,
            r#"{"resourceType":"Bundle","entry":[{"resource":"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","id":"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","id":"1","meta":"#,
            r#"{"resourceType":"Bundle","link":[{"relation":"next","url":"#,
            r#"{"resourceType":"Bundle","meta":"#,
        ]),
        tokens in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "{", "}", "[", "]", ":", ",", "null", "true", "0", "-1.5e3", "\"\"",
                    "\"resourceType\"", "\"Bundle\"", "\"entry\"", "\"resource\"", "\"id\"",
                    "\"meta\"", "\"lastUpdated\"", "\"versionId\"", "\"link\"", "\"relation\"",
                    "\"next\"", "\"url\"", "\"search\"", "\"mode\"", "\"match\"",
                    "\"2026-01-01T00:00:00Z\"", "\"\\ud800\"", "\"\\u0000\"", "\"\\\"\"", " ", "\n",
                ]).prop_map(String::from),
                "\\PC{1,3}",
            ],
            0..60,
        )
    ) {
        check_page(format!("{prefix}{}", tokens.concat()).as_bytes())?;
    }

    /// A well-formed Bundle, compact or pretty-printed, parses to exactly what it holds.
    #[test]
    fn parse_page_reads_well_formed_bundles_exactly(b in bundle(true), pretty in any::<bool>()) {
        let body = if pretty {
            serde_json::to_string_pretty(&b).unwrap()
        } else {
            serde_json::to_string(&b).unwrap()
        };
        let want = expected(&b);
        let page = match parse_page(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{e} for {body}"))),
        };
        prop_assert_eq!(page.next, want.next);
        prop_assert_eq!(page.server_time, want.server_time.as_deref().and_then(parse_instant));
        prop_assert_eq!(page.entries.len(), want.entries.len());
        prop_assert_eq!(page.skipped.len(), want.skipped);
        for (got, want) in page.entries.iter().zip(&want.entries) {
            prop_assert_eq!(&got.resource_type, &want.resource_type);
            prop_assert_eq!(&got.id, &want.id);
            prop_assert_eq!(&got.version_id, &want.version_id);
            prop_assert_eq!(&got.last_updated_raw, &want.last_updated);
            prop_assert_eq!(
                got.last_updated,
                want.last_updated.as_deref().and_then(parse_instant)
            );
            if !pretty {
                prop_assert_eq!(got.raw, want.raw.as_str());
            } else {
                let a: Value = serde_json::from_str(got.raw).unwrap();
                let b: Value = serde_json::from_str(&want.raw).unwrap();
                prop_assert_eq!(a, b);
            }
        }
    }

    /// Oddly typed Bundles, then damaged byte-wise: never a panic.
    #[test]
    fn parse_page_survives_mangled_bundles(
        b in bundle(false),
        pretty in any::<bool>(),
        damage in prop::collection::vec(damage(), 0..4),
    ) {
        let body = if pretty {
            serde_json::to_vec_pretty(&b).unwrap()
        } else {
            serde_json::to_vec(&b).unwrap()
        };
        check_page(&apply_damage(body, &damage))?;
    }
}

/// Nesting far beyond serde_json's recursion limit, in the places the parser
/// skips or keeps raw, on a stack the size of a tokio worker's (2 MiB).
#[test]
fn parse_page_survives_deep_nesting() {
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let n = 1_000_000;
    let bodies = vec![
        format!(
            r#"{{"resourceType":"Bundle","entry":[{{"resource":{{"resourceType":"Observation","id":"1","x":{}}}}}]}}"#,
            deep(n)
        ),
        format!(
            r#"{{"resourceType":"Bundle","entry":[{{"resource":{{"resourceType":"Observation","id":"1","meta":{{"x":{}}}}}}}]}}"#,
            deep(n)
        ),
        format!(r#"{{"resourceType":"Bundle","x":{}}}"#, deep(n)),
        format!(
            r#"{{"resourceType":"Bundle","entry":[{{"resource":{},"search":{{"mode":"include"}}}}]}}"#,
            deep(n)
        ),
        deep(n),
        "[".repeat(n),
        format!(r#"{{"resourceType":"Bundle","entry":{}"#, "[".repeat(n)),
    ];
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for b in bodies {
                let _ = parse_page(b.as_bytes());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

// ===========================================================================
// Config
// ===========================================================================

const MINIMAL: &str = "[[source]]
name = 'a'
base_url = 'https://x/fhir'
resources = ['Patient']

[[hook]]
name = 'h'
url = 'https://y/'
";

const FULL: &str = r#"state_dir = "state"
retention = "14d"

[[source]]
name = "lab-ehr"
base_url = "http://127.0.0.1:8090/fhir"
resources = ["Observation", "Encounter"]
every = "10s"
page_size = 100
overlap = "2m"
start = "2026-01-01T00:00:00Z"
owner_id = "org/lab"
timeout = "30s"
[source.params]
Observation = "category=laboratory"

[[source]]
name = "adt"
base_url = "https://ehr.example.org/fhir/R4/"
resources = ["Encounter"]
schedule = "*/10 * * * * *"
start = "beginning"

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

[[hook]]
name = "adt-discharges"
url = "http://127.0.0.1:9000/hooks/adt"
content = "id-only"
"#;

fn base_configs() -> Vec<&'static str> {
    vec![include_str!("../bridges.toml"), FULL, MINIMAL]
}

fn path() -> &'static Path {
    Path::new("bridges.toml")
}

/// Every error names the file and a line of the text.
fn check_error(text: &str, r: &Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    let Err(e) = r else { return Ok(()) };
    let lines = text.matches('\n').count() + 1;
    match e {
        ConfigError::Invalid {
            path,
            line,
            message,
        } => {
            prop_assert_eq!(path, "bridges.toml");
            prop_assert!(
                (1..=lines).contains(line),
                "line {line} outside 1..={lines}: {e}"
            );
            prop_assert!(!message.trim().is_empty(), "empty message: {e:?}");
            let shown = e.to_string();
            prop_assert!(
                shown.starts_with(&format!("bridges.toml:{line}: ")),
                "{shown}"
            );
        }
        ConfigError::Read { .. } => {}
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A config that loads holds only validated values.
/// Plain http is loaded only for this machine (no generated config sets
/// `allow_insecure_http`).
fn local(u: &url::Url) -> bool {
    matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"))
}

fn check_loaded(c: &Config) -> Result<(), TestCaseError> {
    let names: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
    for (i, s) in c.sources.iter().enumerate() {
        prop_assert!(valid_name(&s.name), "{}", s.name);
        prop_assert!(!names[..i].contains(&s.name.as_str()), "{} twice", s.name);
        prop_assert!(matches!(s.base_url.scheme(), "http" | "https"));
        prop_assert!(
            s.base_url.scheme() == "https" || local(&s.base_url),
            "{}",
            s.base_url
        );
        prop_assert!(s.base_url.path().ends_with('/'));
        prop_assert!(!s.resources.is_empty());
        for r in &s.resources {
            prop_assert!(s.base_url.join(r).is_ok(), "{r}");
        }
        prop_assert!((1..=1000).contains(&s.page_size));
        prop_assert!((1..=100_000).contains(&s.max_pages_per_poll));
        prop_assert!(s.timeout >= Duration::from_secs(1), "{:?}", s.timeout);
        if let Schedule::Every(d) = s.schedule {
            prop_assert!(d >= Duration::from_millis(100), "every {d:?}");
        }
        prop_assert!(s.base_url.username().is_empty() && s.base_url.password().is_none());
        for (i, r) in s.resources.iter().enumerate() {
            prop_assert!(!s.resources[..i].contains(r), "{r} twice");
        }
        for (k, q) in &s.params {
            prop_assert!(s.resources.contains(k));
            for (p, _) in url::form_urlencoded::parse(q.trim_start_matches('?').as_bytes()) {
                let base = p.split(':').next().unwrap_or_default();
                prop_assert!(
                    !["_count", "_sort", "_lastUpdated", "_summary", "_elements"].contains(&base),
                    "params.{k} = {q:?} loads"
                );
            }
        }
    }
    for (i, h) in c.hooks.iter().enumerate() {
        prop_assert!(valid_name(&h.name), "{}", h.name);
        prop_assert!(!c.hooks[..i].iter().any(|o| o.name == h.name));
        prop_assert!(matches!(h.url.scheme(), "http" | "https"));
        prop_assert!(h.url.scheme() == "https" || local(&h.url), "{}", h.url);
        for s in &h.sources {
            prop_assert!(names.contains(&s.as_str()), "{s}");
        }
        prop_assert!(h.max_attempts >= 1);
        prop_assert!(!h.retry_schedule.is_empty());
        for d in &h.retry_schedule {
            prop_assert!(*d >= Duration::from_secs(1), "retry delay {d:?}");
        }
        prop_assert!(h.timeout >= Duration::from_secs(1), "{:?}", h.timeout);
        prop_assert!(h.max_pending_age >= Duration::from_secs(1));
        prop_assert!((1..=256).contains(&h.concurrency));
        prop_assert!(h.url.username().is_empty() && h.url.password().is_none());
    }
    // Nothing to poll or nowhere to send is loaded, with a warning.
    if c.sources.is_empty() || c.hooks.is_empty() {
        prop_assert!(!c.warnings.is_empty());
    }
    Ok(())
}

/// The durations of a loaded config can be used the way the daemon uses them.
fn check_usable(c: &Config) -> Result<(), TestCaseError> {
    let now = chrono::Utc::now();
    for s in &c.sources {
        let next = std::panic::catch_unwind(|| s.schedule.next_after(now));
        prop_assert!(
            next.is_ok(),
            "source `{}`: schedule {:?} loads but next_after panics",
            s.name,
            s.schedule
        );
        let interval = std::panic::catch_unwind(|| s.schedule.nominal_interval(now));
        prop_assert!(
            interval.is_ok(),
            "source `{}`: nominal_interval panics",
            s.name
        );
    }
    for h in &c.hooks {
        for attempts in 1..=h.max_attempts.min(8) {
            for jitter in [0.0, 1.0] {
                let d = std::panic::catch_unwind(|| {
                    next_delay(&h.retry_schedule, attempts, h.max_attempts, None, jitter)
                });
                prop_assert!(
                    d.is_ok(),
                    "hook `{}`: retry_schedule {:?} loads but next_delay panics",
                    h.name,
                    h.retry_schedule
                );
            }
        }
    }
    Ok(())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// TOML values, good and bad, for any key.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "\"x\"", "''", "\"\"", "0", "-1", "1", "1000", "1001", "4294967296", "1e3", "nan",
            "true", "[]", "[\"\"]", "[\"Observation\", \"observation\"]", "[1]", "{}",
            "{ Observation = \"a=b\" }", "1979-05-27T07:32:00Z", "\"0s\"", "\"1ms\"", "\"2m\"",
            "\"300000y\"", "\"18446744073709551615s\"", "\"1000000000000000000000s\"",
            "[\"300000y\"]", "[\"18446744073709551615s\"]", "[\"0s\"]",
            "\"now\"", "\"beginning\"", "\"9999-12-31T23:59:59Z\"", "\"0000-01-01T00:00:00Z\"",
            "\"-262143-01-01T00:00:00Z\"", "\"* * * * * *\"", "\"0 0 30 2 *\"", "\"@yearly\"",
            "\"0 0 1 1 * 2020\"", "\"http://\"", "\"ftp://x/\"", "\"http://[::1]:99999/\"",
            "\"http://h/a b\"", "\"mailto:x\"", "\"id-only\"", "\"full-resource\"",
            "'.[] | ('", "'def f: f; f'", "'$__loc__'", "\"\\u0000\"", "\"ü\"", "\"lab-ehr\"",
            "[\"lab-ehr\", \"lab-ehr\"]", "\"\"\"\nmulti\nline\"\"\"", "'''\n'''",
            "\"http://u:s3cret@h/\"", "\"http://u@h/\"", "\"0 0 31 2 *\"", "\"_count=5\"",
            "{ Observation = \"_sort=x\" }", "\"100ms\"", "\"999ms\"", "100000", "100001",
        ])
        .prop_map(String::from),
        1 => "\\PC{0,20}".prop_map(|s| toml_string(&s)),
        1 => "\\PC{0,12}",
    ]
}

fn toml_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "state_dir",
        "retention",
        "name",
        "base_url",
        "resources",
        "schedule",
        "every",
        "page_size",
        "overlap",
        "start",
        "owner_id",
        "timeout",
        "params",
        "url",
        "sources",
        "filter",
        "content",
        "max_attempts",
        "retry_schedule",
        "concurrency",
        "max_pages_per_poll",
        "max_pending_age",
        "page_sise",
        "Observation",
        "\"quoted key\"",
        "a.b",
        "source.name",
    ]);
    prop_oneof![
        4 => (key, toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop::sample::select(vec![
            "[[source]]", "[[hook]]", "[source.params]", "[source]", "[hook]", "[x]",
            "[[source.params]]", "[[hook]]\nname = 'h'\nurl = 'https://y/'", "",
            "# comment", "[", "]]", "=", "\"", "'''",
        ])
        .prop_map(String::from),
        1 => "\\PC{0,40}",
    ]
}

/// Line- and character-level edits of a config.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    ReplaceValue(Index, String),
    InsertLine(Index, String),
    Truncate(Index),
    InsertText(Index, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        4 => (any::<Index>(), toml_value()).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
        2 => (any::<Index>(), toml_line()).prop_map(|(i, l)| Edit::InsertLine(i, l)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), "\\PC{1,6}").prop_map(|(i, s)| Edit::InsertText(i, s)),
    ]
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut text;
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i.index(n));
            }
            Edit::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            Edit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a.index(n), b.index(n)),
            Edit::ReplaceValue(i, v) if !lines.is_empty() => {
                let l = &mut lines[i.index(n)];
                if let Some(eq) = l.find('=') {
                    *l = format!("{}= {v}", &l[..eq]);
                }
            }
            Edit::InsertLine(i, l) => lines.insert(i.index(lines.len() + 1), l.clone()),
            Edit::Truncate(i) | Edit::InsertText(i, _) => {
                text = lines.join("\n");
                let bounds: Vec<usize> = text
                    .char_indices()
                    .map(|(b, _)| b)
                    .chain([text.len()])
                    .collect();
                let at = bounds[i.index(bounds.len())];
                match e {
                    Edit::Truncate(_) => text.truncate(at),
                    Edit::InsertText(_, s) => text.insert_str(at, s),
                    _ => unreachable!(),
                }
                lines = text.split('\n').map(String::from).collect();
            }
            _ => {}
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn mangled_config() -> impl Strategy<Value = String> {
    (
        prop::sample::select(base_configs()),
        prop::collection::vec(edit(), 1..5),
    )
        .prop_map(|(base, edits)| apply_edits(base, &edits))
}

/// A config built key by key, each value drawn from a pool of good and bad
/// values for that key (reaches the semantic checks far more often than edits).
fn structured_config() -> impl Strategy<Value = String> {
    /// A good value most of the time, a bad one sometimes.
    fn pick(good: &'static [&'static str], bad: &'static [&'static str]) -> BoxedStrategy<String> {
        let good = prop::sample::select(good).prop_map(String::from);
        if bad.is_empty() {
            return good.boxed();
        }
        prop_oneof![8 => good, 1 => prop::sample::select(bad).prop_map(String::from)].boxed()
    }
    fn opt(v: BoxedStrategy<String>, key: &'static str) -> impl Strategy<Value = String> {
        prop::option::weighted(0.5, v)
            .prop_map(move |v| v.map(|v| format!("{key} = {v}\n")).unwrap_or_default())
    }
    // Durations: huge ones are valid humantime, so they count as "good" here.
    const DURATIONS: &[&str] = &[
        "\"0s\"",
        "\"1ms\"",
        "\"10s\"",
        "\"2m\"",
        "\"14d\"",
        "\"1h 30m\"",
        "\"300000y\"",
        "\"18446744073709551615s\"",
    ];
    const BAD_DURATIONS: &[&str] = &["\"100000000000000000000s\"", "\"soon\"", "\"-1s\"", "10"];
    // Request timeouts and `max_pending_age`: at least 1 s.
    const TIMEOUTS: &[&str] = &[
        "\"1s\"",
        "\"10s\"",
        "\"2m\"",
        "\"1h 30m\"",
        "\"300000y\"",
        "\"18446744073709551615s\"",
    ];
    const BAD_TIMEOUTS: &[&str] = &["\"0s\"", "\"999ms\"", "\"soon\"", "10"];
    // `every`: at least 100 ms.
    const INTERVALS: &[&str] = &[
        "\"100ms\"",
        "\"10s\"",
        "\"2m\"",
        "\"14d\"",
        "\"300000y\"",
        "\"18446744073709551615s\"",
    ];
    const BAD_INTERVALS: &[&str] = &["\"0s\"", "\"1ms\"", "\"99ms\"", "\"soon\"", "\"-1s\""];
    let source = |name: &'static str| {
        (
            pick(
                &[
                    "\"http://127.0.0.1/fhir\"",
                    "\"https://h:8443/r4/\"",
                    "\"http://[::1]/fhir\"",
                ],
                &[
                    "\"http://x/fhir\"",
                    "\"ftp://x/\"",
                    "\"not a url\"",
                    "\"http://h/a b\"",
                    "\"http://u:s3cret@x/fhir\"",
                ],
            ),
            pick(
                &["[\"Observation\"]", "[\"Patient\", \"Encounter\"]"],
                &[
                    "[]",
                    "[\"observation\"]",
                    "[\"Obs/1\"]",
                    "[\"Observation\", \"Observation\"]",
                ],
            ),
            opt(
                pick(
                    &[
                        "\"*/10 * * * * *\"",
                        "\"0 0 29 2 *\"",
                        "\"* * * * *\"",
                        "\"@hourly\"",
                        "\"0 0 1 1 *\"",
                    ],
                    &[
                        "\"bad\"",
                        "\"* * * * * * *\"",
                        "\"0 0 30 2 *\"",
                        "\"0 0 31 2 *\"",
                    ],
                ),
                "schedule",
            ),
            opt(pick(INTERVALS, BAD_INTERVALS), "every"),
            opt(
                pick(&["1", "100", "1000"], &["0", "1001", "-1"]),
                "page_size",
            ),
            opt(pick(DURATIONS, BAD_DURATIONS), "overlap"),
            opt(
                pick(
                    &[
                        "\"now\"",
                        "\"beginning\"",
                        "\"2026-01-01T00:00:00Z\"",
                        "\"0000-01-01T00:00:00Z\"",
                        "\"9999-12-31T23:59:59.999Z\"",
                        "\"2026-01-01T00:00:00+23:59\"",
                    ],
                    &["\"yesterday\"", "\"2026-01-01\""],
                ),
                "start",
            ),
            opt(pick(&["\"org/lab\"", "\"\""], &[]), "owner_id"),
            opt(pick(TIMEOUTS, BAD_TIMEOUTS), "timeout"),
            prop::option::weighted(
                0.3,
                pick(
                    &[
                        "Observation = \"a=b\"",
                        "Patient = \"&&\"",
                        "Observation = \"_tag=x\"",
                    ],
                    &["Nope = \"x\"", "Observation = \"a=b&_count=5\""],
                ),
            ),
            opt(
                pick(&["1", "1000", "100000"], &["0", "100001"]),
                "max_pages_per_poll",
            ),
        )
            .prop_map(
                move |(url, res, sched, every, ps, ov, start, owner, to, params, mp)| {
                    let params = params
                        .map(|p| format!("[source.params]\n{p}\n"))
                        .unwrap_or_default();
                    format!(
                        "[[source]]\nname = \"{name}\"\nbase_url = {url}\nresources = {res}\n\
                     {sched}{every}{ps}{ov}{start}{owner}{to}{mp}{params}\n"
                    )
                },
            )
    };
    let hook = |name: &'static str| {
        (
            pick(&["\"http://localhost/\"", "\"https://y/h\""], &["\"http://y/\"", "\"ftp://y/\"", "\"\"", "\"http://u:p@y/\""]),
            opt(pick(&["[\"a\"]", "[]", "[\"b-2\", \"a\"]"], &["[\"nope\"]"]), "sources"),
            opt(pick(&["'true'", "'.resourceType == \"Observation\"'", "'empty'"], &["'('", "'nosuch(1)'", "''"]), "filter"),
            opt(pick(&["\"full-resource\"", "\"id-only\""], &["\"x\""]), "content"),
            opt(pick(&["1", "6", "4294967295"], &["0", "4294967296"]), "max_attempts"),
            opt(pick(&["[\"5s\"]", "[\"300000y\"]", "[\"18446744073709551615s\"]", "[\"1s\", \"1m\"]",
                       "[\"10000000000000s\"]"], &["[]", "[\"0s\", \"1m\"]", "[\"999ms\"]"]), "retry_schedule"),
            opt(pick(TIMEOUTS, BAD_TIMEOUTS), "timeout"),
            opt(pick(&["1", "4", "256"], &["0", "257"]), "concurrency"),
            opt(pick(TIMEOUTS, BAD_TIMEOUTS), "max_pending_age"),
        )
            .prop_map(move |(url, srcs, filter, content, ma, rs, to, conc, mpa)| {
                format!(
                    "[[hook]]\nname = \"{name}\"\nurl = {url}\n{srcs}{filter}{content}{ma}{rs}{to}{conc}{mpa}\n"
                )
            })
    };
    (
        opt(
            pick(&["\"state\"", "\"/var/lib/x\""], &["\"\""]),
            "state_dir",
        ),
        opt(pick(DURATIONS, BAD_DURATIONS), "retention"),
        prop::option::weighted(0.9, source("a")),
        prop::option::of(source("b-2")),
        prop::option::of(hook("h")),
        prop::option::weighted(0.2, hook("h")),
        prop::option::weighted(
            0.7,
            prop::sample::select(vec![
                "",
                "[[source]]\nname = \"a\"\nbase_url = \"https://z/\"\nresources = [\"Patient\"]\n",
                "bogus = 1\n",
                "[source.params]\nX = \"y\"\n",
            ]),
        ),
    )
        .prop_map(|(sd, ret, a, b, h1, h2, tail)| {
            [
                sd,
                ret,
                a.unwrap_or_default(),
                b.unwrap_or_default(),
                h1.unwrap_or_default(),
                h2.unwrap_or_default(),
                tail.unwrap_or_default().to_string(),
            ]
            .concat()
        })
}

/// The line the `filter` key is on in `config_with_filter`.
const FILTER_LINE: usize = 9;

fn config_with_filter(code: &str) -> String {
    format!("{MINIMAL}filter = {}\n", toml_string(code))
}

fn jq_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(vec![
                ".", "..", ".a", ".[]", ".[]?", ".[0]", ".[1:2]", ".[-1:]", "[", "]", "{", "}",
                "(", ")", "|", ",", ":", ";", "?", "?//", "//", "=", "==", "!=", "|=", "+=",
                "//=", "<", ">=", "+", "-", "*", "/", "%", "and", "or", "not", "if", "then",
                "elif", "else", "end", "try", "catch", "reduce", "foreach", "as", "$x", "$",
                "$__loc__", "$ENV", "def", "f", "f:", "f(.)", "label", "break", "$out",
                "input", "limit(1; .)", "\"s\"", "\"\\(1)\"", "\"\\(", "@base64", "@text",
                "@json \"x\\(.)\"", "1", "1.5e300", "-0", "nan", "infinite", "null", "true",
                "empty", "error", "error(\"x\")", "tojson", "fromjson", "recurse",
                "path(..)", "getpath([\"a\"])", "paths", "splits(\"a\")", "test(\"[\")",
                "ltrimstr(1)", "{a}", "{$x}", "{(1):2}", "{\"a\":1}", "{a:1}", "include",
                "import", "\"m\" as $m;", "\\", "\"", "#c\n", "$__prog_args", "getpath",
                "range(1;2)", "any(.[]; .)", "all", "first(empty)", "isvalid(.)",
                "@sh", "$x::y", "::", "..a", "?.", ".\"a\"", ".[\"a\"]",
            ])
            .prop_map(String::from),
            1 => "[a-z_$@.]{1,6}",
            1 => "\\PC{1,3}",
        ],
        0..24,
    )
    .prop_map(|t| t.join(" "))
}

/// Well-formed jq built from a small grammar (no recursion, nothing unbounded,
/// so running it always terminates).
fn jq_expr() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        ".",
        ".resourceType",
        ".id",
        ".meta.versionId",
        ".code",
        ".[0]",
        ".[]?",
        ".a?.b",
        ".[1:]",
        ".[\"id\"]",
        "..",
        "\"Observation\"",
        "\"\\(.id)\"",
        "1",
        "-2.5",
        "null",
        "true",
        "false",
        "empty",
        "ascii",
        "length",
        "keys?",
        "tojson",
        "ascii_downcase?",
        "type",
        "tostring",
        "@base64",
        "@json",
        "not",
        "@text",
        "now | type",
        "[paths]",
        "env | type",
        "getpath([\"a\",0])",
        "splits(\"a\")?",
        "test(\"^O\")?",
        "ltrimstr(\"O\")",
        "error(\"x\")",
        "infinite",
        "nan | isnan",
        "{}",
        "[]",
    ])
    .prop_map(String::from);
    leaf.prop_recursive(4, 24, 3, |e| {
        prop_oneof![
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("{a} | {b}")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("{a}, {b}")),
            (
                e.clone(),
                e.clone(),
                prop::sample::select(vec![
                    "==", "!=", "<", ">=", "and", "or", "//", "+", "-", "*", "/", "%",
                ])
            )
                .prop_map(|(a, b, op)| format!("({a}) {op} ({b})")),
            e.clone().prop_map(|a| format!("[{a}]")),
            e.clone().prop_map(|a| format!("{{a: ({a}), (\"k\"): 1}}")),
            e.clone().prop_map(|a| format!("({a})?")),
            (e.clone(), e.clone(), e.clone())
                .prop_map(|(a, b, c)| format!("if {a} then {b} else {c} end")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("try {a} catch {b}")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("reduce ({a}) as $x ({b}; [., $x])")),
            (e.clone(), e.clone())
                .prop_map(|(a, b)| format!("first(limit(3; {a})) as $v | {b} | [$v, .]")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("def g(f): f | {a}; g({b})")),
            (e.clone(), e.clone()).prop_map(|(a, b)| format!("any({a}; {b})")),
            e.clone().prop_map(|a| format!("select({a})")),
            e.clone().prop_map(|a| format!("[.[]? | {a}]")),
            e.clone().prop_map(|a| format!("path({a})?")),
            (e.clone(), e).prop_map(|(a, b)| format!(".a |= ({a}) | {b}")),
        ]
    })
}

/// Well-formed jq, the same with a few characters damaged, token soup, anything.
fn jq_input() -> impl Strategy<Value = String> {
    let damaged = (jq_expr(), any::<Index>(), any::<Index>(), "\\PC{0,3}").prop_map(
        |(code, at, len, with)| {
            let bounds: Vec<usize> = code
                .char_indices()
                .map(|(b, _)| b)
                .chain([code.len()])
                .collect();
            let a = bounds[at.index(bounds.len())];
            let rest: Vec<usize> = bounds.iter().copied().filter(|b| *b >= a).collect();
            let b = rest[len.index(rest.len().min(4))];
            format!("{}{with}{}", &code[..a], &code[b..])
        },
    );
    prop_oneof![4 => jq_expr(), 3 => damaged, 2 => jq_soup(), 1 => any::<String>()]
}

fn sample_resources() -> Vec<fhir_bridge::filter::Resource> {
    [
        r#"{"resourceType":"Observation","id":"1","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00Z"},"code":"HH","a":{"b":[1,"x",null]}}"#,
        r#"{"resourceType":"Patient","id":"p","name":[{"family":"Ü"}],"a":[]}"#,
        r#"{}"#,
    ]
    .iter()
    .map(|r| parse_resource(r).unwrap())
    .collect()
}

proptest! {
    #![proptest_config(pt_config(1000))]

    #[test]
    fn config_survives_arbitrary_text(text in any::<String>()) {
        let r = Config::from_str(&text, path());
        check_error(&text, &r)?;
    }

    #[test]
    fn config_survives_toml_token_soup(
        lines in prop::collection::vec(toml_line(), 0..20)
    ) {
        let text = lines.join("\n");
        let r = Config::from_str(&text, path());
        check_error(&text, &r)?;
        if let Ok(c) = &r {
            check_loaded(c)?;
        }
    }

    #[test]
    fn config_survives_mangled_valid_configs(text in mangled_config()) {
        let r = Config::from_str(&text, path());
        check_error(&text, &r)?;
        if let Ok(c) = &r {
            check_loaded(c)?;
        }
    }

    #[test]
    fn config_survives_structured_configs(text in structured_config()) {
        let r = Config::from_str(&text, path());
        check_error(&text, &r)?;
        if let Ok(c) = &r {
            check_loaded(c)?;
        }
    }

    /// Whatever loads can be run: no schedule or retry delay that panics later.
    #[test]
    fn loaded_configs_have_usable_durations(
        text in prop_oneof![mangled_config(), structured_config()]
    ) {
        let r = Config::from_str(&text, path());
        if std::env::var_os("PROP_INPUT_STATS").is_some() {
            eprintln!("stats: loads {}", r.is_ok());
        }
        if let Ok(c) = r {
            check_usable(&c)?;
        }
    }

    #[test]
    fn filter_compile_survives_arbitrary_strings(code in prop_oneof![any::<String>(), jq_input()]) {
        let _ = Filter::compile(&code);
    }

    /// Through the config: a filter loads exactly when it compiles, and a bad one
    /// is reported at the `filter` line.
    #[test]
    fn config_filters_load_or_are_reported_at_their_line(code in jq_input()) {
        let text = config_with_filter(&code);
        let r = Config::from_str(&text, path());
        check_error(&text, &r)?;
        match (Filter::compile(&code), &r) {
            (Ok(_), Ok(c)) => {
                prop_assert_eq!(c.hooks[0].filter.code(), code.as_str());
                // A filter that loads runs on resources without panicking
                // (errors are non-matches).
                for r in sample_resources() {
                    let _ = c.hooks[0].filter.matches(&r);
                }
            }
            (Err(_), Err(e)) => {
                let prefix = format!(
                    "bridges.toml:{FILTER_LINE}: hook `h`: `filter` does not compile: "
                );
                prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
            }
            (Ok(_), Err(e)) => prop_assert!(false, "compiles alone but the config fails: {}", e),
            (Err(e), Ok(_)) => prop_assert!(false, "the config loads a filter that fails: {}", e),
        }
    }
}

#[test]
fn huge_durations_are_rejected_or_usable() {
    let now = chrono::Utc::now();
    let mut problems = Vec::new();
    for v in ["300000y", "18446744073709551615s"] {
        let text = MINIMAL.replace(
            "resources = ['Patient']",
            &format!("resources = ['Patient']\nevery = '{v}'"),
        );
        if let Ok(c) = Config::from_str(&text, path())
            && std::panic::catch_unwind(|| c.sources[0].schedule.next_after(now)).is_err()
        {
            problems.push(format!(
                "every = '{v}' loads, then Schedule::next_after panics"
            ));
        }
        let text = format!("{MINIMAL}retry_schedule = ['{v}']\n");
        if let Ok(c) = Config::from_str(&text, path()) {
            let h = &c.hooks[0];
            if std::panic::catch_unwind(|| next_delay(&h.retry_schedule, 1, 6, None, 1.0)).is_err()
            {
                problems.push(format!(
                    "retry_schedule = ['{v}'] loads, then next_delay panics"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Nesting far beyond the TOML parser's limit: an error with a line, no crash.
#[test]
fn config_survives_deep_nesting() {
    let n = 100_000;
    let texts = vec![
        format!("state_dir = {}1{}", "[".repeat(n), "]".repeat(n)),
        format!("state_dir = {}", "{a=".repeat(n)),
        format!("{MINIMAL}filter = {}", "[".repeat(n)),
        format!("{}", "[".repeat(n)),
        "a.".repeat(n) + "b = 1",
    ];
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for t in texts {
                let r = Config::from_str(&t, path());
                check_error(&t, &r).unwrap();
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

// ===========================================================================
// Long or deeply nested filters: a stack overflow aborts the whole process, so
// each case runs in a child process (this test binary, re-run on one test).
// ===========================================================================

/// Runs `f` in a child process; fails if the child does not exit cleanly.
fn in_child(test_name: &str, case: &str, f: impl FnOnce()) {
    const VAR: &str = "PROP_INPUT_CHILD_CASE";
    match std::env::var(VAR) {
        Ok(c) if c == case => return f(),
        Ok(_) => return,
        Err(_) => {}
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, case)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.lines().rev().take(4).collect::<Vec<_>>().join(" | ");
    assert!(
        out.status.success(),
        "{case}: the process died ({}): {tail}",
        out.status
    );
}

fn nested_parens(n: usize) -> String {
    format!("{}.{}", "(".repeat(n), ")".repeat(n))
}

fn or_chain(n: usize) -> String {
    (0..n)
        .map(|i| format!(".code == \"c{i}\""))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `fhir-bridge validate`/`run` compile filters while loading the config, on
/// the main thread (8 MiB stack). A long or deep filter must be an error or
/// load, never a crash.
#[test]
fn long_or_deep_filters_do_not_crash_the_config_loader() {
    let cases: Vec<(&str, String)> = vec![
        ("parens-10000", nested_parens(10_000)),
        ("or-chain-3000", or_chain(3_000)),
        ("pipe-3000", vec!["."; 3_000].join(" | ")),
        (
            "arrays-3000",
            format!("{}.{}", "[".repeat(3_000), "]".repeat(3_000)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, code) in cases {
        let text = config_with_filter(&code);
        let r = std::panic::catch_unwind(|| {
            in_child(
                "long_or_deep_filters_do_not_crash_the_config_loader",
                name,
                || {
                    std::thread::Builder::new()
                        .stack_size(8 << 20)
                        .spawn(move || {
                            let _ = Config::from_str(&text, path());
                        })
                        .unwrap()
                        .join()
                        .unwrap();
                },
            )
        });
        if let Err(e) = r {
            failures.push(panic_text(e));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A filter that loads is run on each resource by the poll task, on a tokio
/// worker thread (2 MiB stack). A filter that loads must not crash it.
#[test]
fn filters_that_load_do_not_crash_when_run() {
    let cases: Vec<(&str, String)> = vec![
        ("or-chain-1000", or_chain(1_000)),
        ("plus-1000", vec!["1"; 1_000].join(" + ")),
        ("parens-1000", nested_parens(1_000)),
    ];
    let mut failures = Vec::new();
    for (name, code) in cases {
        let r = std::panic::catch_unwind(|| {
            in_child("filters_that_load_do_not_crash_when_run", name, || {
                let text = config_with_filter(&code);
                let (tx, rx) = std::sync::mpsc::channel();
                let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
                // The loader thread stays alive until the filter has run, so that
                // the runner gets a fresh 2 MiB stack (not the loader's, reused).
                let loader = std::thread::Builder::new()
                    .stack_size(8 << 20)
                    .spawn(move || {
                        let c = Config::from_str(&text, path()).ok();
                        tx.send(c.map(|c| c.hooks[0].filter.clone())).unwrap();
                        let _ = done_rx.recv();
                    })
                    .unwrap();
                if let Some(filter) = rx.recv().unwrap() {
                    std::thread::Builder::new()
                        .stack_size(2 << 20)
                        .spawn(move || {
                            let r = parse_resource(r#"{"resourceType":"Observation","code":"x"}"#)
                                .unwrap();
                            let _ = filter.matches(&r);
                        })
                        .unwrap()
                        .join()
                        .unwrap();
                }
                done_tx.send(()).unwrap();
                loader.join().unwrap();
            })
        });
        if let Err(e) = r {
            failures.push(panic_text(e));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
