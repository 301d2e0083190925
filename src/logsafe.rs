//! Text from outside (error messages of servers and libraries, values read
//! from EHRs) on its way into logs and status: control characters are escaped
//! so nothing can forge a log line or colour a terminal, and the length is
//! bounded.

/// Longer text is cut (with a marker): a log line, not a dump.
const MAX_CHARS: usize = 300;

/// `text` with control characters (newlines, ESC, ...) shown as `\n`,
/// `\u{1b}` and the like, cut to a few hundred characters.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_CHARS));
    for (n, c) in text.chars().enumerate() {
        if n == MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_length_bounded() {
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(
            escape("x\n2026-01-01 INFO forged\u{1b}[31m"),
            "x\\n2026-01-01 INFO forged\\u{1b}[31m"
        );
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        let long = "a".repeat(1000);
        assert_eq!(escape(&long).len(), MAX_CHARS + 3);
        assert_eq!(escape("é ü"), "é ü");
    }
}
