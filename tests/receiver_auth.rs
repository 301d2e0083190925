//! Receivers can trust what they get: Standard Webhooks signatures (v1 HMAC
//! and v1a Ed25519, two keys at once for rotation), Basic auth and static
//! headers, against the real binary, with a receiver that verifies every
//! request with the crate's own `verify`. No secret reaches logs or status.

mod common;

use common::scripted::{Scripted, Seen, fhir_json, status_with};
use common::{Bridge, config, hook, wait_for};
use fhir_bridge::signing::webhook::{
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
    common::store_observation(&sandbox.store, "o1");
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

const HOOK_CLIENT_SECRET: &str = "hcs-3f9a0c2d-never-logged";
const WRONG_CLIENT_SECRET: &str = "wrong-7e21b4c0-never-logged";

/// `[hook.auth] type = "oauth"`: the receiver takes only tokens its token
/// endpoint issued and has not revoked. Tokens live 6 s (renewed after 3);
/// a revoked one gets a 401, one new token and the same POST again, within
/// the attempt. A client the token endpoint refuses fails its attempts with
/// the OAuth error code only, and ends in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_to_the_receiver_are_cached_renewed_and_refreshed_after_a_401() {
    let issued = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let is = issued.clone();
    let token = Scripted::start(move |s: &Seen| {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&s.body).into_owned().collect();
        let get = |k: &str| form.get(k).map(String::as_str);
        let ok = get("grant_type") == Some("client_credentials")
            && get("client_id") == Some("bridge")
            && get("client_secret") == Some(HOOK_CLIENT_SECRET)
            && get("audience") == Some("https://receiver.example")
            && get("scope") == Some("webhooks:write")
            && s.header("authorization").is_none();
        if !ok {
            return fhir_json(
                400,
                json!({"error": "invalid_client", "error_description": "LEAKED-DESCRIPTION"}),
            );
        }
        let mut is = is.lock().unwrap();
        let t = format!("hooktok-{}-{}", is.len(), fastrand::u64(..));
        is.push(t.clone());
        fhir_json(
            200,
            json!({"access_token": t, "token_type": "Bearer", "expires_in": 6}),
        )
    })
    .await;
    let revoked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let unauthorized = Arc::new(AtomicUsize::new(0));
    let (is, rv, un) = (issued.clone(), revoked.clone(), unauthorized.clone());
    let receiver = Scripted::start(move |s: &Seen| {
        let token = s
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(String::from))
            .unwrap_or_default();
        if !is.lock().unwrap().contains(&token) || rv.lock().unwrap().contains(&token) {
            un.fetch_add(1, Ordering::SeqCst);
            return status_with(401, &[]);
        }
        status_with(200, &[])
    })
    .await;

    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("hcs"), HOOK_CLIENT_SECRET).unwrap();
    let oauth = |secret: &str| {
        format!(
            "retry_schedule = [\"1s\"]\nmax_attempts = 2\n[hook.auth]\ntype = \"oauth\"\ntoken_url = \"{}\"\nclient_id = \"bridge\"\nclient_secret = {secret}\naudience = \"https://receiver.example\"\nscope = \"webhooks:write\"\nmethod = \"client_secret_post\"\n",
            token.url("/token")
        )
    };
    let hooks = format!(
        "{}{}",
        hook(
            "oauth",
            &receiver.url("/hooks/oauth"),
            "true",
            &oauth(&format!(
                "{{ file = \"{}\" }}",
                secrets.path().join("hcs").display()
            ))
        ),
        hook(
            "refused",
            &receiver.url("/hooks/refused"),
            "true",
            &oauth(&format!("\"{WRONG_CLIENT_SECRET}\""))
        ),
    );
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    let hook_status = |name: &str| {
        bridge.status_json()["hooks"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let observe = |id: &str| {
        sandbox.store.upsert(
            "Observation",
            Some(id),
            json!({"resourceType": "Observation", "status": "final"}),
        );
    };
    let tokens = || issued.lock().unwrap().len();

    observe("o1");
    wait_for(20, "o1 delivered", || {
        hook_status("oauth")["delivered"] == 1
    })
    .await;
    assert_eq!(tokens(), 1);
    // The receiver revokes the token: 401, a new token, the same POST again.
    let current = issued.lock().unwrap().last().cloned().unwrap();
    revoked.lock().unwrap().push(current);
    observe("o2");
    wait_for(20, "o2 delivered after the 401", || {
        hook_status("oauth")["delivered"] == 2
    })
    .await;
    assert_eq!(unauthorized.load(Ordering::SeqCst), 1);
    assert_eq!(tokens(), 2);
    // Past half the lifetime the token is renewed before it is used again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    observe("o3");
    wait_for(20, "o3 delivered", || {
        hook_status("oauth")["delivered"] == 3
    })
    .await;
    assert_eq!(tokens(), 3, "renewed before it expired");
    assert_eq!(
        unauthorized.load(Ordering::SeqCst),
        1,
        "no 401 for a renewal"
    );
    let st = hook_status("oauth");
    assert_eq!(
        st["failed_attempts"], 0,
        "the 401 was cured within its attempt: {st}"
    );

    // The refused client: each attempt fails at the token endpoint; nothing
    // reaches the receiver; after max_attempts the messages are dead letters.
    wait_for(20, "the refused hook's dead letters", || {
        hook_status("refused")["dead_lettered"] == 3
    })
    .await;
    let st = hook_status("refused");
    assert_eq!(
        st["last_error"], "token endpoint: HTTP 400 invalid_client",
        "{st}"
    );
    assert!(receiver.seen().iter().all(|s| s.uri != "/hooks/refused"));
    let dlq = String::from_utf8_lossy(&bridge.cli(&["dlq", "list"]).stdout).to_string();
    assert!(
        dlq.contains("token endpoint: HTTP 400 invalid_client"),
        "{dlq}"
    );

    let mut text = dlq;
    for args in [&["status"][..], &["status", "--json"]] {
        text.push_str(&String::from_utf8_lossy(&bridge.cli(args).stdout));
    }
    bridge.stop();
    text.push_str(&bridge.logs());
    common::assert_no_secret_in(
        &text,
        &[HOOK_CLIENT_SECRET, WRONG_CLIENT_SECRET],
        &issued.lock().unwrap(),
    );
}
