//! What a turn of a `bulk-export` source decides about its job, without
//! I/O: whether a saved job is still the one wanted (`stale`), what a status
//! check means for the turn (`on_status`), whether a failed file starts the
//! export over (`files_expired`), where reading the files resumes
//! (`resume_at`) and where the finished export moves the watermarks
//! (`export_watermark`). `job.rs` executes them.

use super::status::StatusCheck;
use super::{self as bulk, Manifest};
use crate::source::errors::{ExportError, PollError};
use crate::source::notes::Notes;
use crate::source::watermark::{OutsideTime, horizon, judge};
use crate::state::ExportJob;
use chrono::{DateTime, Utc};

/// Why a saved job is not polled on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stale {
    /// Saved before the source's base, group or types changed: its files are
    /// not what is polled now. What it delivered stays delivered; the new
    /// export re-reads from the watermarks, which only a finished job moves.
    OtherRequest,
    /// Saved with a `_since` past the horizon (by a version that did not
    /// bound watermarks): the server exports nothing for it, and its end
    /// would move the watermarks over everything since the last real
    /// export. A new export, from the watermarks (from the start when they
    /// lie in the future).
    SinceAfterClock,
}

pub(super) fn stale(job: &ExportJob, request: &str, limit: DateTime<Utc>) -> Option<Stale> {
    if job.request.as_ref().is_some_and(|r| r != request) {
        return Some(Stale::OtherRequest);
    }
    let since = job.since.as_deref().and_then(crate::fhir::parse_instant);
    since
        .is_some_and(|s| s > limit)
        .then_some(Stale::SinceAfterClock)
}

/// What a turn does with a job's status (`on_status`).
pub(super) enum OnStatus {
    /// Read the job's files.
    Read(Manifest),
    /// Ask again after `wait`, in a later turn; the poll fails with `error`
    /// meanwhile, if any.
    Later {
        wait: std::time::Duration,
        error: Option<PollError>,
    },
    /// Forget the saved job (`DELETE` it first when `cancel`), say `why`,
    /// and kick off a new export from the watermarks.
    Restart {
        cancel: bool,
        why: String,
    },
    Fail(PollError),
}

/// What a status check means for this turn. `kicked_off`: the job was
/// kicked off in this poll (a new one gone or expired is not started over
/// again); `expired`: it is past `export_timeout` after its kick-off
/// (asked only when the status gives no usable manifest: a manifest read
/// earlier does not save a job whose status URL then fails for ever).
pub(super) fn on_status(
    check: StatusCheck,
    kicked_off: bool,
    expired: bool,
    timeout: std::time::Duration,
) -> OnStatus {
    match check {
        StatusCheck::Ready(manifest) => OnStatus::Read(manifest),
        StatusCheck::Gone if kicked_off => OnStatus::Fail(ExportError::GoneAgain.into()),
        StatusCheck::Gone => OnStatus::Restart {
            cancel: false,
            why: "the bulk export job was gone (HTTP 404/410, expired); a new export started from the watermark"
                .to_string(),
        },
        StatusCheck::Pending(_) | StatusCheck::Unusable(..) if !kicked_off && expired => {
            OnStatus::Restart {
                cancel: true,
                why: format!(
                    "the bulk export job had no usable manifest {} after its kick-off (export_timeout); it was cancelled (DELETE) and a new export started from the watermarks",
                    humantime::format_duration(timeout)
                ),
            }
        }
        StatusCheck::Pending(wait) => OnStatus::Later { wait, error: None },
        StatusCheck::Unusable(error, wait) => OnStatus::Later {
            wait,
            error: Some(error),
        },
    }
}

/// Why a saved job is started over after reading its files failed: its
/// files expired at the server, and nothing more can be read from it. What
/// it delivered stays delivered; a new export goes on from the watermarks
/// (once per turn: not for a job kicked off in this poll).
pub(super) fn files_expired(error: &PollError, kicked_off: bool) -> Option<String> {
    match error {
        PollError::Export(ExportError::File {
            file,
            error:
                crate::source::client::FetchError::Status {
                    status: status @ (404 | 410),
                    ..
                },
        }) if !kicked_off => Some(format!(
            "bulk export output file {file} was gone (HTTP {status}, expired); a new export started from the watermarks"
        )),
        _ => None,
    }
}

/// Where reading a job's files resumes: the files and lines its progress
/// counted, if its manifest is the one they were counted on (`fingerprint`),
/// else from the first (noted). The last: whether the progress holds.
pub(super) fn resume_at(job: &ExportJob, fingerprint: &str, notes: &mut Notes) -> (i64, i64, bool) {
    let (files_done, lines_done) = (job.files_done, job.lines_done);
    let holds = bulk::progress_holds(job.manifest.as_deref(), fingerprint, files_done, lines_done);
    if holds {
        return (files_done, lines_done, true);
    }
    notes.warn(
        "the bulk export job's manifest is not the one its progress was counted on; its files are read again from the first"
            .to_string(),
    );
    (0, 0, false)
}

/// Where a finished export moves the watermarks: its `transactionTime`,
/// judged against the horizon. The export holds nothing written after its
/// kick-off's horizon: a `transactionTime` past the horizon now is not
/// believed, and the watermarks move only to the horizon as it was at the
/// kick-off.
pub(super) fn export_watermark(
    told: DateTime<Utc>,
    job: &ExportJob,
    server_now: Option<DateTime<Utc>>,
    overlap: std::time::Duration,
) -> OutsideTime {
    let local_now = Utc::now();
    match judge(told, horizon(server_now, local_now, overlap)) {
        believed @ OutsideTime::Believed(_) => believed,
        OutsideTime::Beyond { .. } => {
            let ago = chrono::Duration::milliseconds(
                crate::state::now_ms()
                    .saturating_sub(job.kicked_off_at)
                    .max(0),
            );
            let server_then = server_now.map(|t| t - ago);
            judge(told, horizon(server_then, local_now - ago, overlap))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A saved job is polled on only if the config asks for what it asked,
    /// and from no later than the horizon.
    #[test]
    fn a_saved_job_is_stale_when_asked_otherwise_or_from_the_future() {
        let limit = crate::fhir::parse_instant("2026-12-01T00:00:00Z").unwrap();
        let job = |request: Option<&str>, since: Option<&str>| ExportJob {
            job_url: "http://x/status/1".into(),
            since: since.map(str::to_string),
            kicked_off_at: 0,
            transaction_time: None,
            files_done: 0,
            lines_done: 0,
            request: request.map(str::to_string),
            manifest: None,
        };
        let past = Some("2026-11-30T00:00:00Z");
        let future = Some("2026-12-02T00:00:00Z");
        assert_eq!(stale(&job(Some("a"), past), "a", limit), None);
        assert_eq!(stale(&job(None, None), "a", limit), None);
        let other = stale(&job(Some("b"), future), "a", limit);
        assert_eq!(other, Some(Stale::OtherRequest));
        let ahead = stale(&job(None, future), "a", limit);
        assert_eq!(ahead, Some(Stale::SinceAfterClock));
    }
    /// A job gone or past `export_timeout` is started over only when it
    /// was saved by an earlier poll: one kicked off in this poll fails (gone)
    /// or waits (pending); a pending job's wait and an unusable status's
    /// error are the turn's.
    #[test]
    fn a_status_restarts_only_a_saved_job_and_an_unusable_one_fails_the_turn() {
        let wait = Duration::from_secs(7);
        let timeout = Duration::from_secs(60);
        let restart = |o: OnStatus| match o {
            OnStatus::Restart { cancel, .. } => Some(cancel),
            _ => None,
        };
        let later = |o: OnStatus| match o {
            OnStatus::Later { wait, error } => Some((wait, error.is_some())),
            _ => None,
        };
        let gone_again = on_status(StatusCheck::Gone, true, false, timeout);
        assert!(matches!(
            gone_again,
            OnStatus::Fail(PollError::Export(ExportError::GoneAgain))
        ));
        let gone = on_status(StatusCheck::Gone, false, false, timeout);
        assert_eq!(restart(gone), Some(false));
        let expired = on_status(StatusCheck::Pending(wait), false, true, timeout);
        assert_eq!(restart(expired), Some(true));
        let new = on_status(StatusCheck::Pending(wait), true, true, timeout);
        assert_eq!(later(new), Some((wait, false)));
        let busy = StatusCheck::Unusable(ExportError::NoJobUrl.into(), wait);
        assert_eq!(
            later(on_status(busy, false, false, timeout)),
            Some((wait, true))
        );
        let busy = StatusCheck::Unusable(ExportError::NoJobUrl.into(), wait);
        assert_eq!(restart(on_status(busy, false, true, timeout)), Some(true));
    }

    /// Only an output file the server no longer has (404/410) of a saved
    /// job starts the export over.
    #[test]
    fn only_a_saved_jobs_expired_file_starts_the_export_over() {
        let file = |status| -> PollError {
            ExportError::File {
                file: 2,
                error: crate::source::client::FetchError::Status {
                    status,
                    retry_after: None,
                },
            }
            .into()
        };
        assert!(files_expired(&file(410), false).is_some_and(|w| w.contains("file 2")));
        assert!(files_expired(&file(404), false).is_some());
        assert!(files_expired(&file(404), true).is_none());
        assert!(files_expired(&file(500), false).is_none());
        assert!(files_expired(&ExportError::GoneAgain.into(), false).is_none());
    }
}
