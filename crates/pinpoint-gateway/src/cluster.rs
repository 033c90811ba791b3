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
/// emission interval (µs per request), ARGV[2]: the burst. Returns {allowed, wait_us,
/// remaining}. State: the theoretical arrival time, expiring when it is in the past.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now + interval * burst - new_tat) / interval)}
";

/// One quota count. KEYS[1]: the window's counter; ARGV[1]: when it may go (Unix ms).
const QUOTA: &str = r"
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

/// The shared connection and what every user of it needs.
pub struct Cluster {
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
    lease: redis::Script,
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
        let cluster = Arc::new(Cluster {
            connection: ArcSwapOption::empty(),
            prefix: config.key_prefix.clone(),
            timeout,
            replica,
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            reachable: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            gcra: redis::Script::new(GCRA),
            quota: redis::Script::new(QUOTA),
            lease: redis::Script::new(LEASE),
            leads_alerts: AtomicBool::new(false),
            limiters: Mutex::new(HashMap::new()),
        });
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let connect = move |client: redis::Client, config: ConnectionManagerConfig| async move {
            tokio::time::timeout(timeout * 4, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
        };
        match connect(client.clone(), manager_config.clone()).await {
            Ok(manager) => {
                cluster.connection.store(Some(Arc::new(manager)));
                cluster.reachable.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach [cluster] redis; limits counted there answer as their on_backend_error says until it can be reached");
                let weak = Arc::downgrade(&cluster);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let Some(cluster) = weak.upgrade() else { return };
                        if let Ok(manager) = connect(client.clone(), manager_config.clone()).await {
                            cluster.connection.store(Some(Arc::new(manager)));
                            cluster.reachable.store(true, Ordering::Relaxed);
                            tracing::info!("connected to [cluster] redis");
                            return;
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

    /// Runs one Redis operation within the timeout; an error says why, without the URL.
    async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            return Err(self.failed(operation, "not connected".into()));
        };
        match tokio::time::timeout(self.timeout, f((*connection).clone())).await {
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

    /// Writes this replica's heartbeat every `heartbeat_ms` until `stop` turns true.
    pub async fn beat(
        self: Arc<Self>,
        revision: impl Fn() -> String,
        started_ms: i64,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let beat = serde_json::json!({
                "replica": self.replica,
                "revision": revision(),
                "started_at_ms": started_ms,
                "at_ms": pinpoint_store::now_ms(),
                "version": env!("CARGO_PKG_VERSION"),
            })
            .to_string();
            let key = self.key(format_args!("replica:{}", self.replica));
            let ttl = u64::try_from(self.heartbeat.as_millis() * 3).unwrap_or(u64::MAX);
            let _ = self
                .run("heartbeat", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&beat)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat) => {}
                _ = stop.changed() => {
                    let key = self.key(format_args!("replica:{}", self.replica));
                    let _ = self.run("heartbeat", |mut c| async move {
                        redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
                    }).await;
                    return;
                }
            }
        }
    }

    /// Every live replica's last heartbeat (this one's included), by name.
    pub async fn replicas(&self) -> Result<Vec<serde_json::Value>, String> {
        let pattern = self.key(format_args!("replica:*"));
        let keys: Vec<String> = self
            .run("replicas", |mut c| async move {
                let mut keys = Vec::new();
                let mut cursor = 0u64;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    keys.extend(batch);
                    if next == 0 || keys.len() > 10_000 {
                        return Ok(keys);
                    }
                    cursor = next;
                }
            })
            .await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let beats: Vec<Option<String>> = self
            .run("replicas", |mut c| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await?;
        let mut replicas: Vec<serde_json::Value> = beats
            .into_iter()
            .flatten()
            .filter_map(|beat| serde_json::from_str(&beat).ok())
            .collect();
        replicas.sort_by(|a, b| a["replica"].as_str().cmp(&b["replica"].as_str()));
        Ok(replicas)
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
                // A changed rule starts afresh, as the in-process state does.
                let key_base = cluster.key(format_args!("rate:{}:{interval_us}:{burst}:", rule.id));
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
            cluster
                .run("quota", |mut c| async move {
                    cluster.quota.key(&key).arg(expire_at).invoke_async::<u64>(&mut c).await
                })
                .await
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
                            .invoke_async::<(i64, i64, i64)>(&mut c)
                            .await
                    }
                })
                .await;
            match answer {
                Ok((1, _, remaining)) => LimitAnswer::Allowed {
                    remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
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
            let until = until_s.max(now_s + 1);
            let stored: Option<String> = cluster
                .run("replay", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("NX")
                        .arg("EXAT")
                        .arg(until)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(match stored {
                Some(_) => FirstUse::Yes,
                None => FirstUse::No {
                    note: "remembered in the cluster's Redis (used on this or another replica)",
                },
            })
        })
    }
}
