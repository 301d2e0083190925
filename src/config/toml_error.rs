//! TOML syntax and type errors, reworded to name the key they concern.
//!
//! `toml` reports a type error as `invalid type: string "ten", expected u32`
//! and a repeated key as `duplicate key`, with a span but without the key
//! (its key path is private and only shown when no source text is attached).
//! The key is recovered here from the document: the key whose value (or
//! name) the span points into, or, for a syntax error, the key or table
//! header on the span's line.

use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The message to show for a `toml` error: `` `page_size`: invalid type: ... ``,
/// or the message alone when it names its key already or no key applies.
pub fn message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    // serde's own messages for these name the key: "unknown field `x`, expected ...".
    if message.starts_with("unknown field") || message.starts_with("missing field") {
        return message.to_string();
    }
    match e.span().and_then(|span| key_at(text, span, message)) {
        Some(key) => format!("`{key}`: {message}"),
        None => message.to_string(),
    }
}

/// The key an error at `span` is about, as the operator wrote it below its
/// `[[source]]`/`[[hook]]` table: `page_size`, `params.Observation`, `state_dir`.
fn key_at(text: &str, span: Range<usize>, message: &str) -> Option<String> {
    match DeTable::parse(text) {
        Ok(root) => {
            let mut path = Vec::new();
            let mut best = None;
            find_in_table(root.get_ref(), span.start, &mut path, &mut best);
            best.map(|(path, _)| display_path(&path))
        }
        // A syntax error, including a key given twice: the document has no
        // tree to search, but the line does.
        Err(_) => key_on_line(text, span, message),
    }
}

/// The deepest key whose name or value contains `pos`; deeper wins.
fn find_in_table(
    table: &DeTable<'_>,
    pos: usize,
    path: &mut Vec<String>,
    best: &mut Option<(Vec<String>, usize)>,
) {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if contains(key.span(), pos) || contains(value.span(), pos) {
            let deeper = best.as_ref().is_none_or(|(_, depth)| path.len() > *depth);
            if deeper {
                *best = Some((path.clone(), path.len()));
            }
        }
        find_in_value(value, pos, path, best);
        path.pop();
    }
}

fn find_in_value(
    value: &Spanned<DeValue<'_>>,
    pos: usize,
    path: &mut Vec<String>,
    best: &mut Option<(Vec<String>, usize)>,
) {
    match value.get_ref() {
        DeValue::Table(t) => find_in_table(t, pos, path, best),
        // Array elements add no key: `retry_schedule`, not `retry_schedule[1]`.
        DeValue::Array(items) => {
            for item in items.iter() {
                find_in_value(item, pos, path, best);
            }
        }
        _ => {}
    }
}

fn contains(span: Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// `source.page_size` is shown as `page_size`: the line already says which
/// source, and the other messages name keys relative to their table too.
fn display_path(path: &[String]) -> String {
    let rel = match path {
        [first, rest @ ..] if !rest.is_empty() && (first == "source" || first == "hook") => rest,
        all => all,
    };
    rel.join(".")
}

/// For a syntax error: the table header on the error's line (`[source.params]`),
/// the key given twice (the span is the key), or the key before `=`.
fn key_on_line(text: &str, span: Range<usize>, message: &str) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text
        .get(..start)
        .map_or(0, |before| before.rfind('\n').map_or(0, |i| i + 1));
    let line_end = text.get(start..).map_or(text.len(), |after| {
        start + after.find('\n').unwrap_or(after.len())
    });
    let line = text.get(line_start..line_end)?.trim();
    if line.starts_with('[') {
        let inner = line.trim_start_matches('[');
        let name = inner.split(']').next()?.trim();
        let brackets = &line[..line.len() - inner.len()];
        return (!name.is_empty())
            .then(|| format!("{brackets}{name}{}", "]".repeat(brackets.len())));
    }
    if message == "duplicate key"
        && let Some(key) = text.get(span).map(str::trim).filter(|k| !k.is_empty())
    {
        return Some(unquote(key));
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plausible = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.\"' ".contains(c));
    plausible.then(|| unquote(key))
}

fn unquote(key: &str) -> String {
    let quoted = key.len() >= 2
        && ((key.starts_with('"') && key.ends_with('"'))
            || (key.starts_with('\'') && key.ends_with('\'')));
    if quoted {
        key[1..key.len() - 1].to_string()
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> String {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Source {
            page_size: Option<u32>,
            resources: Option<Vec<String>>,
            params: Option<std::collections::BTreeMap<String, String>>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Doc {
            state_dir: Option<String>,
            #[serde(default)]
            source: Vec<Source>,
        }
        let e = toml::from_str::<Doc>(text).unwrap_err();
        message(text, &e)
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_eq!(
            msg("[[source]]\npage_size = \"ten\"\n"),
            "`page_size`: invalid type: string \"ten\", expected u32"
        );
        assert_eq!(
            msg("state_dir = 1\n"),
            "`state_dir`: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            msg("[[source]]\nresources = [\n  \"Patient\",\n  5,\n]\n"),
            "`resources`: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            msg("[[source]]\n[source.params]\nPatient = 5\n"),
            "`params.Patient`: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            msg("source = 5\n"),
            "`source`: invalid type: integer `5`, expected a sequence"
        );
    }

    #[test]
    fn syntax_errors_name_the_key_or_table() {
        assert_eq!(
            msg("[[source]]\npage_size = 1\npage_size = 2\n"),
            "`page_size`: duplicate key"
        );
        assert_eq!(
            msg("[[source]]\n[source.params]\n[source.params]\n"),
            "`[source.params]`: duplicate key"
        );
        assert!(msg("state_dir = \n").starts_with("`state_dir`: "));
        // No key on the line: the message alone.
        assert!(!msg("x = [\n1,\n").starts_with('`'));
    }
}
