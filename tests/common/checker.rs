//! The checker: what the writer wrote vs what a hook received.
//!
//! Expected: the final version of every resource whose final content matches
//! the hook (versions overwritten between two polls cannot be seen by any
//! poller, so they are allowed but not required). It fails on any missing
//! change, any version delivered under two message_ids, and any resource whose
//! versions arrived out of order.

use super::writer::Write;
use fhir_bridge::sandbox::{Received, Receiver};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Report {
    pub expected: usize,
    pub delivered: usize,
    pub missing: Vec<(String, String)>,
    pub duplicates_same_id: usize,
    pub duplicates_different_id: usize,
    pub out_of_order: usize,
    pub unknown: usize,
}

impl Report {
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<22} expected {:>5} / delivered {:>5} / missing {:>3} / dup (same id) {:>4} / dup (diff id) {:>2} / out-of-order {:>2} / unknown {:>2}",
            self.expected,
            self.delivered,
            self.missing.len(),
            self.duplicates_same_id,
            self.duplicates_different_id,
            self.out_of_order,
            self.unknown
        )
    }

    pub fn assert_ok(&self, name: &str) {
        println!("{}", self.line(name));
        assert!(
            self.missing.is_empty()
                && self.duplicates_different_id == 0
                && self.out_of_order == 0
                && self.unknown == 0,
            "{}\nmissing: {:?}",
            self.line(name),
            self.missing.iter().take(20).collect::<Vec<_>>()
        );
    }
}

/// `hook_path` like "/hooks/all"; `matches` says whether a write's content matches the hook.
pub fn check(
    writes: &[Write],
    received: &[Received],
    hook_path: &str,
    matches: impl Fn(&Write) -> bool,
) -> Report {
    // Order of versions per resource, as written.
    let mut order: HashMap<(String, String), usize> = HashMap::new();
    let mut last: BTreeMap<String, &Write> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        order.insert((w.resource_id.clone(), w.version_id.clone()), i);
        last.insert(w.resource_id.clone(), w);
    }
    let expected: BTreeSet<(String, String)> = last
        .values()
        .filter(|w| matches(w))
        .map(|w| (w.resource_id.clone(), w.version_id.clone()))
        .collect();

    let mut r = Report {
        expected: expected.len(),
        ..Default::default()
    };
    let mut ids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut seen_pairs: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut high: HashMap<String, usize> = HashMap::new();
    for rec in received.iter().filter(|r| r.path == hook_path) {
        let key = (
            rec.resource_id.clone(),
            rec.version_id.clone().unwrap_or_default(),
        );
        let Some(&pos) = order.get(&key) else {
            r.unknown += 1;
            continue;
        };
        if !seen_pairs.insert((key.0.clone(), key.1.clone(), rec.message_id.clone())) {
            r.duplicates_same_id += 1;
        }
        ids.entry(key.clone())
            .or_default()
            .insert(rec.message_id.clone());
        let h = high.entry(key.0.clone()).or_insert(pos);
        if pos < *h {
            r.out_of_order += 1;
        }
        *h = (*h).max(pos);
    }
    r.duplicates_different_id = ids.values().filter(|s| s.len() > 1).count();
    r.delivered = expected.iter().filter(|k| ids.contains_key(*k)).count();
    r.missing = expected
        .iter()
        .filter(|k| !ids.contains_key(*k))
        .cloned()
        .collect();
    r
}

/// Checks until nothing is missing or `secs` pass; returns the last report.
pub async fn converge(
    rx: &Receiver,
    writes: &[Write],
    hook_path: &str,
    matches: impl Fn(&Write) -> bool + Copy,
    secs: u64,
) -> Report {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = check(writes, &rx.received(), hook_path, matches);
        if r.missing.is_empty() || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
