//! What a poll tells the operator besides success or failure.

/// Per-entry notes of one poll, for the target's status: entries skipped,
/// entries from the future, and the last thing worth telling the operator.
#[derive(Debug, Default)]
pub(super) struct Notes {
    pub skipped: u64,
    pub future: u64,
    pub last: Option<String>,
    /// Pages fetched and resources read (for metrics), kept when the poll fails.
    pub pages: u64,
    pub resources: u64,
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

    pub fn page(&mut self, resources: u64) {
        self.pages += 1;
        self.resources += resources;
    }

    pub fn warn(&mut self, note: String) {
        self.last = Some(note);
    }
}
