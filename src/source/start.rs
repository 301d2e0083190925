//! Where a target's first poll starts (the source's `start`), and asking the
//! server for its clock, which `start = "now"` and a bounded poll need.

use super::commit::Committer;
use super::errors::PollError;
use super::fetch::Fetcher;
use super::strategy::search_url;
use crate::config::Start;
use crate::fhir::bundle::parse_page;
use crate::fhir::format_instant;
use crate::state::{TargetKey, TargetState};

/// The longest `start = "now"` waits for the server's clock to pass the start
/// (about a second and a round trip, on a server that tells only a `Date`).
const MAX_START_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks the server for its current time (a one-result search): for
/// `start = "now"`, and to learn the clock before the first bounded poll.
pub(super) async fn probe_server_time(
    fetcher: &Fetcher<'_>,
    key: &TargetKey,
) -> Result<(), PollError> {
    let rt = key.resource_type.as_str();
    let mut url = search_url(fetcher.source, rt, None, None);
    // A per-patient target asks about its patient: some EHRs (Cerner)
    // refuse a clinical search without one.
    match &key.patient {
        None => url.set_query(Some("_count=1")),
        Some(p) => {
            let param = if rt == "Patient" { "_id" } else { "patient" };
            url.set_query(None);
            url.query_pairs_mut()
                .append_pair(param, p)
                .append_pair("_count", "1");
        }
    }
    let fetch_err = |error| PollError::Fetch {
        resource_type: rt.to_string(),
        page: 1,
        error,
    };
    let fetched = fetcher.fetch(&url).await.map_err(fetch_err)?;
    let page = parse_page(&fetched.body).map_err(|error| PollError::Bundle {
        resource_type: rt.to_string(),
        page: 1,
        error,
    })?;
    let told = fetcher
        .client
        .note_response(&fetched.exchange, fetched.date, page.server_time)
        .map_err(|error| PollError::Clock {
            resource_type: rt.to_string(),
            error,
        })?;
    if !told {
        return Err(PollError::NoServerTime {
            resource_type: rt.to_string(),
        });
    }
    Ok(())
}

/// First poll of a target: fix where it starts.
pub(super) async fn initialize(
    fetcher: &Fetcher<'_>,
    committer: &Committer<'_>,
    key: &TargetKey,
) -> Result<TargetState, PollError> {
    let rt = key.resource_type.as_str();
    let (watermark, floor) = match &fetcher.source.start {
        Start::Beginning => (None, None),
        Start::At(t) => (Some(format_instant(*t)), Some(format_instant(*t))),
        Start::Now => {
            // A clock that is not believed fails the poll (on status); the
            // next tick asks again, so a server that recovers starts then.
            probe_server_time(fetcher, key).await?;
            let (start, settle) =
                fetcher
                    .client
                    .start_mark()
                    .ok_or_else(|| PollError::NoServerTime {
                        resource_type: rt.to_string(),
                    })?;
            // The start is the latest the server's clock can read, so
            // nothing written before it is emitted; once the server has
            // surely passed it, everything written is.
            let settle = settle.min(MAX_START_SETTLE);
            fetcher
                .beat
                .expect_within(settle + fetcher.page_allowance());
            tokio::time::sleep(settle).await;
            let now = format_instant(start);
            (Some(now.clone()), Some(now))
        }
    };
    if committer.writes() {
        committer
            .store
            .init_target(committer.fence, key, watermark.clone(), floor.clone())
            .await?;
    }
    Ok(TargetState {
        initialized: true,
        watermark,
        floor,
        reconciled_at_ms: None,
    })
}
