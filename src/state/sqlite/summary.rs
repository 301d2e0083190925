//! The one-line summary systemd shows (`STATUS=`): cheap counts, read every
//! few seconds.

use super::{SqliteStore, StateError};
use crate::state::Summary;

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
