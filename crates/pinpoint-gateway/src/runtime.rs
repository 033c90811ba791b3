//! The running state of one config revision ([`Runtime`]: routes, upstream pools and the
//! pipeline) and the process-wide state around it ([`Shared`]). [`build_pipeline`] is the
//! one place where the order of the layers is defined. A new revision is built beside the
//! old one and swapped in atomically; requests in flight keep the revision they started
//! with, and the proxy reads the current one with a single atomic load (no lock).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use pinpoint_core::config::{Config, ConfigErrors, WafEngineKind};
use pinpoint_core::Mode;
use pinpoint_store::Store;
use tokio::sync::watch;

use crate::directory::{Directory, LiveIdentities};
use crate::telemetry;
use crate::tokens::TokenService;
use crate::upstream::{HealthRegistry, Upstream};
use pinpoint_policy::filters::authn::AuthnFilter;
use pinpoint_policy::filters::authz::AuthzFilter;
use pinpoint_policy::filters::cors::CorsFilter;
use pinpoint_policy::filters::csrf::CsrfFilter;
use pinpoint_policy::filters::net::NetFilter;
use pinpoint_policy::filters::rate::RateFilter;
use pinpoint_policy::filters::waf::WafFilter;
use pinpoint_policy::filters::{policy::PolicyFilter, route::RouteFilter};
use pinpoint_policy::pipeline::Pipeline;
use pinpoint_policy::rate_state::MemoryRateState;
use pinpoint_policy::routes::{CompiledRoute, RouteTable};
use pinpoint_policy::world::{Identities, RateState};
use pinpoint_store::revisions::ConfigLoad;

/// Everything one config revision needs to serve requests.
pub struct Runtime {
    pub config: Config,
    /// The proxy's pipeline.
    pub pipeline: Pipeline,
    /// The api listener's pipeline (the same layer types, minus routing and upstreams).
    pub api_pipeline: Pipeline,
    /// The upstream pools, by name (routes name theirs).
    pub upstreams: BTreeMap<Arc<str>, Arc<Upstream>>,
}

/// State that outlives config revisions and that layers are built from.
#[derive(Clone)]
pub struct Services {
    pub cloudauth: Arc<crate::cloudauth::CloudAuth>,
    pub directory: Arc<Directory>,
    pub tokens: Arc<TokenService>,
    pub rate: Arc<MemoryRateState>,
    /// Used cloud-auth proofs (memory and store).
    pub replay: Arc<crate::cloudauth::ProofReplay>,
    /// `[cluster] redis`, when set: rate limits and quotas are counted there.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Services {
    /// The engine's view of identities: the directory and the token service.
    pub fn identities(&self) -> Arc<dyn Identities> {
        Arc::new(LiveIdentities {
            directory: self.directory.clone(),
            tokens: self.tokens.clone(),
        })
    }

    /// Applies the store's change feed: identities to the directory, signing keys to the
    /// token service. API handlers call it after their own writes.
    pub async fn catch_up(&self, store: &Store) -> Result<(), pinpoint_store::StoreError> {
        if self.directory.catch_up(store).await? {
            self.tokens.reload(store).await?;
        }
        Ok(())
    }

    /// [`Services::catch_up`] after an API write committed: the answer reports the write
    /// whatever happens here (a store gone between the two leaves this process to apply
    /// it with the follower, as every other replica does).
    pub async fn catch_up_after_write(&self, store: &Store) {
        if let Err(e) = self.catch_up(store).await {
            tracing::warn!(error = %e, "a committed change is applied by the change-feed follower instead");
        }
    }

    /// Follows the store's change feed until `stop` turns true, every
    /// [`crate::directory::FOLLOW_EVERY`] and, on PostgreSQL, at once when a change is
    /// announced (LISTEN/NOTIFY; the poll covers notifications lost while the listener
    /// reconnects). A failed read is logged and tried again.
    pub async fn follow(self, store: Store, mut stop: watch::Receiver<bool>) {
        let announced = Arc::new(tokio::sync::Notify::new());
        let listener = store.spawn_change_listener(announced.clone());
        let mut tick = tokio::time::interval(crate::directory::FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = announced.notified() => {}
                _ = stop.changed() => {
                    if let Some(listener) = listener {
                        listener.abort();
                    }
                    return;
                }
            }
            match self.catch_up(&store).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("directory change feed readable again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the directory change feed; serving what is loaded");
                }
                Err(_) => {}
            }
        }
    }

    /// What the live pipelines are built on.
    pub fn world(&self) -> World {
        World {
            identities: self.identities(),
            rate: crate::cluster::rate_state(self.cluster.as_ref(), &self.rate),
        }
    }
}

/// What filters are built on: where identities come from and where rate state lives.
/// The live proxy's are the directory and the process's rate state; an evaluation's are
/// read-only identities and scratch rate state (the `evaluate` module).
#[derive(Clone)]
pub struct World {
    pub identities: Arc<dyn Identities>,
    pub rate: Arc<dyn RateState>,
}

/// Process-wide state shared by the servers.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub services: Services,
    pub health: HealthRegistry,
    /// Address of the built-in echo service (`builtin:echo`).
    pub echo_addr: String,
    pub store: Store,
    /// Where finished decisions go (the store's decision log, through its queue).
    pub decisions: Arc<dyn pinpoint_policy::world::DecisionSink>,
    /// The decision log's records that were to be kept and were not, by reason.
    pub decision_drops: Arc<pinpoint_store::decisions::DropCounts>,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    /// Where the config came from, if a file (reloadable).
    pub config_path: Option<PathBuf>,
    /// Command-line listen addresses, applied to every reloaded revision.
    pub listen_override: crate::ListenOverride,
    /// Why the file on disk was last refused, while it still is (`/healthz` reports it).
    pub config_rejected: arc_swap::ArcSwapOption<String>,
    /// A part of the loaded config that applies only on restart and differs from what
    /// runs (`/healthz` reports it, as degraded).
    pub restart_required: arc_swap::ArcSwapOption<String>,
    /// Each listener's TLS, following the config and the certificate files.
    pub proxy_tls: Arc<crate::tls::TlsState>,
    pub api_tls: Arc<crate::tls::TlsState>,
    /// The OTLP span exporter, when `otlp_traces_endpoint` is set.
    pub otlp: Option<Arc<crate::otlp::Exporter>>,
}

/// The proxy's layers, in the order they run. This is the one place the order is defined.
///
/// Routing comes first because every later layer may depend on the route (its CORS,
/// IP lists, auth requirement, permissions, limits); it cannot be shadowed. Then: CORS
/// preflight (answered before authentication), IP lists, authentication, authorization,
/// cross-site request checks, the WAF, static policy rules, rate limits and quotas (last, so
/// refused requests do not spend the caller's budget).
pub fn build_pipeline(config: &Config, routes: Arc<RouteTable>, world: &World) -> Pipeline {
    let mut pipeline = Pipeline::default();
    pipeline.push(RouteFilter::new(routes), Mode::Enforce);
    push_access_layers(&mut pipeline, config, world, false);
    pipeline
}

/// The compiled route table of a config.
pub fn route_table(config: &Config) -> Arc<RouteTable> {
    // Validation guarantees every route's upstream exists.
    Arc::new(RouteTable::new(
        config.routes.iter().map(|r| Arc::new(CompiledRoute::new(r))).collect(),
    ))
}

/// The api listener's layers: the proxy's, without routing (axum routes the API).
/// Authentication and authorization always enforce here: report mode is for trying rules
/// on proxied routes, never for opening Pinpoint's own API.
pub fn build_api_pipeline(config: &Config, world: &World) -> Pipeline {
    let mut pipeline = Pipeline::default();
    push_access_layers(&mut pipeline, config, world, true);
    pipeline
}

fn push_access_layers(pipeline: &mut Pipeline, config: &Config, world: &World, api: bool) {
    let access_mode = |mode: Mode| if api { Mode::Enforce } else { mode };
    pipeline.push(CorsFilter::new(config.cors.clone()), config.cors.mode);
    pipeline.push(NetFilter::new(&config.net), config.net.mode);
    pipeline.push(
        AuthnFilter::new(
            world.identities.clone(),
            config.jwt.clone(),
            config.authn.sources.clone(),
        )
        .with_client_certs(config.authn.client_certs.clone()),
        access_mode(config.authn.mode),
    );
    pipeline.push(
        AuthzFilter::new(config.authz.deny.clone()),
        access_mode(config.authz.mode),
    );
    pipeline.push(
        CsrfFilter::new(&config.csrf, &config.cors.allowed_origins, &config.net.trusted_proxies),
        config.csrf.mode,
    );
    pipeline.push(waf_filter(config), config.waf.mode);
    pipeline.push(PolicyFilter::new(config.policy.rules.clone()), config.policy.mode);
    pipeline.push(
        RateFilter::new(&config.rate.limits, &config.rate.quotas, world.rate.clone()),
        config.rate.mode,
    );
}

/// The WAF filter with the engine `[waf] engine` names. The CRS engine was loaded when the
/// config was (see [`check_waf_engine`]); should its files have gone since, the filter
/// refuses what it cannot inspect (fail closed).
fn waf_filter(config: &Config) -> WafFilter {
    match config.waf.engine {
        WafEngineKind::Builtin => WafFilter::new(&config.waf),
        WafEngineKind::Crs => match crs_engine(config) {
            Ok(engine) => WafFilter::with_engine(&config.waf, engine),
            Err(error) => {
                tracing::error!(%error, "the CRS engine did not load; WAF routes are refused");
                WafFilter::with_engine(&config.waf, Arc::new(pinpoint_policy::filters::waf::Unavailable))
            }
        },
    }
}

#[cfg(feature = "modsecurity")]
fn crs_engine(config: &Config) -> Result<Arc<dyn pinpoint_policy::filters::waf::WafEngine>, String> {
    let body_limit = config.routes.iter().map(|r| r.max_body_bytes).max().unwrap_or(1 << 20);
    crate::waf_crs::engine(&config.waf, body_limit)
        .map(|e| e as Arc<dyn pinpoint_policy::filters::waf::WafEngine>)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "modsecurity"))]
fn crs_engine(_: &Config) -> Result<Arc<dyn pinpoint_policy::filters::waf::WafEngine>, String> {
    Err(String::from(
        "[waf] engine = \"crs\": this build has no CRS engine (build with `--features modsecurity`, which needs libmodsecurity3)",
    ))
}

/// Loads the WAF engine a config names, so a CRS engine that cannot start (no such build,
/// missing rule files, a rule that does not parse) is a config error.
pub fn check_waf_engine(config: &Config) -> Result<(), String> {
    match config.waf.engine {
        WafEngineKind::Builtin => Ok(()),
        WafEngineKind::Crs => crs_engine(config).map(|_| ()),
    }
}

impl Runtime {
    /// Compiles a validated config.
    pub fn build(config: Config, health: &HealthRegistry, echo_addr: &str, services: &Services) -> Runtime {
        let upstreams: BTreeMap<Arc<str>, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, up)| (Arc::from(name.as_str()), Upstream::new(name, up, health, echo_addr)))
            .collect();
        let world = services.world();
        let pipeline = build_pipeline(&config, route_table(&config), &world);
        let api_pipeline = build_api_pipeline(&config, &world);
        Runtime {
            config,
            pipeline,
            api_pipeline,
            upstreams,
        }
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    #[error("{path}: {message}")]
    WafEngine { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Otlp { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Alerting { path: PathBuf, message: String },
}

/// Reads and validates a config file.
/// Reads and validates a config file. A relative `data_dir` is taken relative to the
/// file's own directory, wherever Pinpoint was started from.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let source = String::from_utf8(bytes).map_err(|e| {
        // Where the text stops being UTF-8, as a line and column of what came before.
        let valid = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
        ConfigErrors::whole_file(
            &before,
            &path.display().to_string(),
            valid,
            "the file is not UTF-8 text",
        )
    })?;
    let mut config = Config::parse(&source, &path.display().to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if config.server.data_dir.is_relative() {
            config.server.data_dir = dir.join(&config.server.data_dir);
        }
        if let Some(pepper) = config.store.pepper_file.as_mut().filter(|p| p.is_relative()) {
            *pepper = dir.join(&*pepper);
        }
        for tls in [&mut config.server.proxy_tls, &mut config.server.api_tls]
            .into_iter()
            .flatten()
        {
            tls.resolve_relative_to(dir);
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        for upstream in config.upstreams.values_mut() {
            upstream.tls.resolve_relative_to(dir);
        }
        for hook in &mut config.alerting.webhooks {
            hook.resolve_relative_to(dir);
        }
    }
    if let Some(endpoint) = &config.server.otlp_traces_endpoint {
        crate::otlp::Exporter::check(endpoint).map_err(|message| LoadError::Otlp {
            path: path.to_owned(),
            message,
        })?;
    }
    crate::cluster::check(&config.cluster).map_err(|message| LoadError::Alerting {
        path: path.to_owned(),
        message,
    })?;
    crate::webhooks::check(&config.alerting.webhooks).map_err(|message| LoadError::Alerting {
        path: path.to_owned(),
        message,
    })?;
    // Certificates that do not load are the config's error, naming the file.
    let tls_error = |e: crate::tls::TlsError| LoadError::Tls {
        path: path.to_owned(),
        message: e.to_string(),
    };
    for tls in [&config.server.proxy_tls, &config.server.api_tls].into_iter().flatten() {
        crate::tls::server_config(tls).map_err(tls_error)?;
    }
    for (name, upstream) in &config.upstreams {
        let uses_tls = upstream
            .targets
            .iter()
            .any(|t| matches!(t.target, pinpoint_core::config::Target::Https(_)));
        if uses_tls || upstream.tls != Default::default() {
            crate::upstream::client_tls(&upstream.tls).map_err(|e| LoadError::Tls {
                path: path.to_owned(),
                message: format!("upstream `{name}`: {e}"),
            })?;
        }
    }
    check_waf_engine(&config).map_err(|message| LoadError::WafEngine {
        path: path.to_owned(),
        message,
    })?;
    Ok(config)
}

impl Shared {
    /// Re-reads the config file and swaps it in if it is valid and new. A bad file is
    /// logged with its location and the running revision keeps serving.
    pub fn reload(&self, trigger: &str) -> Result<Option<ConfigLoad>, LoadError> {
        let Some(path) = &self.config_path else {
            return Ok(None);
        };
        // The built-in demo watches `./pinpoint.toml` before it exists: its absence is no error.
        if !path.exists() && self.runtime.load().config.origin == pinpoint_core::config::DEMO_ORIGIN {
            return Ok(None);
        }
        let mut config = match load_file(path) {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "rejected").increment(1);
                tracing::error!(error = %e, trigger, kept_revision = %self.runtime.load().config.revision, "config rejected; the running config keeps serving");
                self.config_rejected.store(Some(Arc::new(e.to_string())));
                return Err(e);
            }
        };
        self.config_rejected.store(None);
        self.listen_override.apply(&mut config);
        let current = self.runtime.load();
        if config.revision == current.config.revision {
            return Ok(None);
        }
        let old = &current.config.server;
        if config.server.proxy_listen != old.proxy_listen
            || config.server.api_listen != old.api_listen
            || config.server.data_dir != old.data_dir
        {
            tracing::warn!(
                "listen addresses and data_dir change only on restart; the rest of the new config applies now"
            );
        }
        let running_cluster = self.services.cluster.as_ref().map(|c| &c.started_with);
        let cluster_changed = match running_cluster {
            Some(running) => *running != config.cluster,
            None => config.cluster.redis.is_some(),
        };
        if cluster_changed {
            tracing::warn!("[cluster] changed: it applies on restart only; until then this replica keeps its Redis connection and key prefix");
        }
        // The store this process opened at start (the URL; the pepper is read then too).
        let store_changed = config.store.url.as_deref() != self.store.postgres_url();
        if store_changed {
            tracing::warn!(
                "[store] changed: it applies on restart only; until then this replica keeps the store it opened"
            );
        }
        let pending: Vec<&str> = [(cluster_changed, "[cluster]"), (store_changed, "[store]")]
            .into_iter()
            .filter_map(|(changed, section)| changed.then_some(section))
            .collect();
        if pending.is_empty() {
            self.restart_required.store(None);
        } else {
            self.restart_required.store(Some(Arc::new(format!(
                "{} changed: restart to apply it",
                pending.join(" and ")
            ))));
        }
        let revision = config.revision.clone();
        let previous = current.config.revision.clone();
        self.runtime.store(Arc::new(Runtime::build(
            config,
            &self.health,
            &self.echo_addr,
            &self.services,
        )));
        metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "applied").increment(1);
        tracing::info!(revision = %revision, previous = %previous, trigger, "config reloaded");
        self.refresh_tls(trigger);
        Ok(Some(ConfigLoad {
            at_ms: pinpoint_store::now_ms(),
            revision,
            previous: Some(previous),
            trigger: trigger.to_owned(),
        }))
    }

    /// Writes down that a revision was loaded (`pinpoint_store::revisions`), for alerts to
    /// say whether a spike began shortly after. A failed write is logged; serving goes on.
    pub async fn record_load(&self, load: ConfigLoad) {
        if let Err(e) = pinpoint_store::revisions::record(&self.store, &load).await {
            tracing::warn!(error = %e, revision = %load.revision, "could not record the config load");
        }
    }

    /// Rebuilds a listener's TLS when its section or its files changed since it was
    /// built. A certificate that does not load is logged with its path and the one
    /// serving keeps serving (`load_file` refuses such a config before it gets here; a
    /// file replaced on disk meets this check).
    pub fn refresh_tls(&self, trigger: &str) {
        let runtime = self.runtime.load();
        let server = &runtime.config.server;
        for (listener, state, config) in [
            ("proxy", &self.proxy_tls, &server.proxy_tls),
            ("api", &self.api_tls, &server.api_tls),
        ] {
            match state.update(config.as_ref()) {
                Ok(true) => {
                    metrics::counter!(telemetry::TLS_RELOADS, "listener" => listener, "result" => "applied")
                        .increment(1);
                    tracing::info!(listener, trigger, "TLS certificates loaded");
                }
                Ok(false) => {}
                Err(e) => {
                    if state.note_failure(&e) {
                        metrics::counter!(telemetry::TLS_RELOADS, "listener" => listener, "result" => "rejected")
                            .increment(1);
                        tracing::error!(listener, trigger, error = %e, "TLS certificates rejected; the old ones keep serving");
                    }
                }
            }
        }
    }
}

/// Reloads on SIGHUP and when the file's content changes (checked every
/// `reload_poll_ms`), until `stop` turns true.
pub async fn watch_config(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // SIGHUP is handled even with nothing to reload: it must never end the process.
    let path = shared.config_path.clone().unwrap_or_default();
    let poll_ms = shared.runtime.load().config.server.reload_poll_ms;
    let mut last_seen = std::fs::read(&path).ok();
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut poll = tokio::time::interval(Duration::from_millis(poll_ms.max(50)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = stop.changed() => return,
            _ = sighup => {
                last_seen = std::fs::read(&path).ok();
                if let Ok(Some(load)) = shared.reload("SIGHUP") {
                    shared.record_load(load).await;
                }
            }
            _ = poll.tick(), if poll_ms > 0 && !path.as_os_str().is_empty() => {
                let now = std::fs::read(&path).ok();
                if now.is_some() && now != last_seen {
                    last_seen = now;
                    if let Ok(Some(load)) = shared.reload("file change") {
                        shared.record_load(load).await;
                    }
                }
                shared.refresh_tls("certificate file change");
            }
        }
    }
}
