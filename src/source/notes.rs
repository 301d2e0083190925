//! What a poll tells the operator besides success or failure.

/// Per-entry notes of one poll, for the target's status: entries skipped,
/// entries from the future, and the last thing worth telling the operator.
#[derive(Debug, Default)]
pub(super) struct Notes {
    pub skipped: u64,
    pub future: u64,
    pub last: Option<String>,
}

impl Notes {
    pub fn skip(&mut self, note: String) {
        self.skipped += 1;
        self.last = Some(note);
    }

    pub fn future(&mut self, n: u64, note: String) {
        self.future += n;
        self.last = Some(note);
    }

    pub fn warn(&mut self, note: String) {
        self.last = Some(note);
    }
}
