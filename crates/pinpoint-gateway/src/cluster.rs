//! `[cluster] redis`: the state replicas share beyond the store. Rate limits are GCRA in
//! one Lua script (one round trip, Redis's clock, so replicas' clocks do not matter),
//! quotas one counter per organization and window, used cloud-auth proofs `SET NX` with
//! an expiry, and each replica's heartbeat a key that expires. A limiter remembers locally
//! who is over its limit until when, so repeat offenders are answered without a round trip.
//!
//! Redis unreachable (or slower than `timeout_ms`) is never a false 429 or 403: each limit
//! says what its requests get then (`on_backend_error`: 503 `rate.backend_unavailable`, or
//! through with that reason traced as a would-deny). The connection is made at start if it
//! can be, else by a task that keeps trying; the connection manager reconnects after drops.
//! After a failure, operations answer "unavailable" at once for [`OPEN_FOR`] (one probe
//! then tries again), so requests do not each wait out the timeout. Every script carries
//! a deadline on Redis's clock (this replica's offset to it is measured at each heartbeat):
//! one that runs after its caller gave up (Redis stalled, then woke) writes nothing, so a
//! request answered 503 is never counted against a limit, a quota or a proof.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pinpoint_core::config::{ClusterConfig, RateLimitRule};
use pinpoint_policy::world::{Answer, Counted, FirstUse, LimitAnswer, Limiter, Pending, RateState, ReplayCache};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Metric: Redis operations that failed (unreachable, too slow, refused), by operation.
pub const ERRORS_METRIC: &str = "pinpoint_cluster_redis_errors_total";

/// GCRA over Redis's clock (microseconds). KEYS[1]: the caller's key; ARGV[1]: the
/// emission interval (µs per request), ARGV[2]: the burst, ARGV[3]: the deadline (Redis
/// time, µs). Returns {allowed, wait_us, remaining}, or {2, 0, 0} when past the deadline
/// (nothing written). State: the theoretical arrival time, expiring when it is in the
/// past; one further ahead than a full burst (Redis's clock stepped back) is capped.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
if now > tonumber(ARGV[3]) then return {2, 0, 0} end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat > now + interval * burst then tat = now + interval * burst end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now + interval * burst - new_tat) / interval)}
";

/// One quota count. KEYS[1]: the window's counter; ARGV[1]: when it may go (Unix ms),
/// ARGV[2]: the deadline (Redis time, µs). Returns the count, or -1 past the deadline.
const QUOTA: &str = r"
local now_parts = redis.call('TIME')
if tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2]) > tonumber(ARGV[2]) then return -1 end
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
return used
";

/// Takes or keeps a lease. KEYS[1]: the lease; ARGV[1]: this replica; ARGV[2]: its length
/// (ms). Returns 1 when this replica holds it.
const LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Checks a config's `[cluster] redis` the way the Redis client will read it (a config
/// whose URL it cannot use is refused when it loads, not at the next start). Errors never
/// repeat the URL: it may hold a password.
pub fn check(config: &ClusterConfig) -> Result<(), String> {
    match &config.redis {
        Some(url) => redis::Client::open(url.as_str())
            .map(|_| ())
            .map_err(|e| format!("[cluster] redis is not a URL the Redis client can use ({:?})", e.kind())),
        None => Ok(()),
    }
}

/// Marks a proof used. KEYS[1]: the proof; ARGV[1]: how long to remember it (ms),
/// ARGV[2]: the deadline (Redis time, µs). Returns 1 the first time, 0 after, -1 past the
/// deadline.
const PROOF: &str = r"
local now_parts = redis.call('TIME')
if tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2]) > tonumber(ARGV[2]) then return -1 end
if redis.call('SET', KEYS[1], 1, 'NX', 'PX', ARGV[1]) then return 1 end
return 0
";

/// How long operations answer "unavailable" at once after one failed.
const OPEN_FOR: Duration = Duration::from_secs(1);

/// The shared connection and what every user of it needs.
pub struct Cluster {
    /// Tells this cluster's per-thread connections from another's (tests run several).
    id: u64,
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    /// The connection made at start, on the api thread; each proxy worker makes its own
    /// ([`Cluster::connection`]).
    connection: ArcSwapOption<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    /// This replica's name.
    pub replica: String,
    heartbeat: Duration,
    reachable: AtomicBool,
    errors: AtomicU64,
    gcra: redis::Script,
    quota: redis::Script,
    proof: redis::Script,
    lease: redis::Script,
    /// Redis's clock minus this replica's, µs (measured at each heartbeat).
    offset_us: std::sync::atomic::AtomicI64,
    /// After a failure: until when (ms on [`Cluster::epoch`]) operations fail at once.
    open_until_ms: AtomicU64,
    epoch: Instant,
    /// The settings it was started with (a reload cannot change them).
    pub started_with: ClusterConfig,
    /// Whether this replica held the alerts lease at its last try.
    leads_alerts: AtomicBool,
    limiters: Mutex<HashMap<RateLimitRule, Arc<SharedLimiter>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("Cluster")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to `config.redis` (which must be set), or starts a task that keeps trying
    /// when Redis cannot be reached now. A URL that does not parse is an error.
    pub async fn start(config: &ClusterConfig) -> Result<Arc<Cluster>, String> {
        let url = config.redis.as_deref().ok_or("no [cluster] redis")?;
        let client =
            redis::Client::open(url).map_err(|e| format!("[cluster] redis is not a usable URL ({:?})", e.kind()))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let replica = config
            .replica_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let cluster = Arc::new(Cluster {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client: client.clone(),
            manager_config: manager_config.clone(),
            connection: ArcSwapOption::empty(),
            prefix: config.key_prefix.clone(),
            timeout,
            replica,
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            reachable: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            gcra: redis::Script::new(GCRA),
            quota: redis::Script::new(QUOTA),
            proof: redis::Script::new(PROOF),
            offset_us: std::sync::atomic::AtomicI64::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            started_with: config.clone(),
            lease: redis::Script::new(LEASE),
            leads_alerts: AtomicBool::new(false),
            limiters: Mutex::new(HashMap::new()),
        });
        let connect = move |client: redis::Client, config: ConnectionManagerConfig| async move {
            tokio::time::timeout(timeout * 4, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| format!("no connection within {} ms", (timeout * 4).as_millis()))?
                .map_err(|e| describe(&e))
        };
        match connect(client.clone(), manager_config.clone()).await {
            Ok(manager) => {
                cluster.connection.store(Some(Arc::new(manager)));
                cluster.reachable.store(true, Ordering::Relaxed);
                cluster.measure_clock().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach [cluster] redis; limits counted there answer as their on_backend_error says until it can be reached");
                let weak = Arc::downgrade(&cluster);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let Some(cluster) = weak.upgrade() else { return };
                        match connect(client.clone(), manager_config.clone()).await {
                            Ok(manager) => {
                                cluster.connection.store(Some(Arc::new(manager)));
                                cluster.reachable.store(true, Ordering::Relaxed);
                                cluster.measure_clock().await;
                                tracing::info!("connected to [cluster] redis");
                                return;
                            }
                            Err(e) => tracing::debug!(error = %e, "[cluster] redis still unreachable"),
                        }
                    }
                });
            }
        }
        Ok(cluster)
    }

    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{parts}", self.prefix)
    }

    /// The deadline, on Redis's clock (µs), for an operation starting now: a script that
    /// runs later writes nothing.
    fn deadline_us(&self) -> i64 {
        let local_us = pinpoint_store::now_ms().saturating_mul(1000);
        let timeout_us = i64::try_from(self.timeout.as_micros()).unwrap_or(i64::MAX);
        local_us
            .saturating_add(self.offset_us.load(Ordering::Relaxed))
            .saturating_add(timeout_us)
    }

    /// Measures Redis's clock against this replica's (half the round trip is the error).
    async fn measure_clock(&self) {
        let before = pinpoint_store::now_ms().saturating_mul(1000);
        let time: Result<(i64, i64), String> = self
            .run(
                "clock",
                |mut c| async move { redis::cmd("TIME").query_async(&mut c).await },
            )
            .await;
        if let Ok((seconds, micros)) = time {
            let after = pinpoint_store::now_ms().saturating_mul(1000);
            let redis_us = seconds.saturating_mul(1_000_000).saturating_add(micros);
            self.offset_us
                .store(redis_us - (before / 2 + after / 2), Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection this thread uses: its own once made, else the shared one while its
    /// own is being made (on this thread's runtime). A proxy worker's own connection keeps
    /// its Redis round trips on its thread: through the shared one, each request woke the
    /// api thread twice. Measured with `BENCH_PIN=1 bench/cluster.sh` (16 rounds): the chain
    /// with Redis limits went from 16,757 to 20,061 requests/s, and its p99 at equal load
    /// from 4.65 to 2.60 ms (in-process limits: 2.30 ms).
    fn connection(&self) -> Option<ConnectionManager> {
        thread_local! {
            /// By cluster id: the connection, or `None` while it is being made.
            static OWN: std::cell::RefCell<HashMap<u64, Option<ConnectionManager>>> =
                std::cell::RefCell::new(HashMap::new());
        }
        let (own, start) = OWN.with(|own| {
            let mut own = own.borrow_mut();
            match own.get(&self.id) {
                Some(Some(connection)) => (Some(connection.clone()), false),
                Some(None) => (None, false),
                None => {
                    own.insert(self.id, None);
                    (None, true)
                }
            }
        });
        if own.is_some() {
            return own;
        }
        let shared = self.connection.load_full().map(|c| (*c).clone());
        if start && shared.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            let (id, client, config) = (self.id, self.client.clone(), self.manager_config.clone());
            tokio::spawn(async move {
                let made = ConnectionManager::new_with_config(client, config).await.ok();
                let retry_later = made.is_none();
                OWN.with(|own| {
                    let mut own = own.borrow_mut();
                    if retry_later {
                        own.remove(&id);
                    } else {
                        own.insert(id, made);
                    }
                });
            });
        } else if start {
            OWN.with(|own| own.borrow_mut().remove(&self.id));
        }
        shared
    }

    /// Runs one Redis operation within the timeout; an error says why, without the URL.
    /// While the breaker is open (a failure in the last [`OPEN_FOR`]) it fails at once.
    async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return Err(format!("redis {operation}: unreachable a moment ago; not retried yet"));
        }
        let Some(connection) = self.connection() else {
            return Err(self.failed(operation, "not connected".into()));
        };
        match tokio::time::timeout(self.timeout, f(connection)).await {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!("[cluster] redis reachable again");
                }
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(operation, describe(&e))),
            Err(_) => Err(self.failed(operation, format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    fn failed(&self, operation: &'static str, why: String) -> String {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ERRORS_METRIC, "operation" => operation).increment(1);
        let open_for = u64::try_from(OPEN_FOR.as_millis()).unwrap_or(u64::MAX);
        self.open_until_ms
            .store(self.now_ms().saturating_add(open_for), Ordering::Relaxed);
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(operation, why, "[cluster] redis unreachable");
        }
        format!("redis {operation}: {why}")
    }

    /// What `/healthz` says about Redis.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "redis": if self.reachable.load(Ordering::Relaxed) { "up" } else { "down" },
            "replica": self.replica,
            "redis_errors": self.errors.load(Ordering::Relaxed),
            "evaluates_alerts": self.leads_alerts.load(Ordering::Relaxed),
        })
    }

    /// Whether this replica is the one that evaluates `[[alerts]]` (so an alert is sent
    /// once, not once per replica): it takes the lease when nobody holds it and keeps it
    /// for `ttl` from each call. `Err` when Redis cannot say.
    pub async fn lead_alerts(&self, ttl: Duration) -> Result<bool, String> {
        let key = self.key(format_args!("lease:alerts"));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let held: i64 = self
            .run("lease", |mut c| {
                let key = key.clone();
                async move {
                    self.lease
                        .key(&key)
                        .arg(&self.replica)
                        .arg(ttl_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        self.leads_alerts.store(held == 1, Ordering::Relaxed);
        Ok(held == 1)
    }

    /// Writes this replica's heartbeat every `heartbeat_ms` (and measures Redis's clock)
    /// until `stop` turns true, then takes it out.
    pub async fn beat(
        self: Arc<Self>,
        revision: impl Fn() -> String,
        started_ms: i64,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let (list, key) = (
            self.key(format_args!("replicas")),
            self.key(format_args!("replica:{}", self.replica)),
        );
        let ttl = u64::try_from(self.heartbeat.as_millis().saturating_mul(3)).unwrap_or(u64::MAX);
        let replica = self.replica.as_str();
        loop {
            let at_ms = pinpoint_store::now_ms();
            let beat = serde_json::json!({
                "replica": self.replica,
                "revision": revision(),
                "started_at_ms": started_ms,
                "at_ms": at_ms,
                "version": env!("CARGO_PKG_VERSION"),
            })
            .to_string();
            let _ = self
                .run("heartbeat", |mut c| {
                    let (list, key) = (list.clone(), key.clone());
                    async move {
                        redis::pipe()
                            .cmd("SET")
                            .arg(&key)
                            .arg(&beat)
                            .arg("PX")
                            .arg(ttl)
                            .ignore()
                            .cmd("ZADD")
                            .arg(&list)
                            .arg(at_ms)
                            .arg(replica)
                            .ignore()
                            .query_async::<()>(&mut c)
                            .await
                    }
                })
                .await;
            self.measure_clock().await;
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat) => {}
                _ = stop.changed() => {
                    let _ = self.run("heartbeat", |mut c| async move {
                        redis::pipe()
                            .cmd("DEL").arg(&key).ignore()
                            .cmd("ZREM").arg(&list).arg(replica).ignore()
                            .query_async::<()>(&mut c)
                            .await
                    }).await;
                    return;
                }
            }
        }
    }

    /// Every live replica's last heartbeat (this one's included), by name: the names in
    /// the `replicas` sorted set (by heartbeat time), their heartbeats read at once. A
    /// listing that fails does not count Redis as down (it is not on any request's path).
    pub async fn replicas(&self) -> Result<Vec<serde_json::Value>, String> {
        let Some(connection) = self.connection.load_full() else {
            return Err("not connected".into());
        };
        let list = self.key(format_args!("replicas"));
        let gone_before = pinpoint_store::now_ms()
            .saturating_sub(i64::try_from(self.heartbeat.as_millis().saturating_mul(3)).unwrap_or(i64::MAX));
        let mut c = (*connection).clone();
        let listing = async {
            let names: Vec<String> = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&list)
                .arg("-inf")
                .arg(format!("({gone_before}"))
                .ignore()
                .cmd("ZRANGE")
                .arg(&list)
                .arg(0)
                .arg(999)
                .query_async::<(Vec<String>,)>(&mut c)
                .await?
                .0;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = names.iter().map(|n| self.key(format_args!("replica:{n}"))).collect();
            redis::cmd("MGET")
                .arg(&keys)
                .query_async::<Vec<Option<String>>>(&mut c)
                .await
        };
        let beats = tokio::time::timeout(self.timeout, listing)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
            .map_err(|e| describe(&e))?;
        let mut replicas: Vec<serde_json::Value> = beats
            .into_iter()
            .flatten()
            .filter_map(|beat| serde_json::from_str(&beat).ok())
            .collect();
        replicas.sort_by(|a, b| a["replica"].as_str().cmp(&b["replica"].as_str()));
        Ok(replicas)
    }

    /// Forgets who was over a limit once that has passed; run periodically.
    pub fn housekeeping(&self) {
        let now = Instant::now();
        for limiter in self.limiters.lock().unwrap_or_else(|p| p.into_inner()).values() {
            limiter
                .over
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, until| *until > now);
        }
    }
}

fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "connection failed".into()
    } else {
        // Server errors (a script error, out of memory): their kind and code, never a URL.
        format!("{:?} {}", e.kind(), e.code().unwrap_or(""))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pinpoint".into())
}

/// Where rate limits and quotas are counted: in Redis when replicas share one, else in
/// the process (`memory`).
pub fn rate_state(
    cluster: Option<&Arc<Cluster>>,
    memory: &Arc<pinpoint_policy::rate_state::MemoryRateState>,
) -> Arc<dyn RateState> {
    match cluster {
        Some(cluster) => Arc::new(SharedRateState(cluster.clone())),
        None => memory.clone(),
    }
}

/// Rate limits and quotas counted in Redis.
pub struct SharedRateState(pub Arc<Cluster>);

impl RateState for SharedRateState {
    fn limiter(&self, rule: &RateLimitRule) -> Arc<dyn Limiter> {
        let cluster = &self.0;
        let mut limiters = cluster.limiters.lock().unwrap_or_else(|p| p.into_inner());
        limiters
            .entry(rule.clone())
            .or_insert_with(|| {
                let burst = rule.burst.unwrap_or(rule.requests).max(1);
                let interval_us = (u64::from(rule.per_seconds) * 1_000_000 / u64::from(rule.requests.max(1))).max(1);
                // Keyed by the rule's id and the caller only: the stored arrival time works
                // with any rate, so replicas on different revisions of a rule, or a rule
                // whose numbers change, go on from the same state rather than each from a
                // full burst.
                let key_base = cluster.key(format_args!("rate:{}:", rule.id));
                Arc::new(SharedLimiter {
                    cluster: cluster.clone(),
                    key_base,
                    interval_us,
                    burst,
                    over: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    fn spend_quota<'a>(
        &'a self,
        quota_id: &'a str,
        org_id: &'a str,
        (start, end): (i64, i64),
    ) -> Answer<'a, Result<u64, String>> {
        Answer::Later(Box::pin(async move {
            let cluster = &self.0;
            let key = cluster.key(format_args!("quota:{quota_id}:{org_id}:{start}"));
            // Kept a day past the window, for late readers.
            let expire_at = end.saturating_add(86_400_000);
            let deadline = cluster.deadline_us();
            let used = cluster
                .run("quota", |mut c| async move {
                    cluster
                        .quota
                        .key(&key)
                        .arg(expire_at)
                        .arg(deadline)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await?;
            u64::try_from(used).map_err(|_| "redis quota: answered after its deadline; not counted".to_owned())
        }))
    }
}

/// The most callers a limiter remembers as over their limit.
const OVER_REMEMBERED: usize = 100_000;

/// One limit counted in Redis.
struct SharedLimiter {
    cluster: Arc<Cluster>,
    /// `{prefix}rate:{rule}:{interval}:{burst}:`, followed by `kind:id`.
    key_base: String,
    interval_us: u64,
    burst: u32,
    /// Callers over the limit, until when: answered here without a round trip.
    over: Mutex<HashMap<String, Instant>>,
}

impl Limiter for SharedLimiter {
    fn take<'a>(&'a self, who: &'a Counted<'a>) -> Answer<'a, LimitAnswer> {
        let key = format!("{}{}:{}", self.key_base, who.kind, who.id);
        let now = Instant::now();
        if let Some(until) = self.over.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if *until > now {
                return Answer::Ready(LimitAnswer::Limited { wait: *until - now });
            }
        }
        Answer::Later(Box::pin(async move {
            let cluster = &self.cluster;
            let (interval, burst) = (self.interval_us, self.burst);
            let answer = cluster
                .run("rate", |mut c| {
                    let key = key.clone();
                    async move {
                        cluster
                            .gcra
                            .key(&key)
                            .arg(interval)
                            .arg(burst)
                            .arg(cluster.deadline_us())
                            .invoke_async::<(i64, i64, i64)>(&mut c)
                            .await
                    }
                })
                .await;
            match answer {
                Ok((1, _, remaining)) => LimitAnswer::Allowed {
                    remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                },
                Ok((2, _, _)) => LimitAnswer::Unavailable {
                    why: "redis rate: answered after its deadline; not counted".into(),
                },
                Ok((_, wait_us, _)) => {
                    let wait = Duration::from_micros(u64::try_from(wait_us.max(0)).unwrap_or(0));
                    let mut over = self.over.lock().unwrap_or_else(|p| p.into_inner());
                    if over.len() >= OVER_REMEMBERED {
                        let now = Instant::now();
                        over.retain(|_, until| *until > now);
                    }
                    if over.len() < OVER_REMEMBERED {
                        over.insert(key, Instant::now() + wait);
                    }
                    LimitAnswer::Limited { wait }
                }
                Err(why) => LimitAnswer::Unavailable { why },
            }
        }))
    }
}

/// Used cloud-auth proofs in Redis: a proof works once across every replica.
pub struct SharedReplay(pub Arc<Cluster>);

impl ReplayCache for SharedReplay {
    fn first_use<'a>(&'a self, signature: &'a str, until_s: i64, now_s: i64) -> Pending<'a, Result<FirstUse, String>> {
        Box::pin(async move {
            let cluster = &self.0;
            let key = cluster.key(format_args!("proof:{signature}"));
            // Relative: Redis's clock and this replica's may differ.
            let remember_ms = until_s.saturating_sub(now_s).max(1).saturating_mul(1000);
            let deadline = cluster.deadline_us();
            let first: i64 = cluster
                .run("replay", |mut c| async move {
                    cluster
                        .proof
                        .key(&key)
                        .arg(remember_ms)
                        .arg(deadline)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            match first {
                1 => Ok(FirstUse::Yes),
                0 => Ok(FirstUse::No {
                    note: "remembered in the cluster's Redis (used on this or another replica)",
                }),
                _ => Err("redis replay: answered after its deadline; not recorded".into()),
            }
        })
    }
}
