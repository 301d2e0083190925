//! Authenticated EHRs: OAuth 2.0 client credentials (token cache, refresh
//! before expiry, 401 then one refresh, a refused client shown on status with
//! the OAuth error code only) and static Basic credentials, against the real
//! binary. No secret or token reaches logs or status.

mod common;

use common::scripted::{Scripted, Seen, bundle, fhir_json, now_instant, observation, status_with};
use common::{Bridge, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const CLIENT_SECRET: &str = "cs-5b0e9a77-never-logged";
const BASIC_PASSWORD: &str = "bp-0d3e1c55-never-logged";

fn source(name: &str, base: &str, auth: &str) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\nbase_url = \"{base}\"\nresources = [\"Observation\"]\nevery = \"300ms\"\noverlap = \"5s\"\nstart = \"beginning\"\ntimeout = \"2s\"\n{auth}\n"
    )
}

fn target_of(status: &serde_json::Value, source: &str) -> serde_json::Value {
    status["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == source))
        .map(|s| s["targets"][0].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_basic_and_a_refused_client() {
    // Token endpoint: client `bridge` with CLIENT_SECRET (client_secret_basic)
    // gets short-lived tokens; anyone else gets 400 invalid_client with a
    // description that must not reach status.
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let is = issued.clone();
    let token = Scripted::start(move |s: &Seen| {
        use base64::Engine;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("bridge:{CLIENT_SECRET}"))
        );
        let body = String::from_utf8_lossy(&s.body).to_string();
        if s.header("authorization").as_deref() != Some(want.as_str())
            || !body.contains("grant_type=client_credentials")
            || !body.contains("scope=system%2FObservation.rs")
        {
            return fhir_json(400, json!({"error": "invalid_client", "error_description": "bad secret LEAKED-DESCRIPTION"}));
        }
        let mut is = is.lock().unwrap();
        let t = format!("tok-{}-{}", is.len(), fastrand::u64(..));
        is.push(t.clone());
        fhir_json(200, json!({"access_token": t, "token_type": "Bearer", "expires_in": 6}))
    })
    .await;

    // The EHR accepts only the newest token, unless revoked.
    let revoked = Arc::new(AtomicBool::new(false));
    let second = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let (is, rv, sc, pc) = (
        issued.clone(),
        revoked.clone(),
        second.clone(),
        polls.clone(),
    );
    let ehr = Scripted::start(move |s: &Seen| {
        let newest = is.lock().unwrap().last().cloned();
        let ok = newest.is_some_and(|t| s.header("authorization") == Some(format!("Bearer {t}")));
        if !ok || rv.swap(false, Ordering::SeqCst) {
            return status_with(401, &[]);
        }
        pc.fetch_add(1, Ordering::SeqCst);
        let mut rs = vec![observation("o1", "1", "2026-01-01T00:00:00Z")];
        if sc.load(Ordering::SeqCst) {
            rs.push(observation("o2", "1", "2026-01-01T00:00:01Z"));
        }
        bundle(&now_instant(), rs, None)
    })
    .await;
    // A Basic-auth EHR.
    let basic = Scripted::start(|s: &Seen| {
        use base64::Engine;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("svc:{BASIC_PASSWORD}"))
        );
        if s.header("authorization").as_deref() != Some(want.as_str()) {
            return status_with(401, &[]);
        }
        bundle(
            &now_instant(),
            vec![observation("b1", "1", "2026-01-01T00:00:00Z")],
            None,
        )
    })
    .await;

    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("cs"), CLIENT_SECRET).unwrap();
    let cc = |secret: &str| {
        format!(
            "[source.auth]\ntype = \"client-credentials\"\ntoken_url = \"{}\"\nclient_id = \"bridge\"\nclient_secret = {secret}\nscope = \"system/Observation.rs\"\n",
            token.url("/token")
        )
    };
    let rx = Receiver::start(0, None).await.unwrap();
    let config = format!(
        "state_dir = \"state\"\n\n{}{}{}[[hook]]\nname = \"all\"\nurl = \"{}\"\n",
        source(
            "oauth",
            &ehr.url("/fhir"),
            &cc(&format!(
                "{{ file = \"{}\" }}",
                secrets.path().join("cs").display()
            ))
        ),
        source("wrong", &ehr.url("/fhir"), &cc("\"not-the-secret\"")),
        source(
            "basic",
            &basic.url("/fhir"),
            &format!(
                "[source.auth]\ntype = \"basic\"\nusername = \"svc\"\npassword = \"{BASIC_PASSWORD}\"\n"
            )
        ),
        rx.url("hooks/all"),
    );
    let mut bridge = Bridge::start(&config);
    let got = |id: &str| rx.received().iter().any(|r| r.resource_id == id);
    wait_for(20, "o1 and b1 delivered", || {
        got("Observation/o1") && got("Observation/b1")
    })
    .await;
    wait_for(20, "the refused client on status", || {
        target_of(&bridge.status_json(), "wrong")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("token endpoint: HTTP 400 invalid_client"))
    })
    .await;
    // The EHR revokes the token: the next request gets 401, the bridge
    // fetches a new token once and retries; a later change still arrives.
    revoked.store(true, Ordering::SeqCst);
    second.store(true, Ordering::SeqCst);
    wait_for(20, "o2 delivered after the 401", || got("Observation/o2")).await;
    // Run past a token lifetime: the token is renewed before it expires.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let st = bridge.status_json();
    assert_eq!(target_of(&st, "oauth")["last_outcome"], "ok", "{st}");
    let polls = polls.load(Ordering::SeqCst);
    let tokens = issued.lock().unwrap().len();
    assert!(polls >= 20, "only {polls} polls");
    // ~10 s at a 6 s lifetime (renewed every 3 s) plus the revocation.
    assert!(tokens <= 6, "{tokens} tokens for {polls} polls");
    eprintln!("{polls} authenticated polls, {tokens} tokens");

    let mut text = String::new();
    for args in [&["status"][..], &["status", "--json"], &["dlq", "list"]] {
        text.push_str(&String::from_utf8_lossy(&bridge.cli(args).stdout));
    }
    bridge.stop();
    text.push_str(&bridge.logs());
    assert!(
        !text.contains("LEAKED-DESCRIPTION"),
        "the token endpoint's body reached status or logs"
    );
    for secret in [CLIENT_SECRET, BASIC_PASSWORD] {
        assert!(!text.contains(secret), "a secret reached status or logs");
    }
    for t in issued.lock().unwrap().iter() {
        assert!(!text.contains(t.as_str()), "a token reached status or logs");
    }
}

/// SMART Backend Services, as Epic and Cerner want it: keys made with
/// `fhir-bridge keys generate` (ES384 and RS384), registered as JWKS with a
/// token endpoint that checks every client assertion with an independent JWT
/// implementation (signature, iss/sub/aud/exp, a reused jti refused). One
/// source finds the token endpoint in `.well-known/smart-configuration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_backend_services_with_es384_and_rs384_keys() {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    use std::collections::HashSet;

    let keys = tempfile::tempdir().unwrap();
    let mut jwks = JwkSet { keys: vec![] };
    for alg in ["ES384", "RS384"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
            .args(["keys", "generate", "--alg", alg, "--out"])
            .arg(keys.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let set: JwkSet = serde_json::from_slice(&out.stdout).unwrap();
        jwks.keys.extend(set.keys);
    }

    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        sub: String,
        exp: i64,
        jti: String,
    }
    let refused = Arc::new(AtomicUsize::new(0));
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen_jti = Arc::new(Mutex::new(HashSet::<String>::new()));
    let token_url = Arc::new(Mutex::new(String::new()));
    let (rf, is, sj, tu) = (
        refused.clone(),
        issued.clone(),
        seen_jti.clone(),
        token_url.clone(),
    );
    let token = Scripted::start(move |s: &Seen| {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&s.body).into_owned().collect();
        let check = || -> Option<()> {
            (form.get("grant_type")? == "client_credentials").then_some(())?;
            (form.get("client_assertion_type")?
                == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                .then_some(())?;
            let jwt = form.get("client_assertion")?;
            let header = decode_header(jwt).ok()?;
            (header.typ.as_deref() == Some("JWT")).then_some(())?;
            let jwk = jwks.find(header.kid.as_deref()?)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let client = if header.alg == jsonwebtoken::Algorithm::ES384 { "epic-app" } else { "cerner-app" };
            let mut v = Validation::new(header.alg);
            v.set_audience(&[tu.lock().unwrap().as_str()]);
            v.set_issuer(&[client]);
            v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            let claims = decode::<Claims>(jwt, &key, &v).ok()?.claims;
            (claims.sub == claims.iss).then_some(())?;
            (claims.exp <= chrono::Utc::now().timestamp() + 300).then_some(())?;
            sj.lock().unwrap().insert(claims.jti).then_some(())?;
            Some(())
        };
        if check().is_none() {
            rf.fetch_add(1, Ordering::SeqCst);
            return fhir_json(400, json!({"error": "invalid_client"}));
        }
        let t = format!("smart-{}", fastrand::u64(..));
        is.lock().unwrap().push(t.clone());
        fhir_json(200, json!({"access_token": t, "token_type": "bearer", "expires_in": 300, "scope": form.get("scope")}))
    })
    .await;
    *token_url.lock().unwrap() = token.url("/token");

    let tu = token.url("/token");
    let is = issued.clone();
    let ehr = Scripted::start(move |s: &Seen| {
        if s.uri.ends_with("/.well-known/smart-configuration") {
            return fhir_json(
                200,
                json!({"token_endpoint": tu, "grant_types_supported": ["client_credentials"]}),
            );
        }
        let ok = s
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer ").map(String::from))
            .is_some_and(|t| is.lock().unwrap().contains(&t));
        if !ok {
            return status_with(401, &[]);
        }
        bundle(
            &now_instant(),
            vec![observation("s1", "1", "2026-01-01T00:00:00Z")],
            None,
        )
    })
    .await;

    let key = |alg: &str| {
        keys.path()
            .join(format!("fhir-bridge-{alg}.pem"))
            .display()
            .to_string()
    };
    let rx = Receiver::start(0, None).await.unwrap();
    let config = format!(
        "state_dir = \"state\"\n\n{}{}[[hook]]\nname = \"all\"\nurl = \"{}\"\n",
        source(
            "epic",
            &ehr.url("/fhir"),
            &format!(
                "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"epic-app\"\nprivate_key = {{ file = \"{}\" }}\nscope = \"system/Observation.rs\"\n",
                key("es384")
            )
        ),
        source(
            "cerner",
            &ehr.url("/fhir"),
            &format!(
                "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"cerner-app\"\nprivate_key = {{ file = \"{}\" }}\nscope = \"system/Observation.read\"\ntoken_url = \"{}\"\n",
                key("rs384"),
                token.url("/token")
            )
        ),
        rx.url("hooks/all"),
    );
    let mut bridge = Bridge::start(&config);
    wait_for(30, "both sources deliver", || {
        let st = bridge.status_json();
        ["epic", "cerner"]
            .iter()
            .all(|s| target_of(&st, s)["changes_seen"] == 1)
    })
    .await;
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "an assertion was refused"
    );
    assert_eq!(issued.lock().unwrap().len(), 2, "one token per source");
    // `keys jwks` prints the configured key's public half.
    let out = bridge.cli(&["keys", "jwks", "--source", "epic"]);
    let set: JwkSet = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(set.keys.len(), 1);
    let mut text = bridge.logs();
    text.push_str(&String::from_utf8_lossy(
        &bridge.cli(&["status", "--json"]).stdout,
    ));
    bridge.stop();
    for alg in ["es384", "rs384"] {
        let pem = std::fs::read_to_string(key(alg)).unwrap();
        let body_line = pem.lines().nth(1).unwrap();
        assert!(
            !text.contains(body_line),
            "a private key reached logs or status"
        );
    }
    for t in issued.lock().unwrap().iter() {
        assert!(!text.contains(t.as_str()), "a token reached logs or status");
    }
}
