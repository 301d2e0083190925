//! `reconcile`: a cron schedule (UTC) on which a `last-updated` source walks
//! each type in full, to find what `meta.lastUpdated` missed and the deletes
//! a search cannot see.

use super::ctx::{CRON_HORIZON, CRON_HORIZON_TEXT, Ctx};
use super::raw::RawSource;
use super::{ConfigError, Schedule, Strategies, Strategy};

pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    s: &RawSource,
    resources: &[String],
    strategies: &Strategies,
) -> Result<Option<Schedule>, ConfigError> {
    let Some(expr) = &s.reconcile else {
        return Ok(None);
    };
    let schedule = Schedule::cron(expr.get_ref()).map_err(|e| {
        ctx.err(
            expr.span(),
            format!("{what}: `reconcile` is not a cron expression: {e}"),
        )
    })?;
    if !schedule.fires_within(chrono::Utc::now(), CRON_HORIZON) {
        return Err(ctx.err(
            expr.span(),
            format!(
                "{what}: `reconcile` never fires: `{}` has no tick in the next {CRON_HORIZON_TEXT}",
                expr.get_ref()
            ),
        ));
    }
    // History sees deletes and snapshot walks in full already: a
    // reconciliation is for what a `_lastUpdated` search cannot see.
    if let Some(ty) = resources
        .iter()
        .find(|t| strategies.for_type(t) != Strategy::LastUpdated)
    {
        return Err(ctx.err(
            expr.span(),
            format!(
                "{what}: `reconcile` is for `last-updated` sources, but `{ty}` polls with `{}`",
                strategies.for_type(ty).as_str()
            ),
        ));
    }
    Ok(Some(schedule))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn load(keys: &str) -> Result<bool, String> {
        let text = format!(
            "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
             resources = [\"Observation\", \"Encounter\"]\n{keys}"
        );
        Config::from_str(&text, Path::new("b.toml"))
            .map(|c| c.sources[0].reconcile.is_some())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_cron_on_last_updated_sources_only() {
        assert_eq!(load(""), Ok(false));
        assert_eq!(load("reconcile = \"0 3 * * *\"\n"), Ok(true));
        assert_eq!(load("reconcile = \"*/2 * * * * *\"\n"), Ok(true));
        let e = load("reconcile = \"at three\"\n").unwrap_err();
        assert!(
            e.starts_with("b.toml:6: source `ehr`: `reconcile` is not a cron expression"),
            "{e}"
        );
        let e = load("reconcile = \"0 0 31 2 *\"\n").unwrap_err();
        assert!(e.contains("`reconcile` never fires"), "{e}");
        let e = load("strategy = \"snapshot\"\nreconcile = \"0 3 * * *\"\n").unwrap_err();
        assert!(
            e.starts_with("b.toml:7: source `ehr`: `reconcile` is for `last-updated` sources, but `Observation` polls with `snapshot`"),
            "{e}"
        );
        let e =
            load("reconcile = \"0 3 * * *\"\n[source.strategy_by_type]\nEncounter = \"history\"\n")
                .unwrap_err();
        assert!(e.contains("`Encounter` polls with `history`"), "{e}");
    }
}
