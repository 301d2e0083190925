//! Hook filters: jq expressions run with the jaq crates.
//!
//! Rule: a filter matches a resource when **any** of its outputs is truthy
//! (neither `false` nor `null`). A filter that raises an error on a resource
//! is a non-match; the caller counts it on the hook's status.
//!
//! Each evaluation (one hook, one resource) runs on a [`budget`]: steps, time,
//! memory and native stack. Going over it is a [`FilterError::Budget`] for
//! that resource, not a hang or a crash. What the budget cannot reach (jaq's
//! native code on values that share or nest deeply) is listed in the README
//! (`filter` key) and in `natives.rs`.

mod alloc;
pub mod budget;
mod natives;
#[cfg(test)]
mod previous_tests;
mod stack;
#[cfg(test)]
mod tests;
pub mod topics;

use budget::{Budget, Data, Exceeded, Fueled, Limits, Stop};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::Val;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicBool;

pub use stack::with_eval_stack;

type JaqFilter = jaq_core::Filter<Fueled>;

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
    #[error("filter exceeded its budget: {0}")]
    Budget(Exceeded),
    /// The cancellation flag was set during the evaluation.
    #[error("filter evaluation cancelled")]
    Cancelled,
}

/// A compiled filter: one or more jq programs that must all match (a hook's
/// `topic` and its `filter`). Each sees the resource as `.` and, if it refers
/// to it, the resource's previous version as `$previous`.
pub struct Filter {
    code: String,
    parts: Vec<Part>,
}

struct Part {
    compiled: JaqFilter,
    /// Compiled with the global `$previous` (it refers to it).
    uses_previous: bool,
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

/// The name of the global variable holding the previous version.
const PREVIOUS: &str = "$previous";

/// Why one compilation failed: the program does not parse, or names
/// something undefined (a variable among them, maybe `$previous`).
enum Build {
    Load(String),
    Undefined(String),
}

fn build(code: &str, globals: &[&'static str]) -> Result<JaqFilter, Build> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .chain(natives::defs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|errs| Build::Load(describe_load_errors(errs)))?;
    Compiler::default()
        .with_funs(natives::funs())
        .with_global_vars(globals.iter().copied())
        .compile(modules)
        .map_err(|errs| {
            let names: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, undef)| undef)
                .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                .collect();
            Build::Undefined(names.join(", "))
        })
}

impl Filter {
    pub fn compile(code: &str) -> Result<Filter, FilterError> {
        check_size(code).map_err(FilterError::Compile)?;
        // Compiled without `$previous` first: it compiles only if the program
        // never refers to the global (a local `. as $previous` is its own), so
        // `uses_previous` is the compiler's knowledge, not a text search.
        let (compiled, uses_previous) = match build(code, &[]) {
            Ok(f) => (f, false),
            Err(Build::Load(e)) => return Err(FilterError::Compile(e)),
            Err(Build::Undefined(_)) => match build(code, &[PREVIOUS]) {
                Ok(f) => (f, true),
                Err(Build::Load(e) | Build::Undefined(e)) => return Err(FilterError::Compile(e)),
            },
        };
        Ok(Filter {
            code: code.to_string(),
            parts: vec![Part {
                compiled,
                uses_previous,
            }],
        })
    }

    /// A filter that matches when both `self` and `other` match (each with
    /// some truthy output), `self` evaluated first.
    pub fn and(mut self, other: Filter) -> Filter {
        self.code = format!("({}) and ({})", self.code, other.code);
        self.parts.extend(other.parts);
        self
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// Whether the filter refers to `$previous` (so the bridge must keep the
    /// last body of the resources it runs on).
    pub fn uses_previous(&self) -> bool {
        self.parts.iter().any(|p| p.uses_previous)
    }

    /// True when any output is truthy. Runs on the default [`budget`], with
    /// `$previous` null.
    pub fn matches(&self, resource: &Resource) -> Result<bool, FilterError> {
        self.matches_with(resource, &AtomicBool::new(false))
    }

    /// [`Filter::matches`], stopping with [`FilterError::Cancelled`] soon
    /// (within about a thousand steps) after `cancel` becomes true.
    pub fn matches_with(
        &self,
        resource: &Resource,
        cancel: &AtomicBool,
    ) -> Result<bool, FilterError> {
        self.matches_change(resource, &Val::Null, cancel)
    }

    /// [`Filter::matches_with`] with `$previous` bound to `previous` (`null`
    /// when there is none).
    pub fn matches_change(
        &self,
        resource: &Resource,
        previous: &Resource,
        cancel: &AtomicBool,
    ) -> Result<bool, FilterError> {
        self.matches_within(resource, previous, cancel, Limits::default())
    }

    /// [`Filter::matches_change`] on the given limits.
    pub(crate) fn matches_within(
        &self,
        resource: &Resource,
        previous: &Resource,
        cancel: &AtomicBool,
        limits: Limits,
    ) -> Result<bool, FilterError> {
        with_eval_stack(|| self.evaluate(resource, previous, cancel, limits))
    }

    fn evaluate(
        &self,
        resource: &Resource,
        previous: &Resource,
        cancel: &AtomicBool,
        limits: Limits,
    ) -> Result<bool, FilterError> {
        // Created here, on the evaluation's stack: it measures depth from here.
        // One budget for all parts: a hook's evaluation costs what one would.
        let budget = Budget::new(limits, cancel);
        let accounting = alloc::Accounting::start();
        // Every value of the evaluation is dropped inside: a budget stop
        // unwinds through jaq's frames and frees what they held.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            for part in &self.parts {
                if !part.run(resource, previous, &budget)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }));
        drop(accounting);
        match outcome {
            Ok(result) => result,
            Err(payload) => Err(match payload.downcast::<Stop>() {
                Ok(stop) => match *stop {
                    Stop::Exceeded(e) => FilterError::Budget(e),
                    Stop::Cancelled => FilterError::Cancelled,
                },
                // A bug in jaq (or ours); the panic hook has logged it.
                Err(_) => FilterError::Runtime("filter panicked".into()),
            }),
        }
    }
}

impl Part {
    fn run(
        &self,
        resource: &Resource,
        previous: &Resource,
        budget: &Budget,
    ) -> Result<bool, FilterError> {
        let vars = if self.uses_previous {
            Vars::new([previous.clone()])
        } else {
            Vars::new([])
        };
        let ctx = Ctx::<Fueled>::new(Data::new(&self.compiled.lut, budget), vars);
        for out in self.compiled.id.run((ctx, resource.clone())) {
            match out {
                Ok(Val::Null | Val::Bool(false)) => {}
                Ok(_) => return Ok(true),
                // Not `jaq_core::unwrap_valr`: it exits the process on `halt`.
                Err(exn) => {
                    return Err(FilterError::Runtime(match exn.get_err() {
                        Ok(e) => bounded_display(&e, MAX_ERROR_LEN),
                        Err(_) => "halt is not allowed in a filter".into(),
                    }));
                }
            }
        }
        Ok(false)
    }
}

/// How much of a runtime error's message is kept: its value may be huge.
const MAX_ERROR_LEN: usize = 300;

/// `x.to_string()`, cut after `max` bytes without rendering the rest (a value
/// shared many times over can render to far more than memory holds).
fn bounded_display(x: &impl std::fmt::Display, max: usize) -> String {
    struct Bounded {
        out: String,
        max: usize,
    }
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.max - self.out.len();
            if s.len() <= room {
                self.out.push_str(s);
                return Ok(());
            }
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.out.push_str(&s[..cut]);
            Err(std::fmt::Error)
        }
    }
    let mut b = Bounded {
        out: String::new(),
        max,
    };
    if std::fmt::write(&mut b, format_args!("{x}")).is_err() {
        b.out.push_str("...");
    }
    b.out
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
