//! Every delete a full walk infers is confirmed before it goes out: the
//! bridge reads `[base]/{Type}/{id}` through the source's own fetch path
//! (its request budget, auth, redirect rules and size bound) and believes
//! only the server's word for that one resource.
//!
//! - 404 or 410: gone; the delete goes out.
//! - 200 with that resource: it only left the search (a filter in `params`
//!   stopped matching, a permission changed). No delete; a warning on the
//!   target's status. It is read again at most once per
//!   `LEFT_SEARCH_RECHECK` (in memory: after a restart or reload, once
//!   more), so a resource that is deleted later is still found.
//! - Anything else (429, 5xx, a timeout, a body that is not that
//!   resource): nothing is confirmed; the candidate stays one for the next
//!   walk and the poll fails with the error on status (a `Retry-After`
//!   pauses the source as for a page). Reads stop at the first answer that
//!   says the server is unwell (429, 503, a timeout, no connection).
//!
//! The server's 404 is believed only while it reads the resources the walk
//! met: one of them (the walk's last id, its witness) is read before the
//! candidates and again after them (when any read as gone). A witness that
//! answers anything but itself (a 404 from an EHR in maintenance, a proxy's
//! page for every path, a base URL routed elsewhere) confirms no delete of
//! that walk: the poll fails saying so, and the candidates wait.
//!
//! An id the read URL cannot carry (`.` and `..`, valid FHIR ids, are dot
//! segments: `[base]/{Type}/..` is the base) is never read, so never
//! confirmed: it stays a candidate, said on status.
//!
//! At most `MAX_CONFIRMS_PER_WALK` reads per walk: a walk that suddenly
//! misses 10,000 resources does not flood the EHR; the rest wait for the
//! next walks (said on status).

use crate::source::client::{FetchError, Fetched};
use crate::state::SeenRow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use url::Url;

/// Confirming reads per walk of one type.
pub(in crate::source) const MAX_CONFIRMS_PER_WALK: usize = 100;

/// How long a resource that answered 200 is not read again.
pub(in crate::source) const LEFT_SEARCH_RECHECK: Duration = Duration::from_secs(24 * 3600);

/// Resources remembered as having left the search, per source; past it,
/// new ones are not remembered (they are read again each walk, within the
/// per-walk cap).
const MAX_LEFT_REMEMBERED: usize = 100_000;

/// What one confirming read says.
#[derive(Debug)]
pub(in crate::source) enum Reading {
    Gone,
    /// Still there: it only left the search.
    Present,
    /// Nothing confirmed; `stop`: no more reads this walk.
    Unknown {
        error: FetchError,
        stop: bool,
    },
}

/// Whether `[base]/{rt}/{id}` reads that id: not a dot segment (which URL
/// parsing resolves, `%2e` spellings included).
pub(in crate::source) fn addressable(id: &str) -> bool {
    id != "." && id != ".."
}

/// `[base]/{rt}/{id}`, or `None` when the URL would not end with exactly
/// that type and id.
pub(in crate::source) fn read_url(base: &Url, rt: &str, id: &str) -> Option<Url> {
    if !addressable(id) {
        return None;
    }
    let url = base.join(&format!("{rt}/{id}")).ok()?;
    let mut segments = url.path_segments()?.rev();
    (segments.next() == Some(id) && segments.next() == Some(rt)).then_some(url)
}

/// What a read of the walk's witness (an id it met) says of the reads
/// around it: only a server that shows it is believed when it says another
/// is gone. `Err`: no delete of this walk is confirmed.
pub(in crate::source) fn vouches(witness: Reading) -> Result<(), FetchError> {
    match witness {
        Reading::Present => Ok(()),
        // Not shown: the status line says which answer, not which resource.
        Reading::Gone => Err(FetchError::Other(
            "a resource the walk met answered 404/410 to its read too, so the server's 404s say nothing (a base URL routed elsewhere, an EHR in maintenance?)".into(),
        )),
        Reading::Unknown { error, .. } => Err(error),
    }
}

/// Judges the answer to `GET [base]/{rt}/{id}`.
pub(in crate::source) fn reading(
    rt: &str,
    id: &str,
    answer: Result<Fetched, FetchError>,
) -> Reading {
    match answer {
        Err(FetchError::Status {
            status: 404 | 410, ..
        }) => Reading::Gone,
        Ok(fetched) => {
            #[derive(serde::Deserialize)]
            struct Head {
                #[serde(rename = "resourceType")]
                resource_type: Option<String>,
                id: Option<String>,
            }
            let head = serde_json::from_slice::<Head>(&fetched.body).ok();
            match head {
                Some(h)
                    if h.resource_type.as_deref() == Some(rt) && h.id.as_deref() == Some(id) =>
                {
                    Reading::Present
                }
                // Not shown: it came from outside and may hold PHI.
                _ => Reading::Unknown {
                    error: FetchError::Other(format!("HTTP 200 whose body is not the {rt} read")),
                    stop: false,
                },
            }
        }
        Err(error) => {
            let stop = matches!(
                error,
                FetchError::Status {
                    status: 429 | 503,
                    ..
                } | FetchError::Status {
                    retry_after: Some(_),
                    ..
                } | FetchError::Timeout
                    | FetchError::Connect(_)
                    | FetchError::Auth(_)
            );
            Reading::Unknown { error, stop }
        }
    }
}

/// The resources of one source that answered 200 lately, by (type, id).
#[derive(Default)]
pub struct LeftSearch {
    at: Mutex<HashMap<(String, String), Instant>>,
}

impl LeftSearch {
    fn recently_present(&self, rt: &str, id: &str, now: Instant) -> bool {
        let at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        (at.get(&(rt.to_string(), id.to_string())))
            .is_some_and(|t| now.saturating_duration_since(*t) < LEFT_SEARCH_RECHECK)
    }

    fn remember(&self, rt: &str, id: &str, now: Instant) {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if at.len() >= MAX_LEFT_REMEMBERED {
            at.retain(|_, t| now.saturating_duration_since(*t) < LEFT_SEARCH_RECHECK);
        }
        let key = (rt.to_string(), id.to_string());
        if at.len() < MAX_LEFT_REMEMBERED || at.contains_key(&key) {
            at.insert(key, now);
        }
    }

    fn forget(&self, rt: &str, id: &str) {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        at.remove(&(rt.to_string(), id.to_string()));
    }
}

/// Which candidates a walk reads: those not known to have left the search
/// lately, at most `cap`.
pub(in crate::source) struct Plan {
    pub read: Vec<(String, SeenRow)>,
    /// Known to have left the search (read 200 within the recheck period).
    pub left: usize,
    /// Beyond the cap: candidates for the next walk.
    pub waiting: usize,
    /// Ids a read URL cannot carry (`addressable`): never confirmed.
    pub unaddressable: usize,
}

pub(in crate::source) fn plan(
    rt: &str,
    candidates: Vec<(String, SeenRow)>,
    left: &LeftSearch,
    now: Instant,
    cap: usize,
) -> Plan {
    let mut plan = Plan {
        read: Vec::new(),
        left: 0,
        waiting: 0,
        unaddressable: 0,
    };
    for (id, row) in candidates {
        if !addressable(&id) {
            plan.unaddressable += 1;
        } else if left.recently_present(rt, &id, now) {
            plan.left += 1;
        } else if plan.read.len() < cap {
            plan.read.push((id, row));
        } else {
            plan.waiting += 1;
        }
    }
    plan
}

/// What the reads of one walk confirmed.
pub(in crate::source) struct Confirmed {
    pub gone: Vec<(String, SeenRow)>,
    /// Read 200 in this walk, and known to have left before it.
    pub left: usize,
    pub waiting: usize,
    pub unaddressable: usize,
    /// Reads that confirmed nothing, and the last one's error.
    pub failed: usize,
    pub error: Option<FetchError>,
    /// Shutdown between reads: nothing may be committed.
    pub cancelled: bool,
}

impl Confirmed {
    pub(in crate::source) fn new(plan: &Plan) -> Confirmed {
        Confirmed {
            gone: Vec::new(),
            left: plan.left,
            waiting: plan.waiting,
            unaddressable: plan.unaddressable,
            failed: 0,
            error: None,
            cancelled: false,
        }
    }

    /// Takes one reading of `id`; returns whether to read on.
    pub(in crate::source) fn take(
        &mut self,
        rt: &str,
        (id, row): (String, SeenRow),
        reading: Reading,
        left: &LeftSearch,
        now: Instant,
    ) -> bool {
        match reading {
            Reading::Gone => {
                left.forget(rt, &id);
                self.gone.push((id, row));
                true
            }
            Reading::Present => {
                left.remember(rt, &id, now);
                self.left += 1;
                true
            }
            Reading::Unknown { error, stop } => {
                self.failed += 1;
                self.error = Some(error);
                !stop
            }
        }
    }

    /// The witness did not vouch for the reads (`vouches`): none of this
    /// walk's deletes is confirmed; `unread` candidates were not read.
    pub(in crate::source) fn void(&mut self, error: FetchError, unread: usize) {
        self.failed += unread + self.gone.len();
        self.gone.clear();
        self.error = Some(error);
    }

    /// The status note for what was not deleted, if anything.
    pub(in crate::source) fn note(&self, rt: &str) -> Option<String> {
        let mut parts = Vec::new();
        if self.left > 0 {
            parts.push(format!(
                "{} resource(s) the walk no longer met still exist (read answered 200): they left the search, no delete; read again after {} h",
                self.left,
                LEFT_SEARCH_RECHECK.as_secs() / 3600
            ));
        }
        if self.waiting > 0 {
            parts.push(format!(
                "{} more resource(s) the walk no longer met wait for the next walk (at most {MAX_CONFIRMS_PER_WALK} reads to confirm deletes per walk)",
                self.waiting
            ));
        }
        if self.unaddressable > 0 {
            parts.push(format!(
                "{} resource(s) the walk no longer met have an id a read URL cannot carry (. or ..): never confirmed, no delete",
                self.unaddressable
            ));
        }
        (!parts.is_empty()).then(|| format!("{rt}: {}", parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::client::Exchange;

    fn ok(body: &str) -> Result<Fetched, FetchError> {
        let now = Instant::now();
        Ok(Fetched {
            body: body.as_bytes().to_vec(),
            date: None,
            exchange: Exchange {
                sent: now,
                headers_received: now,
                body_received: now,
            },
        })
    }

    fn status(status: u16, retry_after: Option<u64>) -> Result<Fetched, FetchError> {
        Err(FetchError::Status {
            status,
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    fn row() -> SeenRow {
        SeenRow {
            version_id: Some("1".into()),
            last_updated: None,
            content_hash: [1; 32],
            body: None,
        }
    }

    #[test]
    fn only_404_and_410_confirm_a_delete_and_only_the_resource_itself_denies_it() {
        let rt = "Observation";
        assert!(matches!(reading(rt, "c", status(404, None)), Reading::Gone));
        assert!(matches!(reading(rt, "c", status(410, None)), Reading::Gone));
        let c = r#"{"resourceType":"Observation","id":"c","status":"final"}"#;
        assert!(matches!(reading(rt, "c", ok(c)), Reading::Present));
        for body in [
            r#"{"resourceType":"Observation","id":"d"}"#,
            r#"{"resourceType":"OperationOutcome","id":"c"}"#,
            "<html>maintenance</html>",
            "",
        ] {
            let r = reading(rt, "c", ok(body));
            assert!(
                matches!(r, Reading::Unknown { stop: false, .. }),
                "{body}: {r:?}"
            );
        }
        for (answer, stops) in [
            (status(500, None), false),
            (status(403, None), false),
            (status(429, None), true),
            (status(503, None), true),
            (status(500, Some(5)), true),
            (Err(FetchError::Timeout), true),
            (Err(FetchError::Connect("refused".into())), true),
        ] {
            match reading(rt, "c", answer) {
                Reading::Unknown { stop, .. } => assert_eq!(stop, stops),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_a_witness_read_as_itself_vouches_and_dot_segments_are_never_read() {
        let rt = "Observation";
        let w = r#"{"resourceType":"Observation","id":"w"}"#;
        assert!(vouches(reading(rt, "w", ok(w))).is_ok());
        let gone = vouches(reading(rt, "w", status(404, None))).unwrap_err();
        assert!(gone.to_string().contains("404s say nothing"), "{gone}");
        assert!(vouches(reading(rt, "w", ok("<html>maintenance</html>"))).is_err());
        assert!(matches!(
            vouches(reading(rt, "w", status(429, Some(3)))),
            Err(FetchError::Status { status: 429, .. })
        ));

        // A witness that stops vouching after the reads voids what they found.
        let p = plan(
            rt,
            vec![("c".into(), row())],
            &LeftSearch::default(),
            Instant::now(),
            100,
        );
        let mut confirmed = Confirmed::new(&p);
        let now = Instant::now();
        confirmed.take(
            rt,
            ("c".into(), row()),
            Reading::Gone,
            &LeftSearch::default(),
            now,
        );
        confirmed.void(gone, 0);
        assert!(confirmed.gone.is_empty());
        assert_eq!(confirmed.failed, 1);

        let base = Url::parse("http://ehr/fhir/").unwrap();
        assert_eq!(
            read_url(&base, rt, "a.b-1").unwrap().as_str(),
            "http://ehr/fhir/Observation/a.b-1"
        );
        assert!(read_url(&base, rt, "..").is_none());
        assert!(read_url(&base, rt, ".").is_none());
        let p = plan(
            rt,
            vec![
                ("..".into(), row()),
                (".".into(), row()),
                ("c".into(), row()),
            ],
            &LeftSearch::default(),
            now,
            100,
        );
        assert_eq!((p.read.len(), p.unaddressable), (1, 2));
        let note = Confirmed::new(&p).note(rt).unwrap();
        assert!(
            note.contains(
                "2 resource(s) the walk no longer met have an id a read URL cannot carry"
            ),
            "{note}"
        );
    }

    #[test]
    fn reads_are_capped_per_walk_and_a_resource_that_left_is_read_again_only_after_the_recheck() {
        let left = LeftSearch::default();
        let now = Instant::now();
        let candidates = |n: usize| -> Vec<(String, SeenRow)> {
            (0..n).map(|i| (format!("r{i}"), row())).collect()
        };
        let p = plan("Observation", candidates(250), &left, now, 100);
        assert_eq!((p.read.len(), p.left, p.waiting), (100, 0, 150));

        // r0 answered 200: not read again within the recheck period, so it
        // no longer takes a read from the others.
        let mut confirmed = Confirmed::new(&p);
        let mut reads = p.read.into_iter();
        let first = reads.next().unwrap();
        assert!(confirmed.take("Observation", first, Reading::Present, &left, now));
        let second = reads.next().unwrap();
        assert!(confirmed.take("Observation", second, Reading::Gone, &left, now));
        let third = reads.next().unwrap();
        let busy = Reading::Unknown {
            error: FetchError::Status {
                status: 429,
                retry_after: None,
            },
            stop: true,
        };
        assert!(!confirmed.take("Observation", third, busy, &left, now));
        assert_eq!(
            (confirmed.gone.len(), confirmed.left, confirmed.failed),
            (1, 1, 1)
        );
        let note = confirmed.note("Observation").unwrap();
        assert!(
            note.contains("1 resource(s) the walk no longer met still exist"),
            "{note}"
        );
        assert!(note.contains("150 more resource(s)"), "{note}");

        let later = now + Duration::from_secs(3600);
        let p = plan("Observation", candidates(3), &left, later, 100);
        assert_eq!((p.read.len(), p.left), (2, 1));
        assert!(p.read.iter().all(|(id, _)| id != "r0"));
        // Another type's r0 is another resource.
        assert_eq!(plan("Encounter", candidates(1), &left, later, 100).left, 0);
        let after = now + LEFT_SEARCH_RECHECK;
        let p = plan("Observation", candidates(3), &left, after, 100);
        assert_eq!((p.read.len(), p.left), (3, 0));
    }
}
