//! Hook filters: jq expressions run with the jaq crates.
//!
//! Rule: a filter matches a resource when **any** of its outputs is truthy
//! (neither `false` nor `null`). A filter that raises an error on a resource
//! is a non-match; the caller counts it on the hook's status.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data::JustLut, unwrap_valr};
use jaq_json::Val;

type JaqFilter = jaq_core::Filter<JustLut<Val>>;

/// A resource in the form filters read; parse once, run every hook's filter on it.
pub type Resource = Val;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{0}")]
    Compile(String),
    #[error("filter error: {0}")]
    Runtime(String),
    #[error("resource is not valid JSON: {0}")]
    Input(String),
}

pub struct Filter {
    code: String,
    compiled: JaqFilter,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter").field("code", &self.code).finish()
    }
}

/// Parses resource JSON into the value filters run on.
pub fn parse_resource(json: &str) -> Result<Resource, FilterError> {
    serde_json::from_str(json).map_err(|e| FilterError::Input(e.to_string()))
}

impl Filter {
    pub fn compile(code: &str) -> Result<Filter, FilterError> {
        check_size(code).map_err(FilterError::Compile)?;
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errs| FilterError::Compile(describe_load_errors(errs)))?;
        let compiled = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let names: Vec<String> = errs
                    .into_iter()
                    .flat_map(|(_, undef)| undef)
                    .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                    .collect();
                FilterError::Compile(names.join(", "))
            })?;
        Ok(Filter {
            code: code.to_string(),
            compiled,
        })
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// True when any output is truthy.
    pub fn matches(&self, resource: &Resource) -> Result<bool, FilterError> {
        let ctx = Ctx::<JustLut<Val>>::new(&self.compiled.lut, Vars::new([]));
        for out in self.compiled.id.run((ctx, resource.clone())) {
            let v = unwrap_valr(out).map_err(|e| FilterError::Runtime(e.to_string()))?;
            if !matches!(v, Val::Null | Val::Bool(false)) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Limits that keep jaq's recursive parser, compiler and evaluator well within
/// a thread's stack. Real filters are far below them.
const MAX_LEN: usize = 8192;
const MAX_OPERATORS: usize = 500;
const MAX_NESTING: usize = 64;

fn check_size(code: &str) -> Result<(), String> {
    if code.len() > MAX_LEN {
        return Err(format!("filter is longer than {MAX_LEN} characters"));
    }
    let (mut depth, mut max_depth, mut ops) = (0usize, 0usize, 0usize);
    let mut chars = code.chars().peekable();
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if word == "and" || word == "or" {
            ops += 1;
        }
        word.clear();
        match c {
            '"' => {
                // Skip the string literal (escapes included).
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '|' | ',' | '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' => ops += 1,
            _ => {}
        }
    }
    if word == "and" || word == "or" {
        ops += 1;
    }
    if max_depth > MAX_NESTING {
        return Err(format!("filter nests deeper than {MAX_NESTING} levels"));
    }
    if ops > MAX_OPERATORS {
        return Err(format!("filter has more than {MAX_OPERATORS} operators"));
    }
    Ok(())
}

fn describe_load_errors(errs: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut parts = Vec::new();
    for (_, e) in errs {
        match e {
            Error::Io(v) => parts.extend(v.into_iter().map(|(p, m)| format!("{p}: {m}"))),
            Error::Lex(v) => parts.extend(
                v.into_iter()
                    .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), snippet(at))),
            ),
            Error::Parse(v) => parts.extend(
                v.into_iter()
                    .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), snippet(at))),
            ),
        }
    }
    parts.join("; ")
}

fn snippet(at: &str) -> &str {
    if at.is_empty() {
        return "end of filter";
    }
    let end = at
        .char_indices()
        .nth(20)
        .map(|(i, _)| i)
        .unwrap_or(at.len());
    &at[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(code: &str) -> Resource {
        parse_resource(&format!(
            r#"{{"resourceType":"Observation","id":"1","interpretation":[{{"coding":[{{"code":"{code}"}}]}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn any_truthy_output_matches() {
        let f = Filter::compile(
            r#".resourceType == "Observation" and any(.interpretation[]?.coding[]?; .code == "HH" or .code == "LL")"#,
        )
        .unwrap();
        assert!(f.matches(&obs("HH")).unwrap());
        assert!(!f.matches(&obs("N")).unwrap());
        // Several outputs: one truthy is enough.
        let multi = Filter::compile(".interpretation[].coding[].code == \"HH\", false").unwrap();
        assert!(multi.matches(&obs("HH")).unwrap());
        // No output at all is a non-match.
        assert!(
            !Filter::compile("empty")
                .unwrap()
                .matches(&obs("HH"))
                .unwrap()
        );
        assert!(
            !Filter::compile("null")
                .unwrap()
                .matches(&obs("HH"))
                .unwrap()
        );
    }

    #[test]
    fn compile_errors_are_readable() {
        let e = Filter::compile(".resourceType ==").unwrap_err().to_string();
        assert!(e.contains("expected"), "{e}");
        let e = Filter::compile("nosuchfn(1)").unwrap_err().to_string();
        assert!(e.contains("undefined filter `nosuchfn`"), "{e}");
    }

    #[test]
    fn oversized_filters_are_refused_before_jaq_sees_them() {
        let deep = format!("{}.{}", "(".repeat(100), ")".repeat(100));
        assert!(
            Filter::compile(&deep)
                .unwrap_err()
                .to_string()
                .contains("nests deeper")
        );
        let long_or = vec![".a == 1"; 400].join(" or ");
        assert!(
            Filter::compile(&long_or)
                .unwrap_err()
                .to_string()
                .contains("operators")
        );
        // Operators inside strings do not count.
        let strings = format!(".code == \"{}\"", "|".repeat(2000));
        assert!(Filter::compile(&strings).is_ok());
    }

    #[test]
    fn runtime_errors_are_errors_not_panics() {
        let f = Filter::compile(".id + 1").unwrap();
        assert!(matches!(
            f.matches(&obs("HH")),
            Err(FilterError::Runtime(_))
        ));
    }

    #[test]
    fn filters_are_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Filter>();
        assert_send_sync::<Resource>();
    }
}
