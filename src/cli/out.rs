//! Command output that never panics. `println!` panics when stdout is a
//! closed pipe (`status | head -1`) or a full disk; everything the commands
//! print goes through here instead and comes back as an error to handle: a
//! closed pipe ends the command quietly with the exit code it would have
//! had, any other write error is one line on stderr and exit 2.

use std::io::Write;

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct OutputError(#[source] pub std::io::Error);

impl OutputError {
    /// The reader went away (`| head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(OutputError)
}

/// Writes one line to stderr; a failure to do so is ignored (there is
/// nowhere left to report it).
pub fn error_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
    let _ = err.flush();
}
