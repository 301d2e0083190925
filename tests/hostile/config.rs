//! Hostile input: config. See tests/hostile.rs.
//!
//! `fhir-bridge validate -c FILE` on configs an adversarial audit found
//! accepted (or reported badly): each must exit 2 with one line on stderr
//! naming the file, the line and the key, or load with a warning. No daemon.

#[allow(unused_imports)]
use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A valid config; the tests below break one line of it. Line numbers:
/// 2 `[[source]]`, 4 `base_url`, 5 `resources`, 6 `schedule`, 7 `page_size`,
/// 8 `timeout`, 10 `Observation` params, 13 `url`, 14 `retry_schedule`.
const BASE: &str = r#"
[[source]]
name = "lab"
base_url = "http://127.0.0.1:9/fhir"
resources = ["Observation", "Encounter"]
schedule = "*/10 * * * * *"
page_size = 100
timeout = "30s"
[source.params]
Observation = "category=laboratory"
[[hook]]
name = "critical"
url = "http://127.0.0.1:9/hooks/critical"
retry_schedule = ["5s", "1m"]
"#;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn validate_file(path: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
        .args(["validate", "-c"])
        .arg(path)
        .env_remove("FHIR_BRIDGE_CONFIG")
        .output()
        .expect("run fhir-bridge validate");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `text` to a temporary `bridges.toml` and validates it.
fn validate(text: &str) -> (PathBuf, Outcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bridges.toml");
    std::fs::write(&path, text).expect("write config");
    let out = validate_file(&path);
    (path, out, dir)
}

/// `BASE` with `from` replaced by `to` must fail with exactly this error.
fn assert_refused(from: &str, to: &str, line: usize, message: &str) -> Outcome {
    assert!(BASE.contains(from), "{from}");
    let (path, out, _dir) = validate(&BASE.replacen(from, to, 1));
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr,
        format!("fhir-bridge: {}:{line}: {message}\n", path.display())
    );
    assert_eq!(out.stdout, "");
    out
}

#[test]
fn the_base_config_is_valid() {
    let (_, out, _dir) = validate(BASE);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "");
}

#[test]
fn credentials_in_base_url_are_refused_and_not_echoed() {
    let out = assert_refused(
        "http://127.0.0.1:9/fhir",
        "http://lab:Tr0ub4dor@127.0.0.1:9/fhir",
        4,
        "source `lab`: `base_url`: credentials in the URL are not supported (they would be \
         sent on the first page only); use [source.auth] instead",
    );
    assert!(!out.stderr.contains("Tr0ub4dor"));
    assert!(!out.stdout.contains("Tr0ub4dor"));
}

#[test]
fn credentials_in_hook_url_are_refused_and_not_echoed() {
    let out = assert_refused(
        "http://127.0.0.1:9/hooks/critical",
        "http://hook:Tr0ub4dor@127.0.0.1:9/hooks/critical",
        13,
        "hook `critical`: `url`: credentials in the URL are not supported; use [hook.auth] instead",
    );
    assert!(!out.stderr.contains("Tr0ub4dor"));
}

#[test]
fn a_zero_retry_delay_is_refused() {
    assert_refused(
        r#"["5s", "1m"]"#,
        r#"["0s"]"#,
        14,
        "hook `critical`: `retry_schedule`: each delay must be at least 1s, not 0s",
    );
}

#[test]
fn a_zero_timeout_is_refused() {
    assert_refused(
        r#"timeout = "30s""#,
        r#"timeout = "0s""#,
        8,
        "source `lab`: `timeout` must be at least 1s, not 0s",
    );
}

#[test]
fn a_resource_type_listed_twice_is_refused() {
    assert_refused(
        r#"["Observation", "Encounter"]"#,
        r#"["Observation", "Encounter", "Observation"]"#,
        5,
        "source `lab`: `resources`: `Observation` is listed twice",
    );
}

#[test]
fn a_cron_for_february_31st_is_refused() {
    assert_refused(
        "*/10 * * * * *",
        "0 0 31 2 *",
        6,
        "source `lab`: `schedule` never fires: `0 0 31 2 *` has no tick in the next 5 years",
    );
}

#[test]
fn a_count_in_params_is_refused() {
    assert_refused(
        r#"Observation = "category=laboratory""#,
        r#"Observation = "_count=5""#,
        10,
        "source `lab`: `params.Observation`: `_count` is not allowed: the bridge sets it \
         from `page_size`",
    );
}

#[test]
fn a_type_error_names_its_key() {
    assert_refused(
        "page_size = 100",
        r#"page_size = "ten""#,
        7,
        r#"`page_size`: invalid type: string "ten", expected u32"#,
    );
}

#[test]
fn a_key_given_twice_names_its_key() {
    assert_refused(
        "page_size = 100",
        "page_size = 100\npage_size = 50",
        8,
        "`page_size`: duplicate key",
    );
}

#[test]
fn a_missing_file_prints_the_os_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nonexistent.toml");
    let out = validate_file(&path);
    assert_eq!(out.code, Some(2));
    assert_eq!(
        out.stderr,
        format!(
            "fhir-bridge: {}: cannot read config: No such file or directory (os error 2)\n",
            path.display()
        )
    );
    assert_eq!(out.stderr.matches("os error 2").count(), 1);
}

#[test]
fn an_empty_file_validates_with_warnings() {
    let (path, out, _dir) = validate("");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let p = path.display();
    assert_eq!(
        out.stderr,
        format!(
            "warning: {p}: no [[source]]: nothing to poll\n\
             warning: {p}: no [[hook]]: changes are detected but sent nowhere\n"
        )
    );
    assert!(
        out.stdout.contains("OK (0 source(s), 0 hook(s)"),
        "{}",
        out.stdout
    );
}

#[test]
fn plain_http_to_another_machine_is_refused_unless_allowed() {
    let out = assert_refused(
        "http://127.0.0.1:9/fhir",
        "http://ehr.example.org/fhir",
        4,
        "source `lab`: `base_url`: plain http to another machine would carry PHI or credentials \
         in clear text; use https, or set `allow_insecure_http = true`",
    );
    assert!(out.stdout.is_empty());
    let out = assert_refused(
        "http://127.0.0.1:9/hooks/critical",
        "http://receiver.example.org/hooks/critical",
        13,
        "hook `critical`: `url`: plain http to another machine would carry PHI or credentials \
         in clear text; use https, or set `allow_insecure_http = true`",
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unknown_topic_is_refused_with_the_known_ones() {
    assert_refused(
        r#"retry_schedule = ["5s", "1m"]"#,
        "retry_schedule = [\"5s\", \"1m\"]\ntopic = \"discharge\"",
        15,
        "hook `critical`: `topic`: no topic is named `discharge`; known topics: \
         critical-lab-result, adt-discharge, new-medication-order, patient-demographic-update, \
         appointment-no-show",
    );
}
