//! Unit tests of config validation: every error names file, line and key.

use super::*;
use crate::config::HookAuth;

const GOOD: &str = r#"
state_dir = "state"

[[source]]
name = "lab-ehr"
base_url = "http://127.0.0.1:8090/fhir"
resources = ["Observation", "Encounter"]
schedule = "*/10 * * * * *"
page_size = 100
overlap = "2m"
start = "now"
owner_id = "org/lab"
[source.params]
Observation = "category=laboratory"

[[hook]]
name = "critical-labs"
url = "http://127.0.0.1:9000/hooks/critical"
sources = ["lab-ehr"]
filter = '.resourceType == "Observation"'
content = "full-resource"
max_attempts = 6
retry_schedule = ["5s", "1m"]
timeout = "15s"
concurrency = 4
"#;

fn load(text: &str) -> Result<Config, String> {
    validate(text, Path::new("bridges.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_documented_example_loads() {
    let c = load(GOOD).unwrap();
    assert_eq!(
        c.sources[0].base_url.as_str(),
        "http://127.0.0.1:8090/fhir/"
    );
    assert_eq!(c.sources[0].owner_id, "org/lab");
    assert_eq!(c.hooks[0].retry_schedule.len(), 2);
    assert_eq!(c.hooks[0].sources, vec!["lab-ehr".to_string()]);
}

#[test]
fn a_bad_filter_names_file_line_and_key() {
    let text = GOOD.replace(r#"'.resourceType == "Observation"'"#, "'.resourceType =='");
    let e = load(&text).unwrap_err();
    assert!(
        e.starts_with("bridges.toml:20: hook `critical-labs`: `filter` does not compile"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let e = load(&GOOD.replace("page_size = 100", "page_sise = 100")).unwrap_err();
    assert!(e.starts_with("bridges.toml:9:"), "{e}");
    assert!(e.contains("page_sise"), "{e}");
}

#[test]
fn semantic_errors_name_the_key() {
    let e = load(&GOOD.replace(r#"sources = ["lab-ehr"]"#, r#"sources = ["nope"]"#)).unwrap_err();
    assert!(
        e.contains(":19: hook `critical-labs`: `sources`: no source is named `nope`"),
        "{e}"
    );
    let e = load(&GOOD.replace("start = \"now\"", "start = \"yesterday\"")).unwrap_err();
    assert!(e.contains(":11: source `lab-ehr`: `start`"), "{e}");
    let e = load(&GOOD.replace("*/10 * * * * *", "every tuesday")).unwrap_err();
    assert!(e.contains(":8: source `lab-ehr`: `schedule`"), "{e}");
    let e = load(&GOOD.replace("name = \"lab-ehr\"", "name = \"Lab EHR\"")).unwrap_err();
    assert!(e.contains(":5: source `Lab EHR`: `name`"), "{e}");
    let e = load(&GOOD.replace("overlap = \"2m\"", "overlap = \"two\"")).unwrap_err();
    assert!(e.contains(":10:") && e.contains("invalid duration"), "{e}");
}

/// The one error `text` gives, exactly.
fn error(text: &str) -> String {
    load(text).expect_err("must not load")
}

#[test]
fn credentials_in_a_base_url_are_refused_without_echoing_them() {
    let e = error(&GOOD.replace("http://127.0.0.1:8090", "http://lab:s3cret@127.0.0.1:8090"));
    assert_eq!(
        e,
        "bridges.toml:6: source `lab-ehr`: `base_url`: credentials in the URL are not \
         supported (they would be sent on the first page only); use [source.auth] instead"
    );
    assert!(!e.contains("s3cret"), "{e}");
    // A user name alone, or an empty password, is refused the same way.
    for url in ["http://lab@127.0.0.1:8090", "http://lab:@127.0.0.1:8090"] {
        let e = error(&GOOD.replace("http://127.0.0.1:8090", url));
        assert!(
            e.starts_with("bridges.toml:6: source `lab-ehr`: `base_url`: credentials"),
            "{e}"
        );
    }
}

#[test]
fn credentials_in_a_hook_url_are_refused_without_echoing_them() {
    let e = error(&GOOD.replace("http://127.0.0.1:9000", "https://u:hunter2@127.0.0.1:9000"));
    assert_eq!(
        e,
        "bridges.toml:18: hook `critical-labs`: `url`: credentials in the URL are not \
         supported; use [hook.auth] instead"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn retry_delays_below_one_second_are_refused() {
    let e = error(&GOOD.replace(r#"["5s", "1m"]"#, r#"["0s"]"#));
    assert_eq!(
        e,
        "bridges.toml:23: hook `critical-labs`: `retry_schedule`: each delay must be at least 1s, not 0s"
    );
    // The entry's own line, in a multi-line array.
    let e = error(&GOOD.replace(r#"["5s", "1m"]"#, "[\n  \"5s\",\n  \"999ms\",\n]"));
    assert_eq!(
        e,
        "bridges.toml:25: hook `critical-labs`: `retry_schedule`: each delay must be at least 1s, not 999ms"
    );
    let c = load(&GOOD.replace(r#"["5s", "1m"]"#, r#"["1s"]"#)).unwrap();
    assert_eq!(c.hooks[0].retry_schedule, vec![Duration::from_secs(1)]);
}

#[test]
fn a_source_timeout_below_one_second_is_refused() {
    let text = GOOD.replace(
        "owner_id = \"org/lab\"",
        "owner_id = \"org/lab\"\ntimeout = \"0s\"",
    );
    assert_eq!(
        error(&text),
        "bridges.toml:13: source `lab-ehr`: `timeout` must be at least 1s, not 0s"
    );
    let c = load(&text.replace("\"0s\"", "\"1s\"")).unwrap();
    assert_eq!(c.sources[0].timeout, Duration::from_secs(1));
}

#[test]
fn a_hook_timeout_below_one_second_is_refused() {
    assert_eq!(
        error(&GOOD.replace("timeout = \"15s\"", "timeout = \"500ms\"")),
        "bridges.toml:24: hook `critical-labs`: `timeout` must be at least 1s, not 500ms"
    );
}

#[test]
fn every_below_100ms_is_refused() {
    let every =
        |v: &str| GOOD.replace("schedule = \"*/10 * * * * *\"", &format!("every = \"{v}\""));
    assert_eq!(
        error(&every("50ms")),
        "bridges.toml:8: source `lab-ehr`: `every` must be at least 100ms, not 50ms"
    );
    assert_eq!(
        error(&every("0s")),
        "bridges.toml:8: source `lab-ehr`: `every` must be positive"
    );
    let c = load(&every("100ms")).unwrap();
    assert!(matches!(c.sources[0].schedule, Schedule::Every(d) if d == Duration::from_millis(100)));
}

#[test]
fn an_empty_file_loads_with_warnings() {
    let c = load("").unwrap();
    assert_eq!(
        c.warnings,
        vec![
            "bridges.toml: no [[source]]: nothing to poll".to_string(),
            "bridges.toml: no [[hook]]: changes are detected but sent nowhere".to_string(),
        ]
    );
    let c = load("[[source]]\nname='a'\nbase_url='https://x/'\nresources=['Patient']\n").unwrap();
    assert_eq!(
        c.warnings,
        vec!["bridges.toml: no [[hook]]: changes are detected but sent nowhere".to_string()]
    );
    assert!(load(GOOD).unwrap().warnings.is_empty());
}

#[test]
fn sources_no_hook_takes_and_hooks_with_no_sources_are_warned_about() {
    let text = format!(
        "{GOOD}\n[[source]]\nname = \"adt\"\nbase_url = \"https://x/\"\nresources = [\"Encounter\"]\n\
         \n[[hook]]\nname = \"idle\"\nurl = \"https://y/\"\nsources = []\n"
    );
    assert_eq!(
        load(&text).unwrap().warnings,
        vec![
            "bridges.toml:28: source `adt`: no hook lists it in `sources`: its changes are sent nowhere"
                .to_string(),
            "bridges.toml:35: hook `idle`: `sources` is empty: it receives nothing".to_string(),
        ]
    );
}

#[test]
fn a_resource_type_listed_twice_is_refused() {
    assert_eq!(
        error(&GOOD.replace(
            r#"["Observation", "Encounter"]"#,
            r#"["Observation", "Encounter", "Observation"]"#
        )),
        "bridges.toml:7: source `lab-ehr`: `resources`: `Observation` is listed twice"
    );
}

#[test]
fn a_cron_that_never_fires_is_refused() {
    for cron in ["0 0 31 2 *", "0 0 0 30 2 *"] {
        assert_eq!(
            error(&GOOD.replace("*/10 * * * * *", cron)),
            format!(
                "bridges.toml:8: source `lab-ehr`: `schedule` never fires: `{cron}` has no tick in the next 5 years"
            )
        );
    }
    // Once every four years is rare, not never.
    assert!(load(&GOOD.replace("*/10 * * * * *", "0 0 29 2 *")).is_ok());
}

#[test]
fn params_the_bridge_owns_are_refused() {
    let with = |q: &str| GOOD.replace("category=laboratory", q);
    assert_eq!(
        error(&with("category=laboratory&_count=5")),
        "bridges.toml:14: source `lab-ehr`: `params.Observation`: `_count` is not allowed: \
         the bridge sets it from `page_size`"
    );
    for (q, param) in [
        ("_sort=-date", "_sort"),
        ("_lastUpdated=gt2020-01-01", "_lastUpdated"),
        ("_lastUpdated:missing=false", "_lastUpdated"),
        ("_summary=true", "_summary"),
        ("_elements=id", "_elements"),
        ("%5Fcount=5", "_count"),
        ("?_count=5", "_count"),
    ] {
        let e = error(&with(q));
        assert!(
            e.starts_with(&format!(
                "bridges.toml:14: source `lab-ehr`: `params.Observation`: `{param}` is not allowed: "
            )),
            "{q}: {e}"
        );
    }
    // Other underscore parameters are the operator's business.
    assert!(load(&with("_has:Group:member:_id=1&_tag=x")).is_ok());
}

#[test]
fn a_type_error_names_its_key() {
    assert_eq!(
        error(&GOOD.replace("page_size = 100", "page_size = \"ten\"")),
        "bridges.toml:9: `page_size`: invalid type: string \"ten\", expected u32"
    );
    assert_eq!(
        error(&GOOD.replace("max_attempts = 6", "max_attempts = -1")),
        "bridges.toml:22: `max_attempts`: invalid value: integer `-1`, expected u32"
    );
    assert_eq!(
        error(&GOOD.replace(
            "category=laboratory\"",
            "category=laboratory\"\nEncounter = 1"
        )),
        "bridges.toml:15: `params.Encounter`: invalid type: integer `1`, expected a string"
    );
}

#[test]
fn a_key_given_twice_names_the_key() {
    assert_eq!(
        error(&GOOD.replace("page_size = 100", "page_size = 100\npage_size = 200")),
        "bridges.toml:10: `page_size`: duplicate key"
    );
    assert_eq!(
        error(&GOOD.replace("[source.params]", "[source.params]\n[source.params]")),
        "bridges.toml:14: `[source.params]`: duplicate key"
    );
}

#[test]
fn max_pages_per_poll_defaults_and_bounds() {
    assert_eq!(load(GOOD).unwrap().sources[0].max_pages_per_poll, 1000);
    let with = |v: &str| {
        GOOD.replace(
            "page_size = 100",
            &format!("page_size = 100\nmax_pages_per_poll = {v}"),
        )
    };
    assert_eq!(
        load(&with("100000")).unwrap().sources[0].max_pages_per_poll,
        100_000
    );
    assert_eq!(load(&with("1")).unwrap().sources[0].max_pages_per_poll, 1);
    for v in ["0", "100001"] {
        assert_eq!(
            error(&with(v)),
            "bridges.toml:10: source `lab-ehr`: `max_pages_per_poll` must be 1..=100000"
        );
    }
}

#[test]
fn max_pending_age_defaults_and_floor() {
    assert_eq!(
        load(GOOD).unwrap().hooks[0].max_pending_age,
        Duration::from_secs(15 * 60)
    );
    let with = |v: &str| format!("{GOOD}max_pending_age = \"{v}\"\n");
    assert_eq!(
        load(&with("1h")).unwrap().hooks[0].max_pending_age,
        Duration::from_secs(3600)
    );
    assert_eq!(
        error(&with("0s")),
        "bridges.toml:26: hook `critical-labs`: `max_pending_age` must be at least 1s, not 0s"
    );
}

#[test]
fn a_missing_file_shows_the_os_error_once() {
    let e = Config::load(Path::new("/nonexistent/bridges.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/bridges.toml: cannot read config: No such file or directory (os error 2)"
    );
    // Not a `source()` as well: error chains would print it twice.
    assert!(std::error::Error::source(&e).is_none());
}

#[test]
fn defaults_apply() {
    let c = load(
        "[[source]]\nname='a'\nbase_url='https://x/fhir'\nresources=['Patient']\n[[hook]]\nname='h'\nurl='https://y/'\n",
    )
    .unwrap();
    assert_eq!(c.sources[0].start, Start::Now);
    assert_eq!(c.sources[0].owner_id, "a");
    assert_eq!(c.hooks[0].max_attempts, 6);
    assert_eq!(c.hooks[0].sources, vec!["a".to_string()]);
    assert_eq!(c.state_dir, Path::new("state"));
    assert_eq!(c.sources[0].timeout, Duration::from_secs(30));
    assert_eq!(c.sources[0].max_pages_per_poll, 1000);
    assert_eq!(c.hooks[0].timeout, Duration::from_secs(15));
    assert_eq!(c.hooks[0].max_pending_age, Duration::from_secs(900));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[cfg(unix)]
#[test]
fn a_literal_secret_in_a_file_others_can_read_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    let text = "[[source]]\nname='a'\nbase_url='https://x/fhir'\nresources=['Patient']\n[[hook]]\nname='h'\nurl='https://y/'\n[hook.auth]\ntype='basic'\nusername='u'\npassword='s3cret-literal'\n";
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(
        c.warnings.iter().any(
            |w| w.contains("hook `h`: a secret is written in this file, which others can read")
        ),
        "{:?}",
        c.warnings
    );
    assert!(!format!("{:?}", c.warnings).contains("s3cret-literal"));
    assert!(!format!("{:?}", c.hooks[0]).contains("s3cret-literal"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(!c.warnings.iter().any(|w| w.contains("others can read")));
}

#[test]
fn source_auth_is_checked_when_the_config_loads() {
    let base =
        "[[source]]\nname='a'\nbase_url='https://x/fhir'\nresources=['Patient']\n[source.auth]\n";
    let e = load(&format!(
        "{base}type='client-credentials'\ntoken_url='https://x/token'\nclient_id='c'\n"
    ))
    .unwrap_err();
    assert!(
        e.contains(":5: source `a`: `auth`: type \"client-credentials\" needs `client_secret`"),
        "{e}"
    );
    let e = load(&format!(
        "{base}type='basic'\nusername='u'\npassword='p'\ntoken='t'\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("`auth`: `token` does not apply to type \"basic\""),
        "{e}"
    );
    let e = load(&format!("{base}type='smart-backend'\nclient_id='c'\n")).unwrap_err();
    assert!(
        e.contains(":5: source `a`: `auth`: type \"smart-backend\" needs `private_key`"),
        "{e}"
    );
    let e = load(&format!(
        "{base}type='smart-backend'\nclient_id='c'\nprivate_key='SECRET-NOT-A-PEM'\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("`auth`: `private_key`: not a PEM private key"),
        "{e}"
    );
    assert!(!e.contains("SECRET-NOT-A-PEM"), "{e}");
    let e = load(&format!(
        "{base}type='bearer'\ntoken={{ env = 'FHIR_BRIDGE_TEST_NO_TOKEN' }}\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("`auth`: `token`: environment variable `FHIR_BRIDGE_TEST_NO_TOKEN` is not set"),
        "{e}"
    );
    let c = load(&format!("{base}type='bearer'\ntoken='t0k3n-literal'\n")).unwrap();
    assert!(!format!("{:?}", c.sources[0]).contains("t0k3n-literal"));
}

#[test]
fn plain_http_is_for_loopback_unless_the_operator_allows_it() {
    let text =
        "[[source]]\nname='a'\nbase_url='http://ehr.example.org/fhir'\nresources=['Patient']\n";
    let e = load(text).unwrap_err();
    assert!(
        e.contains(":3: source `a`: `base_url`: plain http to another machine"),
        "{e}"
    );
    assert!(load(&format!("{text}allow_insecure_http = true\n")).is_ok());
    for local in [
        "http://127.0.0.1:8080/fhir",
        "http://[::1]/fhir",
        "http://localhost/fhir",
    ] {
        let t = format!("[[source]]\nname='a'\nbase_url='{local}'\nresources=['Patient']\n");
        assert!(load(&t).is_ok(), "{local}");
    }
}

#[test]
fn allowed_origins_are_origins_only() {
    let with = |list: &str| {
        GOOD.replace(
            "owner_id = \"org/lab\"\n",
            &format!("owner_id = \"org/lab\"\nallowed_origins = {list}\n"),
        )
    };
    let c = load(&with(
        r#"["https://cdn.example.org", "http://127.0.0.1:9"]"#,
    ))
    .unwrap();
    assert_eq!(c.sources[0].allowed_origins.len(), 2);
    let next = Url::parse("https://cdn.example.org/page?x=2").unwrap();
    assert!(c.sources[0].allows(&next));
    assert!(!c.sources[0].allows(&Url::parse("https://cdn.example.org:8443/").unwrap()));
    assert_eq!(c.sources[0].origins().len(), 3);

    let e = error(&with(r#"["https://cdn.example.org/fhir"]"#));
    assert!(e.contains("bridges.toml:"), "{e}");
    assert!(
        e.contains("`allowed_origins[0]`: an origin is scheme, host and port only"),
        "{e}"
    );
    let e = error(&with(r#"["http://cdn.example.org"]"#));
    assert!(e.contains("`allowed_origins[0]`: plain http"), "{e}");
    let e = error(&with(r#"["https://u:p@cdn.example.org"]"#));
    assert!(
        e.contains("credentials in the URL") && !e.contains("u:p"),
        "{e}"
    );
    let e = error(&with(r#"["not a url"]"#));
    assert!(e.contains("`allowed_origins[0]`: not a URL"), "{e}");
}

/// A test CA, and a client certificate it signed, as PEM: (ca, cert, key).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["bridge".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_files_are_read_and_parsed_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki();
    let (_, _, other_key) = test_pki();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", &ca);
    write("client.pem", &cert);
    write("client.key", &key);
    write("other.key", &other_key);
    write("empty.pem", "no PEM in here\n");
    write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    );
    write(
        "notder.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let path = dir.path().join("bridges.toml");
    let load = |tls: &str| {
        let text = format!(
            "[[source]]\nname='a'\nbase_url='https://x/fhir'\nresources=['Patient']\n{tls}"
        );
        validate(&text, &path).map_err(|e| e.to_string())
    };
    // Relative paths resolve against the config's directory.
    let c =
        load("ca_file='ca.pem'\nclient_cert='client.pem'\nclient_key={ file = 'client.key' }\n")
            .unwrap();
    let debug = format!("{:?}", c.sources[0]);
    assert!(
        debug.contains("client_key: Some(\"[redacted]\")"),
        "{debug}"
    );
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    assert!(load("").unwrap().sources[0].tls.is_none());
    assert!(load("ca_file='ca.pem'\n").unwrap().sources[0].tls.is_some());

    let e = load("ca_file='missing.pem'\n").unwrap_err();
    assert!(e.contains(":5: source `a`: `ca_file`: cannot read "), "{e}");
    assert!(e.contains("missing.pem: No such file"), "{e}");
    let e = load("ca_file='empty.pem'\n").unwrap_err();
    assert!(
        e.contains("`ca_file`: ") && e.contains("holds no PEM certificate"),
        "{e}"
    );
    let e = load("ca_file='bad.pem'\n").unwrap_err();
    assert!(
        e.contains("`ca_file`: ") && e.contains("bad.pem is not PEM"),
        "{e}"
    );
    let e = load("ca_file='notder.pem'\n").unwrap_err();
    assert!(
        e.contains(":5: source `a`: `ca_file`: a certificate in ")
            && e.contains("notder.pem does not parse"),
        "{e}"
    );

    let e = load("client_cert='client.pem'\n").unwrap_err();
    assert!(
        e.contains(":5: source `a`: `client_cert` needs `client_key`"),
        "{e}"
    );
    let e = load("client_key={ file = 'client.key' }\n").unwrap_err();
    assert!(
        e.contains(":5: source `a`: `client_key` needs `client_cert`"),
        "{e}"
    );
    let e = load("client_cert='empty.pem'\nclient_key={ file = 'client.key' }\n").unwrap_err();
    assert!(
        e.contains(":5: source `a`: `client_cert`: ") && e.contains("holds no PEM certificate"),
        "{e}"
    );
    // A key that is not one, or not the certificate's: never echoed.
    let e = load("client_cert='client.pem'\nclient_key='SECRET-KEY-MATERIAL'\n").unwrap_err();
    assert!(
        e.contains(":6: source `a`: `client_key`: not a PEM private key"),
        "{e}"
    );
    assert!(!e.contains("SECRET-KEY-MATERIAL"), "{e}");
    let e = load("client_cert='client.pem'\nclient_key={ file = 'other.key' }\n").unwrap_err();
    assert!(
        e.contains(":6: source `a`: `client_key`: not usable with `client_cert` "),
        "{e}"
    );
    let body = |pem: &str| pem.lines().nth(1).unwrap_or_default().to_string();
    assert!(!e.contains(&body(&other_key)), "{e}");
    let e = load("client_cert='client.pem'\nclient_key={ env = 'FHIR_BRIDGE_TEST_NO_KEY' }\n")
        .unwrap_err();
    assert!(
        e.contains("`client_key`: environment variable `FHIR_BRIDGE_TEST_NO_KEY` is not set"),
        "{e}"
    );

    // Hooks take the same keys.
    let hook = |tls: &str| {
        let text = format!("[[hook]]\nname='h'\nurl='https://y/'\n{tls}");
        validate(&text, &path).map_err(|e| e.to_string())
    };
    assert!(
        hook("ca_file='ca.pem'\nclient_cert='client.pem'\nclient_key={ file = 'client.key' }\n")
            .unwrap()
            .hooks[0]
            .tls
            .is_some()
    );
    let e = hook("ca_file='missing.pem'\n").unwrap_err();
    assert!(e.contains(":4: hook `h`: `ca_file`: cannot read "), "{e}");
    let e = hook("client_cert='client.pem'\n").unwrap_err();
    assert!(
        e.contains(":4: hook `h`: `client_cert` needs `client_key`"),
        "{e}"
    );
}

#[test]
fn hook_oauth_is_checked_when_the_config_loads() {
    let base = "[[hook]]\nname='h'\nurl='https://y/'\n[hook.auth]\ntype='oauth'\n";
    let good = "token_url='https://idp/token'\nclient_id='c'\nclient_secret='cs-literal-SECRET'\n";
    let c = load(&format!(
        "{base}{good}audience='https://y'\nscope='hooks'\n"
    ))
    .unwrap();
    let debug = format!("{:?}", c.hooks[0]);
    assert!(
        debug.contains("OAuth(ClientCredentials(https://idp/token, c, [redacted]))"),
        "{debug}"
    );
    assert!(!debug.contains("cs-literal-SECRET"), "{debug}");
    match &c.hooks[0].auth {
        Some(HookAuth::OAuth(cc)) => {
            assert!(cc.secret_in_header, "client_secret_basic by default");
            assert_eq!(cc.audience.as_deref(), Some("https://y"));
        }
        other => panic!("{other:?}"),
    }
    let c = load(&format!("{base}{good}method='client_secret_post'\n")).unwrap();
    assert!(matches!(&c.hooks[0].auth, Some(HookAuth::OAuth(cc)) if !cc.secret_in_header));

    let e = load(&format!(
        "{base}token_url='https://idp/token'\nclient_id='c'\n"
    ))
    .unwrap_err();
    assert!(
        e.contains(":4: hook `h`: `auth`: type \"oauth\" needs `client_secret`"),
        "{e}"
    );
    let e = load(&format!("{base}{good}password='p'\n")).unwrap_err();
    assert!(
        e.contains("`auth`: `password` does not apply to type \"oauth\""),
        "{e}"
    );
    let e = load(&format!("{base}{good}method='private_key_jwt'\n")).unwrap_err();
    assert!(
        e.contains("`auth`: `method`: `private_key_jwt` is not"),
        "{e}"
    );
    let e = load(&format!("{base}{good}").replace("type='oauth'", "type='digest'")).unwrap_err();
    assert!(
        e.contains(":5: hook `h`: `auth.type`: `digest` is not one of \"basic\", \"oauth\""),
        "{e}"
    );
    // The token endpoint gets the client secret: https, unless loopback or allowed.
    let insecure = format!("{base}{good}").replace("https://idp", "http://idp");
    let e = load(&insecure).unwrap_err();
    assert!(
        e.contains(":6: hook `h`: `auth.token_url`: plain http to another machine"),
        "{e}"
    );
    let allowed = insecure.replace(
        "url='https://y/'\n",
        "url='https://y/'\nallow_insecure_http = true\n",
    );
    assert!(load(&allowed).is_ok());
    assert!(load(&format!("{base}{good}").replace("https://idp", "http://127.0.0.1:9")).is_ok());
}

#[cfg(unix)]
#[test]
fn a_literal_client_secret_or_client_key_in_a_readable_file_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    let (_, cert, key) = test_pki();
    std::fs::write(dir.path().join("client.pem"), &cert).unwrap();
    let cases = [
        (
            "hook `h`",
            "[[hook]]\nname='h'\nurl='https://y/'\n[hook.auth]\ntype='oauth'\ntoken_url='https://idp/token'\nclient_id='c'\nclient_secret='cs'\n".to_string(),
        ),
        (
            "hook `h`",
            format!("[[hook]]\nname='h'\nurl='https://y/'\nclient_cert='client.pem'\nclient_key='''{key}'''\n"),
        ),
        (
            "source `a`",
            format!("[[source]]\nname='a'\nbase_url='https://x/fhir'\nresources=['Patient']\nclient_cert='client.pem'\nclient_key='''{key}'''\n"),
        ),
    ];
    for (who, text) in cases {
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&path).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains(&format!("{who}: a secret is written in this file"))),
            "{who}: {:?}",
            c.warnings
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&path).unwrap();
        assert!(!c.warnings.iter().any(|w| w.contains("others can read")));
    }
}

#[test]
fn an_unknown_topic_names_file_line_and_key_and_lists_the_topics() {
    let text = GOOD.replace("content = \"full-resource\"", "topic = \"adt-dischage\"");
    let e = load(&text).unwrap_err();
    assert!(
        e.starts_with(
            "bridges.toml:21: hook `critical-labs`: `topic`: no topic is named `adt-dischage`; known topics: critical-lab-result, adt-discharge,"
        ),
        "{e}"
    );
}

#[test]
fn a_topic_with_a_filter_needs_both_and_keeps_bodies_for_its_type_only() {
    let text = GOOD.replace(
        "content = \"full-resource\"",
        "topic = \"adt-discharge\"\ncontent = \"full-resource\"",
    );
    let c = load(&text).unwrap();
    let h = &c.hooks[0];
    assert_eq!(h.topic.map(|t| t.name), Some("adt-discharge"));
    assert!(h.filter.uses_previous());
    assert!(h.needs_previous("Encounter"));
    assert!(!h.needs_previous("Observation"));
    let finished = crate::filter::parse_resource(
        r#"{"resourceType": "Encounter", "id": "e", "status": "finished"}"#,
    )
    .unwrap();
    // The topic matches, the filter (Observation only) does not.
    assert!(!h.filter.matches(&finished).unwrap());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // A plain filter reading `$previous` keeps bodies for every type.
    let text = GOOD.replace(
        r#"'.resourceType == "Observation"'"#,
        "'.status != $previous.status'",
    );
    let h = &load(&text).unwrap().hooks[0];
    assert!(h.topic.is_none());
    assert!(h.needs_previous("Observation") && h.needs_previous("Encounter"));
    // Without either: no bodies at all.
    let h = &load(GOOD).unwrap().hooks[0];
    assert!(!h.needs_previous("Observation"));
}

#[test]
fn a_topic_about_a_type_no_source_polls_is_a_warning() {
    let text = GOOD.replace(
        "content = \"full-resource\"",
        "topic = \"appointment-no-show\"",
    );
    let c = load(&text).unwrap();
    assert_eq!(
        c.warnings,
        [
            "bridges.toml:21: hook `critical-labs`: topic `appointment-no-show` is about Appointment, which none of its sources polls: it receives nothing"
        ]
    );
}

#[test]
fn a_lag_beyond_the_overlap_is_refused() {
    let text = GOOD.replace(
        "owner_id = \"org/lab\"",
        "owner_id = \"org/lab\"\nlag = \"5m\"",
    );
    assert_eq!(
        error(&text),
        "bridges.toml:13: source `lab-ehr`: `lag` (5m) must not exceed `overlap` (2m)"
    );
    let c = load(&text.replace("\"5m\"", "\"90s\"")).unwrap();
    assert_eq!(c.sources[0].lag, Duration::from_secs(90));
    assert_eq!(load(GOOD).unwrap().sources[0].lag, Duration::ZERO);
}
