//! Upstream pools: targets over plain HTTP or TLS (rustls; HTTP/2 where the target
//! offers it by ALPN, or by prior knowledge with `http2 = true`), chosen by weighted round
//! robin or least connections; connect and response-head timeouts; passive health (a
//! target with `max_fails` faults within `fail_timeout_ms` is ejected for `fail_timeout_ms`,
//! nginx's semantics) and active health checks (`GET path` every interval, thresholds to
//! take a target out and bring it back). Only the upstream's own faults count (connect
//! failure, no response head in time, a malformed response): request bodies are read whole
//! before anything is sent, so a client's slow or broken body never reaches here. Target
//! health lives in a [`HealthRegistry`] that outlives config reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pinpoint_core::config::{Balance, HealthCheck, Target, UpstreamConfig, UpstreamTls};
use pinpoint_core::Reason;

use crate::telemetry;

/// One target's health: passive (faults seen by requests) and active (checks).
pub struct TargetState {
    /// `host:port` to connect to.
    pub authority: String,
    /// Whether the target speaks TLS.
    pub https: bool,
    /// How logs, traces and `/healthz` name the target (`host:port`, `https://host:port`).
    pub label: String,
    /// Faults counted in the current window (which starts at `window_start`).
    fails: AtomicU32,
    /// Monotonic milliseconds when the current failure window began.
    window_start: AtomicU64,
    /// Monotonic milliseconds (see [`now_mono_ms`]) until which the target is ejected.
    ejected_until: AtomicU64,
    /// What active checks say (true until they say otherwise).
    passing: AtomicBool,
    /// Check results in a row, toward the thresholds.
    passes_in_row: AtomicU32,
    failures_in_row: AtomicU32,
    /// Requests sent and waiting for their response head (least connections).
    in_flight: AtomicUsize,
}

impl TargetState {
    fn new(authority: String, https: bool) -> Self {
        let label = if https {
            format!("https://{authority}")
        } else {
            authority.clone()
        };
        TargetState {
            authority,
            https,
            label,
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            passing: AtomicBool::new(true),
            passes_in_row: AtomicU32::new(0),
            failures_in_row: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// `http` or `https`, for the upstream URI.
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    fn available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now && self.passing.load(Ordering::Relaxed)
    }

    /// `up`, `ejected` (passive) or `down` (active checks).
    pub fn state(&self) -> &'static str {
        if !self.passing.load(Ordering::Relaxed) {
            "down"
        } else if self.ejected_until.load(Ordering::Relaxed) > now_mono_ms() {
            "ejected"
        } else {
            "up"
        }
    }
}

/// Target health shared across config revisions, keyed by scheme and authority.
#[derive(Default)]
pub struct HealthRegistry {
    targets: Mutex<HashMap<(String, bool), Arc<TargetState>>>,
}

impl HealthRegistry {
    /// The state for `authority`, created on first use. Called only while building a
    /// config revision, never per request.
    pub fn target(&self, authority: &str, https: bool) -> Arc<TargetState> {
        let mut map = self.targets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry((authority.to_owned(), https))
            .or_insert_with(|| Arc::new(TargetState::new(authority.to_owned(), https)))
            .clone()
    }
}

/// How a proxied exchange with a target failed.
#[derive(Debug)]
pub struct UpstreamFailure {
    pub reason: Reason,
    /// Operator-side description (may name the internal address).
    pub note: String,
    /// Whether the request may have reached the target (false: the connection failed, so
    /// nothing was sent and any request can be tried elsewhere).
    pub maybe_sent: bool,
}

/// A pool of targets with its client.
pub struct Upstream {
    pub name: String,
    targets: Vec<Arc<TargetState>>,
    /// Round robin's order: target indexes, each as often as its weight, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
    balance: Balance,
    /// One client (and so one connection pool) per proxy worker, and a last one for the
    /// api and background thread (health checks): a worker's upstream connections run on
    /// its own thread (`workers`).
    clients: Vec<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>,
    /// For a pool whose targets all speak plain HTTP/1 (no TLS, no HTTP/2 by prior
    /// knowledge): per worker (indexed as `clients`) and per target, that worker's
    /// connections, reused directly. hyper-util's pool, which the other pools use, locks a
    /// shared map keyed by a SipHash of scheme and authority on every checkout and return,
    /// and spawns a task per request to hand the connection back: about 5,000
    /// instructions of a bare proxied GET's 68,000 (bench/instructions.sh, 2026-12-06).
    direct: Option<Vec<Vec<DirectPool>>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_fails: u32,
    fail_timeout_ms: u64,
    health_check: Option<HealthCheck>,
}

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn now_mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Nginx's smooth weighted round robin, laid out once: each index appears as often as its
/// weight, spread out (weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

/// The rustls client config for a pool's `https://` targets. A CA file that does not load
/// leaves no trusted root, so every handshake fails (502) rather than trusting anything
/// else; `load_file` refuses such a config before it gets here.
pub fn client_tls(tls: &UpstreamTls) -> Result<rustls::ClientConfig, crate::tls::TlsError> {
    if let Some(name) = &tls.server_name {
        // Ignoring a name that is not one would verify the target's host instead.
        rustls_pki_types::ServerName::try_from(name.as_str()).map_err(|_| crate::tls::TlsError::Name(name.clone()))?;
    }
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for cert in crate::tls::read_chain(ca)? {
                roots.add(cert).map_err(|e| crate::tls::TlsError::File {
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    Ok(match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = crate::tls::read_cert_and_key(cert, key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    })
}

impl Upstream {
    /// Builds the pool. `builtin_echo` is the address of the built-in echo service.
    pub fn new(name: &str, config: &UpstreamConfig, health: &HealthRegistry, builtin_echo: &str) -> Arc<Self> {
        let targets: Vec<Arc<TargetState>> = config
            .targets
            .iter()
            .map(|t| match &t.target {
                Target::Http(a) => health.target(a, false),
                Target::Https(a) => health.target(a, true),
                Target::BuiltinEcho => health.target(builtin_echo, false),
            })
            .collect();
        let weights: Vec<u32> = config.targets.iter().map(|t| t.weight).collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let tls = client_tls(&config.tls).unwrap_or_else(|e| {
            tracing::error!(upstream = name, error = %e, "upstream TLS settings unusable; its https targets will fail");
            trust_nothing()
        });
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = match config
            .tls
            .server_name
            .as_deref()
            .map(|n| rustls_pki_types::ServerName::try_from(n.to_owned()))
        {
            Some(Ok(name)) => https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
            _ => https,
        };
        let connector = https.enable_all_versions().wrap_connector(connector);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .http2_only(config.http2 && targets.iter().all(|t| !t.https));
        let clients = (0..=crate::workers::count())
            .map(|_| builder.build(connector.clone()))
            .collect();
        let direct = (!config.http2 && targets.iter().all(|t| !t.https)).then(|| {
            (0..=crate::workers::count())
                .map(|_| targets.iter().map(|_| DirectPool::default()).collect())
                .collect()
        });
        let upstream = Arc::new(Upstream {
            name: name.to_owned(),
            targets,
            schedule: smooth_schedule(&weights),
            next: AtomicUsize::new(0),
            balance: config.balance,
            clients,
            direct,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_fails: config.max_fails,
            fail_timeout_ms: config.fail_timeout_ms,
            health_check: config.health_check.clone(),
        });
        if upstream.health_check.is_some() {
            // Checks run while this revision's pool exists (the task holds it weakly).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(run_checks(Arc::downgrade(&upstream)));
            }
        }
        upstream
    }

    /// This worker's slot in `clients` and `direct` (the last one off the workers).
    fn worker_slot(&self) -> usize {
        let workers = self.clients.len() - 1;
        crate::workers::index().map_or(workers, |i| i % workers.max(1))
    }

    /// This worker's client.
    fn client(&self) -> &Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
        &self.clients[self.worker_slot()]
    }

    /// This worker's direct connections to `target`, when the pool reuses them directly.
    fn direct_pool(&self, target: &TargetState) -> Option<&DirectPool> {
        let pools = &self.direct.as_ref()?[self.worker_slot()];
        let index = self.targets.iter().position(|t| std::ptr::eq(Arc::as_ptr(t), target))?;
        pools.get(index)
    }

    /// The next available target, or `None` when all are ejected or failing their checks.
    pub fn pick(&self) -> Option<Arc<TargetState>> {
        self.pick_other_than(None)
    }

    /// The next available target that is not `tried`, for a retry.
    pub fn pick_other_than(&self, tried: Option<&TargetState>) -> Option<Arc<TargetState>> {
        let now = now_mono_ms();
        let eligible =
            |t: &Arc<TargetState>| t.available(now) && tried.is_none_or(|tried| !std::ptr::eq(Arc::as_ptr(t), tried));
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        match self.balance {
            Balance::RoundRobin => {
                let n = self.schedule.len();
                (0..n)
                    .map(|i| &self.targets[self.schedule[(start + i) % n]])
                    .find(|t| eligible(t))
                    .cloned()
            }
            Balance::LeastConnections => {
                let n = self.targets.len();
                (0..n)
                    .map(|i| &self.targets[(start + i) % n])
                    .filter(|t| eligible(t))
                    .min_by_key(|t| t.in_flight.load(Ordering::Relaxed))
                    .cloned()
            }
        }
    }

    /// How many targets the pool has.
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// Sets `pinpoint_upstream_target_up` for each target from its state now (1: up;
    /// 0: ejected or failing its checks). Called when metrics are read.
    pub fn report_to_metrics(&self) {
        for t in &self.targets {
            telemetry::set_target_up(&self.name, &t.label, t.state() == "up");
        }
    }

    /// Each target with its state, for `/healthz`.
    pub fn report(&self) -> Vec<serde_json::Value> {
        self.targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "target": t.label,
                    "state": t.state(),
                    "in_flight": t.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// When a pool with no target available may have one again, in whole seconds (for
    /// `Retry-After`): the nearest end of an ejection, or the time checks need to bring a
    /// target back.
    pub fn retry_after_secs(&self) -> u64 {
        let now = now_mono_ms();
        let ejection_ends = self
            .targets
            .iter()
            .filter(|t| t.passing.load(Ordering::Relaxed))
            .map(|t| t.ejected_until.load(Ordering::Relaxed).saturating_sub(now))
            .min();
        let checks_need = self
            .health_check
            .as_ref()
            .map(|c| c.interval_ms.saturating_mul(u64::from(c.healthy_threshold)));
        let ms = match (ejection_ends, checks_need) {
            (Some(e), _) => e,
            (None, Some(c)) => c,
            (None, None) => 1_000,
        };
        ms.div_ceil(1_000).max(1)
    }

    /// Sends `req` (whose URI must already point at `target`) and waits for the response head.
    pub async fn send(
        &self,
        target: &TargetState,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, UpstreamFailure> {
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut target_at_fault = true;
        let result = match self.direct_pool(target) {
            Some(pool) => tokio::time::timeout(self.request_timeout, pool.send(target, self.connect_timeout, req))
                .await
                .map(|sent| {
                    sent.map_err(|failure| {
                        // The target's keep-alive close raced the request: not its fault.
                        target_at_fault = !matches!(failure, DirectFailure::ClosedWhileReused(_));
                        failure.described(&self.name, &target.label)
                    })
                }),
            None => tokio::time::timeout(self.request_timeout, self.client().request(req))
                .await
                .map(|sent| sent.map_err(|e| classify(&self.name, &target.label, &e))),
        };
        target.in_flight.fetch_sub(1, Ordering::Relaxed);
        let failure = match result {
            Ok(Ok(response)) => {
                // Read first: most requests find nothing to reset and write no shared memory.
                if target.fails.load(Ordering::Relaxed) != 0 {
                    target.fails.store(0, Ordering::Relaxed);
                }
                return Ok(response);
            }
            Err(_) => UpstreamFailure {
                reason: Reason::UpstreamTimeout,
                note: format!(
                    "{} ({}) sent no response head within {} ms",
                    target.label,
                    self.name,
                    self.request_timeout.as_millis()
                ),
                maybe_sent: true,
            },
            Ok(Err(failure)) => failure,
        };
        if target_at_fault {
            self.record_failure(target);
        }
        Err(failure)
    }

    /// Counts an upstream fault: `max_fails` of them within `fail_timeout_ms` eject the
    /// target for `fail_timeout_ms`.
    fn record_failure(&self, target: &TargetState) {
        let now = now_mono_ms();
        let window_start = target.window_start.load(Ordering::Relaxed);
        let fails =
            if now.saturating_sub(window_start) >= self.fail_timeout_ms || target.fails.load(Ordering::Relaxed) == 0 {
                target.window_start.store(now, Ordering::Relaxed);
                target.fails.store(1, Ordering::Relaxed);
                1
            } else {
                target.fails.fetch_add(1, Ordering::Relaxed) + 1
            };
        if fails >= self.max_fails {
            target.fails.store(0, Ordering::Relaxed);
            target
                .ejected_until
                .store(now + self.fail_timeout_ms, Ordering::Relaxed);
            telemetry::count_target_transition(&self.name, &target.label, "ejected");
            tracing::warn!(
                upstream = %self.name,
                upstream_target = %target.label,
                fail_timeout_ms = self.fail_timeout_ms,
                "upstream target ejected after {fails} faults within fail_timeout_ms"
            );
        }
    }

    /// The note for an upstream with no target available.
    pub fn unavailable_note(&self) -> String {
        let states: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("{} {}", t.label, t.state()))
            .collect();
        format!(
            "no target of upstream `{}` is available ({})",
            self.name,
            states.join(", ")
        )
    }

    /// One round of active checks: every target at once, each within the timeout.
    async fn check_all(self: &Arc<Self>, check: &HealthCheck) {
        let mut round = tokio::task::JoinSet::new();
        for target in &self.targets {
            let (pool, target, check) = (self.clone(), target.clone(), check.clone());
            round.spawn(async move {
                let passed = pool.check_one(&target, &check).await;
                pool.record_check(&target, &check, passed);
            });
        }
        while round.join_next().await.is_some() {}
    }

    /// `GET path` on one target: a 2xx or 3xx within the timeout passes.
    async fn check_one(&self, target: &TargetState, check: &HealthCheck) -> Result<(), String> {
        let uri = format!("{}://{}{}", target.scheme(), target.authority, check.path);
        let request = http::Request::get(uri)
            .header(http::header::USER_AGENT, "pinpoint-health-check")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_millis(check.timeout_ms), self.client().request(request)).await {
            Err(_) => Err(format!("no answer within {} ms", check.timeout_ms)),
            Ok(Err(e)) => Err(error_chain(&e)),
            Ok(Ok(response)) if response.status().is_success() || response.status().is_redirection() => Ok(()),
            Ok(Ok(response)) => Err(format!("status {}", response.status().as_u16())),
        }
    }

    fn record_check(&self, target: &TargetState, check: &HealthCheck, result: Result<(), String>) {
        match result {
            Ok(()) => {
                target.failures_in_row.store(0, Ordering::Relaxed);
                let passes = target.passes_in_row.fetch_add(1, Ordering::Relaxed) + 1;
                if !target.passing.load(Ordering::Relaxed) && passes >= check.healthy_threshold {
                    target.passing.store(true, Ordering::Relaxed);
                    // A target the checks bring back is not also held out by old faults.
                    target.ejected_until.store(0, Ordering::Relaxed);
                    telemetry::count_target_transition(&self.name, &target.label, "up");
                    tracing::info!(upstream = %self.name, upstream_target = %target.label, passes, "upstream target passes its health checks again");
                }
            }
            Err(why) => {
                target.passes_in_row.store(0, Ordering::Relaxed);
                let failures = target.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
                if target.passing.load(Ordering::Relaxed) && failures >= check.unhealthy_threshold {
                    target.passing.store(false, Ordering::Relaxed);
                    telemetry::count_target_transition(&self.name, &target.label, "down");
                    tracing::warn!(upstream = %self.name, upstream_target = %target.label, failures, last = %why, "upstream target fails its health checks; taken out");
                }
            }
        }
    }
}

/// Runs a pool's active checks every interval while the pool exists.
async fn run_checks(pool: Weak<Upstream>) {
    let Some(check) = pool.upgrade().and_then(|p| p.health_check.clone()) else {
        return;
    };
    let mut every = tokio::time::interval(Duration::from_millis(check.interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.check_all(&check).await;
    }
}

/// One worker's HTTP/1 connections to one plain-HTTP target: those waiting for a request
/// and those busy with one (a connection is put back as soon as its request is handed
/// over; it is ready again once its response has been read). A checkout takes the newest
/// ready one and drops the closed ones it passes.
#[derive(Default)]
struct DirectPool {
    /// Each with when it was last handed a request ([`now_mono_ms`]). Only its worker's
    /// thread uses it: the lock is never contended.
    connections: Mutex<Vec<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, u64)>>,
}

/// At most this many connections are kept per worker and target (as hyper-util's
/// `pool_max_idle_per_host` for the other pools).
const DIRECT_POOL_MAX: usize = 256;

/// A connection not handed a request for this long is closed at the next checkout (as
/// hyper-util's `pool_idle_timeout` for the other pools).
const DIRECT_POOL_IDLE_MS: u64 = 60_000;

/// How a request on a direct connection failed (the target's label is added by the caller).
enum DirectFailure {
    /// No connection: nothing was sent.
    Connect(String),
    /// No connection within the connect timeout: nothing was sent.
    ConnectTimeout(String),
    /// The exchange failed after the request may have been sent.
    Exchange(hyper::Error),
    /// A kept-alive connection the target closed as the request went out on it (the race
    /// every HTTP/1 client with a pool has): the request may have been sent, but the
    /// target is not at fault, so it does not count toward ejecting it.
    ClosedWhileReused(hyper::Error),
}

impl DirectFailure {
    fn described(self, upstream: &str, target: &str) -> UpstreamFailure {
        match self {
            DirectFailure::Connect(why) => UpstreamFailure {
                reason: Reason::UpstreamConnectFailed,
                note: format!("{target} ({upstream}): {why}"),
                maybe_sent: false,
            },
            DirectFailure::ConnectTimeout(why) => UpstreamFailure {
                reason: Reason::UpstreamTimeout,
                note: format!("{target} ({upstream}): {why}"),
                maybe_sent: false,
            },
            DirectFailure::ClosedWhileReused(e) => UpstreamFailure {
                reason: Reason::UpstreamBadResponse,
                note: format!(
                    "{target} ({upstream}): the kept-alive connection was closed as the request went out on it: {}",
                    error_chain(&e)
                ),
                maybe_sent: true,
            },
            DirectFailure::Exchange(e) => UpstreamFailure {
                reason: match e.is_timeout() {
                    true => Reason::UpstreamTimeout,
                    false => Reason::UpstreamBadResponse,
                },
                note: format!("{target} ({upstream}): {}", error_chain(&e)),
                maybe_sent: true,
            },
        }
    }
}

impl DirectPool {
    /// Sends `req` (its URI absolute, pointing at `target`) on a ready connection, or on a
    /// new one; a request a reused connection could not take (it closed meanwhile) goes on
    /// a new one.
    async fn send(
        &self,
        target: &TargetState,
        connect_timeout: Duration,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, DirectFailure> {
        // Origin-form, as an origin server is sent it.
        let origin_form = req
            .uri()
            .path_and_query()
            .cloned()
            .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
        *req.uri_mut() = origin_form;
        if let Some((mut sender, idle_ms)) = self.checkout() {
            // A connection idle long enough for the target's keep-alive timer to close it
            // may be closed as the request goes out: a safe request then goes again on a
            // new connection, as nginx does. (A copy only then: under load connections are
            // reused within milliseconds, and a copy of the headers costs about 1,500
            // instructions.)
            let spare = (idle_ms >= RACE_PRONE_IDLE_MS
                && matches!(
                    *req.method(),
                    http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
                ))
            .then(|| copy_request(&req));
            let sent = sender.try_send_request(req);
            self.put_back(sender);
            match sent.await {
                Ok(response) => return Ok(response),
                Err(mut refused) => match refused.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        let error = refused.into_error();
                        match (error.is_incomplete_message(), spare) {
                            (true, Some(spare)) => req = spare,
                            (true, None) => return Err(DirectFailure::ClosedWhileReused(error)),
                            (false, _) => return Err(DirectFailure::Exchange(error)),
                        }
                    }
                },
            }
        }
        let mut sender = connect(target, connect_timeout).await?;
        let sent = sender.try_send_request(req);
        self.put_back(sender);
        sent.await.map_err(|refused| match refused.message() {
            Some(_) => DirectFailure::Connect(format!("the new connection closed: {}", error_chain(refused.error()))),
            None => DirectFailure::Exchange(refused.into_error()),
        })
    }

    /// The newest ready connection, with how long it has not been handed a request (ms).
    fn checkout(&self) -> Option<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, u64)> {
        let now = now_mono_ms();
        let mut connections = self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        connections.retain(|(c, used)| !c.is_closed() && now.saturating_sub(*used) < DIRECT_POOL_IDLE_MS);
        let ready = connections.iter().rposition(|(c, _)| c.is_ready())?;
        let (sender, used) = connections.swap_remove(ready);
        Some((sender, now.saturating_sub(used)))
    }

    fn put_back(&self, sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
        let mut connections = self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if connections.len() < DIRECT_POOL_MAX {
            connections.push((sender, now_mono_ms()));
        }
    }
}

/// A connection idle this long may meet the target's keep-alive close (servers' idle
/// timeouts are seconds: Node's 5, nginx's 75).
const RACE_PRONE_IDLE_MS: u64 = 1_000;

/// A copy of a request about to be sent (its body is shared, not copied).
fn copy_request(req: &http::Request<Full<Bytes>>) -> http::Request<Full<Bytes>> {
    let mut copy = http::Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// A new HTTP/1 connection to `target`, ready for a request; its connection task runs on
/// the calling worker's runtime.
async fn connect(
    target: &TargetState,
    connect_timeout: Duration,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, DirectFailure> {
    let failed = |why: String| DirectFailure::Connect(why);
    let stream = match tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect(target.authority.as_str()),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(failed(format!("connect: {e}"))),
        Err(_) => {
            return Err(DirectFailure::ConnectTimeout(format!(
                "connect: no connection within {} ms",
                connect_timeout.as_millis()
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| failed(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    sender
        .ready()
        .await
        .map_err(|e| failed(format!("the new connection closed: {e}")))?;
    Ok(sender)
}

/// A client config that trusts no certificate: every TLS handshake fails.
fn trust_nothing() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn classify(upstream: &str, authority: &str, err: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    let chain = error_chain(err);
    let timed_out = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut found = false;
        while let Some(e) = source {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                found = true;
            }
            source = e.source();
        }
        found
    };
    let reason = if timed_out {
        Reason::UpstreamTimeout
    } else if err.is_connect() {
        Reason::UpstreamConnectFailed
    } else {
        Reason::UpstreamBadResponse
    };
    UpstreamFailure {
        reason,
        note: format!("{authority} ({upstream}): {chain}"),
        maybe_sent: !err.is_connect(),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
