//! The native filters given to jaq: those of jaq-core, jaq-std and jaq-json,
//! with the ones that can run long, or deep, without calling a filter (and so
//! without charging the budget) replaced:
//!
//! - `range/3` charges a step per value it produces (`[range(1e9)]`);
//! - `tojson` charges a step per node it prints, so a value that shares its
//!   parts (`reduce range(40) as $i (0; [., .])`, a trillion nodes in forty
//!   steps) is refused instead of printed, and refuses values nested deeper
//!   than [`MAX_DEPTH`];
//! - `path(f)` and `path_value(f)` (under `paths`, `pick`, `del`, ...) charge a step per path and per path element: `[paths]` of a
//!   value nested N deep builds N paths of up to N elements;
//! - `fromjson` parses with serde_json, which refuses nesting deeper than 128
//!   (jaq-json's parser recurses without a limit: `"[" * 1e6 | fromjson`).

use super::bounded_display;
use super::budget::{Budget, Fueled};
use jaq_core::box_iter::box_once;
use jaq_core::native::{Fun, run, v};
use jaq_core::{Bind, Error, Exn, ValX};
use jaq_json::Val;

/// Deepest value `tojson` prints (jq's own printer stops at 10000 too).
pub const MAX_DEPTH: usize = 10_000;

/// Every native filter, fueled where needed.
pub(crate) fn funs() -> impl Iterator<Item = Fun<Fueled>> {
    let replaced = |name: &str, arity: usize| {
        matches!(
            (name, arity),
            ("range", 3) | ("tojson", 0) | ("fromjson", 0)
        )
    };
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(move |(name, args, _)| !replaced(name, args.len()))
        .chain([range(), tojson(), fromjson(), path(), path_value()])
}

/// Definitions added after jaq's, which they shadow for the user's filter:
/// `tostring` prints through the metered `tojson`; `paths` and `walk` go
/// through `recurse` (a filter call per level: metered, depth-checked)
/// instead of jaq's native `..`, which is quadratic in a value's depth.
/// String interpolation (`"\(.)"`) and `..` itself stay native.
pub(crate) fn defs() -> impl Iterator<Item = jaq_core::load::parse::Def<&'static str>> {
    const DEFS: &str = r#"
        def tostring: if . >= "" and . < [] then "\(.)" else tojson end;
        def paths: skip(1; path(recurse));
        def paths(p): skip(1; path_value(recurse)) | if .[1] | p then .[0] else empty end;
        def walk(f): def w: if . >= [] then map_values(w) else . end | f; w;
    "#;
    jaq_core::load::parse(DEFS, |p| p.defs())
        .into_iter()
        .flatten()
}

/// `range($from; $to; $by)`, one step per value. jaq-core's native version
/// (`[range(1e9)]`) would otherwise run unmetered.
fn range() -> Fun<Fueled> {
    run(("range", v(3), |mut cv| {
        let budget = cv.0.data().budget();
        let by = cv.0.pop_var();
        let to = cv.0.pop_var();
        let from = cv.0.pop_var();
        Box::new(steps(Ok(from), to, by).inspect(move |_| budget.charge(1)))
    }))
}

/// jaq-core's `range` (its `funs.rs`), which it does not export.
fn steps<'a>(mut from: ValX<'a, Val>, to: Val, by: Val) -> impl Iterator<Item = ValX<'a, Val>> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let cmp = by.partial_cmp(&Val::from(0isize)).unwrap_or(Equal);
    std::iter::from_fn(move || match from.clone() {
        Ok(x) => match cmp {
            Greater => x < to,
            Less => x > to,
            Equal => x != to,
        }
        .then(|| std::mem::replace(&mut from, (x + by.clone()).map_err(Exn::from))),
        e @ Err(_) => {
            // Nothing after the error.
            from = Ok(to.clone());
            Some(e)
        }
    })
}

/// jaq-core's `path(f)`, a step per path and per path element.
fn path() -> Fun<Fueled> {
    run(("path", Box::new([Bind::Fun(())]), |mut cv| {
        let budget = cv.0.data().budget();
        let (f, fc) = cv.0.pop_fun();
        Box::new(f.paths((fc, (cv.1, Default::default()))).map(move |vp| {
            let (_v, path) = vp?;
            Ok(collect_path(budget, path.iter().cloned()))
        }))
    }))
}

/// jaq-core's `path_value(f)`: `[path, value]`, metered like [`path`].
fn path_value() -> Fun<Fueled> {
    run(("path_value", Box::new([Bind::Fun(())]), |mut cv| {
        let budget = cv.0.data().budget();
        let (f, fc) = cv.0.pop_fun();
        Box::new(f.paths((fc, (cv.1, Default::default()))).map(move |vp| {
            let (v, path) = vp?;
            Ok([collect_path(budget, path.iter().cloned()), v]
                .into_iter()
                .collect())
        }))
    }))
}

/// A path as jaq keeps it (innermost key first) as an array, charged.
fn collect_path(budget: &Budget, keys: impl Iterator<Item = Val>) -> Val {
    let mut keys: Vec<Val> = keys.inspect(|_| budget.charge(1)).collect();
    budget.charge(1);
    keys.reverse();
    keys.into_iter().collect()
}

fn tojson() -> Fun<Fueled> {
    run(("tojson", v(0), |cv| {
        let budget = cv.0.data().budget();
        box_once(print(&cv.1, budget).map_err(Exn::from))
    }))
}

/// jaq-json's `tojson`, after walking the value once, a step per node.
fn print(x: &Val, budget: &Budget) -> Result<Val, Error<Val>> {
    let mut todo = vec![(x, 0usize)];
    while let Some((x, depth)) = todo.pop() {
        budget.charge(1);
        if depth > MAX_DEPTH {
            return Err(Error::str(format_args!(
                "cannot print a value nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match x {
            Val::Arr(a) => todo.extend(a.iter().map(|y| (y, depth + 1))),
            Val::Obj(o) => {
                todo.extend(o.iter().flat_map(|(k, y)| [(k, depth + 1), (y, depth + 1)]))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    jaq_json::write::write(&mut out, &Default::default(), 0, x)
        .map_err(|e| Error::str(format_args!("cannot print: {e}")))?;
    Ok(Val::utf8_str(out))
}

fn fromjson() -> Fun<Fueled> {
    run(("fromjson", v(0), |cv| {
        let budget = cv.0.data().budget();
        let parsed = match &cv.1 {
            Val::TStr(s) => serde_json::Deserializer::from_slice(s)
                .into_iter::<Val>()
                .map(|r| {
                    budget.charge(1);
                    r.map_err(|e| {
                        let input = bounded_display(&cv.1, 100);
                        Exn::from(Error::str(format_args!(
                            "cannot parse {input} as JSON: {e}"
                        )))
                    })
                })
                .collect::<Vec<_>>(),
            _ => vec![Err(Exn::from(Error::typ(cv.1.clone(), "string")))],
        };
        Box::new(parsed.into_iter())
    }))
}
