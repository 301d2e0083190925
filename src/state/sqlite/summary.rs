//! The one-line summary systemd shows (`STATUS=`): cheap counts, read every
//! few seconds.

use super::{SqliteStore, StateError};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub targets: i64,
    pub failing_targets: i64,
    pub pending: i64,
    pub dead: i64,
}

impl SqliteStore {
    pub async fn summary(&self) -> Result<Summary, StateError> {
        self.call(|c| {
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM poll_target),
                        (SELECT COUNT(*) FROM poll_target WHERE consecutive_failures > 0),
                        (SELECT COUNT(*) FROM outbox WHERE state = 'pending'),
                        (SELECT COUNT(*) FROM outbox WHERE state = 'dead')",
                [],
                |r| {
                    Ok(Summary {
                        targets: r.get(0)?,
                        failing_targets: r.get(1)?,
                        pending: r.get(2)?,
                        dead: r.get(3)?,
                    })
                },
            )
        })
        .await
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "targets {} ok / {} failing; {} pending; {} dead letters",
            self.targets - self.failing_targets,
            self.failing_targets,
            self.pending,
            self.dead
        )
    }
}
