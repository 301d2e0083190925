//! One status request of a `bulk-export` job, and what it found: the
//! manifest (usable or not), a wait, or a job the server forgot. Its
//! caller (`job.rs`, `Exporter`) decides what the source's turn does with it.

use super::{MAX_MANIFEST_BYTES, Manifest};
use crate::source::errors::{ExportError, PollError};
use crate::source::fetch::Fetcher;
use crate::source::notes::Notes;
use crate::source::strategy::bulk_export as bulk;
use crate::state::ExportJob;
use reqwest::Method;
use std::time::{Duration, Instant};
use url::Url;

/// What one status request of a job found.
pub(in crate::source) enum StatusCheck {
    /// The manifest, usable: an instant for `transactionTime`, every file on
    /// the source's origins.
    Ready(Manifest),
    /// Still running: ask again after this wait (`Retry-After`, bounded).
    Pending(Duration),
    /// The server no longer knows the job (404/410).
    Gone,
    /// Nothing usable yet: a busy server (429/5xx), no answer, or a manifest
    /// the bridge cannot use. A poll error; the job stays, and this counts
    /// towards `export_timeout` like a job still running. Asked again after
    /// the wait.
    Unusable(PollError, Duration),
}

/// One status request of the job. Its `Date` teaches the server's clock
/// (for the horizon of the manifest's `transactionTime`). An error: the job
/// failed (the caller drops it, and the next poll kicks off a new one).
pub(in crate::source) async fn check_status(
    fetcher: &Fetcher<'_>,
    job: &ExportJob,
    notes: &mut Notes,
) -> Result<StatusCheck, ExportError> {
    let busy = |error: PollError, retry_after| {
        Ok(StatusCheck::Unusable(error, bulk::status_wait(retry_after)))
    };
    // A saved status URL the config no longer allows is not asked: it
    // counts towards `export_timeout` like a job that never answers.
    let Some(job_url) = Url::parse(&job.job_url)
        .ok()
        .filter(|u| fetcher.source.allows(u))
    else {
        return busy(ExportError::ForeignJobUrl.into(), None);
    };
    fetcher.expect_page();
    fetcher.acquire().await;
    let sent = Instant::now();
    let resp = match fetcher.client.send(Method::GET, &job_url, "").await {
        Ok(resp) => resp,
        Err(e) => return busy(ExportError::Status(e).into(), None),
    };
    let received = Instant::now();
    let exchange = crate::source::client::Exchange {
        sent,
        headers_received: received,
        body_received: received,
    };
    if let Err(e) = fetcher
        .client
        .note_response(&exchange, bulk::date(resp.headers()), None)
    {
        notes.warn(e.to_string());
    }
    let status = resp.status().as_u16();
    let retry_after = crate::http::parse_retry_after(resp.headers());
    match status {
        200 => {
            let body = match fetcher.client.read_body(resp, MAX_MANIFEST_BYTES).await {
                Ok(body) => body,
                Err(e) => return busy(ExportError::Status(e).into(), None),
            };
            let usable = bulk::parse_manifest(&body)
                .map_err(ExportError::from)
                .and_then(|m| match bulk::foreign_file(fetcher.source, &job_url, &m) {
                    Some(file) => Err(ExportError::ForeignFile { file }),
                    None => Ok(m),
                });
            match usable {
                Ok(m) => Ok(StatusCheck::Ready(m)),
                Err(e) => busy(e.into(), None),
            }
        }
        202 => {
            if let Some(p) = bulk::progress(resp.headers()) {
                tracing::info!(source = %fetcher.source.name, progress = %p, "bulk export in progress");
            }
            Ok(StatusCheck::Pending(bulk::status_wait(retry_after)))
        }
        404 | 410 => Ok(StatusCheck::Gone),
        // Busy: the job stays; asked again after the wait.
        429 | 500..=599 => {
            let error = crate::source::client::FetchError::Status {
                status,
                retry_after,
            };
            busy(ExportError::Status(error).into(), retry_after)
        }
        // The job failed: the next poll kicks off a new one.
        _ => Err(ExportError::Failed(status)),
    }
}
