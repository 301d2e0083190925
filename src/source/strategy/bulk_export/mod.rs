//! `bulk-export` (FHIR Bulk Data): `[base]/$export?_type=A,B&_since=…` (or
//! `[base]/Group/{id}/$export`) kicked off with `Prefer: respond-async`; the
//! job's status URL answers 202 until its manifest is ready, then 200 with
//! `{transactionTime, output: [{type, url}], error: [...]}`; the output files
//! are NDJSON, one resource a line. This file holds what can be said
//! without a network: the URL, the manifest, the waits, the lines. The job
//! itself is run by `job.rs` (`Exporter`, through the source's `Fetcher`
//! and `Committer`), as `decisions.rs` decides; one status request is
//! `status.rs`.

mod decisions;
mod job;
mod status;

pub(in crate::source) use job::Exporter;

use crate::config::Source;
use crate::fhir::{format_instant, parse_instant};
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

/// The longest line read from an output file. A longer one is skipped (and
/// noted), never buffered whole.
pub(in crate::source) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// A chunk of lines goes through the page pipeline once it holds
/// `page_size` lines or this many bytes, whichever comes first: thirty
/// lines of 12 MB are thirty chunks, not one of 360 MB (held twice, as lines
/// and as the chunk's Bundle). A chunk holds at most this plus one line.
pub(in crate::source) const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The largest manifest read (a job with thousands of files is a few MB).
pub(in crate::source) const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Status polls wait what `Retry-After` says, within these bounds.
pub(in crate::source) const MIN_STATUS_WAIT: Duration = Duration::from_secs(1);
pub(in crate::source) const MAX_STATUS_WAIT: Duration = Duration::from_secs(3600);
/// Without a `Retry-After`.
const DEFAULT_STATUS_WAIT: Duration = Duration::from_secs(5);

/// `X-Progress` is shown in logs: at most this much of it.
const MAX_PROGRESS_CHARS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a bulk data manifest: {0}")]
    Json(String),
    #[error("transactionTime is not an instant")]
    TransactionTime,
}

/// `[base]/$export` or `[base]/Group/{id}/$export`, with the types, the
/// window's start (none: everything) and NDJSON as the format.
pub(in crate::source) fn kickoff_url(
    source: &Source,
    types: &[String],
    since: Option<DateTime<Utc>>,
) -> Url {
    let path = match &source.strategies.export_group {
        Some(group) => format!("{group}/$export"),
        None => "$export".to_string(),
    };
    let mut url = source
        .base_url
        .join(&path)
        .unwrap_or_else(|_| source.base_url.clone());
    {
        let mut q = url.query_pairs_mut();
        q.clear();
        q.append_pair("_outputFormat", "application/fhir+ndjson");
        q.append_pair("_type", &types.join(","));
        if let Some(t) = since {
            q.append_pair("_since", &format_instant(t));
        }
    }
    url
}

/// How long to wait before the next status request.
pub(in crate::source) fn status_wait(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(DEFAULT_STATUS_WAIT)
        .clamp(MIN_STATUS_WAIT, MAX_STATUS_WAIT)
}

/// `X-Progress`, printable and short, for the logs.
pub(in crate::source) fn progress(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-progress")?.to_str().ok()?;
    let short: String = v.chars().take(MAX_PROGRESS_CHARS).collect();
    Some(crate::logsafe::escape(&short))
}

#[derive(Debug, Clone, Deserialize)]
pub(in crate::source) struct OutputFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub url: String,
}

#[derive(Debug, Clone)]
pub(in crate::source) struct Manifest {
    pub transaction_time: DateTime<Utc>,
    pub output: Vec<OutputFile>,
    /// OperationOutcome files: the server's own errors, noted, not read.
    pub errors: Vec<OutputFile>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "transactionTime")]
    transaction_time: String,
    #[serde(default)]
    output: Vec<OutputFile>,
    #[serde(default)]
    error: Vec<OutputFile>,
}

pub(in crate::source) fn parse_manifest(body: &[u8]) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(body).map_err(|e| {
        // The position, not the text: the body is the server's.
        ManifestError::Json(format!("line {} column {}", e.line(), e.column()))
    })?;
    let transaction_time =
        parse_instant(&raw.transaction_time).ok_or(ManifestError::TransactionTime)?;
    Ok(Manifest {
        transaction_time,
        output: raw.output,
        errors: raw.error,
    })
}

/// What a job's progress (files and lines done, by position) is counted
/// on: the manifest's time and its output files, in order.
pub(in crate::source) fn fingerprint(m: &Manifest) -> String {
    let files: Vec<(&str, &str)> = (m.output.iter())
        .map(|f| (f.resource_type.as_str(), f.url.as_str()))
        .collect();
    let text = serde_json::to_vec(&(format_instant(m.transaction_time), files)).unwrap_or_default();
    crate::diff::content_hash(&text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether progress `(files_done, lines_done)` counted on the manifest
/// `stored` still holds for the manifest `now`: none made, or the same
/// manifest. Another one (reordered, files added or dropped, another
/// export), or one not known (saved by an older version), is read again
/// from its first file: the diff drops what was delivered, where skipping
/// by position could skip a file never read.
pub(in crate::source) fn progress_holds(
    stored: Option<&str>,
    now: &str,
    files_done: i64,
    lines_done: i64,
) -> bool {
    (files_done <= 0 && lines_done <= 0) || stored == Some(now)
}

/// A file URL from the manifest, resolved against the job's URL, if it is
/// on the source's origins (the bridge's credentials go with it).
pub(in crate::source) fn file_url(source: &Source, job: &Url, url: &str) -> Option<Url> {
    let url = job.join(url).ok()?;
    (matches!(url.scheme(), "http" | "https") && source.allows(&url)).then_some(url)
}

/// The first output file whose URL leaves the source's origins: such a
/// manifest is not used at all (a job half read cannot move a watermark).
pub(in crate::source) fn foreign_file(source: &Source, job: &Url, m: &Manifest) -> Option<usize> {
    m.output
        .iter()
        .position(|f| file_url(source, job, &f.url).is_none())
}

/// An HTTP `Date` header (whole seconds), for the server's clock.
pub(in crate::source) fn date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let v = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(v).ok().map(|d| d.to_utc())
}

/// Whether a job kicked off at `kicked_off_ms` (our clock) has gone past
/// `timeout` by `now_ms`. Asked only when a status request gave no usable
/// manifest (202, busy, unusable), never while files are read: a long
/// download is not cancelled, but a job whose status URL fails for ever
/// after its manifest was read (its files failing too) is, like one that
/// never gave a manifest.
pub(in crate::source) fn job_expired(kicked_off_ms: i64, now_ms: i64, timeout: Duration) -> bool {
    let limit = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(kicked_off_ms) > limit
}

/// Whether a turn of the source's loop that has spent `spent` on a job
/// waits `wait` more for its status in place: while that stays within half
/// the source's `interval`. A tick longer than that delays the next one (see
/// `Schedule::wait_after_tick`), and the source's other types with it; a
/// shorter schedule asks once per turn, and the job goes on at the next.
pub(in crate::source) fn waits_in_turn(
    spent: Duration,
    wait: Duration,
    interval: Duration,
) -> bool {
    spent.saturating_add(wait) <= interval / 2
}

/// Gathers lines into chunks of at most `max_lines` lines and about
/// `MAX_CHUNK_BYTES` bytes.
pub(in crate::source) struct ChunkBuilder {
    lines: Vec<Line>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl ChunkBuilder {
    pub(in crate::source) fn new(max_lines: usize) -> Self {
        Self::with_bytes(max_lines, MAX_CHUNK_BYTES)
    }

    fn with_bytes(max_lines: usize, max_bytes: usize) -> Self {
        ChunkBuilder {
            lines: Vec::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes,
        }
    }

    /// Adds a line; returns the chunk it completes, if it does.
    pub(in crate::source) fn push(&mut self, line: Line) -> Option<Vec<Line>> {
        if let Line::Complete(b) = &line {
            self.bytes += b.len();
        }
        self.lines.push(line);
        (self.lines.len() >= self.max_lines || self.bytes >= self.max_bytes).then(|| self.take())
    }

    pub(in crate::source) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The last, partial chunk.
    pub(in crate::source) fn finish(mut self) -> Option<Vec<Line>> {
        (!self.lines.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<Line> {
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }
}

/// One line of an NDJSON file.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::source) enum Line {
    Complete(Vec<u8>),
    /// Longer than the bound: dropped as it streamed by.
    TooLong,
}

/// Splits a byte stream on `\n`, holding at most one line (of at most
/// `max` bytes) at a time.
pub(in crate::source) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    overlong: bool,
}

impl LineSplitter {
    pub(in crate::source) fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max,
            overlong: false,
        }
    }

    /// The lines `chunk` completes, in order.
    pub(in crate::source) fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        loop {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            if !self.overlong {
                if self.buf.len() + part.len() > self.max {
                    self.overlong = true;
                    // Give the memory back now, not at the line's end.
                    self.buf = Vec::new();
                } else {
                    // Grown by doubling, but never past the bound.
                    let need = self.buf.len() + part.len();
                    if need > self.buf.capacity() {
                        let target = (self.buf.capacity() * 2).max(need).min(self.max);
                        self.buf.reserve_exact(target - self.buf.len());
                    }
                    self.buf.extend_from_slice(part);
                }
            }
            if !ended {
                return;
            }
            out.push(self.take());
            chunk = rest;
        }
    }

    /// The bytes held for the line in progress (its buffer's capacity).
    #[cfg(test)]
    pub(in crate::source) fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// The last line, when the stream did not end with a newline.
    pub(in crate::source) fn finish(mut self) -> Option<Line> {
        (self.overlong || !self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Line {
        if std::mem::take(&mut self.overlong) {
            return Line::TooLong;
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Line::Complete(line)
    }
}

/// Why a line was not made an entry.
pub(in crate::source) const NOT_AN_OBJECT: &str = "an NDJSON line that is not a JSON object";
pub(in crate::source) const TOO_LONG: &str = "an NDJSON line longer than 16 MB";

/// A line's `resourceType`, if it has one (borrowed unless escaped).
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<std::borrow::Cow<'a, str>>,
}

/// The shortest prefix of a type name shown (it comes from outside).
const MAX_TYPE_CHARS: usize = 64;

/// Why a line of a file of type `file_type` holding a resource of type
/// `other` is not an entry: the page pipeline keeps only the file's type, so
/// without this it would vanish without a word. A name that is not a FHIR
/// type name is not repeated.
fn other_type(other: &str, file_type: &str) -> String {
    let shown = other.len() <= MAX_TYPE_CHARS
        && other.starts_with(|c: char| c.is_ascii_uppercase())
        && other.chars().all(|c| c.is_ascii_alphanumeric());
    match shown {
        true => format!("a resource of type {other} in a file of type {file_type}"),
        false => format!("a resource of another type in a file of type {file_type}"),
    }
}

/// The `Content-Encoding` of an output file when it is one the bridge did
/// not ask for (it sends no `Accept-Encoding`: anything but `identity`),
/// short and printable for status.
pub(in crate::source) fn unasked_encoding(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(reqwest::header::CONTENT_ENCODING)?;
    let v = String::from_utf8_lossy(v.as_bytes());
    if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity") {
        return None;
    }
    let short: String = v.chars().take(MAX_TYPE_CHARS).collect();
    Some(crate::logsafe::escape(&short))
}

/// A searchset Bundle of `lines` (from a file of type `file_type`) for the
/// page pipeline: each line that is a JSON object of that type (or of none:
/// the pipeline names what it lacks) becomes an entry; blank lines are
/// nothing; the others are returned by their position in `lines` with the
/// reason.
pub(in crate::source) fn lines_to_bundle(
    lines: &[Line],
    file_type: &str,
) -> (Vec<u8>, Vec<(usize, String)>) {
    let size = lines
        .iter()
        .map(|l| match l {
            Line::Complete(b) => b.len() + 16,
            Line::TooLong => 0,
        })
        .sum::<usize>();
    let mut body = Vec::with_capacity(size + 64);
    body.extend_from_slice(br#"{"resourceType":"Bundle","type":"searchset","entry":["#);
    let mut skipped = Vec::new();
    let mut first = true;
    for (i, line) in lines.iter().enumerate() {
        let text = match line {
            Line::TooLong => {
                skipped.push((i, TOO_LONG.to_string()));
                continue;
            }
            Line::Complete(b) => b.trim_ascii(),
        };
        if text.is_empty() {
            continue;
        }
        let typed = match text.first() == Some(&b'{') {
            true => serde_json::from_slice::<Typed>(text).ok(),
            false => None,
        };
        let Some(typed) = typed else {
            skipped.push((i, NOT_AN_OBJECT.to_string()));
            continue;
        };
        if let Some(other) = typed.resource_type.filter(|t| t != file_type) {
            skipped.push((i, other_type(&other, file_type)));
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(br#"{"resource":"#);
        body.extend_from_slice(text);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    (body, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn source(extra: &str) -> Source {
        Config::from_str(
            &format!(
                "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir/\"\n\
                 resources = [\"Patient\", \"Observation\"]\nstrategy = \"bulk-export\"\n{extra}"
            ),
            Path::new("b.toml"),
        )
        .unwrap()
        .sources
        .remove(0)
    }

    #[test]
    fn the_kickoff_names_the_types_the_window_and_the_group() {
        let s = source("");
        let types = s.strategies.bulk_export_types(&s.resources);
        let since = "2026-11-30T10:00:00Z".parse().unwrap();
        assert_eq!(
            kickoff_url(&s, &types, Some(since)).as_str(),
            "http://127.0.0.1:1/fhir/$export?_outputFormat=application%2Ffhir%2Bndjson\
             &_type=Patient%2CObservation&_since=2026-11-30T10%3A00%3A00.000Z"
        );
        let s = source("export_group = \"Group/g1\"\n");
        let url = kickoff_url(&s, &types, None);
        assert_eq!(url.path(), "/fhir/Group/g1/$export");
        assert!(!url.query().unwrap().contains("_since"));
    }

    #[test]
    fn status_waits_follow_retry_after_within_bounds() {
        assert_eq!(status_wait(None), DEFAULT_STATUS_WAIT);
        assert_eq!(status_wait(Some(Duration::ZERO)), MIN_STATUS_WAIT);
        assert_eq!(
            status_wait(Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            status_wait(Some(Duration::from_secs(86_400))),
            MAX_STATUS_WAIT
        );
        let mut h = HeaderMap::new();
        assert_eq!(progress(&h), None);
        h.insert(
            "x-progress",
            "50% done\u{7}"
                .parse()
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("50% done")),
        );
        assert!(progress(&h).unwrap().starts_with("50% done"));
        h.insert(
            "x-progress",
            reqwest::header::HeaderValue::from_str(&"x".repeat(500)).unwrap(),
        );
        assert_eq!(progress(&h).unwrap().len(), MAX_PROGRESS_CHARS);
    }

    #[test]
    fn a_manifest_gives_its_time_outputs_and_errors() {
        let m = parse_manifest(
            br#"{"transactionTime":"2026-11-30T10:00:00.123Z","request":"x","requiresAccessToken":true,
                "output":[{"type":"Patient","url":"http://127.0.0.1:1/fhir/_export/1/0.ndjson","count":2}],
                "error":[{"type":"OperationOutcome","url":"http://127.0.0.1:1/e.ndjson"}]}"#,
        )
        .unwrap();
        assert_eq!(
            format_instant(m.transaction_time),
            "2026-11-30T10:00:00.123Z"
        );
        assert_eq!(m.output.len(), 1);
        assert_eq!(m.output[0].resource_type, "Patient");
        assert_eq!(m.errors.len(), 1);
        let empty = parse_manifest(br#"{"transactionTime":"2026-11-30T10:00:00Z"}"#).unwrap();
        assert!(empty.output.is_empty());
        assert!(matches!(
            parse_manifest(br#"{"transactionTime":"yesterday"}"#),
            Err(ManifestError::TransactionTime)
        ));
        assert!(matches!(
            parse_manifest(b"<html>"),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn file_urls_stay_on_the_source_origins() {
        let s = source("allowed_origins = [\"https://files.example\"]\n");
        let job = Url::parse("http://127.0.0.1:1/fhir/_export/7").unwrap();
        assert!(file_url(&s, &job, "http://127.0.0.1:1/fhir/_export/7/0.ndjson").is_some());
        assert!(file_url(&s, &job, "7/1.ndjson").is_some(), "relative");
        assert!(file_url(&s, &job, "https://files.example/a.ndjson").is_some());
        assert!(file_url(&s, &job, "https://evil.example/a.ndjson").is_none());
        assert!(file_url(&s, &job, "http://127.0.0.1:2/a.ndjson").is_none());
        assert!(file_url(&s, &job, "file:///etc/passwd").is_none());
    }

    fn complete(s: &str) -> Line {
        Line::Complete(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_split_across_chunks_with_a_partial_last_line_and_an_overlong_one() {
        let mut sp = LineSplitter::new(8);
        let mut out = Vec::new();
        for chunk in ["{\"a\"", ":1}\n{}\r\n", "0123456789", "abc\nx", "y"] {
            sp.push(chunk.as_bytes(), &mut out);
        }
        assert_eq!(out, [complete("{\"a\":1}"), complete("{}"), Line::TooLong]);
        assert!(sp.buf.capacity() <= 8, "an over-long line is not held");
        assert_eq!(sp.finish(), Some(complete("xy")));
        let sp = LineSplitter::new(8);
        assert_eq!(sp.finish(), None);
        let mut sp = LineSplitter::new(4);
        let mut out = Vec::new();
        sp.push(b"123456", &mut out);
        assert_eq!(sp.finish(), Some(Line::TooLong));
    }

    #[test]
    fn chunks_are_bounded_in_lines_and_in_bytes() {
        // Small lines: `page_size` a chunk.
        let mut c = ChunkBuilder::new(3);
        let got: Vec<usize> = (0..7)
            .filter_map(|_| c.push(complete("{}")))
            .map(|ch| ch.len())
            .collect();
        assert_eq!(got, [3, 3]);
        assert_eq!(c.finish().map(|ch| ch.len()), Some(1));
        // Thirty lines of 12 MB with a page size of 50: thirty chunks of
        // one line, never one of 360 MB.
        let mut c = ChunkBuilder::new(50);
        let big = "x".repeat(12 * 1024 * 1024);
        let mut chunks = 0;
        for _ in 0..30 {
            let ch = c.push(Line::Complete(big.clone().into_bytes()));
            assert_eq!(ch.map(|ch| ch.len()), Some(1));
            chunks += 1;
        }
        assert_eq!(chunks, 30);
        assert!(c.is_empty() && c.finish().is_none());
        // Lines of 1 MB: four a chunk (the fourth reaches the bound).
        let mut c = ChunkBuilder::new(50);
        let mb = "y".repeat(1024 * 1024);
        let sizes: Vec<usize> = (0..10)
            .filter_map(|_| c.push(Line::Complete(mb.clone().into_bytes())))
            .map(|ch| ch.len())
            .collect();
        assert_eq!(sizes, [4, 4]);
        assert_eq!(c.finish().map(|ch| ch.len()), Some(2));
        // An over-long line (dropped as it streamed by) holds nothing.
        let mut c = ChunkBuilder::with_bytes(2, 10);
        assert!(c.push(Line::TooLong).is_none());
        assert_eq!(c.push(Line::TooLong).map(|ch| ch.len()), Some(2));
    }

    #[test]
    fn progress_holds_only_on_the_manifest_it_was_counted_on() {
        let m = |files: &[&str]| Manifest {
            transaction_time: "2026-11-30T10:00:00Z".parse().unwrap(),
            output: (files.iter())
                .map(|u| OutputFile {
                    resource_type: "Patient".into(),
                    url: u.to_string(),
                })
                .collect(),
            errors: vec![],
        };
        let (ab, ba) = (fingerprint(&m(&["a", "b"])), fingerprint(&m(&["b", "a"])));
        assert_eq!(ab, fingerprint(&m(&["a", "b"])));
        assert_ne!(ab, ba);
        assert_eq!(ab.len(), 64);
        assert!(progress_holds(Some(&ab), &ab, 1, 20));
        assert!(!progress_holds(Some(&ab), &ba, 1, 0));
        assert!(
            !progress_holds(None, &ab, 0, 3),
            "an older version's progress"
        );
        assert!(progress_holds(None, &ab, 0, 0), "none made");
    }

    #[test]
    fn a_job_expires_after_the_timeout() {
        let hour = Duration::from_secs(3600);
        assert!(!job_expired(0, 3_600_000, hour));
        assert!(job_expired(0, 3_600_001, hour));
        // A clock stepped back: not expired.
        assert!(!job_expired(10_000, 0, hour));
        assert!(!job_expired(i64::MIN, i64::MAX, Duration::MAX));
    }

    #[test]
    fn a_status_is_waited_for_in_place_within_half_the_interval() {
        let s = Duration::from_secs;
        assert!(waits_in_turn(s(0), s(5), s(3600)));
        assert!(waits_in_turn(s(1795), s(5), s(3600)));
        assert!(!waits_in_turn(s(1796), s(5), s(3600)));
        // A short schedule: one status request per turn.
        assert!(!waits_in_turn(s(0), s(1), Duration::from_millis(300)));
        assert!(!waits_in_turn(Duration::MAX, s(1), Duration::MAX));
    }

    #[test]
    fn a_manifest_with_a_file_on_another_origin_is_not_used() {
        let s = source("");
        let job = Url::parse("http://127.0.0.1:1/fhir/_export/7").unwrap();
        let m = parse_manifest(
            br#"{"transactionTime":"2026-11-30T10:00:00Z","output":[
                {"type":"Patient","url":"7/0.ndjson"},
                {"type":"Patient","url":"https://evil.example/1.ndjson"}]}"#,
        )
        .unwrap();
        assert_eq!(foreign_file(&s, &job, &m), Some(1));
        let ok = parse_manifest(
            br#"{"transactionTime":"2026-11-30T10:00:00Z","output":[{"type":"Patient","url":"7/0.ndjson"}]}"#,
        )
        .unwrap();
        assert_eq!(foreign_file(&s, &job, &ok), None);
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::DATE,
            "Sun, 06 Dec 2026 18:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            format_instant(date(&h).unwrap()),
            "2026-12-06T18:00:00.000Z"
        );
    }

    #[test]
    fn lines_become_a_bundle_and_bad_lines_are_named() {
        let lines = [
            complete(r#"{"resourceType":"Patient","id":"a"}"#),
            complete(""),
            complete("[1]"),
            complete(r#"{"resourceType":"Patient","id":"b""#),
            Line::TooLong,
            complete(r#" {"resourceType":"Patient","id":"c"} "#),
            complete(r#"{"resourceType":"Observation","id":"o"}"#),
            complete(r#"{"resourceType":"Obs\u0065rvation","id":"o"}"#),
            complete(r#"{"resourceType":"Pati\u001bent","id":"o"}"#),
            complete(r#"{"resourceType":"Patient","id":"d"}{"x":1}"#),
            complete("\"Patient\""),
            complete("1e999999"),
        ];
        let (body, skipped) = lines_to_bundle(&lines, "Patient");
        let other = "a resource of type Observation in a file of type Patient";
        let not_fhir = "a resource of another type in a file of type Patient";
        let want = [
            (2, NOT_AN_OBJECT),
            (3, NOT_AN_OBJECT),
            (4, TOO_LONG),
            (6, other),
            (7, other),
            (8, not_fhir),
            (9, NOT_AN_OBJECT),
            (10, NOT_AN_OBJECT),
            (11, NOT_AN_OBJECT),
        ];
        let want: Vec<(usize, String)> = want.iter().map(|(i, r)| (*i, r.to_string())).collect();
        assert_eq!(skipped, want);
        let page = crate::fhir::bundle::parse_page(&body).unwrap();
        let ids: Vec<_> = page.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        let mut h = HeaderMap::new();
        assert_eq!(unasked_encoding(&h), None);
        h.insert(
            reqwest::header::CONTENT_ENCODING,
            "identity".parse().unwrap(),
        );
        assert_eq!(unasked_encoding(&h), None);
        h.insert(reqwest::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(unasked_encoding(&h).as_deref(), Some("gzip"));
    }
}
