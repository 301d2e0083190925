//! Receivers can trust what they get: Standard Webhooks signatures (v1 HMAC
//! and v1a Ed25519, two keys at once for rotation), Basic auth and static
//! headers, against the real binary, with a receiver that verifies every
//! request with the crate's own `verify`. No secret reaches logs or status.

mod common;

use common::scripted::{Scripted, Seen, status_with};
use common::{Bridge, config, hook, wait_for};
use fhir_bridge::delivery::signature::{
    VerifyingKey, generate_asymmetric, generate_symmetric, verify,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn verified(s: &Seen, keys: &[VerifyingKey]) -> bool {
    let (Some(id), Some(ts), Some(sig)) = (
        s.header("webhook-id"),
        s.header("webhook-timestamp"),
        s.header("webhook-signature"),
    ) else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    verify(keys, &id, &ts, &sig, &s.body, now, Duration::from_secs(300)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_authenticated_and_secrets_stay_out_of_logs() {
    let hmac = generate_symmetric().unwrap();
    let (ed_secret, ed_public) = generate_asymmetric().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("hmac"), format!("{hmac}\n")).unwrap();
    std::fs::write(secrets.path().join("ed"), &ed_secret).unwrap();
    let password = "pw-8c1f3d2e-not-for-logs";

    // The receiver knows the HMAC secret and, separately, only the Ed25519
    // public key: each alone must verify (rotation), and the first attempt
    // is refused so that a retry's fresh signature is checked too.
    let hmac_only = vec![VerifyingKey::parse(&hmac).unwrap()];
    let public_only = vec![VerifyingKey::parse(&ed_public).unwrap()];
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let receiver = Scripted::start(move |s: &Seen| {
        let auth_ok = s.header("authorization").as_deref()
            == Some("Basic dXNlcjpwdy04YzFmM2QyZS1ub3QtZm9yLWxvZ3M=");
        let ok = verified(s, &hmac_only)
            && verified(s, &public_only)
            && auth_ok
            && s.header("x-tenant").as_deref() == Some("acme");
        if !ok {
            return status_with(401, &[]);
        }
        if a.fetch_add(1, Ordering::SeqCst) == 0 {
            return status_with(500, &[]);
        }
        status_with(200, &[])
    })
    .await;

    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    let extra = format!(
        "retry_schedule = [\"1s\"]\nsigning_secrets = [{{ file = \"{}\" }}, {{ file = \"{}\" }}]\n\
         [hook.headers]\nX-Tenant = \"acme\"\n[hook.auth]\ntype = \"basic\"\nusername = \"user\"\npassword = \"{password}\"\n",
        secrets.path().join("hmac").display(),
        secrets.path().join("ed").display(),
    );
    let hooks = hook("signed", &receiver.url("/hooks/signed"), "true", &extra);
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    sandbox.store.upsert(
        "Observation",
        Some("o1"),
        json!({"resourceType": "Observation", "status": "final"}),
    );
    wait_for(30, "the webhook delivered after one retry", || {
        bridge.status_json()["hooks"][0]["delivered"] == 1
    })
    .await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2, "one refused attempt, one delivery");
    let keys = [
        VerifyingKey::parse(&hmac).unwrap(),
        VerifyingKey::parse(&ed_public).unwrap(),
    ];
    for s in &seen {
        assert!(verified(s, &keys), "attempt not verifiable");
        let sig = s.header("webhook-signature").unwrap();
        assert!(sig.starts_with("v1,") && sig.contains(" v1a,"), "{sig}");
    }
    // The retry was signed anew, with its own timestamp.
    assert_ne!(
        seen[0].header("webhook-timestamp"),
        seen[1].header("webhook-timestamp")
    );
    assert_eq!(seen[0].header("webhook-id"), seen[1].header("webhook-id"));

    // A tampered body does not verify.
    let mut tampered = seen[1].clone();
    tampered.body = axum::body::Bytes::from(seen[1].body.to_vec().repeat(2));
    assert!(!verified(&tampered, &keys));

    // No secret in logs (debug), status, status --json or dlq list.
    let mut text = bridge.logs();
    for args in [&["status"][..], &["status", "--json"], &["dlq", "list"]] {
        text.push_str(&String::from_utf8_lossy(&bridge.cli(args).stdout));
    }
    bridge.stop();
    text.push_str(&bridge.logs());
    let b64 = |s: &str| s.split('_').nth(1).unwrap_or(s).to_string();
    for secret in [
        hmac.as_str(),
        &b64(&hmac),
        &ed_secret,
        &b64(&ed_secret),
        password,
    ] {
        assert!(
            !text.contains(secret),
            "a secret reached the logs or status"
        );
    }
}

#[test]
fn bad_signing_secrets_and_auth_are_config_errors_that_do_not_echo_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridges.toml");
    let base = "[[source]]\nname = \"s\"\nbase_url = \"http://127.0.0.1:1/fhir\"\nresources = [\"Observation\"]\n\n[[hook]]\nname = \"h\"\nurl = \"http://127.0.0.1:2/\"\n";
    let run = |extra: &str| {
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
            .args(["validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("signing_secrets = [\"whsec_not*base64-SECRETVALUE\"]\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(":9: hook `h`: `signing_secrets[0]`"), "{err}");
    assert!(!err.contains("SECRETVALUE"), "{err}");
    let (code, err) = run("signing_secrets = [{ env = \"FHIR_BRIDGE_TEST_UNSET_SECRET\" }]\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("environment variable `FHIR_BRIDGE_TEST_UNSET_SECRET` is not set"),
        "{err}"
    );
    let (code, err) = run("[hook.auth]\ntype = \"basic\"\nusername = \"u\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`auth`: type \"basic\" needs `username` and `password`"),
        "{err}"
    );
    let (code, err) = run("[hook.headers]\nwebhook-signature = \"forged\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`headers.webhook-signature`: the bridge sets this header itself"),
        "{err}"
    );
    let secret = generate_symmetric().unwrap();
    let (code, err) = run(&format!("signing_secrets = [\"{secret}\"]\n"));
    assert_eq!(code, Some(0), "{err}");
}
