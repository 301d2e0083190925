//! The one-line summary systemd shows (`STATUS=`), as `sqlite/summary.rs`.

use super::PgStore;
use crate::state::{StateError, Summary};

impl PgStore {
    pub async fn summary(&self) -> Result<Summary, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT (SELECT count(*) FROM poll_target),
                        (SELECT count(*) FROM poll_target WHERE consecutive_failures > 0),
                        (SELECT count(*) FROM outbox WHERE state = 'pending'),
                        (SELECT count(*) FROM outbox WHERE state = 'dead')",
            )
            .await?;
        let r = client.query_one(&stmt, &[]).await?;
        Ok(Summary {
            targets: r.try_get(0)?,
            failing_targets: r.try_get(1)?,
            pending: r.try_get(2)?,
            dead: r.try_get(3)?,
        })
    }
}
