//! A `history` chain read ahead of the page pipeline. Servers list history
//! newest first, page after page: processed as it comes, a resource created
//! on page 3 and updated on page 1 would reach the diff update first, and its
//! create would then look older than what was seen (dropped). So a history
//! poll reads its chain first (within `READ_AHEAD_BYTES` and the page cap)
//! and, when it is newest first, hands the pages to the pipeline last page
//! first (each page's entries are put oldest first in `page.rs`).
//!
//! The read-ahead only looks: whatever it cannot settle (an error, a bad or
//! looping next link, the page cap, the memory bound, a shutdown) ends it,
//! and the poll goes on as without it, from the pages read in the server's
//! order to the first page not read, which it fetches and judges itself.

use super::order::HistoryOrder;
use crate::fhir::bundle::{EntryMode, parse_page_as};
use crate::source::client::Fetched;
use crate::source::fetch::Fetcher;
use crate::source::notes::Notes;
use crate::source::strategy::Strategy;
use std::collections::{HashSet, VecDeque};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Page bodies held at once by a read-ahead: beyond it, the chain is
/// processed in the server's order (noted on status).
pub(in crate::source) const READ_AHEAD_BYTES: usize = 32 * 1024 * 1024;

/// Pages read ahead, in the order the pipeline takes them.
#[derive(Default)]
pub(in crate::source) struct ReadAhead {
    pub pages: VecDeque<(Url, Fetched)>,
    /// Last page first: each page's successor is the next one queued, not
    /// its own `next` link (which points at a page already processed).
    pub reversed: bool,
}

impl ReadAhead {
    pub(in crate::source) fn pop(&mut self) -> Option<(Url, Fetched)> {
        self.pages.pop_front()
    }

    /// The URL of the page after the one just taken, when reversed.
    pub(in crate::source) fn successor(&self) -> Option<Url> {
        self.pages.front().map(|(u, _)| u.clone())
    }
}

/// The pages a walk of `strategy` reads ahead from `first`: a `history`
/// chain's (`read_ahead`; noted when cut short), none for the others.
pub(in crate::source) async fn pages_ahead(
    strategy: Strategy,
    fetcher: &Fetcher<'_>,
    first: &Url,
    rt: &str,
    cancel: &CancellationToken,
    notes: &mut Notes,
) -> ReadAhead {
    if strategy != Strategy::History {
        return ReadAhead::default();
    }
    let (ahead, cut) = read_ahead(fetcher, first, rt, cancel).await;
    if let Some(note) = cut {
        notes.warn(format!("{rt}: {note}"));
    }
    ahead
}

/// Reads the chain from `first`. A single page, an ascending chain, or one
/// cut short comes back in the server's order; a complete newest-first chain
/// comes back reversed.
pub(in crate::source) async fn read_ahead(
    fetcher: &Fetcher<'_>,
    first: &Url,
    rt: &str,
    cancel: &CancellationToken,
) -> (ReadAhead, Option<&'static str>) {
    let mut pages: VecDeque<(Url, Fetched)> = VecDeque::new();
    let mut order = HistoryOrder::default();
    let mut visited = HashSet::new();
    let mut held = 0usize;
    let mut url = first.clone();
    let cut = loop {
        if cancel.is_cancelled() {
            break None;
        }
        fetcher.expect_page();
        visited.insert(url.to_string());
        let Ok(fetched) = fetcher.fetch(&url).await else {
            // The poll fetches it again and reports the error.
            break None;
        };
        let Ok(page) = parse_page_as(&fetched.body, EntryMode::History) else {
            break None;
        };
        held += fetched.body.len();
        order.feed(&page.entries);
        let next = fetcher.next_link(&url, page.next.as_deref(), rt, pages.len() + 1);
        pages.push_back((url.clone(), fetched));
        match next {
            None => {
                let newest_first = order.newest_first();
                return (
                    ReadAhead {
                        reversed: newest_first && pages.len() > 1,
                        pages: match newest_first {
                            true => pages.into_iter().rev().collect(),
                            false => pages,
                        },
                    },
                    None,
                );
            }
            Some(Ok(n)) if !visited.contains(n.as_str()) => {
                let full = pages.len() >= fetcher.source.max_pages_per_poll as usize;
                if full || held >= READ_AHEAD_BYTES {
                    // Ascending so far: nothing is lost by going on in order.
                    break order.newest_first().then_some(
                            "the history chain is longer than the read-ahead (32 MB or max_pages_per_poll): its pages go through in the server's order, so of a resource changed on several of them only the newest version may be delivered; a shorter interval keeps chains short",
                        );
                }
                url = n;
            }
            // A loop or a link off the origins: the poll reports it.
            Some(_) => break None,
        }
    };
    (
        ReadAhead {
            pages,
            reversed: false,
        },
        cut,
    )
}
