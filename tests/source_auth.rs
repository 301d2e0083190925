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
    common::assert_no_secret_in(
        &text,
        &[CLIENT_SECRET, BASIC_PASSWORD],
        &issued.lock().unwrap(),
    );
}

/// SMART Backend Services, as Epic and Cerner want it: keys made with
/// `fhir-bridge keys generate` (ES384 and RS384), registered as JWKS with a
/// token endpoint that checks every client assertion with an independent JWT
/// implementation (signature, iss/sub/aud/exp, a reused jti refused: see
/// tests/common/auth_server.rs). One source finds the token endpoint in
/// `.well-known/smart-configuration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_backend_services_with_es384_and_rs384_keys() {
    use common::auth_server::{AuthServer, Client, Options};
    use common::authed::generate_key;
    use jsonwebtoken::jwk::JwkSet;

    let ehr = Scripted::start(|_| {
        bundle(
            &now_instant(),
            vec![observation("s1", "1", "2026-01-01T00:00:00Z")],
            None,
        )
    })
    .await;
    // The EHR is reached only through the proxy, with an issued token.
    let auth = AuthServer::start(
        &ehr.url("/fhir"),
        Options {
            scopes: vec![
                "system/Observation.rs".into(),
                "system/Observation.read".into(),
            ],
            lifetime: std::time::Duration::from_secs(300),
            revoke_at: None,
            hold_a_page: false,
        },
    )
    .await;
    let keys = tempfile::tempdir().unwrap();
    let (es_pem, es_jwks) = generate_key("ES384", keys.path());
    let (rs_pem, rs_jwks) = generate_key("RS384", keys.path());
    auth.register(Client::Jwks {
        id: "epic-app".into(),
        jwks: es_jwks,
    });
    auth.register(Client::Jwks {
        id: "cerner-app".into(),
        jwks: rs_jwks,
    });

    let rx = Receiver::start(0, None).await.unwrap();
    let config = format!(
        "state_dir = \"state\"\n\n{}{}[[hook]]\nname = \"all\"\nurl = \"{}\"\n",
        source(
            "epic",
            &auth.base_url(),
            &format!(
                "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"epic-app\"\nprivate_key = {{ file = \"{}\" }}\nscope = \"system/Observation.rs\"\n",
                es_pem.display()
            )
        ),
        source(
            "cerner",
            &auth.base_url(),
            &format!(
                "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"cerner-app\"\nprivate_key = {{ file = \"{}\" }}\nscope = \"system/Observation.read\"\ntoken_url = \"{}\"\n",
                rs_pem.display(),
                auth.token_url()
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
    let stats = auth.stats();
    assert!(
        stats.refused.is_empty(),
        "an assertion was refused: {stats:?}"
    );
    assert_eq!(stats.issued, 2, "one token per source");
    assert!(stats.unauthorized.is_empty(), "{stats:?}");
    assert_eq!(stats.discovery, 1, "only `epic` discovers");
    // `keys jwks` prints the configured key's public half.
    let out = bridge.cli(&["keys", "jwks", "--source", "epic"]);
    let set: JwkSet = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(set.keys.len(), 1);
    let mut text = bridge.logs();
    text.push_str(&String::from_utf8_lossy(
        &bridge.cli(&["status", "--json"]).stdout,
    ));
    bridge.stop();
    for pem in [es_pem, rs_pem] {
        let pem = std::fs::read_to_string(pem).unwrap();
        let body_line = pem.lines().nth(1).unwrap();
        assert!(
            !text.contains(body_line),
            "a private key reached logs or status"
        );
    }
    for t in auth.tokens() {
        assert!(!text.contains(t.as_str()), "a token reached logs or status");
    }
}

/// POSTs a token request; returns the status and the JSON body.
async fn token_request(
    url: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, serde_json::Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// The auth proxy the Medplum scenarios run through (tests/common/
/// auth_server.rs) is only worth something if it refuses: every bad client
/// assertion, secret and token here must fail, each good one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_auth_proxy_refuses_what_it_should() {
    use common::auth_server::{AuthServer, Client, Options};
    use common::authed::generate_key;
    use fhir_bridge::signing::smart::SmartKey;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use std::time::Duration;

    let upstream = Scripted::start(|_| {
        bundle(
            &now_instant(),
            vec![observation("u1", "1", "2026-01-01T00:00:00Z")],
            None,
        )
    })
    .await;
    let auth = AuthServer::start(
        &upstream.url("/fhir"),
        Options {
            scopes: vec!["system/Observation.rs".into()],
            lifetime: Duration::from_secs(1),
            revoke_at: None,
            hold_a_page: false,
        },
    )
    .await;
    let keys = tempfile::tempdir().unwrap();
    let (es_pem, es_jwks) = generate_key("ES384", keys.path());
    let (rs_pem, rs_jwks) = generate_key("RS384", keys.path());
    let es_kid = es_jwks.keys[0].common.key_id.clone().unwrap();
    auth.register(Client::Jwks {
        id: "es-app".into(),
        jwks: es_jwks,
    });
    auth.register(Client::Jwks {
        id: "rs-app".into(),
        jwks: rs_jwks,
    });
    auth.register(Client::Secret {
        id: "cc-app".into(),
        secret: "s3cret".into(),
        audience: None,
    });
    let tu = auth.token_url();
    let smart = |jwt: &str, scope: &str| {
        [
            ("grant_type", "client_credentials".to_string()),
            ("scope", scope.to_string()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ),
            ("client_assertion", jwt.to_string()),
        ]
    };
    let post_smart = |jwt: String, scope: &'static str| {
        let tu = tu.clone();
        let form = smart(&jwt, scope);
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_request(&tu, &form, None).await
        }
    };
    let scope = "system/Observation.rs";

    // The bridge's own assertions, ES384 and RS384, pass once each.
    let es = SmartKey::from_pem(&std::fs::read_to_string(&es_pem).unwrap(), None).unwrap();
    let rs = SmartKey::from_pem(&std::fs::read_to_string(&rs_pem).unwrap(), None).unwrap();
    let good = es.client_assertion("es-app", &tu).unwrap();
    let (status, body) = post_smart(good.clone(), scope).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 1);
    let es_token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(post_smart(good, scope).await.1["error"], "invalid_client");
    assert_eq!(
        post_smart(rs.client_assertion("rs-app", &tu).unwrap(), scope)
            .await
            .0,
        200
    );
    // Wrong audience, wrong client for the key, a scope not granted.
    for (jwt, sc) in [
        (
            es.client_assertion("es-app", "http://127.0.0.1:1/token")
                .unwrap(),
            scope,
        ),
        (es.client_assertion("rs-app", &tu).unwrap(), scope),
        (
            es.client_assertion("es-app", &tu).unwrap(),
            "system/Patient.rs",
        ),
    ] {
        assert_eq!(post_smart(jwt, sc).await.0, 400);
    }
    // Forged with jsonwebtoken: bad claims, no typ, the wrong algorithm for
    // the key, a key nobody registered under a registered kid.
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, sub: &str, exp: i64| serde_json::json!({"iss": iss, "sub": sub, "aud": tu, "exp": exp, "jti": fastrand::u64(..).to_string()});
    let es_key = EncodingKey::from_ec_pem(&std::fs::read(&es_pem).unwrap()).unwrap();
    let rs_key = EncodingKey::from_rsa_pem(&std::fs::read(&rs_pem).unwrap()).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let (other_pem, _) = generate_key("ES384", other_dir.path());
    let other_key = EncodingKey::from_ec_pem(&std::fs::read(&other_pem).unwrap()).unwrap();
    let header = |alg: Algorithm, typ: Option<&str>| {
        let mut h = Header::new(alg);
        h.kid = Some(es_kid.clone());
        h.typ = typ.map(String::from);
        h
    };
    let es_header = header(Algorithm::ES384, Some("JWT"));
    let sign = |h: &Header, c: serde_json::Value, k: &EncodingKey| encode(h, &c, k).unwrap();
    let control = sign(&es_header, claims("es-app", "es-app", now + 240), &es_key);
    assert_eq!(post_smart(control, scope).await.0, 200, "a forged good one");
    for jwt in [
        sign(&es_header, claims("es-app", "es-app", now + 3600), &es_key),
        sign(&es_header, claims("es-app", "es-app", now - 120), &es_key),
        sign(&es_header, claims("es-app", "other", now + 240), &es_key),
        sign(
            &header(Algorithm::ES384, None),
            claims("es-app", "es-app", now + 240),
            &es_key,
        ),
        sign(
            &header(Algorithm::RS384, Some("JWT")),
            claims("es-app", "es-app", now + 240),
            &rs_key,
        ),
        sign(
            &es_header,
            claims("es-app", "es-app", now + 240),
            &other_key,
        ),
    ] {
        let (status, body) = post_smart(jwt, scope).await;
        assert_eq!((status, &body["error"]), (400, &"invalid_client".into()));
    }

    // Client secrets: Basic only, the right secret only.
    let form = [("grant_type", "client_credentials"), ("scope", scope)];
    let (status, body) = token_request(&tu, &form, Some(("cc-app", "s3cret"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        token_request(&tu, &form, Some(("cc-app", "wrong"))).await.0,
        400
    );
    let post_form = [
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_id", "cc-app"),
        ("client_secret", "s3cret"),
    ];
    assert_eq!(token_request(&tu, &post_form, None).await.0, 400);

    // The proxy: only an issued, live token; never forwarded upstream.
    let http = reqwest::Client::new();
    let get = |token: Option<&str>| {
        let mut req = http.get(format!("{}/Observation?_count=1", auth.base_url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(Some(&es_token)).await, 200);
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("at-made-up")).await, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(Some(&es_token)).await, 401, "an expired token");
    let (_, body) = token_request(&tu, &form, Some(("cc-app", "s3cret"))).await;
    let fresh = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(Some(&fresh)).await, 200);
    auth.revoke_all();
    assert_eq!(get(Some(&fresh)).await, 401, "a revoked token");
    let conf = http
        .get(format!(
            "{}/.well-known/smart-configuration",
            auth.base_url()
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let conf: serde_json::Value = serde_json::from_slice(&conf).unwrap();
    assert_eq!(conf["token_endpoint"], tu.as_str());

    let st = auth.stats();
    // Each refused for the reason meant, in order.
    let why = [
        "jti",
        "InvalidAudience",
        "InvalidSubject",
        "scope",
        "exp more than 5 minutes",
        "ExpiredSignature",
        "InvalidSubject",
        "typ None",
        "alg RS384 for a ES384 key",
        "InvalidSignature",
        "wrong secret",
        "no Basic",
    ];
    assert_eq!(st.refused.len(), why.len(), "{:?}", st.refused);
    for (got, want) in st.refused.iter().zip(why) {
        assert!(got.contains(want), "{got:?} is not about {want}");
    }
    assert_eq!(st.issued, 5, "{st:?}");
    assert_eq!(st.forwarded, 2);
    assert_eq!(upstream.count(), 2, "only admitted requests reach upstream");
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.header("authorization").is_none())
    );
    for reason in ["missing", "unknown", "expired", "revoked"] {
        assert_eq!(st.unauthorized(reason), 1, "{reason}: {st:?}");
    }
}
