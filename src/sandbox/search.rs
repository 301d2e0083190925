//! One search over a type's live resources: `_lastUpdated` bounds, cursor
//! paging oldest or newest first, and reference filters (`patient`,
//! `subject`, `organization`).

use super::store::{SandboxStore, TypeStore};
use std::ops::Bound;
use std::sync::Arc;

/// Bounds, filters and paging of one search.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub ge_ms: Option<i64>,
    pub gt_ms: Option<i64>,
    pub le_ms: Option<i64>,
    pub lt_ms: Option<i64>,
    /// Continue strictly after this (lastUpdated, id), in the search's order.
    pub after: Option<(i64, String)>,
    pub count: usize,
    /// Newest first (the `descending` quirk).
    pub descending: bool,
    /// All must match.
    pub references: Vec<ReferenceFilter>,
}

/// `patient=123`: one of the `elements` refers to one of `any_of`.
#[derive(Debug, Clone)]
pub struct ReferenceFilter {
    /// Elements whose `.reference` is compared, e.g. `subject` and `patient`.
    pub elements: &'static [&'static str],
    /// Exact references, e.g. `Patient/123`; any one matches.
    pub any_of: Vec<String>,
}

impl ReferenceFilter {
    fn matches(&self, body: &str) -> bool {
        // A text test first: only the few bodies that may match are parsed.
        if !self.any_of.iter().any(|r| body.contains(r.as_str())) {
            return false;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            return false;
        };
        self.elements.iter().any(|e| {
            v.get(e)
                .and_then(|x| x.get("reference"))
                .and_then(|r| r.as_str())
                .is_some_and(|r| self.any_of.iter().any(|t| t == r))
        })
    }
}

pub struct SearchPage {
    pub bodies: Vec<Arc<str>>,
    /// Where the next page starts, when there is one.
    pub next_after: Option<(i64, String)>,
}

impl Query {
    /// The inclusive lastUpdated range.
    fn range_ms(&self) -> (i64, i64) {
        let mut lower = i64::MIN;
        if let Some(v) = self.ge_ms {
            lower = lower.max(v);
        }
        if let Some(v) = self.gt_ms {
            lower = lower.max(v.saturating_add(1));
        }
        let mut upper = i64::MAX;
        if let Some(v) = self.le_ms {
            upper = upper.min(v);
        }
        if let Some(v) = self.lt_ms {
            upper = upper.min(v.saturating_sub(1));
        }
        (lower, upper)
    }

    pub(super) fn run(&self, ts: &TypeStore) -> SearchPage {
        let (lower, upper) = self.range_ms();
        let empty = || SearchPage {
            bodies: vec![],
            next_after: None,
        };
        if lower > upper {
            return empty();
        }
        let bottom = Bound::Included((lower, Arc::<str>::from("")));
        if !self.descending {
            let start = match &self.after {
                Some((ms, id)) if *ms >= lower => Bound::Excluded((*ms, Arc::from(id.as_str()))),
                _ => bottom,
            };
            return self.collect(ts, ts.index.range((start, Bound::Unbounded)), upper);
        }
        let top = match &self.after {
            Some((ms, _)) if *ms < lower => return empty(),
            Some((ms, id)) if *ms <= upper => Bound::Excluded((*ms, Arc::from(id.as_str()))),
            _ if upper == i64::MAX => Bound::Unbounded,
            _ => Bound::Excluded((upper + 1, Arc::from(""))),
        };
        self.collect(ts, ts.index.range((bottom, top)).rev(), upper)
    }

    fn collect<'a>(
        &self,
        ts: &'a TypeStore,
        keys: impl Iterator<Item = &'a (i64, Arc<str>)>,
        upper: i64,
    ) -> SearchPage {
        let mut bodies = Vec::with_capacity(self.count.min(1000));
        let mut last = None;
        let mut more = false;
        for (ms, id) in keys {
            if *ms > upper {
                break;
            }
            let Some(body) = ts.by_id.get(id).and_then(|s| s.body.as_ref()) else {
                continue;
            };
            if !self.references.iter().all(|f| f.matches(body)) {
                continue;
            }
            if bodies.len() == self.count {
                more = true;
                break;
            }
            bodies.push(body.clone());
            last = Some((*ms, id.to_string()));
        }
        SearchPage {
            bodies,
            next_after: if more { last } else { None },
        }
    }
}

impl SandboxStore {
    /// One page: ascending by (lastUpdated, id), or descending (`q.descending`).
    pub(super) fn search(&self, resource_type: &str, q: &Query) -> SearchPage {
        let inner = self.lock();
        match inner.types.get(resource_type) {
            Some(ts) => q.run(ts),
            None => SearchPage {
                bodies: vec![],
                next_after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursor_paging_walks_ties_exactly_once() {
        let s = SandboxStore::default();
        s.freeze_clock(Some(1_000));
        for _ in 0..5 {
            s.upsert("Observation", None, json!({}));
        }
        s.freeze_clock(Some(2_000));
        for _ in 0..3 {
            s.upsert("Observation", None, json!({}));
        }
        let mut q = Query {
            ge_ms: Some(1_000),
            count: 3,
            ..Default::default()
        };
        let mut all = vec![];
        loop {
            let page = s.search("Observation", &q);
            all.extend(page.bodies);
            match page.next_after {
                Some(a) => q.after = Some(a),
                None => break,
            }
        }
        assert_eq!(all.len(), 8);
        let again = s.upsert("Observation", Some("1"), json!({"status": "final"}));
        assert!(again.contains("\"versionId\":\"2\""));
        assert_eq!(s.count("Observation"), 8);
    }

    fn ids(s: &SandboxStore, rt: &str, q: &Query) -> Vec<String> {
        let mut q = q.clone();
        let mut all = vec![];
        loop {
            let page = s.search(rt, &q);
            for b in &page.bodies {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                all.push(v["id"].as_str().unwrap().to_string());
            }
            match page.next_after {
                Some(a) => q.after = Some(a),
                None => return all,
            }
        }
    }

    #[test]
    fn descending_pages_newest_first_within_the_bounds() {
        let s = SandboxStore::default();
        for (ms, id) in [
            (1_000, "a"),
            (2_000, "b"),
            (2_000, "c"),
            (3_000, "d"),
            (4_000, "e"),
        ] {
            s.freeze_clock(Some(ms));
            s.upsert("Observation", Some(id), json!({}));
        }
        let q = Query {
            ge_ms: Some(2_000),
            lt_ms: Some(4_000),
            count: 2,
            descending: true,
            ..Default::default()
        };
        assert_eq!(ids(&s, "Observation", &q), ["d", "c", "b"]);
        let asc = Query {
            descending: false,
            ..q
        };
        assert_eq!(ids(&s, "Observation", &asc), ["b", "c", "d"]);
    }

    #[test]
    fn reference_filters_match_subject_patient_and_organization() {
        let s = SandboxStore::default();
        s.upsert(
            "Observation",
            Some("o1"),
            json!({"subject": {"reference": "Patient/1"}}),
        );
        s.upsert(
            "Observation",
            Some("o12"),
            json!({"subject": {"reference": "Patient/12"}}),
        );
        s.upsert(
            "AllergyIntolerance",
            Some("x"),
            json!({"patient": {"reference": "Patient/1"}}),
        );
        s.upsert(
            "Patient",
            Some("1"),
            json!({"managingOrganization": {"reference": "Organization/o"}}),
        );
        s.upsert("Patient", Some("2"), json!({}));
        let by = |elements, any_of: &[&str]| Query {
            count: 10,
            references: vec![ReferenceFilter {
                elements,
                any_of: any_of.iter().map(|r| r.to_string()).collect(),
            }],
            ..Default::default()
        };
        let patient: &'static [&'static str] = &["subject", "patient"];
        assert_eq!(ids(&s, "Observation", &by(patient, &["Patient/1"])), ["o1"]);
        assert_eq!(
            ids(
                &s,
                "Observation",
                &by(patient, &["Patient/1", "Patient/12"])
            ),
            ["o1", "o12"]
        );
        assert_eq!(
            ids(&s, "AllergyIntolerance", &by(patient, &["Patient/1"])),
            ["x"]
        );
        let org = by(&["managingOrganization"], &["Organization/o"]);
        assert_eq!(ids(&s, "Patient", &org), ["1"]);
    }
}
