//! How far a poll may move the `_lastUpdated` watermark.
//!
//! Never into a tie: while more pages follow, the watermark may only reach the
//! largest lastUpdated strictly below the page's last one (resources sharing the
//! last instant may continue on the next page). When the `next` chain is
//! exhausted, it moves to the largest lastUpdated the poll saw. A server that
//! does not return ascending order only advances at the end of the chain.

use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub struct WatermarkTracker {
    max_seen: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    ascending: bool,
}

impl WatermarkTracker {
    pub fn new() -> Self {
        WatermarkTracker {
            ascending: true,
            ..Default::default()
        }
    }

    /// Feeds one page's lastUpdated values (in server order); returns the
    /// watermark this page allows, if any.
    pub fn page(&mut self, instants: &[DateTime<Utc>], has_next: bool) -> Option<DateTime<Utc>> {
        for &t in instants {
            if self.last_seen.is_some_and(|prev| t < prev) {
                self.ascending = false;
            }
            self.last_seen = Some(t);
            self.max_seen = self.max_seen.max(Some(t));
        }
        if !has_next {
            return self.max_seen;
        }
        if !self.ascending {
            return None;
        }
        let last = *instants.last()?;
        instants.iter().rev().copied().find(|t| *t < last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s as i64, 0).unwrap()
    }

    #[test]
    fn stops_below_a_tie_that_crosses_the_page_boundary() {
        let mut w = WatermarkTracker::new();
        // Page 1 ends with two resources at t(5); page 2 starts with more at t(5).
        assert_eq!(w.page(&[t(1), t(3), t(5), t(5)], true), Some(t(3)));
        assert_eq!(w.page(&[t(5), t(5), t(7)], true), Some(t(5)));
        assert_eq!(w.page(&[t(8)], false), Some(t(8)));
    }

    #[test]
    fn a_page_all_at_one_instant_does_not_advance() {
        let mut w = WatermarkTracker::new();
        assert_eq!(w.page(&[t(5), t(5), t(5)], true), None);
        assert_eq!(w.page(&[], true), None);
        assert_eq!(w.page(&[t(5)], false), Some(t(5)));
    }

    #[test]
    fn descending_servers_advance_only_at_the_end() {
        let mut w = WatermarkTracker::new();
        assert_eq!(w.page(&[t(9), t(8)], true), None);
        assert_eq!(w.page(&[t(4), t(2)], true), None);
        assert_eq!(w.page(&[t(1)], false), Some(t(9)));
    }

    #[test]
    fn an_empty_poll_allows_nothing() {
        assert_eq!(WatermarkTracker::new().page(&[], false), None);
    }
}
