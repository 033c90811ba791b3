//! Upstream pools: round-robin over targets, a keep-alive HTTP/1.1 client per upstream,
//! connect and response-head timeouts, and passive health: a target that fails
//! `max_fails` times in a row is ejected for `fail_timeout_ms` (nginx's semantics).
//! Target health lives in a [`HealthRegistry`] that outlives config reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    consecutive_fails: AtomicU32,
    /// Monotonic milliseconds (see [`now_mono_ms`]) until which the target is ejected.
    ejected_until: AtomicU64,
}

impl TargetState {
    fn new(authority: String) -> Self {
        TargetState {
            authority,
            consecutive_fails: AtomicU32::new(0),
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
}

/// A pool of targets with its client.
pub struct Upstream {
    pub name: String,
    targets: Vec<Arc<TargetState>>,
    next: AtomicUsize,
    client: Client<HttpConnector, Incoming>,
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
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_mono_ms();
        (0..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| t.available(now))
            .cloned()
    }

    /// Sends `req` (whose URI must already point at `target`) and waits for the response head.
    pub async fn send(
        &self,
        target: &TargetState,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<Incoming>, UpstreamFailure> {
        let result = tokio::time::timeout(self.request_timeout, self.client.request(req)).await;
        let failure = match result {
            Ok(Ok(response)) => {
                target.consecutive_fails.store(0, Ordering::Relaxed);
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
            },
            Ok(Err(e)) => classify(&self.name, &target.authority, &e),
        };
        self.record_failure(target);
        Err(failure)
    }

    fn record_failure(&self, target: &TargetState) {
        let fails = target.consecutive_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= self.max_fails {
            target.consecutive_fails.store(0, Ordering::Relaxed);
            target
                .ejected_until
                .store(now_mono_ms() + self.fail_timeout_ms, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                target = %target.authority,
                fail_timeout_ms = self.fail_timeout_ms,
                "upstream target ejected after {fails} consecutive failures"
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
