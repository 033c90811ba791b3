//! Pinpoint's servers. [`run`] wires them: the proxy listener ([`proxy`]) runs every
//! request through the current revision's [`pipeline`] of [`layers`] and forwards allowed
//! ones to [`upstream`] pools; the api listener ([`api`]) serves the admin API, metrics and
//! health; [`runtime`] owns config revisions and hot reload; decisions go to the store's
//! decision log off the hot path.
// No unsafe code, except the CRS engine's FFI to libmodsecurity (the `modsecurity`
// feature), which is confined to `waf_crs`.
#![cfg_attr(not(feature = "modsecurity"), forbid(unsafe_code))]
#![cfg_attr(feature = "modsecurity", deny(unsafe_code))]

pub mod alerts;
pub mod api;
pub mod cloudauth;
pub mod cluster;
pub mod directory;
pub mod echo;
pub mod edge;
pub mod evaluate;
pub mod headers;
pub mod listener;
pub mod otlp;
pub mod parse_errors;
pub mod proxy;
pub mod respond;
pub mod runtime;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod trace_context;
pub mod upstream;
#[cfg(feature = "modsecurity")]
#[allow(unsafe_code)]
pub mod waf_crs;
pub mod webhooks;
pub mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use pinpoint_core::config::Config;
use pinpoint_store::prelude::*;
use pinpoint_store::{DecisionLog, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::directory::Directory;
use crate::runtime::{Runtime, Services, Shared};
use crate::tokens::TokenService;
use crate::upstream::HealthRegistry;
use pinpoint_policy::rate_state::{MemoryRateState, QUOTA_HORIZON_MS};

/// The two bound listeners.
pub struct Listeners {
    pub proxy: TcpListener,
    pub api: TcpListener,
}

/// What the gateway runs with.
pub struct Gateway {
    pub config: Config,
    /// The config file, if any: reloaded on SIGHUP and on change.
    pub config_path: Option<PathBuf>,
    pub store: Store,
    /// Listen addresses given on the command line: they replace the config's, also in
    /// every reloaded revision.
    pub listen_override: ListenOverride,
}

/// `serve --proxy-listen/--api-listen`: addresses that win over the config file's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenOverride {
    pub proxy: Option<std::net::SocketAddr>,
    pub api: Option<std::net::SocketAddr>,
}

impl ListenOverride {
    /// Puts the overriding addresses into `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(proxy) = self.proxy {
            config.server.proxy_listen = proxy;
        }
        if let Some(api) = self.api {
            config.server.api_listen = api;
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot start the built-in echo upstream: {0}")]
    Echo(#[source] std::io::Error),
    #[error("cannot build the STS client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot load identities and signing keys from the store: {0}")]
    Store(#[from] pinpoint_store::StoreError),
    #[error("cannot listen for metrics: {0}")]
    MetricsListen(#[source] std::io::Error),
    #[error("cannot export spans: {0}")]
    Otlp(String),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Cluster(String),
    #[error("cannot start the proxy workers: {0}")]
    Workers(#[source] std::io::Error),
}

/// Runs the gateway until `shutdown` resolves, then stops accepting, drains in-flight
/// requests, and writes every queued decision before returning.
pub async fn run(
    gateway: Gateway,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let worker_count = workers::resolve(gateway.config.server.workers);
    workers::set_count(worker_count);
    let prometheus = telemetry::prometheus();
    static UPKEEP: OnceLock<()> = OnceLock::new();
    UPKEEP.get_or_init(|| telemetry::spawn_upkeep(prometheus.clone()));

    let echo_listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(GatewayError::Echo)?;
    let echo_addr = echo_listener.local_addr().map_err(GatewayError::Echo)?.to_string();
    let (stop_echo, echo_stopped) = watch::channel(false);
    let echo = tokio::spawn(echo::serve(echo_listener, wait_for(echo_stopped)));

    let replay = Arc::new(cloudauth::ProofReplay::new(gateway.store.clone()));
    let cluster = match &gateway.config.cluster.redis {
        Some(_) => Some(
            cluster::Cluster::start(&gateway.config.cluster)
                .await
                .map_err(GatewayError::Cluster)?,
        ),
        None => None,
    };
    // Used proofs: in Redis when replicas share one, else in memory and the store.
    let proofs: Arc<dyn pinpoint_policy::world::ReplayCache> = match &cluster {
        Some(cluster) => Arc::new(cluster::SharedReplay(cluster.clone())),
        None => replay.clone(),
    };
    let memory_rate = Arc::new(MemoryRateState::default());
    let rate = cluster::rate_state(cluster.as_ref(), &memory_rate);
    let services = Services {
        cloudauth: Arc::new(
            cloudauth::CloudAuth::new(&gateway.config.cloudauth, proofs, rate).map_err(GatewayError::Client)?,
        ),
        directory: Directory::load(&gateway.store).await?,
        tokens: TokenService::start(&gateway.store, &gateway.config.jwt).await?,
        rate: memory_rate,
        replay,
        cluster,
    };
    load_quotas(&services.rate, &gateway.store).await?;
    let (decisions, writer) = DecisionLog::spawn(gateway.store.clone(), gateway.config.decision_log);
    let health = HealthRegistry::default();
    let (proxy_tls, api_tls) = (Arc::new(tls::TlsState::default()), Arc::new(tls::TlsState::default()));
    proxy_tls.update(gateway.config.server.proxy_tls.as_ref())?;
    api_tls.update(gateway.config.server.api_tls.as_ref())?;
    let otlp = match &gateway.config.server.otlp_traces_endpoint {
        Some(endpoint) => Some(Arc::new(otlp::Exporter::start(endpoint).map_err(GatewayError::Otlp)?)),
        None => None,
    };
    let runtime = Runtime::build(gateway.config, &health, &echo_addr, &services);
    let revision = runtime.config.revision.clone();
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        services,
        health,
        echo_addr,
        store: gateway.store,
        decision_drops: decisions.drops(),
        decisions: Arc::new(telemetry::QueuedDecisions(decisions)),
        prometheus,
        started: Instant::now(),
        config_path: gateway.config_path,
        listen_override: gateway.listen_override,
        config_rejected: arc_swap::ArcSwapOption::empty(),
        restart_required: arc_swap::ArcSwapOption::empty(),
        proxy_tls,
        api_tls,
        otlp,
    });

    // A start is a config change only when the revision differs from the last one loaded.
    let last = pinpoint_store::revisions::latest(&shared.store, i64::MIN, i64::MAX)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the last config load");
            None
        });
    if last.as_ref().is_none_or(|load| load.revision != revision) {
        shared
            .record_load(pinpoint_store::revisions::ConfigLoad {
                at_ms: pinpoint_store::now_ms(),
                revision: revision.clone(),
                previous: last.map(|load| load.revision),
                trigger: "start".into(),
            })
            .await;
    }
    let (stop, stopped) = watch::channel(false);
    let reloader = tokio::spawn(runtime::watch_config(shared.clone(), stopped.clone()));
    let housekeeping = tokio::spawn(housekeeping(shared.clone(), stopped.clone()));
    let heartbeat = shared.services.cluster.clone().map(|cluster| {
        let runtime_of = shared.clone();
        tokio::spawn(cluster.beat(
            move || runtime_of.runtime.load().config.revision.clone(),
            pinpoint_store::now_ms(),
            stopped.clone(),
        ))
    });
    let alerting = tokio::spawn(alerts::run(
        shared.clone(),
        listeners.api.local_addr().ok(),
        stopped.clone(),
    ));
    let follower = tokio::spawn(shared.services.clone().follow(shared.store.clone(), stopped.clone()));
    let address = |l: &tokio::net::TcpListener| {
        l.local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
    };
    let (proxy_addr, api_addr) = (address(&listeners.proxy), address(&listeners.api));
    let (routes, upstreams) = {
        let runtime = shared.runtime.load();
        (runtime.config.routes.len(), runtime.config.upstreams.len())
    };
    let metrics_listener = match shared.runtime.load().config.server.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(GatewayError::MetricsListen)?),
        None => None,
    };
    let metrics =
        metrics_listener.map(|l| tokio::spawn(api::serve_metrics(l, shared.clone(), wait_for(stopped.clone()))));
    // The proxy workers, each on a thread of its own: 1.. with a listener beside the first,
    // then 0 with the first. This thread serves the api and runs the background tasks.
    let mut worker_threads = Vec::new();
    let start_worker = |index: usize, listener: std::net::TcpListener| {
        let (shared, stopped) = (shared.clone(), stopped.clone());
        workers::spawn(index, listener, move |listener| {
            proxy::serve(listener, shared, wait_for(stopped))
        })
    };
    for index in 1..worker_count {
        match workers::listener_beside(&listeners.proxy).and_then(|listener| start_worker(index, listener)) {
            Ok(thread) => worker_threads.push(thread),
            Err(e) => tracing::warn!(worker = index, error = %e, "cannot start a proxy worker; serving with fewer"),
        }
    }
    let first = listeners
        .proxy
        .into_std()
        .and_then(|listener| start_worker(0, listener))
        .map_err(GatewayError::Workers)?;
    worker_threads.push(first);
    let api = tokio::spawn(api::serve(listeners.api, shared.clone(), wait_for(stopped)));
    let workers = worker_threads.len();
    tracing::info!(proxy = %proxy_addr, api = %api_addr, revision = %revision, routes, upstreams, workers, "pinpoint is serving");

    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop.send(true);
    // The workers drain on their own threads.
    let _ = tokio::task::spawn_blocking(move || {
        for thread in worker_threads {
            let _ = thread.join();
        }
    })
    .await;
    let _ = api.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let _ = reloader.await;
    let _ = housekeeping.await;
    let _ = follower.await;
    let _ = alerting.await;
    if let Some(heartbeat) = heartbeat {
        let _ = heartbeat.await;
    }
    if let Err(e) = save_quotas(&shared.services.rate, &shared.store).await {
        tracing::warn!(error = %e, "could not save quota counters at shutdown");
    }
    let _ = stop_echo.send(true);
    let _ = echo.await;
    if let Some(otlp) = shared.otlp.clone() {
        // The SDK's shutdown blocks while it sends the last batch.
        let _ = tokio::task::spawn_blocking(move || otlp.shutdown()).await;
    }
    // Every connection is closed, so no more decisions arrive; write what is queued.
    writer.finish().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Puts the saved quota counters back, so a restart does not reset quotas.
async fn load_quotas(rate: &MemoryRateState, store: &Store) -> Result<(), pinpoint_store::StoreError> {
    rate.restore_quotas(store.quota_usage(pinpoint_store::now_ms() - QUOTA_HORIZON_MS).await?);
    Ok(())
}

/// Saves the quota counters; run periodically and at shutdown.
async fn save_quotas(rate: &MemoryRateState, store: &Store) -> Result<(), pinpoint_store::StoreError> {
    store
        .save_quota_usage(&rate.quota_counters(), pinpoint_store::now_ms() - QUOTA_HORIZON_MS)
        .await
}

/// How long directory changes stay in the feed: a process that could not read it for longer
/// reloads its whole directory.
const CHANGE_FEED_KEPT_MS: i64 = 24 * 3600 * 1000;

/// Periodic upkeep: quota counters saved every 10 s; every minute signing-key rotation and
/// expiry, rate-limiter memory, used proofs and the directory change feed.
async fn housekeeping(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.tick().await;
    let mut rounds = 0u64;
    let stopped = wait_for(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {
                rounds += 1;
                if let Err(e) = save_quotas(&shared.services.rate, &shared.store).await {
                    tracing::warn!(error = %e, "could not save quota counters");
                }
                if rounds % 6 == 0 {
                    let jwt = shared.runtime.load().config.jwt.clone();
                    if let Err(e) = shared.services.tokens.maintain(&shared.store, &jwt).await {
                        tracing::warn!(error = %e, "signing-key maintenance failed");
                    }
                    shared.services.rate.housekeeping(pinpoint_store::now_ms());
                    if let Some(cluster) = &shared.services.cluster {
                        cluster.housekeeping();
                    }
                    shared.services.replay.housekeeping(pinpoint_store::now_ms() / 1000);
                    if let Err(e) = shared.store.prune_proofs(pinpoint_store::now_ms() / 1000).await {
                        tracing::warn!(error = %e, "could not prune used proof signatures");
                    }
                    let day_ago = pinpoint_store::now_ms() - CHANGE_FEED_KEPT_MS;
                    if let Err(e) = shared.store.prune_directory_changes(day_ago).await {
                        tracing::warn!(error = %e, "could not prune the directory change feed");
                    }
                }
            }
        }
    }
}

async fn wait_for(mut flag: watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            return;
        }
    }
}
