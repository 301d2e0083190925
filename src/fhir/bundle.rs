//! Parsing a FHIR search Bundle without re-serialising resources: each entry's
//! resource stays the exact bytes the server sent.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{is_fhir_id, is_resource_type, parse_instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("response is not valid JSON (at byte {0})")]
    NotJson(usize),
    /// The server's resourceType, shown only when it looks like one.
    #[error("response is a {0}, not a Bundle")]
    NotBundle(String),
}

#[derive(Deserialize)]
struct RawBundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    meta: Option<Meta>,
    /// Any JSON: a total that is not a count must not fail the page.
    total: Option<serde_json::Value>,
    #[serde(default)]
    link: Vec<Link>,
    #[serde(default, borrow)]
    entry: Vec<RawEntry<'a>>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    relation: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct RawEntry<'a> {
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    search: Option<Search>,
    request: Option<Request>,
    response: Option<Response>,
}

/// A history entry's `request`: what was done to the resource.
#[derive(Deserialize)]
struct Request {
    method: Option<String>,
    url: Option<String>,
}

/// A history entry's `response`: the version it made, and when.
#[derive(Deserialize)]
struct Response {
    etag: Option<String>,
    #[serde(rename = "lastModified")]
    last_modified: Option<String>,
}

/// How a page's entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Search matches: a resource per entry; create or update is for the diff to say.
    Search,
    /// History entries: `request.method` says create (POST), update (PUT) or
    /// delete (DELETE, with no resource).
    History,
}

/// What a history entry did to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create,
    Update,
    Delete,
}

#[derive(Deserialize)]
struct Search {
    mode: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
    meta: Option<Meta>,
}

/// One search-match resource of a page.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub resource_type: String,
    pub id: String,
    pub version_id: Option<String>,
    pub last_updated: Option<DateTime<Utc>>,
    /// The server's text for lastUpdated, kept as given for payloads.
    pub last_updated_raw: Option<String>,
    /// The resource exactly as the server sent it; empty for a delete.
    pub raw: &'a str,
    /// A history entry's method; `None` for a search match.
    pub method: Option<Method>,
}

/// An entry that was read but is not passed on, and why (PHI-free, and
/// without the offending value: it came from outside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's position in the Bundle (0-based).
    pub index: usize,
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Page<'a> {
    /// The server's time for this response (Bundle.meta.lastUpdated).
    pub server_time: Option<DateTime<Utc>>,
    pub next: Option<String>,
    /// `Bundle.total`, when the server counts its matches.
    pub total: Option<u64>,
    /// `Bundle.total` is there but not a count (a string, a negative, a
    /// float): the page still counts, the walk's total does not.
    pub bad_total: bool,
    pub entries: Vec<Entry<'a>>,
    /// Entries dropped because their id or versionId is not a FHIR id.
    pub skipped: Vec<Skipped>,
}

/// A search page (see `parse_page_as`).
pub fn parse_page(body: &[u8]) -> Result<Page<'_>, BundleError> {
    parse_page_as(body, EntryMode::Search)
}

/// A page of search matches, or of history entries (each with its method;
/// a delete has no resource: its type, id and version come from
/// `request.url` and `response`).
pub fn parse_page_as(body: &[u8], mode: EntryMode) -> Result<Page<'_>, BundleError> {
    let bundle: RawBundle = serde_json::from_slice(body).map_err(|e| {
        // Locate the error without echoing the body (it may hold PHI).
        let line_start: usize = body
            .split(|b| *b == b'\n')
            .take(e.line().saturating_sub(1))
            .map(|l| l.len() + 1)
            .sum();
        BundleError::NotJson(line_start + e.column())
    })?;
    match bundle.resource_type.as_deref() {
        Some("Bundle") => {}
        Some(other) if is_resource_type(other) => {
            return Err(BundleError::NotBundle(other.to_string()));
        }
        Some(_) => return Err(BundleError::NotBundle("resource".into())),
        None => {
            return Err(BundleError::NotBundle(
                "resource without resourceType".into(),
            ));
        }
    }
    let next = bundle
        .link
        .into_iter()
        .find(|l| l.relation.as_deref() == Some("next"))
        .and_then(|l| l.url)
        .filter(|u| !u.is_empty());
    let server_time = bundle
        .meta
        .and_then(|m| m.last_updated)
        .and_then(|s| parse_instant(&s));

    let mut entries = Vec::with_capacity(bundle.entry.len());
    let mut skipped = Vec::new();
    for (index, e) in bundle.entry.into_iter().enumerate() {
        match read_entry(e, mode) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(reason) => skipped.push(Skipped { index, reason }),
        }
    }
    let total = bundle.total.as_ref().and_then(serde_json::Value::as_u64);
    let bad_total = bundle.total.is_some() && total.is_none();
    Ok(Page {
        server_time,
        next,
        total,
        bad_total,
        entries,
        skipped,
    })
}

/// One entry of a page: `None` when it is not a change of the page (an
/// `include` or `outcome` entry, no resource), `Err` with the reason it is
/// skipped (counted on the target's status; the rest of the page goes on).
fn read_entry<'a>(e: RawEntry<'a>, mode: EntryMode) -> Result<Option<Entry<'a>>, &'static str> {
    // `include` and `outcome` entries are not search matches.
    if e.search
        .as_ref()
        .and_then(|s| s.mode.as_deref())
        .is_some_and(|m| m != "match")
    {
        return Ok(None);
    }
    let method = match mode {
        EntryMode::Search => None,
        EntryMode::History => Some(history_method(&e)?),
    };
    if method == Some(Method::Delete) {
        return deleted_entry(&e).map(Some);
    }
    let Some(raw) = e.resource else {
        return Ok(None);
    };
    // One unreadable entry must not fail the page (and so block the
    // target for good): it is skipped and counted on status.
    let head = serde_json::from_str::<Head>(raw.get()).ok();
    let Some((resource_type, id, meta)) =
        head.and_then(|h| Some((h.resource_type?, h.id?, h.meta)))
    else {
        return Err("resource has no resourceType or id");
    };
    let (mut version_id, mut last_updated_raw) = match meta {
        Some(m) => (m.version_id, m.last_updated),
        None => (None, None),
    };
    // A history entry may say in its response what the resource's meta does not.
    if let (Some(_), Some(r)) = (method, &e.response) {
        version_id = version_id.or_else(|| {
            r.etag
                .as_deref()
                .map(|t| t.trim_start_matches("W/").trim_matches('"').to_string())
        });
        last_updated_raw = last_updated_raw.or_else(|| r.last_modified.clone());
    }
    // A hostile or broken server's ids (newlines, escapes, paths) must not
    // reach logs, payloads or message ids: the entry is skipped, counted
    // on the target's status, and the rest of the page goes on.
    if !is_fhir_id(&id) {
        return Err("id is not a valid FHIR id");
    }
    if version_id.as_deref().is_some_and(|v| !is_fhir_id(v)) {
        return Err("meta.versionId is not a valid FHIR id");
    }
    // An unreadable lastUpdated must not block the target forever: the
    // resource is still diffed (by versionId or hash) and delivered; it just
    // cannot move the watermark.
    let last_updated = last_updated_raw.as_deref().and_then(parse_instant);
    Ok(Some(Entry {
        resource_type,
        id,
        version_id,
        last_updated,
        last_updated_raw,
        raw: raw.get(),
        method,
    }))
}

/// A history entry's method: POST is a create, PUT (or PATCH) an update,
/// DELETE a delete.
fn history_method(e: &RawEntry) -> Result<Method, &'static str> {
    match e.request.as_ref().and_then(|r| r.method.as_deref()) {
        Some("POST") => Ok(Method::Create),
        Some("PUT") | Some("PATCH") => Ok(Method::Update),
        Some("DELETE") => Ok(Method::Delete),
        Some(_) => Err("history entry has an unknown request.method"),
        None => Err("history entry has no request.method"),
    }
}

/// A DELETE history entry: type and id from `request.url` (`Type/id`,
/// perhaps absolute or with `/_history/v`), version from `response.etag`
/// (`W/"3"`), time from `response.lastModified`.
fn deleted_entry<'a>(e: &RawEntry) -> Result<Entry<'a>, &'static str> {
    let url = e
        .request
        .as_ref()
        .and_then(|r| r.url.as_deref())
        .ok_or("history DELETE entry has no request.url")?;
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let path = path.split("/_history/").next().unwrap_or_default();
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let (Some(id), Some(resource_type)) = (parts.next(), parts.next()) else {
        return Err("history DELETE entry's request.url is not Type/id");
    };
    if !is_resource_type(resource_type) || !is_fhir_id(id) {
        return Err("history DELETE entry's request.url is not Type/id");
    }
    let version_id = e
        .response
        .as_ref()
        .and_then(|r| r.etag.as_deref())
        .map(|t| t.trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|v| !v.is_empty());
    if version_id.as_deref().is_some_and(|v| !is_fhir_id(v)) {
        return Err("history DELETE entry's response.etag is not a FHIR id");
    }
    let last_updated_raw = e.response.as_ref().and_then(|r| r.last_modified.clone());
    Ok(Entry {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version_id,
        last_updated: last_updated_raw.as_deref().and_then(parse_instant),
        last_updated_raw,
        raw: "",
        method: Some(Method::Delete),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::format_instant;

    /// A `Bundle.total` that is not a count (a string, a negative, a float)
    /// does not fail the page (its entries are the server's all the same);
    /// it is no count either (`bad_total`: no deletes inferred from the walk).
    #[test]
    fn a_total_that_is_not_a_count_does_not_fail_the_page() {
        for total in [r#""3""#, "-1", "1e18", "3.5", "{}", "[3]"] {
            let body = format!(
                r#"{{"resourceType":"Bundle","total":{total},"entry":[{{"resource":{{"resourceType":"Observation","id":"o1"}}}}]}}"#
            );
            let p = parse_page(body.as_bytes()).unwrap_or_else(|e| panic!("{total}: {e}"));
            assert_eq!(p.entries.len(), 1, "{total}");
            assert_eq!((p.total, p.bad_total), (None, true), "{total}");
        }
        for (total, count) in [("3", Some(3)), ("null", None), ("0", Some(0))] {
            let body = format!(r#"{{"resourceType":"Bundle","total":{total}}}"#);
            let p = parse_page(body.as_bytes()).unwrap();
            assert_eq!((p.total, p.bad_total), (count, false), "{total}");
        }
    }

    #[test]
    fn parses_entries_links_and_server_time() {
        let body = br#"{"resourceType":"Bundle","type":"searchset",
          "meta":{"lastUpdated":"2026-11-21T10:00:00.500+00:00"},
          "link":[{"relation":"self","url":"a"},{"relation":"next","url":"http://x/fhir/Observation?page=2"}],
          "entry":[
            {"resource":{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"2026-11-21T09:59:59.123Z"}},"search":{"mode":"match"}},
            {"resource":{"resourceType":"Patient","id":"p1"},"search":{"mode":"include"}},
            {"resource":{"resourceType":"OperationOutcome","id":"x"},"search":{"mode":"outcome"}}
          ]}"#;
        let p = parse_page(body).unwrap();
        assert_eq!(p.next.as_deref(), Some("http://x/fhir/Observation?page=2"));
        assert_eq!(
            format_instant(p.server_time.unwrap()),
            "2026-11-21T10:00:00.500Z"
        );
        assert_eq!(p.entries.len(), 1);
        let e = &p.entries[0];
        assert_eq!(
            (
                e.resource_type.as_str(),
                e.id.as_str(),
                e.version_id.as_deref()
            ),
            ("Observation", "o1", Some("3"))
        );
        assert!(e.raw.starts_with(r#"{"resourceType":"Observation""#));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_page(b"<html>"),
            Err(BundleError::NotJson(_))
        ));
        assert!(matches!(
            parse_page(b"{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":"),
            Err(BundleError::NotJson(_))
        ));
        assert_eq!(
            parse_page(br#"{"resourceType":"OperationOutcome","issue":[]}"#).unwrap_err(),
            BundleError::NotBundle("OperationOutcome".into())
        );
        let no_id = parse_page(br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation"}},{"resource":7}]}"#).unwrap();
        assert!(no_id.entries.is_empty());
        assert_eq!(no_id.skipped.len(), 2);
        let odd = parse_page(br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","id":"1","meta":{"lastUpdated":"yesterday"}}}]}"#).unwrap();
        assert_eq!(odd.entries[0].last_updated, None);
        let odd_type = parse_page(b"{\"resourceType\":\"x\\n\\u001b[31mFAKE\"}").unwrap_err();
        assert_eq!(odd_type, BundleError::NotBundle("resource".into()));
        let empty = parse_page(br#"{"resourceType":"Bundle"}"#).unwrap();
        assert!(empty.entries.is_empty() && empty.next.is_none());
    }

    #[test]
    fn entries_with_ids_that_are_not_fhir_ids_are_skipped_not_passed_on() {
        let body = br#"{"resourceType":"Bundle","entry":[
            {"resource":{"resourceType":"Observation","id":"ok-1.a"}},
            {"resource":{"resourceType":"Observation","id":"x\n2026-01-01 INFO forged \u001b[31m"}},
            {"resource":{"resourceType":"Observation","id":"../../etc"}},
            {"resource":{"resourceType":"Observation","id":"ok2","meta":{"versionId":"1\r\n"}}},
            {"resource":{"resourceType":"Observation","id":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}
          ]}"#;
        let p = parse_page(body).unwrap();
        let ids: Vec<_> = p.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ok-1.a"]);
        let skipped: Vec<_> = p.skipped.iter().map(|s| (s.index, s.reason)).collect();
        assert_eq!(
            skipped,
            [
                (1, "id is not a valid FHIR id"),
                (2, "id is not a valid FHIR id"),
                (3, "meta.versionId is not a valid FHIR id"),
                (4, "id is not a valid FHIR id"),
            ]
        );
    }

    /// History entries: the method says what happened; a delete's type, id,
    /// version and time come from its request and response.
    #[test]
    fn history_entries_carry_their_method() {
        let body = br#"{"resourceType":"Bundle","type":"history","entry":[
            {"resource":{"resourceType":"Encounter","id":"e1","meta":{"versionId":"1","lastUpdated":"2026-11-30T10:00:00Z"}},
             "request":{"method":"POST","url":"Encounter"},"response":{"status":"201"}},
            {"resource":{"resourceType":"Encounter","id":"e1"},
             "request":{"method":"PUT","url":"Encounter/e1"},
             "response":{"status":"200","etag":"W/\"2\"","lastModified":"2026-11-30T10:00:01Z"}},
            {"request":{"method":"DELETE","url":"https://ehr.example/fhir/Encounter/e1/_history/3"},
             "response":{"status":"204","etag":"W/\"3\"","lastModified":"2026-11-30T10:00:02Z"}},
            {"request":{"method":"DELETE","url":"Encounter/bad id"}},
            {"resource":{"resourceType":"Encounter","id":"e2"},"request":{"method":"GET","url":"Encounter/e2"}},
            {"resource":{"resourceType":"Encounter","id":"e3"}}
        ]}"#;
        let p = parse_page_as(body, EntryMode::History).unwrap();
        let got: Vec<_> = p
            .entries
            .iter()
            .map(|e| {
                (
                    e.id.as_str(),
                    e.method,
                    e.version_id.as_deref(),
                    e.last_updated_raw.as_deref(),
                    e.raw.is_empty(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "e1",
                    Some(Method::Create),
                    Some("1"),
                    Some("2026-11-30T10:00:00Z"),
                    false
                ),
                (
                    "e1",
                    Some(Method::Update),
                    Some("2"),
                    Some("2026-11-30T10:00:01Z"),
                    false
                ),
                (
                    "e1",
                    Some(Method::Delete),
                    Some("3"),
                    Some("2026-11-30T10:00:02Z"),
                    true
                ),
            ]
        );
        assert_eq!(p.entries[2].resource_type, "Encounter");
        let reasons: Vec<_> = p.skipped.iter().map(|s| (s.index, s.reason)).collect();
        assert_eq!(
            reasons,
            [
                (3, "history DELETE entry's request.url is not Type/id"),
                (4, "history entry has an unknown request.method"),
                (5, "history entry has no request.method"),
            ]
        );
        // The same body read as a search: no methods, deletes are not matches.
        let search = parse_page(body).unwrap();
        assert!(search.entries.iter().all(|e| e.method.is_none()));
        assert_eq!(search.entries.len(), 4);
    }
}
