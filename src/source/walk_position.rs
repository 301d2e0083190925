//! Fair turns: a `last-updated` poll reads at most `PAGE_SLICE` pages per
//! turn; then the source's other targets (types, patients) have theirs, and
//! the walk goes on exactly where it stopped: the same `next` link, result
//! set bounds, watermark tracker and drift flag. It never starts a new search
//! to go on: a new search re-reads the whole overlap below the watermark
//! before it reaches anything new, and under offset paging (where drift holds
//! the watermark back) that made each turn cost the overlap for one page of
//! progress, so a quiet backlog took minutes and a busy one never ended.
//!
//! The turns themselves are dealt in `SourceTask::run`: every target has its
//! turn in a tick, then the yielded walks go on until the next tick is due and
//! wait for their turn in it. A walk whose link expired reads on to its end
//! (`after_page`); a 429/503 with `Retry-After` keeps its position once per
//! page (`walk_pages`).

use super::strategy::{Strategy, Walk};
use super::watermark::WatermarkTracker;
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

/// Where a walk stopped after its slice: everything it needs to go on as if
/// it had never stopped. Everything read before is committed.
#[derive(Debug)]
pub(super) struct WalkPosition {
    /// The next page to read.
    pub url: Url,
    pub watermark: Option<DateTime<Utc>>,
    pub start_watermark: Option<DateTime<Utc>>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub last_total: Option<u64>,
    pub drifted: bool,
    pub bad_total: bool,
    pub visited: VisitedLinks,
    pub tracker: WatermarkTracker,
    pub detected_at: String,
    /// Pages read so far over all turns (`max_pages_per_poll` counts them all).
    pub page_no: usize,
    pub restarted: bool,
    /// The page a 429/503 with Retry-After stopped the walk at, to be read
    /// again after the pause (once: a second refusal fails the poll).
    pub held_at: Option<usize>,
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
pub struct PausedWalks(std::sync::Mutex<HashMap<TargetKey, WalkPosition>>);

impl PausedWalks {
    pub(super) fn take(&self, key: &TargetKey) -> Option<WalkPosition> {
        self.lock().remove(key)
    }

    pub(super) fn keep(&self, key: &TargetKey, position: WalkPosition) {
        self.lock().insert(key.clone(), position);
    }

    /// Drops the walks of targets no longer polled (patients off the roster).
    pub(super) fn retain(&self, keep: impl Fn(&TargetKey) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TargetKey, WalkPosition>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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
