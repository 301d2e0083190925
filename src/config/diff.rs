//! What a reload changes: sources and hooks added, removed and changed (by
//! fingerprint), as vector's `config/diff.rs`. Everything else keeps running.

use super::Config;
use std::collections::BTreeSet;

/// Names added, removed and changed for one kind of component.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub added: BTreeSet<String>,
    pub removed: BTreeSet<String>,
    pub changed: BTreeSet<String>,
}

impl Delta {
    fn between<'a>(
        old: impl Iterator<Item = (&'a str, super::Fingerprint)>,
        new: impl Iterator<Item = (&'a str, super::Fingerprint)>,
    ) -> Delta {
        let old: std::collections::BTreeMap<_, _> = old.collect();
        let new: std::collections::BTreeMap<_, _> = new.collect();
        let mut d = Delta::default();
        for (name, fp) in &new {
            match old.get(name) {
                None => {
                    d.added.insert(name.to_string());
                }
                Some(before) if before != fp => {
                    d.changed.insert(name.to_string());
                }
                Some(_) => {}
            }
        }
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            d.removed.insert(name.to_string());
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Whether `name` must be (re)started: added or changed.
    pub fn starts(&self, name: &str) -> bool {
        self.added.contains(name) || self.changed.contains(name)
    }

    /// Whether `name` must be stopped: removed or changed.
    pub fn stops(&self, name: &str) -> bool {
        self.removed.contains(name) || self.changed.contains(name)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigDiff {
    pub sources: Delta,
    pub hooks: Delta,
    /// Changed hooks whose endpoint changed (`Hook::endpoint`): their
    /// pending messages are due at once, not after the old one's backoff.
    pub endpoints: BTreeSet<String>,
    /// `retention` changed (housekeeping restarts).
    pub retention: bool,
    /// `[admin] listen` changed: applied at the next restart only (the
    /// listener keeps its socket).
    pub admin: bool,
    /// `[admin] token` changed: `$events` checks the new one from now on.
    pub admin_token: bool,
}

/// Why a new config cannot be applied by a reload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NeedsRestart {
    #[error("`state_dir` changed ({old} -> {new}): that needs a restart, not a reload")]
    StateDir { old: String, new: String },
    #[error("`[state]` changed: that needs a restart, not a reload")]
    State,
    /// A source gone and one added on the same server, with a resource type
    /// in common: a reload
    /// would start the new name from `start` and orphan the old one's
    /// watermarks, seen versions and pending messages.
    #[error(
        "source `{old}` looks renamed to `{new}` (same base_url, resources in common): a reload would \
         start `{new}` afresh (losing or re-sending changes) and orphan `{old}`'s state; stop the \
         daemon, run `fhir-bridge source rename {old} {new}`, then start it. To start `{new}` \
         afresh on purpose, remove `{old}` in one reload and add `{new}` in the next"
    )]
    Rename { old: String, new: String },
}

/// The first source of `old` missing from `new` that has the base URL of a
/// source only `new` has, and a resource type in common with it (a rename
/// that also adds or drops a type still re-keys the types they share).
fn looks_renamed(old: &Config, new: &Config) -> Option<(String, String)> {
    let named = |c: &Config, name: &str| c.sources.iter().any(|s| s.name == name);
    let shares_a_type =
        |a: &super::Source, b: &super::Source| a.resources.iter().any(|t| b.resources.contains(t));
    old.sources
        .iter()
        .filter(|o| !named(new, &o.name))
        .find_map(|o| {
            new.sources
                .iter()
                .filter(|n| !named(old, &n.name))
                .find(|n| n.base_url == o.base_url && shares_a_type(n, o))
                .map(|n| (o.name.clone(), n.name.clone()))
        })
}

impl ConfigDiff {
    pub fn between(old: &Config, new: &Config) -> Result<ConfigDiff, NeedsRestart> {
        if old.state_dir != new.state_dir {
            return Err(NeedsRestart::StateDir {
                old: old.state_dir.display().to_string(),
                new: new.state_dir.display().to_string(),
            });
        }
        if old.state != new.state {
            return Err(NeedsRestart::State);
        }
        if let Some((from, to)) = looks_renamed(old, new) {
            return Err(NeedsRestart::Rename { old: from, new: to });
        }
        Ok(ConfigDiff {
            sources: Delta::between(
                old.sources.iter().map(|s| (s.name.as_str(), s.fingerprint)),
                new.sources.iter().map(|s| (s.name.as_str(), s.fingerprint)),
            ),
            hooks: Delta::between(
                old.hooks.iter().map(|h| (h.name.as_str(), h.fingerprint)),
                new.hooks.iter().map(|h| (h.name.as_str(), h.fingerprint)),
            ),
            endpoints: new
                .hooks
                .iter()
                .filter(|h| {
                    old.hooks
                        .iter()
                        .any(|o| o.name == h.name && o.endpoint != h.endpoint)
                })
                .map(|h| h.name.clone())
                .collect(),
            retention: old.retention != new.retention,
            admin: old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen),
            admin_token: old.admin.as_ref().and_then(|a| a.token.as_ref())
                != new.admin.as_ref().and_then(|a| a.token.as_ref()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.hooks.is_empty() && !self.retention && !self.admin_token
    }

    /// One line for the log and `STATUS=`.
    pub fn summary(&self) -> String {
        let part = |kind: &str, d: &Delta| {
            format!(
                "{kind} +{} -{} ~{}",
                d.added.len(),
                d.removed.len(),
                d.changed.len()
            )
        };
        format!(
            "{}, {}{}",
            part("sources", &self.sources),
            part("hooks", &self.hooks),
            if self.admin_token {
                ", admin token"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[[source]]
name = "a"
base_url = "http://127.0.0.1:1/fhir"
resources = ["Observation"]

[[source]]
name = "b"
base_url = "http://127.0.0.1:2/fhir"
resources = ["Observation"]

[[hook]]
name = "h1"
url = "http://127.0.0.1:3/h1"

[[hook]]
name = "h2"
url = "http://127.0.0.1:3/h2"
filter = "true"
"#;

    fn load(text: &str) -> Config {
        Config::from_str(text, Path::new("/etc/fhir-bridge/bridges.toml")).unwrap()
    }

    #[test]
    fn unchanged_tables_are_not_changes_even_when_lines_move() {
        let old = load(BASE);
        // The same tables further down, hooks first, with other spacing.
        let (sources, hooks) = BASE.split_at(BASE.find("[[hook]]").unwrap());
        let moved = format!("# moved\n\n{hooks}\n\n{}", sources.replace(" = ", "="));
        assert!(ConfigDiff::between(&old, &load(&moved)).unwrap().is_empty());
    }

    #[test]
    fn added_removed_and_changed() {
        let old = load(BASE);
        let new = load(
            &BASE
                .replace("http://127.0.0.1:2/fhir", "http://127.0.0.1:22/fhir")
                .replace("name = \"h1\"", "name = \"h3\"")
                .replace("filter = \"true\"", "filter = \".status == \\\"final\\\"\""),
        );
        let d = ConfigDiff::between(&old, &new).unwrap();
        assert_eq!(d.sources.changed, ["b".to_string()].into());
        assert!(d.sources.added.is_empty() && d.sources.removed.is_empty());
        assert_eq!(d.hooks.added, ["h3".to_string()].into());
        assert_eq!(d.hooks.removed, ["h1".to_string()].into());
        assert_eq!(d.hooks.changed, ["h2".to_string()].into());
        assert!(d.hooks.starts("h3") && d.hooks.stops("h1") && d.hooks.starts("h2"));
        assert_eq!(d.summary(), "sources +0 -0 ~1, hooks +1 -1 ~1");
    }

    #[test]
    fn a_rotated_secret_file_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "one").unwrap();
        let text = format!(
            "{BASE}[hook.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = {{ file = \"{}\" }}\n",
            secret.display()
        );
        let old = load(&text);
        assert!(ConfigDiff::between(&old, &load(&text)).unwrap().is_empty());
        std::fs::write(&secret, "two").unwrap();
        let d = ConfigDiff::between(&old, &load(&text)).unwrap();
        assert_eq!(d.hooks.changed, ["h2".to_string()].into());
    }

    /// A changed URL, header, auth or secret is a changed endpoint; a
    /// changed filter or retry schedule is not.
    #[test]
    fn endpoint_changes_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "one").unwrap();
        let text = format!(
            "{BASE}[hook.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = {{ file = \"{}\" }}\n",
            secret.display()
        );
        let old = load(&text);
        let endpoints = |new: &str| ConfigDiff::between(&old, &load(new)).unwrap().endpoints;
        let none = BTreeSet::new();
        let h1: BTreeSet<String> = ["h1".to_string()].into();
        let h2: BTreeSet<String> = ["h2".to_string()].into();
        assert_eq!(endpoints(&text.replace("3/h1", "4/h1")), h1);
        assert_eq!(
            endpoints(&text.replace("username = \"u\"", "username = \"v\"")),
            h2
        );
        assert_eq!(
            endpoints(&text.replace(
                "filter = \"true\"",
                "filter = \"false\"\n[hook.headers]\nX-Key = \"k\""
            )),
            h2
        );
        let d = ConfigDiff::between(
            &old,
            &load(&text.replace("filter = \"true\"", "filter = \"false\"")),
        )
        .unwrap();
        assert_eq!((d.hooks.changed, d.endpoints), (h2.clone(), none.clone()));
        assert_eq!(
            endpoints(&text.replace(
                "url = \"http://127.0.0.1:3/h1\"",
                "url = \"http://127.0.0.1:3/h1\"\nretry_schedule = [\"1h\"]"
            )),
            none
        );
        std::fs::write(&secret, "two").unwrap();
        assert_eq!(endpoints(&text), h2, "a rotated password");
    }

    #[test]
    fn a_new_state_dir_needs_a_restart() {
        let old = load(BASE);
        let new = load(&format!("state_dir = \"/elsewhere\"\n{BASE}"));
        assert!(ConfigDiff::between(&old, &new).is_err());
    }

    /// A careless rename that also adds or drops a type re-keys the types
    /// the two have in common just the same: refused too.
    #[test]
    fn a_rename_that_also_changes_the_types_is_refused() {
        let old = load(BASE);
        for types in [
            "\"Observation\", \"Patient\"",
            "\"Patient\", \"Observation\"",
        ] {
            let renamed = load(&BASE.replace(
                "name = \"b\"\nbase_url = \"http://127.0.0.1:2/fhir\"\nresources = [\"Observation\"]",
                &format!("name = \"b2\"\nbase_url = \"http://127.0.0.1:2/fhir\"\nresources = [{types}]"),
            ));
            assert_eq!(
                ConfigDiff::between(&old, &renamed).unwrap_err(),
                NeedsRestart::Rename {
                    old: "b".into(),
                    new: "b2".into()
                },
                "{types}"
            );
        }
    }

    #[test]
    fn a_rename_by_reload_is_refused_with_the_command() {
        let old = load(BASE);
        let renamed = load(&BASE.replace("name = \"b\"", "name = \"b2\""));
        let e = ConfigDiff::between(&old, &renamed).unwrap_err();
        assert_eq!(
            e,
            NeedsRestart::Rename {
                old: "b".into(),
                new: "b2".into()
            }
        );
        assert!(
            e.to_string().contains("fhir-bridge source rename b b2"),
            "{e}"
        );
        // Another server, or other types: a new source, not a rename.
        for other in [
            BASE.replace("name = \"b\"", "name = \"b2\"")
                .replace("127.0.0.1:2/", "127.0.0.1:9/"),
            BASE.replace("name = \"b\"\nbase_url = \"http://127.0.0.1:2/fhir\"\nresources = [\"Observation\"]",
                "name = \"b2\"\nbase_url = \"http://127.0.0.1:2/fhir\"\nresources = [\"Patient\"]"),
        ] {
            let d = ConfigDiff::between(&old, &load(&other)).unwrap();
            assert_eq!(d.sources.added, ["b2".to_string()].into());
        }
        // Removed in one reload, added in the next: allowed.
        let without_b = load(&BASE.replace(
            "[[source]]\nname = \"b\"\nbase_url = \"http://127.0.0.1:2/fhir\"\nresources = [\"Observation\"]\n",
            "",
        ));
        assert!(ConfigDiff::between(&old, &without_b).is_ok());
        assert!(ConfigDiff::between(&without_b, &renamed).is_ok());
    }
}
