//! Metrics: the process-wide Prometheus recorder and the names and labels of Pinpoint's
//! metrics, so every counter is incremented from one place.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pinpoint_core::{Mode, Reason};

pub const REQUESTS: &str = "pinpoint_requests_total";
pub const DENIALS: &str = "pinpoint_denials_total";
pub const DURATION: &str = "pinpoint_request_duration_seconds";
pub const CONFIG_RELOADS: &str = "pinpoint_config_reloads_total";
/// Connections the HTTP parser ended before a request reached the pipeline, by kind.
pub const CONNECTION_ERRORS: &str = "pinpoint_connection_errors_total";
/// Upstream targets' changes of state, by upstream, target and new state.
pub const TARGET_TRANSITIONS: &str = "pinpoint_upstream_target_transitions_total";
/// Whether each upstream target is available (1) or not (0), as of the scrape.
pub const TARGET_UP: &str = "pinpoint_upstream_target_up";
/// WebSocket tunnels that closed, per route.
pub const WEBSOCKETS_CLOSED: &str = "pinpoint_websockets_closed_total";
/// Certificate (re)loads per listener and result (`applied`, `rejected`).
pub const TLS_RELOADS: &str = "pinpoint_tls_reloads_total";
/// Upstream attempts retried on another target.
pub const UPSTREAM_RETRIES: &str = "pinpoint_upstream_retries_total";
/// Requests whose path was rewritten to its canonical form (refused ones are denials).
pub const CANONICALISED: &str = "pinpoint_canonicalised_paths_total";
/// Every decision by outcome (`allowed`, `refused`, `would_deny`), layer, reason, route
/// and mode: the same counts as the decision log's rollups, for Prometheus. Label values
/// are bounded: route ids, the reason catalogue.
pub const DECISIONS: &str = "pinpoint_decisions_total";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets_for_metric(Matcher::Full(DURATION.into()), DURATION_BUCKETS) {
                Ok(b) => b,
                // Only fails for an empty bucket list, which the constant is not.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Keeps histogram buffers drained; runs until the process ends.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Counts a denial (enforced or shadow) or another Pinpoint-generated error.
pub fn count_denial(reason: Reason, route: &Arc<str>, mode: Mode) {
    metrics::counter!(
        DENIALS,
        "layer" => reason.layer(),
        "reason" => reason.code(),
        "route" => route.clone(),
        "mode" => mode.as_str()
    )
    .increment(1);
}

/// Counts the denials (enforced and shadow) a pipeline run traced.
pub fn count_trace_denials(trace: &[pinpoint_core::LayerTrace], route: &Arc<str>) {
    for entry in trace {
        if let (Some(reason), pinpoint_core::Mark::Deny | pinpoint_core::Mark::WouldDeny) = (entry.reason, entry.mark) {
            count_denial(reason, route, entry.mode);
        }
    }
}

/// Counts a connection the HTTP library ended with an error, by kind: `head_too_large`
/// and `malformed` (the parser answered 431 or 400 itself, without a problem body, since
/// no request reached Pinpoint), `header_timeout`, `closed_early`, `io`, `other`.
pub fn count_connection_error(error: &hyper::Error) {
    let kind = if error.is_parse_too_large() {
        "head_too_large"
    } else if error.is_parse() || error.is_parse_status() {
        "malformed"
    } else if error.is_timeout() {
        "header_timeout"
    } else if error.is_incomplete_message() {
        "closed_early"
    } else if std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>()) {
        "io"
    } else {
        "other"
    };
    metrics::counter!(CONNECTION_ERRORS, "kind" => kind).increment(1);
}

/// Counts a TLS handshake that failed or timed out (`kind="tls_handshake"`).
pub fn count_tls_handshake_failure() {
    metrics::counter!(CONNECTION_ERRORS, "kind" => "tls_handshake").increment(1);
}

/// Counts a WebSocket tunnel that closed, per route.
pub fn count_websocket_closed(route: &Arc<str>) {
    metrics::counter!(WEBSOCKETS_CLOSED, "route" => route.clone()).increment(1);
}

/// Counts a target's change of state (`ejected`, `down`, `up`).
pub fn count_target_transition(upstream: &str, target: &str, to: &'static str) {
    metrics::counter!(
        TARGET_TRANSITIONS,
        "upstream" => upstream.to_owned(),
        "target" => target.to_owned(),
        "to" => to
    )
    .increment(1);
}

/// Whether a target is available (1) or ejected or failing its checks (0).
pub fn set_target_up(upstream: &str, target: &str, up: bool) {
    metrics::gauge!(TARGET_UP, "upstream" => upstream.to_owned(), "target" => target.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Counts a retry of an upstream request on another target.
pub fn count_upstream_retry(route: &Arc<str>) {
    metrics::counter!(UPSTREAM_RETRIES, "route" => route.clone()).increment(1);
}

/// Counts a path that had to be rewritten to be canonical (only those: the common,
/// already-canonical request costs nothing here).
pub fn count_canonicalised(rewritten: bool) {
    if rewritten {
        metrics::counter!(CANONICALISED).increment(1);
    }
}

/// Counts a finished request and its latency.
pub fn count_request(route: &Arc<str>, status: http::StatusCode, elapsed: Duration) {
    let (requests, duration) = request_metrics(route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

/// Counts a finished request in `pinpoint_decisions_total`: once by its outcome, and once
/// more for each report-mode would-deny in its trace.
fn count_decision(route: &Arc<str>, decision: &pinpoint_core::Decision) {
    let outcome = if decision.reason.is_some() {
        "refused"
    } else {
        "allowed"
    };
    decision_counter(route, decision.reason, outcome, Mode::Enforce).increment(1);
    for entry in &decision.trace {
        if entry.mark == pinpoint_core::Mark::WouldDeny {
            decision_counter(route, entry.reason, "would_deny", entry.mode).increment(1);
        }
    }
}

/// The `pinpoint_decisions_total` counter of one label set, kept once made (as
/// [`request_metrics`] keeps its handles, and for the same reason).
fn decision_counter(route: &Arc<str>, reason: Option<Reason>, outcome: &'static str, mode: Mode) -> metrics::Counter {
    type Key = (Arc<str>, Option<Reason>, &'static str, Mode);
    static CACHED: OnceLock<papaya::HashMap<Key, metrics::Counter, foldhash::fast::RandomState>> = OnceLock::new();
    let register = || {
        metrics::counter!(
            DECISIONS,
            "outcome" => outcome,
            "layer" => reason.map_or("-", |r| r.layer()),
            "reason" => reason.map_or("-", |r| r.code()),
            "route" => route.clone(),
            "mode" => mode.as_str()
        )
    };
    kept(&CACHED, (route.clone(), reason, outcome, mode), register)
}

/// The request counter and latency histogram of each route and status, looked up once:
/// through the `metrics` macros every request built, hashed and looked up its label sets
/// in the registry, 1,900 instructions a request (`bench/instructions.sh`, 2026-12-06).
/// Bounded by the routes ever configured times the statuses they answered.
type RequestMetrics =
    papaya::HashMap<(Arc<str>, u16), (metrics::Counter, metrics::Histogram), foldhash::fast::RandomState>;

fn request_metrics(route: &Arc<str>, status: http::StatusCode) -> (metrics::Counter, metrics::Histogram) {
    static CACHED: OnceLock<RequestMetrics> = OnceLock::new();
    let register = || {
        (
            metrics::counter!(REQUESTS, "route" => route.clone(), "status" => status.as_str().to_owned()),
            metrics::histogram!(DURATION, "route" => route.clone()),
        )
    };
    kept(&CACHED, (route.clone(), status.as_u16()), register)
}

/// The metric handles `cache` keeps for `key`, registered by `register` the first time.
/// Kept only once the Prometheus recorder is installed: handles taken before would count
/// nowhere, so until then each call registers afresh.
fn kept<K, V>(
    cache: &OnceLock<papaya::HashMap<K, V, foldhash::fast::RandomState>>,
    key: K,
    register: impl FnOnce() -> V,
) -> V
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    if PROMETHEUS.get().is_none() {
        return register();
    }
    let cached = cache.get_or_init(Default::default).pin();
    if let Some(handles) = cached.get(&key) {
        return handles.clone();
    }
    cached.get_or_insert_with(key, register).clone()
}

/// Ends every request the same way, proxy or API: counts it, writes its access-log line
/// (from the decision's caller-independent fields) and queues the decision for the store.
pub fn finish_request(
    decisions: &dyn pinpoint_policy::world::DecisionSink,
    route: &Arc<str>,
    mut decision: pinpoint_core::Decision,
    sample: pinpoint_core::config::SampleRate,
    span: Option<(&crate::otlp::Exporter, &crate::trace_context::TraceContext)>,
) {
    withhold_credentials(&mut decision);
    if let Some((otlp, trace)) = span {
        otlp.record(trace, &decision);
    }
    let status = http::StatusCode::from_u16(decision.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    count_request(route, status, Duration::from_micros(decision.duration_micros));
    count_decision(route, &decision);
    let line = AccessLine {
        request_id: decision.request_id.as_str(),
        client_request_id: decision.client_request_id.as_deref().unwrap_or("-"),
        trace_id: decision.trace_id.as_deref().unwrap_or("-"),
        client: decision.client_addr.as_str(),
        method: decision.method.as_str(),
        path: decision.path.as_str(),
        route: decision.route.as_deref().unwrap_or("-"),
        status: decision.status,
        reason: decision.reason.map(|r| r.code()).unwrap_or("-"),
        upstream: decision.upstream_target.as_deref().unwrap_or("-"),
        duration_us: decision.duration_micros,
        revision: decision.config_revision.as_str(),
    };
    match ACCESS_LOG.get() {
        Some(log) => {
            if tracing::enabled!(target: "pinpoint::access", tracing::Level::INFO) {
                log.write(&line);
            }
        }
        None => log_access(&line),
    }
    decisions.record(decision, sample);
}

/// Replaces credential-shaped text a client put into a decision (a method, a header value
/// a filter quotes, a body field's name the WAF names) by a mark, before the decision is
/// logged, stored or exported: whatever a filter writes into its trace, no credential is
/// written down (`credential_text::withheld`).
fn withhold_credentials(decision: &mut pinpoint_core::Decision) {
    use pinpoint_policy::credential_text::withheld;
    let scrub = |text: &mut String| {
        if let Some(replaced) = withheld(text) {
            *text = replaced;
        }
    };
    scrub(&mut decision.method);
    scrub(&mut decision.path);
    decision.raw_path.as_mut().map(scrub);
    decision.host.as_mut().map(scrub);
    for entry in &mut decision.trace {
        entry.note.as_mut().map(scrub);
        entry.detail.as_mut().map(scrub);
        entry.platform_note.as_mut().map(scrub);
        if let Some(replaced) = entry.rule_id.as_deref().and_then(withheld) {
            entry.rule_id = Some(Arc::from(replaced));
        }
    }
}

/// One request's access-log line: the event `pinpoint::access` at INFO, message
/// `request`, with these fields in this order.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client_request_id: &'a str,
    pub trace_id: &'a str,
    pub client: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub reason: &'a str,
    pub upstream: &'a str,
    pub duration_us: u64,
    pub revision: &'a str,
}

/// A writer of access-log lines that takes a line's fields as they are, instead of through
/// tracing's dispatch and field visitors. The binary installs one for its JSON log format
/// ([`install_access_log`]), which writes exactly the line tracing would; lines still obey
/// the log filter's level for `pinpoint::access` (not filters on field values). Through
/// tracing, the line cost about 5,800 instructions a request (bench/instructions.sh, bare
/// route: a tenth of a proxied GET); written directly, about 2,600.
pub trait AccessLog: Send + Sync {
    fn write(&self, line: &AccessLine<'_>);
}

static ACCESS_LOG: OnceLock<Box<dyn AccessLog>> = OnceLock::new();

/// Sends access-log lines to `log` rather than through tracing, for the rest of the
/// process; false when one is installed already.
pub fn install_access_log(log: Box<dyn AccessLog>) -> bool {
    ACCESS_LOG.set(log).is_ok()
}

/// The access-log line as a tracing event (without an [`AccessLog`], or for comparing one
/// with what tracing writes).
pub fn log_access(line: &AccessLine<'_>) {
    tracing::info!(
        target: "pinpoint::access",
        request_id = line.request_id,
        client_request_id = line.client_request_id,
        trace_id = line.trace_id,
        client = line.client,
        method = line.method,
        path = line.path,
        route = line.route,
        status = line.status,
        reason = line.reason,
        upstream = line.upstream,
        duration_us = line.duration_us,
        revision = line.revision,
        "request"
    );
}

/// The store's decision log (a bounded queue to its writer) as the engine's
/// `DecisionSink`: recording never waits; a full queue drops and counts.
pub struct QueuedDecisions(pub pinpoint_store::DecisionLog);

impl pinpoint_policy::world::DecisionSink for QueuedDecisions {
    fn record(&self, decision: pinpoint_core::Decision, sample: pinpoint_core::config::SampleRate) {
        self.0.record(decision, sample);
    }
}
