//! Operator input for `--since`, `--until` and `--resource`: parsed once, at
//! the command line, into what the state queries take.

use crate::fhir::{is_fhir_id, is_resource_type};

/// An RFC 3339 instant (`2026-11-30T08:00:00Z`), or a duration meaning "that
/// long ago" (`2h`, `30m`, `1d 12h`), as ms since the epoch on our clock.
pub fn parse_time(s: &str) -> Result<i64, String> {
    parse_time_at(s, crate::state::now_ms())
}

/// `parse_time`, relative to `now_ms`.
pub fn parse_time_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match humantime::parse_duration(s) {
        Ok(d) => {
            let ms = i64::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long"))?;
            Ok(now_ms.saturating_sub(ms))
        }
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time (2026-11-30T08:00:00Z) nor a duration ago (2h, 30m, 1d)"
        )),
    }
}

/// `--resource`: a resource type, with an id or without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub resource_type: String,
    pub id: Option<String>,
}

/// `Observation/123`, or `Observation` for every resource of the type.
pub fn parse_resource(s: &str) -> Result<ResourceRef, String> {
    let (rt, id) = match s.split_once('/') {
        Some((rt, id)) => (rt, Some(id)),
        None => (s, None),
    };
    if !is_resource_type(rt) {
        return Err(format!(
            "`{rt}` is not a FHIR resource type (e.g. Observation/123)"
        ));
    }
    if let Some(id) = id
        && !is_fhir_id(id)
    {
        return Err("the id is not a FHIR id ([A-Za-z0-9-.]{1,64})".into());
    }
    Ok(ResourceRef {
        resource_type: rt.to_string(),
        id: id.map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_instants_or_durations_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time_at("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time_at("1d 12h", now), Ok(now - 129_600_000));
        assert_eq!(
            parse_time_at("2027-01-15T08:00:00Z", now),
            Ok(now),
            "1.8e12 ms is 2027-01-15T08:00:00Z"
        );
        assert_eq!(
            parse_time_at("2027-01-15T09:00:00+01:00", now),
            parse_time_at("2027-01-15T08:00:00Z", now)
        );
        let e = parse_time_at("yesterday", now).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn resources_are_a_type_with_or_without_an_id() {
        assert_eq!(
            parse_resource("Observation/123"),
            Ok(ResourceRef {
                resource_type: "Observation".into(),
                id: Some("123".into())
            })
        );
        assert_eq!(parse_resource("Patient").unwrap().id, None);
        assert!(parse_resource("observation/1").is_err());
        assert!(parse_resource("Observation/a b").is_err());
        assert!(parse_resource("Observation/").is_err());
    }
}
