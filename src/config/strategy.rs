//! How a source polls each resource type: `strategy` for the source,
//! `strategy_by_type` to override it per type.

use super::ConfigError;
use super::ctx::{Ctx, MIN_SECOND};
use super::raw::RawSource;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// One polling strategy (`src/source/strategy/` implements each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// `[base]/{Type}?_lastUpdated=ge…&_sort=_lastUpdated`: creates and updates.
    #[default]
    LastUpdated,
    /// `[base]/{Type}/_history?_since=…`: every version, and deletes.
    History,
    /// `[base]/{Type}?{params}`, the whole set every poll: creates and
    /// updates by the diff, deletes by what a complete walk no longer meets.
    Snapshot,
    /// `[base]/$export?_type=…&_since=…` (FHIR Bulk Data): one asynchronous
    /// job for all of a source's `bulk-export` types, its NDJSON files streamed.
    BulkExport,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LastUpdated => "last-updated",
            Strategy::History => "history",
            Strategy::Snapshot => "snapshot",
            Strategy::BulkExport => "bulk-export",
        }
    }

    fn parse(ctx: &Ctx, what: &str, key: &str, s: &Spanned<String>) -> Result<Self, ConfigError> {
        match s.get_ref().as_str() {
            "last-updated" => Ok(Strategy::LastUpdated),
            "history" => Ok(Strategy::History),
            "snapshot" => Ok(Strategy::Snapshot),
            "bulk-export" => Ok(Strategy::BulkExport),
            _ => Err(ctx.err(
                s.span(),
                format!(
                    "{what}: `{key}` must be \"last-updated\", \"history\", \"snapshot\" or \"bulk-export\""
                ),
            )),
        }
    }
}

/// `export_timeout` unless set. Bulk Data servers finish a system or group
/// export in minutes to a few hours; six leave a large nightly export room to
/// finish (a bound too tight would cancel it again and again, and its types
/// would never be delivered), while a job wedged at the server (202 for ever,
/// a manifest the bridge cannot use) costs at most a quarter of a day before
/// a new one starts from the watermarks.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The source's strategy and its per-type overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategies {
    pub default: Strategy,
    pub by_type: BTreeMap<String, Strategy>,
    /// `export_group`: `Group/{id}`, the group a `bulk-export` exports.
    pub export_group: Option<String>,
    /// `export_timeout`: how long a `bulk-export` job may go from its kick-off
    /// without a usable manifest before it is cancelled and started again.
    pub export_timeout: Duration,
}

impl Default for Strategies {
    fn default() -> Self {
        Strategies {
            default: Strategy::default(),
            by_type: BTreeMap::new(),
            export_group: None,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
        }
    }
}

impl Strategies {
    pub fn for_type(&self, resource_type: &str) -> Strategy {
        self.by_type
            .get(resource_type)
            .copied()
            .unwrap_or(self.default)
    }

    /// The types polled by `bulk-export`, in `resources` order: one export job
    /// covers them all (the first of them runs it).
    pub fn bulk_export_types(&self, resources: &[String]) -> Vec<String> {
        (resources.iter())
            .filter(|rt| self.for_type(rt) == Strategy::BulkExport)
            .cloned()
            .collect()
    }
}

pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    s: &RawSource,
    resources: &[String],
) -> Result<Strategies, ConfigError> {
    let default = match &s.strategy {
        Some(v) => Strategy::parse(ctx, what, "strategy", v)?,
        None => Strategy::default(),
    };
    let mut by_type = BTreeMap::new();
    for (ty, v) in &s.strategy_by_type {
        let key = format!("strategy_by_type.{ty}");
        if !resources.contains(ty) {
            return Err(ctx.err(
                v.span(),
                format!("{what}: `{key}`: `{ty}` is not one of `resources`"),
            ));
        }
        by_type.insert(ty.clone(), Strategy::parse(ctx, what, &key, v)?);
    }
    let bulk = resources
        .iter()
        .any(|rt| by_type.get(rt).copied().unwrap_or(default) == Strategy::BulkExport);
    let export_group = match &s.export_group {
        None => None,
        Some(g) if !bulk => {
            return Err(ctx.err(
                g.span(),
                format!("{what}: `export_group` is for `bulk-export` sources"),
            ));
        }
        Some(g) => {
            let id = g.get_ref().strip_prefix("Group/").unwrap_or("");
            if !crate::fhir::is_fhir_id(id) {
                return Err(ctx.err(
                    g.span(),
                    format!("{what}: `export_group` must be `Group/{{id}}`"),
                ));
            }
            Some(g.get_ref().clone())
        }
    };
    let export_timeout = match &s.export_timeout {
        None => DEFAULT_EXPORT_TIMEOUT,
        Some(t) if !bulk => {
            return Err(ctx.err(
                t.span(),
                format!("{what}: `export_timeout` is for `bulk-export` sources"),
            ));
        }
        Some(t) => ctx.at_least(what, "export_timeout", t, MIN_SECOND)?,
    };
    if bulk && let Some(p) = &s.patients {
        return Err(ctx.err(
            p.span(),
            format!("{what}: `bulk-export` exports the population: no `patients` fan-out"),
        ));
    }
    Ok(Strategies {
        default,
        by_type,
        export_group,
        export_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(keys: &str) -> Result<Strategies, String> {
        let text = format!(
            "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
             resources = [\"Observation\", \"Encounter\"]\n{keys}"
        );
        Config::from_str(&text, Path::new("b.toml"))
            .map(|c| c.sources[0].strategies.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn last_updated_unless_told_otherwise_per_source_or_type() {
        let s = load("").unwrap();
        assert_eq!(s.for_type("Observation"), Strategy::LastUpdated);
        let s = load(
            "strategy = \"history\"\n[source.strategy_by_type]\nObservation = \"last-updated\"\n",
        )
        .unwrap();
        assert_eq!(s.for_type("Encounter"), Strategy::History);
        assert_eq!(s.for_type("Observation"), Strategy::LastUpdated);
        let s = load("strategy = \"snapshot\"\n").unwrap();
        assert_eq!(s.for_type("Encounter"), Strategy::Snapshot);
        let s = load("strategy = \"bulk-export\"\nexport_group = \"Group/g1\"\n").unwrap();
        assert_eq!(s.for_type("Encounter"), Strategy::BulkExport);
        assert_eq!(s.export_group.as_deref(), Some("Group/g1"));
        assert_eq!(s.export_timeout, DEFAULT_EXPORT_TIMEOUT);
        let s = load("strategy = \"bulk-export\"\nexport_timeout = \"90m\"\n").unwrap();
        assert_eq!(s.export_timeout, Duration::from_secs(5400));
        let all = ["Observation".to_string(), "Encounter".to_string()];
        assert_eq!(s.bulk_export_types(&all), all);
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = load("strategy = \"push\"\n").unwrap_err();
        assert!(
            e.starts_with("b.toml:6: source `ehr`: `strategy` must be"),
            "{e}"
        );
        let e = load("[source.strategy_by_type]\nPatient = \"history\"\n").unwrap_err();
        assert!(
            e.contains("`strategy_by_type.Patient`: `Patient` is not one of `resources`"),
            "{e}"
        );
        let e = load("export_group = \"Group/g\"\n").unwrap_err();
        assert!(
            e.contains("`export_group` is for `bulk-export` sources"),
            "{e}"
        );
        let e = load("strategy = \"bulk-export\"\nexport_group = \"g\"\n").unwrap_err();
        assert!(e.contains("`export_group` must be `Group/{id}`"), "{e}");
        let e = load("export_timeout = \"1h\"\n").unwrap_err();
        assert!(
            e.contains("`export_timeout` is for `bulk-export` sources"),
            "{e}"
        );
        let e = load("strategy = \"bulk-export\"\nexport_timeout = \"0s\"\n").unwrap_err();
        assert!(e.contains("`export_timeout`"), "{e}");
        let e = load("[source.strategy_by_type]\nEncounter = \"x\"\n").unwrap_err();
        assert!(e.contains("`strategy_by_type.Encounter` must be"), "{e}");
    }
}
