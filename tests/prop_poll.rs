//! Property tests of the poller (watermark + diff + page commits) against the
//! in-crate sandbox FHIR server, a real SQLite state store and the real
//! `SourceTask::poll_target`.
//!
//! A scenario is a random sequence of writes (creates at a frozen instant to
//! force ties, creates spread over instants, updates, explicit ids that sort
//! before or after the numeric ones) and polls, with a random `page_size`,
//! `overlap` and `start`. The sandbox clock is always frozen to explicit,
//! non-decreasing instants, so ties are deliberate and runs are reproducible.
//!
//! The poller talks to the sandbox through a small HTTP proxy that
//! - applies the writes a scenario schedules *between the pages of one poll*
//!   (after serving page k, before the poller asks for page k+1);
//! - can cut a poll short: page k answers 503, or the poll is cancelled once
//!   page k is served (what was committed must be enough to carry on);
//! - reports the server's time (Bundle.meta.lastUpdated) either from the frozen
//!   write clock (`ServerClock::Faithful`: "now" and lastUpdated from one
//!   clock) or as the sandbox does, from the wall clock (`ServerClock::Ahead`:
//!   a server whose stamps lag its "now" by far more than any overlap, so the
//!   poll's `_lastUpdated=lt<server now>` bound never closes the result set).
//!
//! What is checked, after draining the outbox (claim + deliver, which respects
//! per-resource order) after every poll:
//! - no (resource, version) is emitted twice, and the number of changes the
//!   poller committed equals the number of outbox messages (so a duplicate that
//!   the outbox's `INSERT OR IGNORE` would hide is still caught);
//! - versions of one resource are emitted in increasing order, the first as
//!   `create` and the rest as `update`;
//! - every version that was current for the whole of a poll (and is not before
//!   `start`) has been emitted by the end of that poll;
//! - nothing is emitted that never existed (or is before `start`);
//! - after a final quiet poll every resource's latest version has been emitted,
//!   and one more poll finds nothing;
//! - with writes only between polls, the emitted set is exactly the union of
//!   what the server held at each poll.

use fhir_bridge::config::{Config, Content, Schedule, Source, Start};
use fhir_bridge::filter::Filter;
use fhir_bridge::route::Route;
use fhir_bridge::sandbox::{FhirSandbox, SandboxStore};
use fhir_bridge::source::SourceTask;
use fhir_bridge::source::client::FhirClient;
use fhir_bridge::state::{DeliveryRecord, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use url::Url;

const RT: &str = "Observation";
/// 2023-11-14T22:13:20.000Z
const T0: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------
// The world: the sandbox's resources plus a model of every version written.
// ---------------------------------------------------------------------------

/// How far the faithful server's "now" runs past its latest write: more than
/// the 25 ms margin the poller keeps below its estimate of the server's clock.
const SERVER_CLOCK_LEAD_MS: i64 = 26;

/// One write (or clock step) on the sandbox.
#[derive(Debug, Clone)]
enum Op {
    /// Moves the frozen clock forward by this many ms (0: the next writes tie).
    Advance(i64),
    /// Creates this many resources at the current instant (server-assigned ids).
    Create(usize),
    /// Creates this many resources, `step` ms apart (several instants).
    Spread(usize, i64),
    /// Creates or updates a resource with this id (ids like `a` sort after the
    /// numeric ones, so ties are walked in a different order).
    Named(String),
    /// Updates an existing resource (chosen by index) at the current instant.
    Update(usize),
}

type Version = (String, u64);

struct World {
    fhir: Arc<SandboxStore>,
    clock: i64,
    /// Every version ever written: (id, version) -> lastUpdated ms.
    written: BTreeMap<Version, i64>,
    /// The current version of each id.
    current: BTreeMap<String, u64>,
    ids: Vec<String>,
    edits: u64,
}

impl World {
    fn new(fhir: Arc<SandboxStore>) -> Self {
        fhir.freeze_clock(Some(T0));
        World {
            fhir,
            clock: T0,
            written: BTreeMap::new(),
            current: BTreeMap::new(),
            ids: Vec::new(),
            edits: 0,
        }
    }

    fn write(&mut self, id: Option<&str>) {
        self.edits += 1;
        let body = self.fhir.upsert(
            RT,
            id,
            serde_json::json!({"status": "final", "valueInteger": self.edits}),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        let version: u64 = v["meta"]["versionId"].as_str().unwrap().parse().unwrap();
        if !self.current.contains_key(&id) {
            self.ids.push(id.clone());
        }
        self.current.insert(id.clone(), version);
        self.written.insert((id, version), self.clock);
    }

    fn advance(&mut self, ms: i64) {
        self.clock += ms;
        self.fhir.freeze_clock(Some(self.clock));
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Advance(ms) => self.advance(*ms),
            Op::Create(n) => (0..*n).for_each(|_| self.write(None)),
            Op::Spread(n, step) => {
                for i in 0..*n {
                    if i > 0 {
                        self.advance(*step);
                    }
                    self.write(None);
                }
            }
            Op::Named(id) => self.write(Some(id)),
            Op::Update(ix) => {
                if !self.ids.is_empty() {
                    let id = self.ids[*ix % self.ids.len()].clone();
                    self.write(Some(&id));
                }
            }
        }
    }

    /// The versions the server holds now.
    fn snapshot(&self) -> BTreeSet<Version> {
        self.current
            .iter()
            .map(|(id, v)| (id.clone(), *v))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// A proxy in front of the sandbox that writes between the pages of a poll.
// ---------------------------------------------------------------------------

struct ProxyShared {
    http: reqwest::Client,
    upstream: String,
    own: String,
    world: Arc<Mutex<World>>,
    plan: Mutex<Plan>,
    server_clock: ServerClock,
}

/// What the server says its time is (Bundle.meta.lastUpdated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerClock {
    /// The clock writes are stamped with, one ms after the latest write: a
    /// server whose "now" and lastUpdated come from the same clock.
    Faithful,
    /// The sandbox's wall clock, years ahead of the frozen write clock: a server
    /// whose stamps lag its "now" (skew, or commit lag) far beyond any overlap.
    Ahead,
}

#[derive(Default)]
struct Plan {
    /// Pages served in the current poll.
    served: usize,
    /// Writes to apply after page k of the current poll has been served.
    after_page: Vec<Vec<Op>>,
    /// Cut the current poll short at page k.
    interrupt: Option<(usize, Interrupt)>,
    /// The current poll's cancellation token.
    cancel: Option<CancellationToken>,
}

/// How a poll is cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// Page k (0-based) answers 503: the poll fails after committing pages before it.
    Error,
    /// The poll is cancelled once page k has been served: it stops after committing it.
    Cancel,
}

async fn proxy_handler(
    axum::extract::State(st): axum::extract::State<Arc<ProxyShared>>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // Search pages carry `_sort`; the poller's server-time probe does not, and
    // is not a page of the poll.
    let is_page = pq.contains("_sort=");
    if is_page {
        let mut plan = st.plan.lock().unwrap();
        if plan.interrupt == Some((plan.served, Interrupt::Error)) {
            plan.served += 1;
            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let resp = match st.http.get(format!("{}{pq}", st.upstream)).send().await {
        Ok(r) => r,
        Err(_) => return axum::http::StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    // Links in the Bundle point at the sandbox; keep the poller on the proxy.
    let mut body = body.replace(&st.upstream, &st.own);
    if st.server_clock == ServerClock::Faithful {
        // The sandbox writes the Bundle's meta first, from its wall clock.
        const META: &str = r#""meta":{"lastUpdated":""#;
        if let Some(i) = body.find(META) {
            let at = i + META.len();
            // The server's clock has moved on a little past its latest write
            // (more than the poller's safety margin below its estimate of "now").
            let now = fmt_ms(st.world.lock().unwrap().clock + 1 + SERVER_CLOCK_LEAD_MS);
            body.replace_range(at..at + now.len(), &now);
        }
    }
    if is_page {
        let mut plan = st.plan.lock().unwrap();
        let k = plan.served;
        plan.served += 1;
        if let Some(ops) = plan.after_page.get(k) {
            let mut world = st.world.lock().unwrap();
            if st.server_clock == ServerClock::Faithful && !ops.is_empty() {
                // A write made after the poll began is stamped at or after the
                // server time the poll bounded itself with (`lt`). Our frozen
                // clock would otherwise lag that bound, which the poller (rightly)
                // estimates from our own clock moving on.
                if let Some(until) = upper_bound(pq) {
                    let behind = until - world.clock;
                    if behind > 0 {
                        world.advance(behind);
                    }
                }
            }
            for op in ops {
                world.apply(op);
            }
        }
        if plan.interrupt == Some((k, Interrupt::Cancel))
            && let Some(c) = &plan.cancel
        {
            c.cancel();
        }
    }
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
        body,
    )
        .into_response()
}

async fn start_proxy(
    upstream_origin: String,
    world: Arc<Mutex<World>>,
    server_clock: ServerClock,
) -> (String, Arc<ProxyShared>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let own = format!("http://{}", listener.local_addr().unwrap());
    let shared = Arc::new(ProxyShared {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        upstream: upstream_origin,
        own: own.clone(),
        world,
        plan: Mutex::new(Plan::default()),
        server_clock,
    });
    let app = axum::Router::new()
        .fallback(proxy_handler)
        .with_state(shared.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (own, shared)
}

/// The poll's `_lastUpdated=lt...` bound, in ms, if its URL has one.
fn upper_bound(path_and_query: &str) -> Option<i64> {
    let (_, rest) = path_and_query.split_once("_lastUpdated=lt")?;
    let value = rest.split('&').next()?;
    let value = value.replace("%3A", ":").replace("%2B", "+");
    Some(
        chrono::DateTime::parse_from_rfc3339(&value)
            .ok()?
            .timestamp_millis(),
    )
}

fn at_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap()
}

fn fmt_ms(ms: i64) -> String {
    at_ms(ms).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

// ---------------------------------------------------------------------------
// The bridge side.
// ---------------------------------------------------------------------------

fn source(base: &str, page_size: u32, overlap_ms: u64, start: Start) -> Source {
    Source {
        name: "s".into(),
        base_url: Url::parse(&format!("{base}/")).unwrap(),
        resources: vec![RT.into()],
        schedule: Schedule::Every(Duration::from_secs(1)),
        page_size,
        overlap: Duration::from_millis(overlap_ms),
        start,
        owner_id: "o".into(),
        timeout: Duration::from_secs(10),
        params: Default::default(),
        max_pages_per_poll: 1000,
        strategies: Default::default(),
        reconcile: None,
        lag: Duration::ZERO,
        fan_out: None,
        max_requests_per_second: None,
        allowed_origins: vec![],
        auth: Default::default(),
        tls: None,
        fingerprint: Default::default(),
    }
}

fn task(source: Source, store: Store) -> SourceTask {
    SourceTask {
        fence: fhir_bridge::state::Fence::private(),
        source,
        routing: fhir_bridge::source::Routing {
            routes: vec![Route {
                hook: "h".into(),
                filter: Arc::new(Filter::compile("true").unwrap()),
                topic: None,
                content: Content::IdOnly,
            }],
        }
        .fixed(),
        store,
        client: FhirClient::new(Duration::from_secs(10)).unwrap(),
        first_poll_spread: std::time::Duration::ZERO,
        limiter: Default::default(),
        known: Default::default(),
        outcomes: None,
        beat: fhir_bridge::progress::Beat::detached(),
        dry_run: None,
        left_search: Default::default(),
    }
}

/// One outbox message, as drained.
#[derive(Debug, Clone)]
struct Emitted {
    outbox_id: i64,
    id: String,
    version: u64,
    event: String,
}

/// Claims and delivers everything pending (per-resource order means a later
/// version is only claimable once the earlier one is delivered).
async fn drain(store: &Store) -> Vec<Emitted> {
    let mut out = Vec::new();
    loop {
        let claimed = store.claim_due("h", vec![], 100_000).await.unwrap();
        if claimed.is_empty() {
            return out;
        }
        for c in claimed {
            let body = c.body.render(&c.message_id, Content::FullResource);
            let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let rid = p["resourceId"].as_str().unwrap();
            assert_eq!(rid, format!("{RT}/{}", c.resource_id));
            out.push(Emitted {
                outbox_id: c.id,
                id: c.resource_id.clone(),
                version: p["versionId"].as_str().unwrap().parse().unwrap(),
                event: p["event"].as_str().unwrap().to_string(),
            });
            store
                .record_delivery(
                    &fhir_bridge::state::Fence::private(),
                    "h",
                    c.id,
                    DeliveryRecord::Delivered { status: 200 },
                )
                .await
                .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Write(Op),
    /// A poll; `mid[k]` are written after page k of it has been served.
    Poll {
        mid: Vec<Vec<Op>>,
        interrupt: Option<(usize, Interrupt)>,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    page_size: u32,
    overlap_ms: u64,
    /// `None`: start = "beginning"; `Some(ms)`: start at T0 + ms.
    start_at: Option<i64>,
    server_clock: ServerClock,
    steps: Vec<Step>,
}

fn advance() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => Just(0i64),
        3 => Just(1i64),
        1 => 2i64..1000,
        2 => Just(1000i64),
        1 => 1001i64..5000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => advance().prop_map(Op::Advance),
        3 => (1usize..=8).prop_map(Op::Create),
        1 => ((2usize..=5), prop_oneof![Just(1i64), Just(1000i64), 1i64..3000])
            .prop_map(|(n, s)| Op::Spread(n, s)),
        1 => "[a-c]{1,2}".prop_map(Op::Named),
        4 => any::<usize>().prop_map(Op::Update),
    ]
}

/// Writes between pages: up to 6 pages, a few writes after some of them.
fn mid_plan() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op(), 0..3), 0..6)
}

fn scenario(with_mid: bool, server_clock: ServerClock) -> impl Strategy<Value = Scenario> {
    let mid = if with_mid {
        mid_plan().boxed()
    } else {
        Just(vec![]).boxed()
    };
    let interrupt = prop_oneof![
        4 => Just(None),
        1 => (0usize..4, prop_oneof![Just(Interrupt::Error), Just(Interrupt::Cancel)]).prop_map(Some),
    ];
    let poll = (mid, interrupt).prop_map(|(mid, interrupt)| Step::Poll { mid, interrupt });
    let step = prop_oneof![5 => op().prop_map(Step::Write), 2 => poll];
    (
        1u32..=10,
        prop_oneof![Just(0u64), Just(1000u64), 1u64..4000],
        prop_oneof![3 => Just(None), 1 => (0i64..2000).prop_map(Some)],
        prop::collection::vec(step, 1..40),
    )
        .prop_map(move |(page_size, overlap_ms, start_at, steps)| Scenario {
            page_size,
            overlap_ms,
            start_at,
            server_clock,
            steps,
        })
}

/// Limits the clock movement inside each poll to the overlap: the documented
/// operating assumption (the overlap must exceed how late a write can become
/// visible behind the poll's position).
fn within_overlap(mut s: Scenario) -> Scenario {
    let budget = s.overlap_ms as i64;
    for step in &mut s.steps {
        if let Step::Poll { mid, .. } = step {
            let mut used = 0i64;
            for op in mid.iter_mut().flatten() {
                match op {
                    Op::Advance(ms) => {
                        *ms = (*ms).min(budget - used);
                        used += *ms;
                    }
                    Op::Spread(n, step) if *n > 1 => {
                        let gaps = *n as i64 - 1;
                        *step = (*step).min((budget - used) / gaps);
                        used += *step * gaps;
                    }
                    _ => {}
                }
            }
        }
    }
    s
}

/// `PROPTEST_CASES` overrides the case count (e.g. for a long soak run).
fn pt_config(cases: u32) -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    PtConfig {
        cases,
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..PtConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a scenario and checks every property listed at the top of the file.
async fn run_scenario(s: Scenario) -> Result<(), TestCaseError> {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let world = Arc::new(Mutex::new(World::new(fhir.store.clone())));
    let upstream = fhir.base_url().trim_end_matches("/fhir").to_string();
    let (proxy, shared) = start_proxy(upstream, world.clone(), s.server_clock).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bridge.db")).unwrap();
    let floor = s.start_at.map(|ms| T0 + ms);
    let start = match floor {
        None => Start::Beginning,
        Some(ms) => Start::At(at_ms(ms)),
    };
    let t = task(
        source(&format!("{proxy}/fhir"), s.page_size, s.overlap_ms, start),
        store.clone(),
    );
    let visible = |lu: i64| floor.is_none_or(|f| lu >= f);

    let mut emitted: Vec<Emitted> = Vec::new();
    let mut reported = 0u64;
    // With writes only between polls, the emitted set lies between what the
    // completed polls saw and what any poll could have seen.
    let mut lower: BTreeSet<Version> = BTreeSet::new();
    let mut upper: BTreeSet<Version> = BTreeSet::new();
    let mut any_mid = false;

    let quiet = Step::Poll {
        mid: vec![],
        interrupt: None,
    };
    let final_polls = [quiet.clone(), quiet];
    let n_steps = s.steps.len();
    for (i, step) in s.steps.iter().chain(final_polls.iter()).enumerate() {
        let (mid, interrupt) = match step {
            Step::Write(op) => {
                world.lock().unwrap().apply(op);
                continue;
            }
            Step::Poll { mid, interrupt } => (mid, *interrupt),
        };
        let before = world.lock().unwrap().snapshot();
        if s.server_clock == ServerClock::Faithful {
            // Our estimate of the server's clock follows it (the frozen clock
            // jumps, where a real one would have moved along with ours).
            let _ = t.client.note_server_time(at_ms(
                world.lock().unwrap().clock + 1 + SERVER_CLOCK_LEAD_MS,
            ));
        }
        let cancel = CancellationToken::new();
        *shared.plan.lock().unwrap() = Plan {
            served: 0,
            after_page: mid.clone(),
            interrupt,
            cancel: Some(cancel.clone()),
        };
        any_mid |= mid.iter().any(|ops| !ops.is_empty());
        let outcome = t.poll_target(RT, &cancel).await;
        let plan = std::mem::take(&mut *shared.plan.lock().unwrap());
        let failed_on_purpose =
            interrupt.is_some_and(|(k, how)| how == Interrupt::Error && plan.served == k + 1);
        let cut_short = match &outcome {
            Ok(_) => cancel.is_cancelled(),
            Err(_) if failed_on_purpose => true,
            Err(e) => return Err(TestCaseError::fail(format!("poll {i} failed: {e}"))),
        };
        if let Ok(n) = outcome {
            reported += n;
        }
        emitted.extend(drain(&store).await);
        let w = world.lock().unwrap();
        upper.extend(before.iter().filter(|v| visible(w.written[*v])).cloned());
        if cut_short {
            continue;
        }
        let after = w.snapshot();
        let got: BTreeSet<Version> = emitted.iter().map(|e| (e.id.clone(), e.version)).collect();
        // Current for the whole of a completed poll, and not before `start`: must be out.
        for v in before.intersection(&after) {
            prop_assert!(
                !visible(w.written[v]) || got.contains(v),
                "poll {i}: {v:?} (lastUpdated T0+{}ms) was on the server for the whole poll \
                 but has not been emitted",
                w.written[v] - T0
            );
        }
        lower.extend(before.into_iter().filter(|v| visible(w.written[v])));
        if i == n_steps + 1 {
            prop_assert_eq!(
                outcome.unwrap_or(u64::MAX),
                0,
                "a poll after the final quiet poll found changes"
            );
        }
    }

    // No duplicates, and none hidden by the outbox's INSERT OR IGNORE: every
    // change the poller committed is one outbox message.
    let mut seen = BTreeSet::new();
    for e in &emitted {
        prop_assert!(
            seen.insert((e.id.clone(), e.version)),
            "{}/{} v{} emitted twice",
            RT,
            e.id,
            e.version
        );
    }
    let target = store.target_report("s", RT).await.unwrap().unwrap();
    prop_assert_eq!(
        target.changes_seen as usize,
        emitted.len(),
        "the poller committed {} changes but the outbox holds {} messages",
        target.changes_seen,
        emitted.len()
    );
    prop_assert!(reported <= emitted.len() as u64);
    let rep = store.hook_report("h").await.unwrap();
    prop_assert_eq!(rep.pending, 0);
    prop_assert_eq!(rep.delivered as usize, emitted.len());

    // Per resource: increasing versions in outbox order, create first.
    let mut by_id: BTreeMap<&str, Vec<&Emitted>> = BTreeMap::new();
    for e in &emitted {
        by_id.entry(&e.id).or_default().push(e);
    }
    for (id, list) in &mut by_id {
        list.sort_by_key(|e| e.outbox_id);
        for pair in list.windows(2) {
            prop_assert!(
                pair[0].version < pair[1].version,
                "{RT}/{id}: v{} emitted after v{}",
                pair[1].version,
                pair[0].version
            );
        }
        // The first emitted version is a create when it is version 1; a
        // resource first seen at a later version is an update.
        prop_assert_eq!(
            list[0].event.as_str(),
            if list[0].version == 1 {
                "create"
            } else {
                "update"
            },
            "{}/{}: first event",
            RT,
            id
        );
        for e in &list[1..] {
            prop_assert_eq!(e.event.as_str(), "update", "{}/{} v{}", RT, id, e.version);
        }
    }

    // Nothing made up, nothing before `start`; every latest version is out.
    let w = world.lock().unwrap();
    for e in &emitted {
        let v = (e.id.clone(), e.version);
        prop_assert!(w.written.contains_key(&v), "{v:?} was never written");
        prop_assert!(visible(w.written[&v]), "{v:?} is before `start`");
    }
    let got: BTreeSet<Version> = emitted.iter().map(|e| (e.id.clone(), e.version)).collect();
    for v in w.snapshot() {
        prop_assert!(
            !visible(w.written[&v]) || got.contains(&v),
            "latest version {v:?} (lastUpdated T0+{}ms) never emitted",
            w.written[&v] - T0
        );
    }
    if !any_mid {
        let missing: Vec<_> = lower.difference(&got).collect();
        prop_assert!(missing.is_empty(), "never emitted: {missing:?}");
        let extra: Vec<_> = got.difference(&upper).collect();
        prop_assert!(
            extra.is_empty(),
            "emitted but no poll could see them: {extra:?}"
        );
    }
    if std::env::var_os("PROP_POLL_STATS").is_some() {
        eprintln!(
            "stats: resources {} versions {} emitted {} mid {}",
            w.current.len(),
            w.written.len(),
            emitted.len(),
            any_mid
        );
    }
    Ok(())
}

fn check(s: Scenario) -> Result<(), TestCaseError> {
    runtime().block_on(run_scenario(s))
}

fn any_server_clock() -> impl Strategy<Value = ServerClock> {
    prop_oneof![Just(ServerClock::Faithful), Just(ServerClock::Ahead)]
}

proptest! {
    #![proptest_config(pt_config(64))]

    /// Writes only between polls (and polls cut short by an error or a
    /// cancellation): the emitted set is exactly what the model says.
    #[test]
    fn writes_between_polls_are_each_emitted_once(
        s in any_server_clock().prop_flat_map(|c| scenario(false, c))
    ) {
        check(s)?;
    }

    /// Writes also land between the pages of a poll; the server's time and its
    /// lastUpdated stamps come from one clock, which may move any distance
    /// while a poll runs.
    #[test]
    fn writes_between_pages_are_each_emitted_once(s in scenario(true, ServerClock::Faithful)) {
        check(s)?;
    }

    /// Writes between pages against a server whose clock is far ahead of its
    /// lastUpdated stamps (so the poll's upper bound never closes the result
    /// set), with the stamps moving no further than `overlap` during a poll:
    /// the overlap alone must catch whatever lands behind the poll's cursor.
    #[test]
    fn writes_between_pages_with_the_server_clock_ahead_within_the_overlap(
        s in scenario(true, ServerClock::Ahead).prop_map(within_overlap)
    ) {
        check(s)?;
    }
}

// ---------------------------------------------------------------------------
// Deterministic cases.
// ---------------------------------------------------------------------------

/// Ties, tiny pages, zero overlap, updates to resources on earlier pages.
#[test]
fn handpicked_ties_and_updates() {
    let s = Scenario {
        page_size: 2,
        overlap_ms: 0,
        start_at: None,
        server_clock: ServerClock::Faithful,
        steps: vec![
            Step::Write(Op::Create(5)),
            Step::Poll {
                mid: vec![],
                interrupt: None,
            },
            Step::Write(Op::Create(3)),
            Step::Write(Op::Update(0)),
            Step::Poll {
                mid: vec![],
                interrupt: None,
            },
            Step::Write(Op::Advance(1)),
            Step::Write(Op::Named("a".into())),
            Step::Write(Op::Update(0)),
            Step::Poll {
                mid: vec![],
                interrupt: None,
            },
        ],
    };
    check(s).unwrap();
}

/// A writer task and the poller run at the same time on two threads, with the
/// sandbox clock ticking 0 or 1 ms between writes and an overlap larger than
/// all the clock movement. Afterwards two quiet polls: nothing missing, nothing
/// twice, versions in order.
#[test]
fn concurrent_writer_and_poller() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fhir = FhirSandbox::start(0).await.unwrap();
        let world = Arc::new(Mutex::new(World::new(fhir.store.clone())));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("bridge.db")).unwrap();
        let t = Arc::new(task(
            source(&fhir.base_url(), 3, 3_600_000, Start::Beginning),
            store.clone(),
        ));
        let cancel = CancellationToken::new();
        let writer = {
            let world = world.clone();
            tokio::spawn(async move {
                let mut x = 0x2545_f491_4f6c_dd1du64;
                for _ in 0..400 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    {
                        let mut w = world.lock().unwrap();
                        match x % 8 {
                            0 => w.apply(&Op::Advance(1)),
                            1..=4 => w.apply(&Op::Create(1)),
                            _ => w.apply(&Op::Update((x >> 8) as usize)),
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut reported = 0;
        while !writer.is_finished() {
            reported += t.poll_target(RT, &cancel).await.unwrap();
        }
        writer.await.unwrap();
        reported += t.poll_target(RT, &cancel).await.unwrap();
        assert_eq!(t.poll_target(RT, &cancel).await.unwrap(), 0);
        let emitted = drain(&store).await;
        assert_eq!(reported as usize, emitted.len());
        let mut last: HashMap<String, u64> = HashMap::new();
        for e in &emitted {
            let prev = last.insert(e.id.clone(), e.version);
            assert!(prev.is_none_or(|p| p < e.version), "{e:?} after v{prev:?}");
        }
        let w = world.lock().unwrap();
        for (id, v) in &w.current {
            assert_eq!(last.get(id), Some(v), "latest version of {id} not emitted");
        }
    });
}

/// A write that lands, during a poll, at the instant of the poll's cursor but
/// sorts before it (same lastUpdated, smaller id), followed by a newer write.
/// Without an upper bound on the poll (`_lastUpdated=lt<server now>`) the poll
/// reads the newer write, the watermark moves to its instant and, with
/// overlap = 0, the first write is never read.
#[test]
fn tie_behind_the_cursor_then_a_newer_write_in_the_same_poll() {
    let s = Scenario {
        page_size: 1,
        overlap_ms: 0,
        start_at: None,
        server_clock: ServerClock::Faithful,
        steps: vec![
            Step::Write(Op::Named("b".into())),
            Step::Write(Op::Named("c".into())),
            Step::Poll {
                interrupt: None,
                mid: vec![vec![
                    // After page 1 ([b], cursor at (T0, b)): `a` ties at T0, behind it.
                    Op::Named("a".into()),
                    Op::Advance(1),
                    Op::Named("d".into()),
                ]],
            },
        ],
    };
    check(s).unwrap();
}

/// `overlap` comes from the config file, which accepts any humantime duration.
/// A huge one must not make the poller panic (`watermark - overlap`).
#[test]
fn a_huge_overlap_from_the_config_does_not_panic_the_poller() {
    runtime().block_on(async {
        let fhir = FhirSandbox::start(0).await.unwrap();
        let text = format!(
            "[[source]]\nname = 's'\nbase_url = '{}'\nresources = ['Observation']\n\
             start = 'beginning'\noverlap = '300000y'\n",
            fhir.base_url()
        );
        // The loader refuses durations that would overflow date arithmetic...
        let err = Config::from_str(&text, Path::new("bridges.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("too long"), "{err}");
        // ...and the longest it accepts must not make the poller panic.
        let text = text.replace("300000y", "99y");
        let config = Config::from_str(&text, Path::new("bridges.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("bridge.db")).unwrap();
        let t = task(config.sources[0].clone(), store);
        fhir.store.upsert(RT, None, serde_json::json!({}));
        // Polls read up to the server's "now" less a 25 ms margin.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let cancel = CancellationToken::new();
        assert_eq!(t.poll_target(RT, &cancel).await.unwrap(), 1);
        // The second poll starts from a watermark: `watermark - overlap`.
        let second =
            tokio::spawn(
                async move { t.poll_target(RT, &cancel).await.map_err(|e| e.to_string()) },
            )
            .await;
        assert!(
            second.is_ok(),
            "the poller panicked: {:?}",
            second.err().map(|e| e.to_string())
        );
    });
}
