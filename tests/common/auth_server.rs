//! An OAuth token endpoint and an auth proxy in one real HTTP server, so the
//! core scenarios run against an EHR that only answers issued tokens.
//!
//! `POST /token` issues short-lived opaque tokens to registered clients:
//! client_secret_basic, or SMART client assertions checked with jsonwebtoken
//! (an independent JWT implementation) against the registered JWKS. Every
//! other path under `/fhir` is forwarded upstream only with a token it issued,
//! unexpired and unrevoked, without the `Authorization` header; upstream URLs
//! in bodies are rewritten to the proxy, so the bridge stays on its origin.
//! It counts what happened, so a test can see that expiry, renewal between
//! pages and 401-then-refresh did happen.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A client registered with the token endpoint.
#[derive(Clone)]
pub enum Client {
    /// OAuth client credentials, client_secret_basic only; `audience`, when
    /// set, must be sent as is.
    Secret {
        id: String,
        secret: String,
        audience: Option<String>,
    },
    /// SMART Backend Services: assertions signed with a key of `jwks`.
    Jwks { id: String, jwks: JwkSet },
}

#[derive(Clone)]
pub struct Options {
    /// Scopes a client may ask for; a request must ask for at least one.
    pub scopes: Vec<String>,
    /// `expires_in` of every token, and when the proxy stops taking it.
    pub lifetime: Duration,
    /// Revokes, once, the token that serves the Nth forwarded request (which
    /// is still answered), so the next request with it gets a 401.
    pub revoke_at: Option<usize>,
    /// Holds the first poll's first page that has a next link until its
    /// token is due for renewal: the next page then goes with a new token, in
    /// every run rather than by chance (a scenario takes about a second).
    pub hold_a_page: bool,
}

/// What the server saw. Only requests with a valid token reach upstream.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub issued: usize,
    /// Refused token requests, with why (kept here, never sent).
    pub refused: Vec<String>,
    /// `.well-known/smart-configuration` reads.
    pub discovery: usize,
    /// Requests forwarded upstream.
    pub forwarded: usize,
    /// Forwarded requests per token, in issue order.
    pub per_token: Vec<usize>,
    /// 401s by reason: missing, unknown, expired, revoked.
    pub unauthorized: BTreeMap<&'static str, usize>,
    pub revocations: usize,
    /// A later page went with another token than the page before it, which
    /// had been taken: the token was renewed between pages, before expiry.
    pub renewed_between_pages: usize,
    /// A request taken right after a 401 on the same path, with a new token.
    pub refreshed_after_401: usize,
    /// Pages held until their token was due for renewal (0 or 1).
    pub held: usize,
}

impl Stats {
    pub fn unauthorized(&self, reason: &str) -> usize {
        self.unauthorized.get(reason).copied().unwrap_or(0)
    }

    /// What any scenario through the proxy must show for a good client.
    pub fn assert_sound(&self) {
        assert!(self.refused.is_empty(), "token requests refused: {self:?}");
        for reason in ["missing", "unknown", "expired"] {
            assert_eq!(self.unauthorized(reason), 0, "a {reason} token: {self:?}");
        }
        assert!(self.forwarded > 0, "nothing was forwarded: {self:?}");
        assert_eq!(
            self.forwarded,
            self.per_token.iter().sum::<usize>(),
            "a forwarded request without an issued token: {self:?}"
        );
        assert!(self.issued >= 2, "the token was never replaced: {self:?}");
        assert!(
            self.unauthorized("revoked") >= 1 && self.refreshed_after_401 >= 1,
            "no 401 then refresh: {self:?}"
        );
    }
}

struct Issued {
    value: String,
    at: Instant,
    revoked: bool,
    requests: usize,
}

#[derive(Default)]
struct Book {
    tokens: Vec<Issued>,
    jtis: HashSet<(String, String)>,
    /// Per path: the last token seen and whether it got a 401.
    last: HashMap<String, (String, bool)>,
    stats: Stats,
}

struct Shared {
    upstream: String,
    me: String,
    token_url: String,
    opts: Options,
    clients: Mutex<Vec<Client>>,
    book: Mutex<Book>,
    client: reqwest::Client,
}

/// The running server; clones share it.
#[derive(Clone)]
pub struct AuthServer {
    shared: Arc<Shared>,
}

impl AuthServer {
    /// `upstream`: a FHIR base like http://127.0.0.1:1234/fhir
    pub async fn start(upstream: &str, opts: Options) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            me: format!("http://{addr}/fhir"),
            token_url: format!("http://{addr}/token"),
            opts,
            clients: Mutex::new(Vec::new()),
            book: Mutex::new(Book::default()),
            client: reqwest::Client::new(),
        });
        let app = Router::new()
            .route("/token", post(token))
            .route(
                "/fhir/.well-known/smart-configuration",
                get(smart_configuration),
            )
            .fallback(forward)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AuthServer { shared }
    }

    /// The FHIR base the bridge polls.
    pub fn base_url(&self) -> String {
        self.shared.me.clone()
    }

    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }

    /// Registers a client (after `start`: a client's audience may be our base).
    pub fn register(&self, client: Client) {
        self.shared.clients.lock().unwrap().push(client);
    }

    /// Revokes every token issued so far.
    pub fn revoke_all(&self) {
        let mut book = self.shared.book.lock().unwrap();
        let mut n = 0;
        for t in book.tokens.iter_mut().filter(|t| !t.revoked) {
            t.revoked = true;
            n += 1;
        }
        book.stats.revocations += n;
    }

    /// Every token issued, to check that none reached logs or status.
    pub fn tokens(&self) -> Vec<String> {
        let book = self.shared.book.lock().unwrap();
        book.tokens.iter().map(|t| t.value.clone()).collect()
    }

    pub fn stats(&self) -> Stats {
        let book = self.shared.book.lock().unwrap();
        let mut s = book.stats.clone();
        s.per_token = book.tokens.iter().map(|t| t.requests).collect();
        s
    }
}

/// When the bridge renews a token of this lifetime: 30 s before expiry, but
/// never sooner than half the lifetime (README, "Tokens").
pub fn renewal_due(lifetime: Duration) -> Duration {
    lifetime
        .saturating_sub(Duration::from_secs(30))
        .max(lifetime / 2)
}

fn oauth_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": code}))).into_response()
}

async fn smart_configuration(State(s): State<Arc<Shared>>) -> Response {
    s.book.lock().unwrap().stats.discovery += 1;
    axum::Json(json!({
        "token_endpoint": s.token_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
        "scopes_supported": s.opts.scopes,
        "capabilities": ["client-confidential-asymmetric"],
    }))
    .into_response()
}

async fn token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match s.check_token_request(&headers, &form) {
        Err((code, why)) => {
            s.book.lock().unwrap().stats.refused.push(why);
            oauth_error(code)
        }
        Ok(()) => {
            let value = format!("at-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            let mut book = s.book.lock().unwrap();
            book.tokens.push(Issued {
                value: value.clone(),
                at: Instant::now(),
                revoked: false,
                requests: 0,
            });
            book.stats.issued += 1;
            axum::Json(json!({
                "access_token": value,
                "token_type": "Bearer",
                "expires_in": s.opts.lifetime.as_secs(),
                "scope": form.get("scope"),
            }))
            .into_response()
        }
    }
}

type Refusal = (&'static str, String);

impl Shared {
    fn check_token_request(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<(), Refusal> {
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return Err(("unsupported_grant_type", "grant_type".into()));
        }
        let scopes = form.get("scope").map(String::as_str).unwrap_or_default();
        if scopes.is_empty()
            || !scopes
                .split(' ')
                .all(|sc| self.opts.scopes.iter().any(|a| a == sc))
        {
            return Err(("invalid_scope", format!("scope {scopes:?}")));
        }
        let bad = |why: String| ("invalid_client", why);
        if form.contains_key("client_assertion_type") {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(bad("client_assertion_type".into()));
            }
            let jwt = form
                .get("client_assertion")
                .ok_or(bad("no assertion".into()))?;
            return self.check_assertion(jwt).map_err(bad);
        }
        self.check_basic(headers, form).map_err(bad)
    }

    /// client_secret_basic: `Basic base64(urlencode(id):urlencode(secret))`.
    fn check_basic(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<(), String> {
        use base64::Engine;
        let raw = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or("no Basic credentials")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| "Basic: not base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "Basic: not UTF-8")?;
        let (id, secret) = decoded.split_once(':').ok_or("Basic: no colon")?;
        let (id, secret) = (form_decode(id), form_decode(secret));
        let ok = self.clients.lock().unwrap().iter().any(|c| match c {
            Client::Secret {
                id: i,
                secret: s,
                audience,
            } => {
                *i == id
                    && *s == secret
                    && audience
                        .as_ref()
                        .is_none_or(|a| form.get("audience") == Some(a))
            }
            Client::Jwks { .. } => false,
        });
        ok.then_some(())
            .ok_or_else(|| format!("client {id:?}: wrong secret or audience"))
    }

    /// A SMART client assertion: typ JWT, a registered kid, the key's own
    /// algorithm, a valid signature, iss = sub = the client, aud = this
    /// token URL, exp at most 5 minutes ahead, and a jti never seen before.
    fn check_assertion(&self, jwt: &str) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Claims {
            exp: i64,
            jti: Option<String>,
        }
        let head = jsonwebtoken::decode_header(jwt).map_err(|e| format!("header: {e}"))?;
        if head.typ.as_deref() != Some("JWT") {
            return Err(format!("typ {:?}", head.typ));
        }
        let kid = head.kid.as_deref().ok_or("no kid")?;
        let (client, jwk) = self
            .clients
            .lock()
            .unwrap()
            .iter()
            .find_map(|c| match c {
                Client::Jwks { id, jwks } => jwks.find(kid).map(|k| (id.clone(), k.clone())),
                Client::Secret { .. } => None,
            })
            .ok_or_else(|| format!("unknown kid {kid}"))?;
        let client = &client;
        let jwk = &jwk;
        // The algorithm comes from the registered key, never from the token.
        let alg = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES384,
            AlgorithmParameters::RSA(_) => Algorithm::RS384,
            _ => return Err("key type".into()),
        };
        if head.alg != alg {
            return Err(format!("alg {:?} for a {alg:?} key", head.alg));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwk: {e}"))?;
        let mut v = Validation::new(alg);
        v.leeway = 5;
        v.set_audience(&[&self.token_url]);
        v.set_issuer(&[client]);
        v.sub = Some(client.clone());
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &v)
            .map_err(|e| format!("assertion: {e}"))?
            .claims;
        if claims.exp > chrono::Utc::now().timestamp() + 300 {
            return Err("exp more than 5 minutes ahead".into());
        }
        let jti = claims.jti.filter(|j| !j.is_empty()).ok_or("no jti")?;
        let fresh = self
            .book
            .lock()
            .unwrap()
            .jtis
            .insert((client.clone(), jti.clone()));
        fresh.then_some(()).ok_or(format!("jti {jti} reused"))
    }

    /// Whether a request with this `Authorization` may go upstream; keeps
    /// the books. Ok: its token's index and when it was issued.
    fn admit(
        &self,
        auth: Option<&str>,
        path: &str,
        later_page: bool,
    ) -> Result<(usize, Instant), &'static str> {
        let mut book = self.book.lock().unwrap();
        let book = &mut *book;
        let now = Instant::now();
        let token = auth.and_then(|a| a.strip_prefix("Bearer "));
        let verdict = match token.map(|t| book.tokens.iter().position(|x| x.value == t)) {
            None => Err("missing"),
            Some(None) => Err("unknown"),
            Some(Some(i)) if book.tokens[i].revoked => Err("revoked"),
            Some(Some(i)) if now >= book.tokens[i].at + self.opts.lifetime => Err("expired"),
            Some(Some(i)) => Ok(i),
        };
        let token = token.unwrap_or_default().to_string();
        let before = book
            .last
            .insert(path.to_string(), (token.clone(), verdict.is_err()));
        let i = match verdict {
            Err(reason) => {
                *book.stats.unauthorized.entry(reason).or_default() += 1;
                return Err(reason);
            }
            Ok(i) => i,
        };
        match before {
            Some((t, true)) if t != token => book.stats.refreshed_after_401 += 1,
            Some((t, false)) if t != token && later_page => book.stats.renewed_between_pages += 1,
            _ => {}
        }
        book.stats.forwarded += 1;
        book.tokens[i].requests += 1;
        Ok((i, book.tokens[i].at))
    }

    /// Once `revoke_at` requests went through, revokes the token of the one
    /// just answered, unless it was held: that token is due for renewal, so
    /// it might never be sent again and no 401 would follow.
    fn maybe_revoke(&self, i: usize, held: bool) {
        let mut book = self.book.lock().unwrap();
        let due = self
            .opts
            .revoke_at
            .is_some_and(|n| book.stats.forwarded >= n);
        if due && !held && book.stats.revocations == 0 {
            book.tokens[i].revoked = true;
            book.stats.revocations += 1;
        }
    }
}

/// RFC 6749 2.3.1: the id and secret in Basic are form-urlencoded.
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, _)| k.into_owned())
        .next()
        .unwrap_or_default()
}

fn has_next_link(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["link"].as_array().cloned())
        .is_some_and(|links| links.iter().any(|l| l["relation"] == "next"))
}

async fn forward(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(rest) = uri.path().strip_prefix("/fhir") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let query = uri.query().unwrap_or_default();
    let later_page = query.contains("_cursor=") || query.contains("_offset=");
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Ok((token, issued_at)) = s.admit(auth, rest, later_page) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    };
    let sep = if query.is_empty() { "" } else { "?" };
    let mut req = s
        .client
        .request(method, format!("{}{rest}{sep}{query}", s.upstream))
        .body(body);
    for h in [header::ACCEPT, header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&h) {
            req = req.header(h, v);
        }
    }
    let Ok(resp) = req.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = resp
        .text()
        .await
        .unwrap_or_default()
        .replace(&s.upstream, &s.me);
    // The first page of a poll (not the bridge's `_count=1` clock probe).
    let poll_start = !later_page && query.contains("_sort=");
    let held = if s.opts.hold_a_page && poll_start && has_next_link(&body) {
        let due = issued_at + renewal_due(s.opts.lifetime) + Duration::from_millis(300);
        let hold = {
            let mut book = s.book.lock().unwrap();
            let first = book.stats.held == 0 && Instant::now() < due;
            book.stats.held += usize::from(first);
            first
        };
        if hold {
            tokio::time::sleep_until(due.into()).await;
        }
        hold
    } else {
        false
    };
    s.maybe_revoke(token, held);
    let mut out = (status, body).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}
