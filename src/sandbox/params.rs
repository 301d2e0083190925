//! Query strings of the sandbox's searches and histories, `Prefer:
//! handling=strict`, and the cursors its page links carry.

use super::history::HistoryQuery;
use super::search::{Query, ReferenceFilter};
use super::store::{LogKey, reference_to};
use crate::fhir::parse_instant;
use axum::http::HeaderMap;

/// What a search understands; with strict handling anything else is a 400.
const SEARCH_PARAMS: &[&str] = &[
    "_lastUpdated",
    "_sort",
    "_count",
    "_cursor",
    "_format",
    "patient",
    "subject",
    "organization",
];
const HISTORY_PARAMS: &[&str] = &["_since", "_count", "_cursor", "_format"];
const DEFAULT_COUNT: usize = 20;
const MAX_COUNT: usize = 1000;

/// A page link's position: `{generation}.{a|d|h}.{ms}.{id or sequence}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Cursor {
    /// The link generation it was issued in (`Quirks::expire_page_links`).
    pub(super) generation: u64,
    pub(super) at: CursorAt,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum CursorAt {
    Ascending(i64, String),
    Descending(i64, String),
    History(LogKey),
}

impl Cursor {
    pub(super) fn encode(&self) -> String {
        let g = self.generation;
        match &self.at {
            CursorAt::Ascending(ms, id) => format!("{g}.a.{ms}.{id}"),
            CursorAt::Descending(ms, id) => format!("{g}.d.{ms}.{id}"),
            CursorAt::History((ms, seq)) => format!("{g}.h.{ms}.{seq}"),
        }
    }

    fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.splitn(4, '.');
        let generation = parts.next()?.parse().ok()?;
        let kind = parts.next()?;
        let ms = parts.next()?.parse().ok()?;
        let rest = parts.next()?.to_string();
        let at = match kind {
            "a" => CursorAt::Ascending(ms, rest),
            "d" => CursorAt::Descending(ms, rest),
            "h" => CursorAt::History((ms, rest.parse().ok()?)),
            _ => return None,
        };
        Some(Cursor { generation, at })
    }
}

pub(super) struct SearchRequest {
    pub(super) query: Query,
    /// The generation of the page link followed, if any.
    pub(super) link_generation: Option<u64>,
}

pub(super) struct HistoryRequest {
    pub(super) query: HistoryQuery,
    pub(super) link_generation: Option<u64>,
}

/// Whether a `Prefer` header asks for `handling=strict`.
pub(super) fn prefers_strict(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

fn parse_ms(name: &str, v: &str) -> Result<i64, String> {
    // An unencoded `+01:00` arrives as a space.
    parse_instant(&v.replace(' ', "+"))
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| format!("bad {name} `{v}`"))
}

fn parse_count(v: &str) -> Result<usize, String> {
    Ok(v.parse::<usize>().map_err(|_| "bad _count")?.min(MAX_COUNT))
}

fn unknown(name: &str) -> String {
    let shown: String = name.chars().take(64).collect();
    format!("unknown search parameter `{shown}` (Prefer: handling=strict)")
}

/// `descending` is the quirk's current state; a followed link keeps the
/// order its chain started with.
pub(super) fn parse_search(
    raw: &str,
    strict: bool,
    descending: bool,
) -> Result<SearchRequest, String> {
    let mut q = Query {
        count: DEFAULT_COUNT,
        descending,
        ..Default::default()
    };
    let mut link_generation = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "_lastUpdated" => {
                let (prefix, value) = match v.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
                    _ => ("eq", v.as_ref()),
                };
                let ms = parse_ms("_lastUpdated", value)?;
                match prefix {
                    "ge" => q.ge_ms = Some(ms),
                    "gt" => q.gt_ms = Some(ms),
                    "le" => q.le_ms = Some(ms),
                    "lt" => q.lt_ms = Some(ms),
                    _ => {
                        q.ge_ms = Some(ms);
                        q.le_ms = Some(ms);
                    }
                }
            }
            "_count" => q.count = parse_count(&v)?,
            "_cursor" => {
                let c = Cursor::parse(&v).ok_or("bad _cursor")?;
                link_generation = Some(c.generation);
                let (desc, after) = match c.at {
                    CursorAt::Ascending(ms, id) => (false, (ms, id)),
                    CursorAt::Descending(ms, id) => (true, (ms, id)),
                    CursorAt::History(_) => return Err("bad _cursor".into()),
                };
                q.descending = desc;
                q.after = Some(after);
            }
            "patient" | "subject" => q.references.push(ReferenceFilter {
                elements: &["subject", "patient"],
                any_of: v.split(',').map(|p| reference_to("Patient", p)).collect(),
            }),
            "organization" => q.references.push(ReferenceFilter {
                elements: &["managingOrganization"],
                any_of: v
                    .split(',')
                    .map(|o| reference_to("Organization", o))
                    .collect(),
            }),
            name if strict && !SEARCH_PARAMS.contains(&name) => return Err(unknown(name)),
            _ => {}
        }
    }
    Ok(SearchRequest {
        query: q,
        link_generation,
    })
}

/// `id`: an instance history.
pub(super) fn parse_history(
    raw: &str,
    strict: bool,
    id: Option<&str>,
) -> Result<HistoryRequest, String> {
    let mut q = HistoryQuery {
        count: DEFAULT_COUNT,
        id: id.map(String::from),
        ..Default::default()
    };
    let mut link_generation = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "_since" => q.since_ms = Some(parse_ms("_since", &v)?),
            "_count" => q.count = parse_count(&v)?,
            "_cursor" => match Cursor::parse(&v) {
                Some(Cursor {
                    generation,
                    at: CursorAt::History(key),
                }) => {
                    link_generation = Some(generation);
                    q.after = Some(key);
                }
                _ => return Err("bad _cursor".into()),
            },
            name if strict && !HISTORY_PARAMS.contains(&name) => return Err(unknown(name)),
            _ => {}
        }
    }
    Ok(HistoryRequest {
        query: q,
        link_generation,
    })
}

/// `{path}?{raw without _cursor}&_cursor=…`.
pub(super) fn next_link(path: &str, raw: &str, cursor: &Cursor) -> String {
    let kept: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(url::form_urlencoded::parse(raw.as_bytes()).filter(|(k, _)| k != "_cursor"))
        .append_pair("_cursor", &cursor.encode())
        .finish();
    format!("{path}?{kept}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_with_dots_in_ids() {
        for at in [
            CursorAt::Ascending(-5, "a.b".into()),
            CursorAt::Descending(7, "x".into()),
            CursorAt::History((9, 3)),
        ] {
            let c = Cursor { generation: 2, at };
            assert_eq!(Cursor::parse(&c.encode()), Some(c));
        }
        assert_eq!(Cursor::parse("1.h.5.x"), None);
        assert_eq!(Cursor::parse("1:2"), None);
    }

    #[test]
    fn strict_rejects_unknown_parameters_lenient_ignores_them() {
        let raw = "_lastUpdated=ge2024-01-01T00:00:00Z&category=laboratory&_count=5";
        assert!(parse_search(raw, false, false).is_ok());
        let err = parse_search(raw, true, false).err().unwrap();
        assert!(err.contains("category"), "{err}");
        assert!(parse_search("patient=1&_sort=_lastUpdated", true, false).is_ok());
        assert!(parse_history("_since=2024-01-01T00:00:00Z&x=1", true, None).is_err());
        assert!(parse_history("_since=2024-01-01T00:00:00+00:00", true, None).is_ok());
        assert!(parse_search("_lastUpdated=ge%C3%A9", false, false).is_err());
        assert!(parse_search("_count=x", false, false).is_err());
    }

    #[test]
    fn prefer_handling_strict_is_found_among_other_preferences() {
        let mut h = HeaderMap::new();
        assert!(!prefers_strict(&h));
        h.insert("prefer", "return=minimal, Handling=Strict".parse().unwrap());
        assert!(prefers_strict(&h));
        h.insert("prefer", "handling=lenient".parse().unwrap());
        assert!(!prefers_strict(&h));
    }
}
