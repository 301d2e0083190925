//! Per-patient fan-out: `patients = { group = "Group/123" }`, `{ search =
//! "Patient?organization=…" }` or `{ file = "patients.txt" }`, refreshed every
//! `roster_refresh`, a leaving patient's targets kept for `roster_grace`; and
//! `max_requests_per_second`, the source's request budget.

use super::ConfigError;
use super::ctx::{Ctx, MIN_SECOND};
use super::raw::RawSource;
use crate::fhir::is_fhir_id;
use std::path::PathBuf;
use std::time::Duration;

/// Where the list of patients comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roster {
    /// A Group's id: its `member[].entity` Patients.
    Group(String),
    /// A Patient search's query (after `Patient?`), every page of it.
    Search(String),
    /// A file of patient ids, one per line (`Patient/` prefix optional, `#` comments).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    pub roster: Roster,
    /// How often the roster is read again.
    pub refresh: Duration,
    /// How long a patient who left the roster keeps its targets' state: one
    /// who comes back within it resumes from its watermarks (nothing written
    /// meanwhile is lost); after it, the targets are forgotten.
    pub grace: Duration,
}

/// `roster_grace` when not set: a day.
pub const DEFAULT_ROSTER_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Most requests a source may make per second (a token bucket shared by all
/// its targets), at most this.
pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000.0;
/// At least this: a request never waits more than 10 s for its turn (the
/// watchdog allows a page about a minute and a half).
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.1;

pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    s: &RawSource,
) -> Result<(Option<FanOut>, Option<f64>), ConfigError> {
    let rate = match &s.max_requests_per_second {
        None => None,
        Some(r)
            if !(r.get_ref().is_finite()
                && *r.get_ref() >= MIN_REQUESTS_PER_SECOND
                && *r.get_ref() <= MAX_REQUESTS_PER_SECOND) =>
        {
            return Err(ctx.err(
                r.span(),
                format!("{what}: `max_requests_per_second` must be {MIN_REQUESTS_PER_SECOND}..={MAX_REQUESTS_PER_SECOND}"),
            ));
        }
        Some(r) => Some(*r.get_ref()),
    };
    let Some(patients) = &s.patients else {
        for (key, r) in [
            ("roster_refresh", &s.roster_refresh),
            ("roster_grace", &s.roster_grace),
        ] {
            if let Some(r) = r {
                return Err(ctx.err(r.span(), format!("{what}: `{key}` needs `patients`")));
            }
        }
        return Ok((None, rate));
    };
    let span = patients.span();
    let p = patients.get_ref();
    let err = |m: &str| ctx.err(span.clone(), format!("{what}: `patients`: {m}"));
    let roster = match (&p.group, &p.search, &p.file) {
        (Some(g), None, None) => {
            let id = g.strip_prefix("Group/").unwrap_or(g);
            if !is_fhir_id(id) {
                return Err(err("`group` must be a Group's id, e.g. \"Group/123\""));
            }
            Roster::Group(id.to_string())
        }
        (None, Some(q), None) => {
            let Some(query) = q.strip_prefix("Patient?").filter(|q| !q.is_empty()) else {
                return Err(err(
                    "`search` must be a Patient search, e.g. \"Patient?organization=Organization/1\"",
                ));
            };
            Roster::Search(query.to_string())
        }
        (None, None, Some(f)) => {
            let path = ctx.config_dir().join(f);
            if !path.is_file() {
                return Err(err(&format!(
                    "`file`: {} is not a readable file",
                    path.display()
                )));
            }
            Roster::File(path)
        }
        _ => return Err(err("set exactly one of `group`, `search`, `file`")),
    };
    let refresh = match &s.roster_refresh {
        Some(r) => ctx.at_least(what, "roster_refresh", r, MIN_SECOND)?,
        None => Duration::from_secs(3600),
    };
    let grace = match &s.roster_grace {
        Some(g) => ctx.at_least(what, "roster_grace", g, MIN_SECOND)?,
        None => DEFAULT_ROSTER_GRACE,
    };
    Ok((
        Some(FanOut {
            roster,
            refresh,
            grace,
        }),
        rate,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(keys: &str) -> Result<(Option<FanOut>, Option<f64>), String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("patients.txt"), "p1\n").unwrap();
        let text = format!(
            "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
             resources = [\"Observation\"]\n{keys}"
        );
        Config::from_str(&text, &dir.path().join("b.toml"))
            .map(|c| {
                (
                    c.sources[0].fan_out.clone(),
                    c.sources[0].max_requests_per_second,
                )
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_roster_from_a_group_a_search_or_a_file() {
        assert_eq!(load("").unwrap(), (None, None));
        let (f, rate) =
            load("patients = { group = \"Group/123\" }\nmax_requests_per_second = 20\n").unwrap();
        let f = f.unwrap();
        assert_eq!(
            (f.roster, f.refresh),
            (Roster::Group("123".into()), Duration::from_secs(3600))
        );
        assert_eq!(rate, Some(20.0));
        assert_eq!(f.grace, DEFAULT_ROSTER_GRACE);
        let (f, _) = load("patients = { search = \"Patient?organization=Organization/1\" }\nroster_refresh = \"10m\"\nroster_grace = \"2h\"\n").unwrap();
        let f = f.unwrap();
        assert_eq!(f.grace, Duration::from_secs(7200));
        assert_eq!(
            f.roster,
            Roster::Search("organization=Organization/1".into())
        );
        assert_eq!(f.refresh, Duration::from_secs(600));
        let (f, _) = load("patients = { file = \"patients.txt\" }\n").unwrap();
        assert!(matches!(f.unwrap().roster, Roster::File(p) if p.ends_with("patients.txt")));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        for (keys, msg) in [
            (
                "patients = { group = \"Group/a b\" }\n",
                "`group` must be a Group's id",
            ),
            (
                "patients = { search = \"Observation?x=1\" }\n",
                "`search` must be a Patient search",
            ),
            (
                "patients = { file = \"nope.txt\" }\n",
                "is not a readable file",
            ),
            (
                "patients = { group = \"Group/1\", file = \"patients.txt\" }\n",
                "exactly one of",
            ),
            ("patients = {}\n", "exactly one of"),
            (
                "roster_refresh = \"1h\"\n",
                "`roster_refresh` needs `patients`",
            ),
            ("roster_grace = \"1h\"\n", "`roster_grace` needs `patients`"),
            (
                "max_requests_per_second = 0.01\n",
                "`max_requests_per_second` must be 0.1..=10000",
            ),
        ] {
            let e = load(keys).unwrap_err();
            assert!(e.contains(msg), "{keys}: {e}");
            assert!(e.contains("b.toml:6:"), "{keys}: {e}");
        }
    }
}
