//! What a source's or hook's configuration is made of, as one digest: the
//! text of its table and the content of every secret and file it read (a
//! rotated secret file or a renewed certificate changes it, although the
//! TOML did not). A reload restarts exactly the components whose digest
//! changed. The digest is compared, never shown.

use std::cell::RefCell;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint([u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

thread_local! {
    /// The measurements under way (validation runs on one thread, one
    /// component at a time; a part of it may be measured on its own too).
    static READ: RefCell<Vec<aws_lc_rs::digest::Context>> = const { RefCell::new(Vec::new()) };
}

/// Adds what a secret or file read to every measurement under way.
pub(super) fn record(bytes: &[u8]) {
    READ.with(|r| {
        for ctx in r.borrow_mut().iter_mut() {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        }
    });
}

/// Runs `validate` for one component whose table reads `table_text`, and
/// returns its result with the component's fingerprint. Measurements nest:
/// what is read inside an inner one counts for the outer one too.
pub(super) fn measure<T>(table_text: &str, validate: impl FnOnce() -> T) -> (T, Fingerprint) {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&(table_text.len() as u64).to_le_bytes());
    ctx.update(table_text.as_bytes());
    let depth = READ.with(|r| {
        let mut r = r.borrow_mut();
        r.push(ctx);
        r.len()
    });
    let out = validate();
    let ctx = READ.with(|r| {
        let mut r = r.borrow_mut();
        // Ours is the last one (an inner measurement that panicked left its own).
        r.truncate(depth);
        r.pop()
    });
    let mut digest = [0u8; 32];
    if let Some(ctx) = ctx {
        digest.copy_from_slice(ctx.finish().as_ref());
    }
    (out, Fingerprint(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_what_it_read_both_count() {
        let (_, a) = measure("name = 'x'", || record(b"secret-1"));
        let (_, b) = measure("name = 'x'", || record(b"secret-1"));
        let (_, c) = measure("name = 'x'", || record(b"secret-2"));
        let (_, d) = measure("name = 'y'", || record(b"secret-1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        // Nested: the inner one sees its own text and what was read in it;
        // the outer one sees that too.
        let ((_, inner), outer) = measure("name = 'x'", || measure("url", || record(b"s-1")));
        let ((_, inner2), outer2) = measure("name = 'x'", || measure("url", || record(b"s-2")));
        let (_, alone) = measure("url", || record(b"s-1"));
        assert_eq!(inner, alone);
        assert_ne!(inner, inner2);
        assert_ne!(outer, outer2);
        let (_, flat) = measure("name = 'x'", || record(b"s-1"));
        assert_eq!(outer, flat, "the same text and reads");
        // Outside a measurement, nothing is recorded (and nothing breaks).
        record(b"ignored");
        assert_eq!(format!("{a:?}"), "Fingerprint(..)");
    }
}
