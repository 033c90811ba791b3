//! The policy pipeline: one ordered list of [`Filter`]s, each answering Allow, Deny or
//! NotApplicable for a request. This module is the one place that turns those answers into
//! the request's fate and its trace: an enforced deny stops the pipeline (later layers are
//! traced as not reached), a deny in report mode is traced as `would_deny`, counted, and
//! the request goes on. The order itself is defined by whoever builds the pipeline (the
//! gateway's `runtime::build_pipeline`).
//!
//! Phases: a filter's header phase ([`Filter::check`]) decides on the request head; a
//! filter that must see the body says so ([`Filter::needs_body`]) and gets its body phase
//! ([`Filter::check_body`]) once the proxy has read it (only then does the proxy buffer a
//! body for inspection); headers a filter wants on the response, whatever answers the
//! request, go into [`RequestCtx::response_headers`] (the response phase), so the pipeline
//! knows no filter's header types.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pinpoint_core::{Denial, LayerTrace, Mark, Mode, Outcome};

use crate::identity::Identity;
use crate::routes::{CompiledRoute, RouteAccess};

/// What a layer sees of a request. Layers may fill in what they establish (the route,
/// the principal) for the layers after them.
pub struct RequestCtx<'a> {
    /// The canonical method (upper case; see `pinpoint_core::canonical`).
    pub method: &'a Method,
    /// The canonical path: the one the upstream receives (before `strip_prefix`).
    pub path: &'a str,
    /// The query string as sent (set by the host when it has one).
    pub query: Option<&'a str>,
    /// The matched route folds case: rules compare paths ignoring ASCII case.
    pub fold_case: bool,
    /// Host without port, lower-case.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The TCP peer.
    pub client_addr: SocketAddr,
    /// The client certificate the TLS handshake verified, if any (set by the host).
    pub client_cert: Option<&'a crate::identity::ClientCertificate>,
    /// The client's address after trusted-proxy resolution.
    pub client_ip: IpAddr,
    pub request_id: &'a str,
    /// Unix time in milliseconds when the request's handling began: the one wall-clock
    /// reading layers use (key expiry, quota windows) and the decision's `at_ms`.
    pub at_ms: i64,
    /// The matched route (proxy requests), set by the route layer.
    pub route: Option<Arc<CompiledRoute>>,
    /// The route's id (proxy routes and API endpoints alike).
    pub route_id: Option<Arc<str>>,
    /// What the route demands of callers, set with the route.
    pub access: Option<Arc<RouteAccess>>,
    /// Set by the authentication layer (held inline: no allocation per request).
    pub identity: Option<Identity>,
    /// Set by the authentication layer when it refused a credential whose owner it knows.
    pub known_caller: Option<pinpoint_core::CallerRecord>,
    /// The request's `Origin`, when the CORS layer allows it (reflected in every response).
    pub cors_origin: Option<HeaderValue>,
    /// Set by a layer that answered the request itself (a CORS preflight).
    pub answered: bool,
    /// Set by the route layer when it routed a preflight by the method it asks about
    /// (`OPTIONS` itself has no route there): the refusal the request gets as the
    /// `OPTIONS` it is when no layer answers it, so it is never forwarded on a route chosen
    /// for another method.
    pub unanswered_preflight: Option<Denial>,
    /// Headers every response to this request carries, whatever answers it (rate-limit
    /// state, CORS): the filters' response phase. A list, appended to the response's map
    /// once: a map here would hash every name twice (bench/README.md has the figure).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl<'a> RequestCtx<'a> {
    /// A context with nothing established yet; `at_ms` is the one wall-clock reading of
    /// the request (from the caller's [`crate::world::Clock`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: &'a Method,
        path: &'a str,
        host: Option<&'a str>,
        headers: &'a HeaderMap,
        client_addr: SocketAddr,
        client_ip: IpAddr,
        request_id: &'a str,
        at_ms: i64,
    ) -> Self {
        RequestCtx {
            method,
            path,
            query: None,
            fold_case: false,
            host,
            headers,
            client_addr,
            client_cert: None,
            client_ip,
            request_id,
            at_ms,
            route: None,
            route_id: None,
            access: None,
            identity: None,
            known_caller: None,
            cors_origin: None,
            answered: false,
            unanswered_preflight: None,
            response_headers: Vec::new(),
        }
    }

    /// Whether the request's path is under `prefix`: the one comparison every path rule
    /// uses, ignoring case where the route folds case.
    pub fn path_under(&self, prefix: &str) -> bool {
        if self.fold_case {
            crate::routes::prefix_matches_ignoring_case(prefix, self.path)
        } else {
            crate::routes::prefix_matches(prefix, self.path)
        }
    }

    /// The matched route's id, or `none`.
    pub fn route_label(&self) -> Arc<str> {
        match &self.route_id {
            Some(id) => id.clone(),
            None => Arc::from(NO_ROUTE),
        }
    }
}

/// Label used for metrics when no route matched.
pub const NO_ROUTE: &str = "none";

/// A layer's answer: ready now, or after some I/O.
pub enum Check<'a> {
    Ready(Outcome),
    Pending(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

/// One policy filter.
pub trait Filter: Send + Sync {
    /// Stable name, used in traces and metrics (and as the layer part of its reason codes).
    fn name(&self) -> &'static str;
    /// The header phase: decides about one request from its head.
    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a>;
    /// The most body bytes this filter must see for this request (after the header phase
    /// passed), or `None` when it needs no body (the default). The proxy buffers a body
    /// for inspection only when some filter asks.
    fn needs_body(&self, _ctx: &RequestCtx<'_>) -> Option<u64> {
        None
    }
    /// The body phase: decides about the request's body, when [`Filter::needs_body`]
    /// asked for it.
    fn check_body(&self, _ctx: &mut RequestCtx<'_>, _body: &[u8]) -> Outcome {
        Outcome::NotApplicable
    }
}

struct Stage {
    layer: Box<dyn Filter>,
    mode: Mode,
}

/// The ordered layers.
#[derive(Default)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

/// The pipeline's verdict on a request.
pub struct Verdict {
    pub trace: Vec<LayerTrace>,
    /// The enforced denial, if any.
    pub denial: Option<Denial>,
}

impl Pipeline {
    /// Appends a layer running in `mode`.
    pub fn push(&mut self, layer: impl Filter + 'static, mode: Mode) {
        self.stages.push(Stage {
            layer: Box::new(layer),
            mode,
        });
    }

    /// Filter names and modes, in order.
    pub fn describe(&self) -> Vec<(&'static str, Mode)> {
        self.stages.iter().map(|s| (s.layer.name(), s.mode)).collect()
    }

    /// Runs every layer in order until one denies in enforce mode.
    pub async fn run(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let mut trace = Vec::with_capacity(self.stages.len() + 1);
        let mut denial = None;
        // At most one clock read per layer boundary: a layer's time is the gap between the
        // reading before it and the one after it (clock reads are not free, least of all in
        // a VM).
        let mut boundary = Instant::now();
        for stage in &self.stages {
            if denial.is_some() || ctx.answered {
                let mut entry = LayerTrace::new(stage.layer.name(), Mark::Skip, stage.mode);
                entry.note = Some(String::from(if ctx.answered {
                    "not reached: answered by an earlier layer"
                } else {
                    "not reached"
                }));
                trace.push(entry);
                continue;
            }
            let outcome = match stage.layer.check(ctx) {
                Check::Ready(outcome) => outcome,
                Check::Pending(fut) => fut.await,
            };
            let mut entry = LayerTrace::new(stage.layer.name(), Mark::Pass, stage.mode);
            // A layer that does not apply took no time worth a clock read (its few
            // nanoseconds count to the next layer's): two thirds of a bare request's
            // layers, about 100 instructions each (bench/instructions.sh).
            if !matches!(outcome, Outcome::NotApplicable) {
                let finished = Instant::now();
                entry.micros = finished.duration_since(boundary).as_micros() as u64;
                boundary = finished;
            }
            if let Some(enforced) = trace_outcome(outcome, stage.mode, &mut entry) {
                denial = Some(enforced);
            }
            trace.push(entry);
        }
        // A preflight routed by the method it asks about goes no further than a layer's
        // answer: unanswered (no CORS config, CORS in report mode), it is refused as the
        // `OPTIONS` request it is.
        if let Some(refusal) = ctx
            .unanswered_preflight
            .take()
            .filter(|_| denial.is_none() && !ctx.answered)
        {
            let mut entry = LayerTrace::new("route", Mark::Pass, Mode::Enforce);
            entry.note = Some(String::from(
                "routed as a preflight by Access-Control-Request-Method, and no layer answered it: refused as OPTIONS",
            ));
            denial = trace_outcome(Outcome::Deny(refusal), Mode::Enforce, &mut entry);
            trace.push(entry);
        }
        Verdict { trace, denial }
    }

    /// How many body bytes the filters need to see for this request, when any filter asks
    /// (after a header phase that let the request through); `None`: no body inspection.
    pub fn body_wanted(&self, ctx: &RequestCtx<'_>) -> Option<u64> {
        self.stages.iter().filter_map(|s| s.layer.needs_body(ctx)).max()
    }

    /// The body phase: every filter that asked for the body decides on it, in order, with
    /// the header phase's rules (an enforced deny stops, a report-mode deny is traced as
    /// `would_deny`). Its entries follow the header phase's in the trace.
    pub fn run_body(&self, ctx: &mut RequestCtx<'_>, body: &[u8], verdict: &mut Verdict) {
        for stage in &self.stages {
            if verdict.denial.is_some() {
                return;
            }
            if stage.layer.needs_body(ctx).is_none() {
                continue;
            }
            let started = Instant::now();
            let outcome = stage.layer.check_body(ctx, body);
            let mut entry = LayerTrace::new(stage.layer.name(), Mark::Pass, stage.mode);
            entry.note = Some(String::from("body"));
            entry.micros = started.elapsed().as_micros() as u64;
            if let Some(enforced) = trace_outcome(outcome, stage.mode, &mut entry) {
                verdict.denial = Some(enforced);
            }
            verdict.trace.push(entry);
        }
    }
}

/// Writes a filter's outcome into its trace entry (in either phase), and returns the
/// denial when it is enforced. A denial's entry is named after its reason's layer (`quota`
/// from the rate filter, `request` from the route filter), so the trace and the caller's
/// problem body name the same layer.
fn trace_outcome(outcome: Outcome, mode: Mode, entry: &mut LayerTrace) -> Option<Denial> {
    match outcome {
        Outcome::Allow { rule_id } => entry.rule_id = rule_id,
        Outcome::NotApplicable => entry.mark = Mark::Skip,
        Outcome::Deny(d) => {
            entry.layer = d.reason.layer().into();
            entry.reason = Some(d.reason);
            entry.rule_id = d.rule_id.as_deref().map(Arc::<str>::from);
            entry.detail = Some(d.detail.clone());
            entry.note = d.note.clone();
            entry.platform_note = d.platform_note.as_deref().map(String::from);
            match (mode, d.report_only) {
                (Mode::Enforce, false) => {
                    entry.mark = Mark::Deny;
                    return Some(d);
                }
                (Mode::Report, _) | (_, true) => entry.mark = Mark::WouldDeny,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpoint_core::Reason;

    struct Fixed(&'static str, Outcome);
    impl Filter for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check<'a>(&'a self, _: &'a mut RequestCtx<'_>) -> Check<'a> {
            let outcome = self.1.clone();
            Check::Pending(Box::pin(async move { outcome }))
        }
    }

    fn deny() -> Outcome {
        Outcome::Deny(Denial::new(Reason::PolicyExplicitDeny, "no").rule("r1"))
    }

    async fn run(p: &Pipeline) -> Verdict {
        let headers = HeaderMap::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut ctx = RequestCtx::new(&Method::POST, "/x", None, &headers, peer, peer.ip(), "t", 0);
        p.run(&mut ctx).await
    }

    #[test]
    fn enforced_deny_stops_and_later_layers_are_not_reached() {
        let mut p = Pipeline::default();
        p.push(Fixed("a", Outcome::NotApplicable), Mode::Enforce);
        p.push(Fixed("b", deny()), Mode::Enforce);
        p.push(Fixed("c", Outcome::allow()), Mode::Enforce);
        let v = crate::block_on(run(&p));
        let marks: Vec<_> = v.trace.iter().map(|t| (&*t.layer, t.mark)).collect();
        // A denial is named after its reason's layer (here `policy`), as the caller sees it.
        assert_eq!(marks, [("a", Mark::Skip), ("policy", Mark::Deny), ("c", Mark::Skip)]);
        assert_eq!(v.denial.unwrap().rule_id.as_deref(), Some("r1"));
    }

    /// Asks for up to 10 body bytes and refuses bodies that say `no`.
    struct BodyFilter;
    impl Filter for BodyFilter {
        fn name(&self) -> &'static str {
            "waf"
        }
        fn check<'a>(&'a self, _: &'a mut RequestCtx<'_>) -> Check<'a> {
            Check::Ready(Outcome::allow())
        }
        fn needs_body(&self, _: &RequestCtx<'_>) -> Option<u64> {
            Some(10)
        }
        fn check_body(&self, _: &mut RequestCtx<'_>, body: &[u8]) -> Outcome {
            if body == b"no" {
                deny()
            } else {
                Outcome::allow()
            }
        }
    }

    #[test]
    fn only_a_filter_that_asks_gets_the_body_and_its_deny_stops_the_request() {
        let mut p = Pipeline::default();
        p.push(Fixed("a", Outcome::allow()), Mode::Enforce);
        let headers = HeaderMap::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let ctx = RequestCtx::new(&Method::POST, "/x", None, &headers, peer, peer.ip(), "t", 0);
        assert_eq!(p.body_wanted(&ctx), None, "nobody asked: the proxy streams the body");
        p.push(BodyFilter, Mode::Enforce);
        for (body, denied) in [(&b"yes"[..], false), (&b"no"[..], true)] {
            let mut ctx = RequestCtx::new(&Method::POST, "/x", None, &headers, peer, peer.ip(), "t", 0);
            assert_eq!(p.body_wanted(&ctx), Some(10));
            let mut verdict = crate::block_on(p.run(&mut ctx));
            p.run_body(&mut ctx, body, &mut verdict);
            assert_eq!(verdict.denial.is_some(), denied);
            assert_eq!(verdict.trace.len(), 3, "two header entries and one body entry");
        }
    }

    #[test]
    fn report_mode_records_would_deny_and_passes() {
        let mut p = Pipeline::default();
        p.push(Fixed("b", deny()), Mode::Report);
        p.push(Fixed("c", Outcome::allow()), Mode::Enforce);
        let v = crate::block_on(run(&p));
        assert!(v.denial.is_none());
        assert_eq!(v.trace[0].mark, Mark::WouldDeny);
        assert_eq!(v.trace[0].reason, Some(Reason::PolicyExplicitDeny));
        assert_eq!(v.trace[1].mark, Mark::Pass);
    }
}
