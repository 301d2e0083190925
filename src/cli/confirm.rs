//! Asking before a command changes the outbox (`dlq redrive`, `dlq purge`,
//! `replay`). Only a person at a terminal is asked: a script or a pipe
//! proceeds as before this prompt existed (refusing would break them), and
//! every such command prints what it did.

use std::io::{BufRead, IsTerminal, Write};

/// Whether to go ahead with `what` ("Requeue 3 dead letter(s)"): yes when
/// `assume_yes` (`--yes`) or stdin is not a terminal; else the answer to a
/// `[y/N]` question on stderr.
pub fn proceed(what: &str, assume_yes: bool) -> std::io::Result<bool> {
    if assume_yes || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{what}? [y/N] ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(is_yes(&line))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_yes_is_yes() {
        for a in ["y\n", "Y", " yes \n", "YES"] {
            assert!(super::is_yes(a), "{a:?}");
        }
        for a in ["", "\n", "n", "no", "yess", "oui"] {
            assert!(!super::is_yes(a), "{a:?}");
        }
    }
}
