//! Upstream pools: round-robin over targets, a keep-alive HTTP/1.1 client per upstream,
//! connect and response-head timeouts, and passive health: a target with `max_fails`
//! faults within `fail_timeout_ms` is ejected for `fail_timeout_ms` (nginx's semantics).
//! Only the upstream's own faults count (connect failure, no response head in time, a
//! malformed response): request bodies are read whole before anything is sent, so a
//! client's slow or broken body never reaches here. Target health lives in a
//! [`HealthRegistry`] that outlives config reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pinpoint_core::config::{Target, UpstreamConfig};
use pinpoint_core::Reason;

/// One target's passive-health state.
pub struct TargetState {
    /// `host:port` to connect to.
    pub authority: String,
    /// Faults counted in the current window (which starts at `window_start`).
    fails: AtomicU32,
    /// Monotonic milliseconds when the current failure window began.
    window_start: AtomicU64,
    /// Monotonic milliseconds (see [`now_mono_ms`]) until which the target is ejected.
    ejected_until: AtomicU64,
}

impl TargetState {
    fn new(authority: String) -> Self {
        TargetState {
            authority,
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    fn available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
    }
}

/// Target health shared across config revisions, keyed by authority.
#[derive(Default)]
pub struct HealthRegistry {
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
}

impl HealthRegistry {
    /// The state for `authority`, created on first use. Called only while building a
    /// config revision, never per request.
    pub fn target(&self, authority: &str) -> Arc<TargetState> {
        let mut map = self.targets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(authority.to_owned())
            .or_insert_with(|| Arc::new(TargetState::new(authority.to_owned())))
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
    next: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    request_timeout: Duration,
    max_fails: u32,
    fail_timeout_ms: u64,
}

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn now_mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Upstream {
    /// Builds the pool. `builtin_echo` is the address of the built-in echo service.
    pub fn new(name: &str, config: &UpstreamConfig, health: &HealthRegistry, builtin_echo: &str) -> Self {
        let targets = config
            .targets
            .iter()
            .map(|t| match t {
                Target::Addr(a) => health.target(a),
                Target::BuiltinEcho => health.target(builtin_echo),
            })
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream {
            name: name.to_owned(),
            targets,
            next: AtomicUsize::new(0),
            client,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_fails: config.max_fails,
            fail_timeout_ms: config.fail_timeout_ms,
        }
    }

    /// The next available target in round-robin order, or `None` when all are ejected.
    pub fn pick(&self) -> Option<Arc<TargetState>> {
        self.pick_other_than(None)
    }

    /// The next available target that is not `tried`, for a retry.
    pub fn pick_other_than(&self, tried: Option<&TargetState>) -> Option<Arc<TargetState>> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_mono_ms();
        (0..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| t.available(now) && tried.is_none_or(|tried| !std::ptr::eq(Arc::as_ptr(t), tried)))
            .cloned()
    }

    /// How many targets the pool has.
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// Sends `req` (whose URI must already point at `target`) and waits for the response head.
    pub async fn send(
        &self,
        target: &TargetState,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, UpstreamFailure> {
        let result = tokio::time::timeout(self.request_timeout, self.client.request(req)).await;
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
                    target.authority,
                    self.name,
                    self.request_timeout.as_millis()
                ),
                maybe_sent: true,
            },
            Ok(Err(e)) => classify(&self.name, &target.authority, &e),
        };
        self.record_failure(target);
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
            tracing::warn!(
                upstream = %self.name,
                upstream_target = %target.authority,
                fail_timeout_ms = self.fail_timeout_ms,
                "upstream target ejected after {fails} faults within fail_timeout_ms"
            );
        }
    }

    /// The note for an upstream with every target ejected.
    pub fn unavailable_note(&self) -> String {
        format!(
            "all {} target(s) of upstream `{}` are ejected",
            self.targets.len(),
            self.name
        )
    }
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
