//! One walk of a target's pages, as decisions without I/O: the poll loop
//! (`SourceTask::walk_pages`) fetches, processes, commits and wakes; a
//! `PageWalk` takes each page's outcome and answers what to do next (a
//! `Step`) and how far the watermark may move. Its rules: the page cap,
//! `next` links that loop, run too long or lead elsewhere, `Bundle.total`
//! drift (offset paging), an expired link's restart, the fair-turn slice and
//! a 429's hold.
//!
//! Fair turns: a `last-updated` poll reads at most `PAGE_SLICE` pages per
//! turn; then the source's other targets (types, patients) have theirs, and
//! the walk goes on exactly where it stopped: the same `next` link, result
//! set bounds, watermark tracker and drift flag. It never starts a new search
//! to go on: a new search re-reads the whole overlap below the watermark
//! before it reaches anything new, and under offset paging (where drift holds
//! the watermark back) that made each turn cost the overlap for one page of
//! progress, so a quiet backlog took minutes and a busy one never ended.
//!
//! The turns themselves are dealt in `SourceTask::take_turns`: every target has its
//! turn in a tick, then the yielded walks go on until the next tick is due and
//! wait for their turn in it. A walk whose link expired reads on to its end
//! (`after_page`); a 429/503 with `Retry-After` keeps its position once per
//! page (`PageWalk::fetch_failed`).

use super::client::FetchError;
use super::errors::PollError;
use super::notes::Notes;
use super::strategy::snapshot::WalkFacts;
use super::strategy::{Strategy, Walk};
use super::watermark::WatermarkTracker;
use crate::config::Source;
use crate::fhir::format_instant;
use crate::state::TargetKey;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use url::Url;

/// The most pages a sliced walk reads in one turn: one type's backlog delays
/// another's poll by about this many pages, not `max_pages_per_poll`.
pub(super) const PAGE_SLICE: usize = 10;

/// Whether a walk may stop after its slice and go on at a later turn. Only a
/// `last-updated` poll: a history walk's chain is read ahead and ordered as a
/// whole, and a full walk (snapshot, reconciliation) infers deletes from one
/// complete chain read in one go.
pub(super) fn slices(walk: Walk) -> bool {
    walk == Walk::Poll(Strategy::LastUpdated)
}

/// What to do after a page whose `next` link may be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterPage {
    /// Read the next page now.
    Continue,
    /// Keep the walk's position; the other targets go first.
    Yield,
}

/// `pages_this_turn` pages read in this turn by a walk of kind `walk`;
/// `to_the_end`: the walk reads on to its end in this turn (`must_finish`).
pub(super) fn after_page(walk: Walk, pages_this_turn: usize, to_the_end: bool) -> AfterPage {
    if slices(walk) && pages_this_turn >= PAGE_SLICE && !to_the_end {
        AfterPage::Yield
    } else {
        AfterPage::Continue
    }
}

/// The links a walk has read, to find a `next` link back to one of them. A
/// sliced walk keeps them between its turns, and every target of a fan-out
/// roster may hold a walk at once (10,000 patients each in a long first
/// backlog): so each link is kept as a 64-bit keyed hash (about 16 bytes)
/// rather than its text (a page link is 100-300 bytes). Two different links
/// taken for one (a false loop, a poll error) is about a chance in 10^13 for
/// a 1,000-page walk.
#[derive(Debug, Default)]
pub(super) struct VisitedLinks(HashSet<u64>);

impl VisitedLinks {
    fn hash(url: &Url) -> u64 {
        use std::hash::BuildHasher;
        // One key per process, so that a server cannot choose colliding links.
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        KEYS.get_or_init(Default::default).hash_one(url.as_str())
    }

    pub fn insert(&mut self, url: &Url) {
        self.0.insert(Self::hash(url));
    }

    pub fn contains(&self, url: &Url) -> bool {
        self.0.contains(&Self::hash(url))
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Whether a walk must read on to its end in this turn rather than yield:
/// - `restarted`: its search started again after an expired `next` link. Its
///   links did not survive a wait, and a restarted search first re-reads the
///   overlap, so yielding again would find the link expired once more and,
///   with an overlap longer than a slice or two, never pass the watermark.
/// - `!in_order`: its times came out of order (a server ignoring `_sort`), so
///   its watermark moves only at the chain's end, to the latest time seen. A
///   chain cut short after a wait (a dropped page context answered with an
///   empty last page) would take it past the pages never read.
pub(super) fn must_finish(restarted: bool, in_order: bool) -> bool {
    restarted || !in_order
}

/// One walk of a target's pages: where it is, and what it has seen so far.
/// Between the turns of a sliced walk it is kept as it is (`PausedWalks`):
/// everything it needs to go on as if it had never stopped. Everything read
/// before is committed.
#[derive(Debug)]
pub(super) struct PageWalk {
    resource_type: String,
    kind: Walk,
    /// `max_pages_per_poll`.
    max_pages: usize,
    overlap: chrono::Duration,
    floor: Option<DateTime<Utc>>,
    /// The page being read, or the next one to read.
    url: Url,
    watermark: Option<DateTime<Utc>>,
    start_watermark: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    last_total: Option<u64>,
    drifted: bool,
    bad_total: bool,
    visited: VisitedLinks,
    tracker: WatermarkTracker,
    detected_at: String,
    /// Pages read so far over all turns (`max_pages_per_poll` counts them all).
    page_no: usize,
    /// Pages read in this turn (the slice).
    pages_this_turn: usize,
    restarted: bool,
    /// The page a 429/503 with Retry-After stopped the walk at, to be read
    /// again after the pause (once: a second refusal fails the poll).
    held_at: Option<usize>,
}

/// What a new walk starts from.
pub(super) struct WalkStart<'a> {
    pub resource_type: &'a str,
    pub kind: Walk,
    pub max_pages: usize,
    pub overlap: chrono::Duration,
    pub floor: Option<DateTime<Utc>>,
    /// The committed watermark.
    pub watermark: Option<DateTime<Utc>>,
    /// The latest a watermark may be (`watermark::horizon`).
    pub horizon: DateTime<Utc>,
    /// The result set's upper bound, if the server's clock is known.
    pub until: Option<DateTime<Utc>>,
    pub detected_at: String,
}

/// What the poll loop does next.
#[derive(Debug)]
pub(super) enum Step {
    /// Read the next page, at the walk's `url` (unless the source stops:
    /// everything read so far is committed).
    Fetch,
    /// The search starts again from the watermark, at once, at the walk's
    /// `url`.
    Restart,
    /// Keep the walk (`PausedWalks`): it goes on at the target's next turn,
    /// from the page it is at.
    Yield,
    /// The walk ends: `complete` when it reached the end of its chain.
    Done { complete: bool },
    /// The poll fails (after this page's commit, when there was a page).
    Fail(PollError),
}

/// One page as the pipeline read it: what the walk decides on.
pub(super) struct PageRead<'a> {
    pub total: Option<u64>,
    pub bad_total: bool,
    /// The entries' times, in the server's order.
    pub instants: &'a [DateTime<Utc>],
    /// The page after it: its `next` link as `next_link` judged it, or the
    /// next page a history read-ahead queued.
    pub next: Option<Result<Url, PollError>>,
}

/// What the walk decided after a page.
#[derive(Debug)]
pub(super) struct AfterRead {
    /// Where this page's commit moves the watermark.
    pub watermark: Option<DateTime<Utc>>,
    /// `Bundle.total` changed with this page, for the first time.
    pub drift_began: bool,
    /// What comes after the page's commit.
    pub then: Step,
}

impl PageWalk {
    /// A new walk from the committed watermark, less the overlap (not below
    /// the floor). `first_url` builds its first request from the window.
    pub fn start(
        start: WalkStart<'_>,
        notes: &mut Notes,
        first_url: impl FnOnce(Option<DateTime<Utc>>, Option<DateTime<Utc>>) -> Url,
    ) -> Self {
        let full = start.kind.is_full();
        let floor = start.floor;
        let mut watermark = start.watermark;
        let mut since = back_from(watermark, start.overlap, floor);
        // A watermark in the future (written before the bridge bounded it, or
        // by a server clock later found wrong) would make every poll ask for
        // an empty range. Poll from the start again instead: the diff drops
        // what was already delivered, and a re-sent change keeps its message_id.
        if let Some(w) = watermark.filter(|w| !full && *w > start.horizon && Some(*w) != floor) {
            notes.warn(format!(
                "{}: the stored watermark {} is in the future; polling from the start again",
                start.resource_type,
                format_instant(w)
            ));
            watermark = None;
            since = floor;
        }
        PageWalk {
            resource_type: start.resource_type.to_string(),
            kind: start.kind,
            max_pages: start.max_pages,
            overlap: start.overlap,
            floor,
            url: first_url(since, start.until),
            watermark,
            start_watermark: watermark,
            since,
            until: start.until,
            last_total: None,
            drifted: false,
            bad_total: false,
            visited: Default::default(),
            tracker: WatermarkTracker::new(),
            detected_at: start.detected_at,
            page_no: 0,
            pages_this_turn: 0,
            restarted: false,
            held_at: None,
        }
    }

    /// A kept walk's next turn: a new slice.
    pub fn resume(mut self) -> Self {
        self.pages_this_turn = 0;
        self
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn page_no(&self) -> usize {
        self.page_no
    }

    pub fn detected_at(&self) -> &str {
        &self.detected_at
    }

    /// Where a page's window starts: a full walk reads everything since the
    /// floor, whatever the watermark.
    pub fn window_start(&self) -> Option<DateTime<Utc>> {
        match self.kind.is_full() {
            true => self.floor,
            false => self.since.or(self.floor),
        }
    }

    /// A reconciliation looks only below the window the polls re-read (what
    /// lies above is theirs to find).
    pub fn window_end(&self) -> Option<DateTime<Utc>> {
        (self.kind == Walk::Reconcile)
            .then_some(self.since)
            .flatten()
    }

    /// The next page is about to be read: from `queued` (a history
    /// read-ahead's page) or from the walk's own link.
    pub fn begin_page(&mut self, queued: Option<&Url>) {
        self.page_no += 1;
        self.pages_this_turn += 1;
        if let Some(u) = queued {
            self.url = u.clone();
        }
        self.visited.insert(&self.url);
    }

    /// The page's request failed with `error`. `first_url` builds a
    /// restarted search's first request.
    pub fn fetch_failed(
        &mut self,
        error: FetchError,
        notes: &mut Notes,
        first_url: impl FnOnce(Option<DateTime<Utc>>, Option<DateTime<Utc>>) -> Url,
    ) -> Step {
        let rt = &self.resource_type;
        let page_no = self.page_no;
        match error {
            // An expired page context (HAPI forgets its searches after an
            // hour): the chain starts again from the watermark, once.
            FetchError::Status {
                status: status @ (404 | 410),
                ..
            } if page_no > 1 && !self.restarted => {
                self.restarted = true;
                let from = if self.kind.is_full() {
                    "beginning"
                } else {
                    "watermark"
                };
                notes.warn(format!(
                    "{rt}: page {page_no} answered HTTP {status} (an expired next link); the search started again from the {from}"
                ));
                self.since = back_from(self.watermark, self.overlap, self.floor);
                self.url = first_url(self.since, self.until);
                (self.last_total, self.drifted, self.tracker) =
                    (None, false, WatermarkTracker::new());
                self.visited.clear();
                Step::Restart
            }
            // A server asking to wait (429/503 with Retry-After) on a
            // sliced walk's page: the page was not read and its link is
            // still good, so the walk keeps its position and reads that
            // page after the pause, instead of a new search that re-reads
            // the overlap (and, drifting, may never reach a long chain's
            // end under a steady 429 rate). Once per page: a page asked
            // again fails the poll, so a server that always says "later"
            // shows on status.
            FetchError::Status {
                status: status @ (429 | 503),
                retry_after: Some(_),
            } if slices(self.kind) && page_no > 1 && self.held_at != Some(page_no) => {
                notes.warn(format!(
                    "{rt}: page {page_no} answered HTTP {status} with Retry-After; read again after the pause, from the same link"
                ));
                self.page_no -= 1;
                self.held_at = Some(page_no);
                Step::Yield
            }
            error => Step::Fail(PollError::Fetch {
                resource_type: rt.clone(),
                page: page_no,
                error,
            }),
        }
    }

    /// The page was read (and is committed next, with the watermark this
    /// answers): what comes after it.
    pub fn page_read(&mut self, page: PageRead<'_>, notes: &mut Notes) -> AfterRead {
        // Offset-paged servers skip resources when the set changes under them.
        // Once the total changes between pages, the watermark stays where it
        // was before that page, so the next poll re-reads what may have been
        // skipped (the diff drops what was not).
        let drift_began = matches!((self.last_total, page.total), (Some(before), Some(now)) if before != now)
            && !self.drifted;
        self.drifted |= drift_began;
        self.last_total = page.total.or(self.last_total);
        self.bad_total |= page.bad_total;
        let allowed = self.tracker.page(page.instants, page.next.is_some());
        let mut watermark = None;
        if let Some(new) = allowed.filter(|_| !self.drifted && !self.kind.is_full())
            && self.watermark.is_none_or(|w| new > w)
        {
            self.watermark = Some(new);
            watermark = Some(new);
        }
        AfterRead {
            watermark,
            drift_began,
            then: self.after_read(page.next, notes),
        }
    }

    fn after_read(&mut self, next: Option<Result<Url, PollError>>, notes: &mut Notes) -> Step {
        let rt = &self.resource_type;
        let page_no = self.page_no;
        // A next link that cannot be followed fails the poll, but only
        // after this page is committed: its entries are the EHR's own, and
        // the watermark treated it as a page with more to come.
        let next = match next {
            None => return Step::Done { complete: true },
            Some(Err(e)) => return Step::Fail(e),
            Some(Ok(n)) => n,
        };
        if self.visited.contains(&next) {
            return Step::Fail(PollError::NextLinkLoop {
                resource_type: rt.clone(),
                page: page_no,
            });
        }
        if page_no >= self.max_pages {
            // Everything read so far is committed. A poll that moved the
            // watermark is a long backlog: the next tick goes on from
            // there. One that did not is a server paging in circles.
            if self.watermark > self.start_watermark {
                notes.warn(format!(
                    "{rt}: stopped after {page_no} pages (max_pages_per_poll); the next poll goes on from the watermark"
                ));
                return Step::Done { complete: false };
            }
            return Step::Fail(PollError::PageCap {
                resource_type: rt.clone(),
                pages: page_no,
            });
        }
        let finish = must_finish(self.restarted, self.tracker.in_order());
        self.url = next;
        match after_page(self.kind, self.pages_this_turn, finish) {
            AfterPage::Continue => Step::Fetch,
            AfterPage::Yield => Step::Yield,
        }
    }

    /// What a full walk's end needs to know to infer deletes.
    pub fn facts(&self, per_patient: bool) -> WalkFacts {
        WalkFacts {
            per_patient,
            drifted: self.drifted,
            total: self.last_total,
            bad_total: self.bad_total,
        }
    }
}

/// `watermark` less `overlap`, not below `floor`: where a search starts.
fn back_from(
    watermark: Option<DateTime<Utc>>,
    overlap: chrono::Duration,
    floor: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    watermark.map(|w| {
        let back = w
            .checked_sub_signed(overlap)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        floor.map_or(back, |f| back.max(f))
    })
}

/// The longest `next` link followed (see `next_link`).
pub(super) const MAX_NEXT_LINK_BYTES: usize = 16 * 1024;

/// A page's `next` link, resolved, and whether it may be followed. Links
/// elsewhere (unless in `allowed_origins`) are not: another host's resources
/// are not this EHR's, and the search URL and credentials are not theirs to
/// see. The caller commits the page first either way: its entries are the
/// EHR's own, and the watermark treats it as a page with more to come.
pub(super) fn next_link(
    source: &Source,
    current: &Url,
    link: Option<&str>,
    rt: &str,
    page: usize,
) -> Option<Result<Url, PollError>> {
    let link = link?;
    // A sliced walk keeps its next link between turns, one per target (a
    // roster's thousands): a page may be 256 MB, a link is bounded on its
    // own. Known servers' links are a few hundred bytes (continuation tokens
    // a few KB), and common front ends refuse request lines past 8-16 KB.
    if link.len() > MAX_NEXT_LINK_BYTES {
        return Some(Err(PollError::NextLinkTooLong {
            resource_type: rt.to_string(),
            page,
            bytes: link.len(),
        }));
    }
    let Ok(next) = current.join(link) else {
        return Some(Err(PollError::BadNextLink {
            resource_type: rt.to_string(),
            page,
        }));
    };
    if !source.allows(&next) {
        return Some(Err(PollError::ForeignNextLink {
            resource_type: rt.to_string(),
            page,
        }));
    }
    Some(Ok(next))
}

/// What one poll found: changes committed, and resources re-read without a
/// commit (already-seen versions inside the overlap).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Polled {
    pub changes: u64,
    pub rereads: u64,
    /// The walk reached the end of its chain (and, for a full walk, its
    /// deletes are committed); not after a shutdown or a page cap stop.
    pub complete: bool,
    /// The walk stopped after its page slice with more to read, everything
    /// read committed and its position kept: it goes on at its next turn.
    pub yielded: bool,
}

/// A sliced poll's turns so far: together they are one poll, whose outcome
/// (notes, changes, time) is recorded when its walk ends, not at each slice
/// (a yielded turn is not a poll that succeeded).
#[derive(Debug, Default)]
pub(super) struct TurnsSoFar {
    pub notes: super::notes::Notes,
    pub changes: u64,
    pub rereads: u64,
    pub took: std::time::Duration,
}

/// Sliced walks waiting for their next turn, by target.
#[derive(Debug, Default)]
pub struct PausedWalks(std::sync::Mutex<HashMap<TargetKey, PageWalk>>);

impl PausedWalks {
    pub(super) fn take(&self, key: &TargetKey) -> Option<PageWalk> {
        self.lock().remove(key)
    }

    pub(super) fn keep(&self, key: &TargetKey, position: PageWalk) {
        self.lock().insert(key.clone(), position);
    }

    /// Drops the walks of targets no longer polled (patients off the roster).
    pub(super) fn retain(&self, keep: impl Fn(&TargetKey) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TargetKey, PageWalk>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[path = "walk_tests.rs"]
mod decision_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_last_updated_poll_yields_and_only_after_its_slice() {
        let lu = Walk::Poll(Strategy::LastUpdated);
        assert_eq!(after_page(lu, 1, false), AfterPage::Continue);
        assert_eq!(after_page(lu, PAGE_SLICE - 1, false), AfterPage::Continue);
        assert_eq!(after_page(lu, PAGE_SLICE, false), AfterPage::Yield);
        // Started again after an expired link, or out of time order: on to
        // its end.
        assert_eq!(after_page(lu, PAGE_SLICE * 100, true), AfterPage::Continue);
        assert!(must_finish(true, true) && must_finish(false, false));
        assert!(!must_finish(false, true));
        for walk in [
            Walk::Poll(Strategy::Snapshot),
            Walk::Poll(Strategy::History),
            Walk::Reconcile,
        ] {
            assert_eq!(
                after_page(walk, PAGE_SLICE * 100, false),
                AfterPage::Continue
            );
        }
    }

    #[test]
    fn visited_links_are_told_apart_and_cost_no_text() {
        let page = |n: usize| {
            Url::parse(&format!(
                "https://ehr.example/fhir?_getpages=abc&_offset={n}"
            ))
            .unwrap()
        };
        let mut v = VisitedLinks::default();
        for n in 0..1000 {
            v.insert(&page(n));
        }
        assert!((0..1000).all(|n| v.contains(&page(n))));
        assert!(!(1000..2000).any(|n| v.contains(&page(n))));
        v.clear();
        assert!(!v.contains(&page(0)));
    }
}
