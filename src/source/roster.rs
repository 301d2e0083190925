//! The patients a fan-out source polls: a Group's members, every page of a
//! Patient search, or a file of ids. Every id is checked as a FHIR id (it
//! ends up in search URLs, state and logs); the roster is bounded.

use super::client::FetchError;
use super::fetch::Fetcher;
use crate::config::Roster;
use crate::fhir::bundle::{BundleError, parse_page};
use crate::fhir::is_fhir_id;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use url::Url;

/// The most patients one source's roster may hold.
pub const MAX_ROSTER: usize = 100_000;

/// The largest roster file read (100,000 ids with comments fit many times).
pub const MAX_ROSTER_FILE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("roster: {0}")]
    Fetch(#[from] FetchError),
    #[error("roster: {0}")]
    Bundle(#[from] BundleError),
    #[error("roster: the Group is not a Group resource")]
    NotAGroup,
    #[error("roster: more than {MAX_ROSTER} patients")]
    TooLarge,
    #[error("roster: the Patient search's next link cannot be followed ({0})")]
    Link(String),
    #[error("roster: the Patient search has more than max_pages_per_poll pages")]
    Pages,
    #[error("roster: cannot read {path}: {error}")]
    File { path: String, error: std::io::Error },
}

/// The most members a Group may list, active or not, patients or not. Each
/// parsed member takes memory out of proportion to its text (`{}` is three
/// bytes, a parsed member 32): a 256 MB Group of them could take 2.7 GB.
const MAX_GROUP_MEMBERS: usize = 4 * MAX_ROSTER;

#[derive(Deserialize)]
struct Group {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(default)]
    member: Members,
}

/// A Group's members, at most `MAX_GROUP_MEMBERS` kept; beyond them the
/// rest are read past, unkept, and `overflow` says so.
#[derive(Default)]
struct Members {
    list: Vec<Member>,
    overflow: bool,
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of members")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Members, A::Error> {
                let mut out = Members::default();
                while out.list.len() < MAX_GROUP_MEMBERS {
                    match seq.next_element()? {
                        Some(m) => out.list.push(m),
                        None => return Ok(out),
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    out.overflow = true;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Bounded)
    }
}

#[derive(Deserialize)]
struct Member {
    entity: Option<Reference>,
    #[serde(default)]
    inactive: bool,
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
}

/// A patient id from `Patient/{id}` or a bare id; `None` if it is not one.
fn patient_id(text: &str) -> Option<String> {
    let id = text.trim();
    let id = id.strip_prefix("Patient/").unwrap_or(id);
    is_fhir_id(id).then(|| id.to_string())
}

/// Adds ids, failing beyond the bound. Entries that are not patient ids are
/// counted, not kept.
#[derive(Default)]
pub(super) struct RosterIds {
    pub ids: BTreeSet<String>,
    pub rejected: usize,
}

impl RosterIds {
    fn add(&mut self, text: &str) -> Result<(), RosterError> {
        match patient_id(text) {
            Some(id) => {
                self.ids.insert(id);
                if self.ids.len() > MAX_ROSTER {
                    return Err(RosterError::TooLarge);
                }
            }
            None => self.rejected += 1,
        }
        Ok(())
    }
}

/// A Group member's reference as a patient id: `Patient/{id}`, also
/// absolute on the source's own server and versioned (`/_history/{v}`);
/// `None` for any other kind of member, or a patient on another server.
fn member_patient<'a>(reference: &'a str, base: &Url) -> Option<&'a str> {
    let r = reference.trim();
    let own = base.as_str().trim_end_matches('/');
    let r = r
        .strip_prefix(own)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(r);
    let r = r.strip_prefix("Patient/")?;
    Some(r.split_once("/_history/").map_or(r, |(id, _)| id))
}

pub(super) fn parse_group(body: &[u8], base: &Url) -> Result<RosterIds, RosterError> {
    let group: Group = serde_json::from_slice(body).map_err(|_| RosterError::NotAGroup)?;
    if group.resource_type.as_deref() != Some("Group") {
        return Err(RosterError::NotAGroup);
    }
    if group.member.overflow {
        return Err(RosterError::TooLarge);
    }
    let mut out = RosterIds::default();
    for m in group.member.list.iter().filter(|m| !m.inactive) {
        let reference = m.entity.as_ref().and_then(|e| e.reference.as_deref());
        // Only Patient members: a Group may also hold practitioners, devices.
        match reference.and_then(|r| member_patient(r, base)) {
            Some(id) => out.add(id)?,
            None => out.rejected += 1,
        }
    }
    Ok(out)
}

/// A roster file's text: a regular file (a symlink to one is fine) of at
/// most `MAX_ROSTER_FILE_BYTES`. A FIFO would block the source for good, and
/// a device (`/dev/zero`) or a huge file would be read whole into memory.
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    // Opening a FIFO for reading waits for a writer: not with O_NONBLOCK
    // (which changes nothing for a regular file).
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, libc::O_NONBLOCK);
    let file = open.open(path)?;
    // The opened file's own metadata: what is read is what was checked.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a FIFO, a device or a directory)",
        ));
    }
    let too_large = || std::io::Error::other(format!("larger than {MAX_ROSTER_FILE_BYTES} bytes"));
    if meta.len() > MAX_ROSTER_FILE_BYTES {
        return Err(too_large());
    }
    let mut text = String::new();
    // It may grow while read.
    file.take(MAX_ROSTER_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_ROSTER_FILE_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

pub(super) fn parse_file(text: &str) -> Result<RosterIds, RosterError> {
    let mut out = RosterIds::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if !line.is_empty() {
            out.add(line)?;
        }
    }
    Ok(out)
}

/// Reads the roster now.
pub(super) async fn load_roster(
    fetcher: &Fetcher<'_>,
    roster: &Roster,
) -> Result<RosterIds, RosterError> {
    let base = &fetcher.source.base_url;
    match roster {
        Roster::File(path) => {
            let file = path.clone();
            let read = tokio::task::spawn_blocking(move || read_file(&file))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let text = read.map_err(|error| RosterError::File {
                path: path.display().to_string(),
                error,
            })?;
            parse_file(&text)
        }
        Roster::Group(id) => {
            fetcher.expect_page();
            let url = base
                .join(&format!("Group/{id}"))
                .map_err(|e| RosterError::Link(e.to_string()))?;
            parse_group(&fetcher.fetch(&url).await?.body, base)
        }
        Roster::Search(query) => {
            let mut url = base
                .join("Patient")
                .map_err(|e| RosterError::Link(e.to_string()))?;
            url.set_query(Some(&format!(
                "{query}&_count={}",
                fetcher.source.page_size
            )));
            let mut out = RosterIds::default();
            let mut visited = BTreeSet::new();
            for page_no in 1..=fetcher.source.max_pages_per_poll as usize {
                // A long roster is many pages: the watchdog hears of each.
                fetcher.expect_page();
                visited.insert(url.to_string());
                let fetched = fetcher.fetch(&url).await?;
                let page = parse_page(&fetched.body)?;
                for e in page.entries.iter().filter(|e| e.resource_type == "Patient") {
                    out.add(&e.id)?;
                }
                out.rejected += page.skipped.len();
                match fetcher.next_link(&url, page.next.as_deref(), "Patient", page_no) {
                    None => return Ok(out),
                    Some(Err(e)) => return Err(RosterError::Link(e.to_string())),
                    Some(Ok(n)) if visited.contains(n.as_str()) => {
                        return Err(RosterError::Link("it loops".into()));
                    }
                    Some(Ok(n)) => url = n,
                }
            }
            Err(RosterError::Pages)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_gives_its_active_patient_members() {
        let body = br#"{"resourceType":"Group","member":[
            {"entity":{"reference":"Patient/p1"}},
            {"entity":{"reference":"Patient/p2"},"inactive":true},
            {"entity":{"reference":"Practitioner/d1"}},
            {"entity":{"reference":"Patient/bad id"}},
            {"entity":{"reference":"Patient/p3"}}]}"#;
        let base = Url::parse("https://ehr.example/fhir/").unwrap();
        let r = parse_group(body, &base).unwrap();
        assert_eq!(r.ids.into_iter().collect::<Vec<_>>(), ["p1", "p3"]);
        assert_eq!(r.rejected, 2);
        assert!(matches!(
            parse_group(br#"{"resourceType":"Patient"}"#, &base),
            Err(RosterError::NotAGroup)
        ));
        assert!(matches!(
            parse_group(b"nope", &base),
            Err(RosterError::NotAGroup)
        ));
    }

    /// A Group of more members than `MAX_GROUP_MEMBERS` (empty ones, `{}`,
    /// none of them a patient) is too large: not parsed into memory whole.
    #[test]
    fn a_group_of_too_many_members_is_too_large() {
        let base = Url::parse("https://ehr.example/fhir/").unwrap();
        let members = vec!["{}"; MAX_GROUP_MEMBERS + 1].join(",");
        let body = format!(r#"{{"resourceType":"Group","member":[{members}]}}"#);
        assert!(matches!(
            parse_group(body.as_bytes(), &base),
            Err(RosterError::TooLarge)
        ));
        let members = vec!["{}"; MAX_GROUP_MEMBERS].join(",");
        let body = format!(r#"{{"resourceType":"Group","member":[{members}]}}"#);
        let r = parse_group(body.as_bytes(), &base).unwrap();
        assert_eq!((r.ids.len(), r.rejected), (0, MAX_GROUP_MEMBERS));
    }

    /// A member referenced absolutely on the source's own server, or with
    /// its version, is a patient (both were skipped); one on another server,
    /// or under a longer base, is not.
    #[test]
    fn a_group_member_on_this_server_absolute_or_versioned_is_a_patient() {
        let body = br#"{"resourceType":"Group","member":[
            {"entity":{"reference":"https://ehr.example/fhir/Patient/p1"}},
            {"entity":{"reference":"Patient/p2/_history/3"}},
            {"entity":{"reference":"https://ehr.example/fhir/Patient/p3/_history/1"}},
            {"entity":{"reference":"https://other.example/fhir/Patient/x1"}},
            {"entity":{"reference":"https://ehr.example/fhir2/Patient/x2"}},
            {"entity":{"reference":"https://ehr.example/fhir/Practitioner/d1"}},
            {"entity":{"reference":"Patient/p1"}}]}"#;
        let base = Url::parse("https://ehr.example/fhir/").unwrap();
        let r = parse_group(body, &base).unwrap();
        assert_eq!(r.ids.into_iter().collect::<Vec<_>>(), ["p1", "p2", "p3"]);
        assert_eq!(r.rejected, 3);
    }

    #[test]
    fn a_file_takes_ids_with_or_without_prefix_and_comments() {
        let r = parse_file("# ward 3\np1\nPatient/p2  # twin\n\nbad id\np1\n").unwrap();
        assert_eq!(r.ids.into_iter().collect::<Vec<_>>(), ["p1", "p2"]);
        assert_eq!(r.rejected, 1);
        let huge: String = (0..=MAX_ROSTER).map(|i| format!("p{i}\n")).collect();
        assert!(matches!(parse_file(&huge), Err(RosterError::TooLarge)));
    }

    #[cfg(unix)]
    #[test]
    fn only_a_bounded_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "p1\n").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&plain, &link).unwrap();
        assert_eq!(read_file(&link).unwrap(), "p1\n");
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let e = read_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_file(&zero).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(read_file(dir.path()).is_err());
        // A 2 GB file (sparse: nothing written) is refused unread.
        let big = dir.path().join("big.txt");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
