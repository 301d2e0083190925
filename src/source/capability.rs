//! What the server's CapabilityStatement says about the searches a source
//! relies on. A server silently ignores a search parameter it does not know:
//! `_lastUpdated` ignored means every poll reads the whole type. The bridge
//! warns at start (and on the target's status) instead of finding out later.

use super::fetch::Fetcher;
use crate::config::Strategy;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
struct Capability {
    #[serde(default)]
    rest: Vec<Rest>,
}

#[derive(Deserialize)]
struct Rest {
    #[serde(default)]
    resource: Vec<Resource>,
    /// Parameters every type supports.
    #[serde(default, rename = "searchParam")]
    search_param: Vec<Param>,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default, rename = "searchParam")]
    search_param: Vec<Param>,
}

#[derive(Deserialize)]
struct Param {
    name: Option<String>,
}

/// Per `last-updated` type whose `_lastUpdated` the CapabilityStatement does
/// not list: the warning to show. Empty when the statement cannot be read
/// (many servers answer `metadata` slowly or not at all: not an error). The
/// request goes through the source's `fetch`: a 429/503 with `Retry-After`
/// pauses the source like any poll's.
pub(super) async fn last_updated_warnings(fetcher: &Fetcher<'_>) -> HashMap<String, String> {
    let source = fetcher.source;
    let types: Vec<&String> = source
        .resources
        .iter()
        .filter(|t| source.strategies.for_type(t) == Strategy::LastUpdated)
        .collect();
    if types.is_empty() {
        return HashMap::new();
    }
    let Ok(url) = source.base_url.join("metadata") else {
        return HashMap::new();
    };
    let body = match fetcher.fetch(&url).await {
        Ok(f) => f.body,
        Err(e) => {
            tracing::debug!(source = %source.name, error = %e, "no CapabilityStatement");
            return HashMap::new();
        }
    };
    missing_last_updated(&body, &types)
}

fn missing_last_updated(body: &[u8], types: &[&String]) -> HashMap<String, String> {
    let Ok(cap) = serde_json::from_slice::<Capability>(body) else {
        return HashMap::new();
    };
    let lists = |params: &[Param]| {
        params
            .iter()
            .any(|p| p.name.as_deref() == Some("_lastUpdated"))
    };
    let everywhere = cap.rest.iter().any(|r| lists(&r.search_param));
    if everywhere {
        return HashMap::new();
    }
    types
        .iter()
        // Only a type the statement describes: one it does not mention says
        // nothing either way (many statements list no search parameters).
        .filter(|t| {
            let described: Vec<&Resource> = cap
                .rest
                .iter()
                .flat_map(|r| &r.resource)
                .filter(|r| r.kind.as_deref() == Some(t.as_str()))
                .collect();
            !described.is_empty()
                && described.iter().any(|r| !r.search_param.is_empty())
                && !described.iter().any(|r| lists(&r.search_param))
        })
        .map(|t| {
            let warning = format!(
                "{t}: the server's CapabilityStatement does not list `_lastUpdated` for {t}: \
                 if it ignores it, every poll reads every {t}; consider strategy = \"history\""
            );
            (t.to_string(), warning)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_without_last_updated_are_named() {
        let (obs, enc) = ("Observation".to_string(), "Encounter".to_string());
        let types = [&obs, &enc];
        let cap = br#"{"resourceType":"CapabilityStatement","rest":[{"resource":[
            {"type":"Observation","searchParam":[{"name":"_lastUpdated"},{"name":"code"}]},
            {"type":"Encounter","searchParam":[{"name":"patient"}]}]}]}"#;
        let w = missing_last_updated(cap, &types);
        assert_eq!(w.keys().collect::<Vec<_>>(), [&"Encounter".to_string()]);
        assert!(w["Encounter"].contains("does not list `_lastUpdated`"));
        let common = br#"{"rest":[{"searchParam":[{"name":"_lastUpdated"}],"resource":[]}]}"#;
        assert!(missing_last_updated(common, &types).is_empty());
        assert!(missing_last_updated(b"<html>", &types).is_empty());
        // A statement that says nothing about a type's searches says nothing.
        let silent = br#"{"rest":[{"resource":[{"type":"Encounter"}]}]}"#;
        assert!(missing_last_updated(silent, &types).is_empty());
        assert!(
            missing_last_updated(br#"{"resourceType":"CapabilityStatement"}"#, &types).is_empty()
        );
    }
}
