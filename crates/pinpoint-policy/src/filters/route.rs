//! The route layer: finds the route for the request (host, path prefix, method) on the
//! canonical path and records it for the layers after it, then applies the route's own
//! checks of the request's shape. Codes: `route.not_found` (404),
//! `route.method_not_allowed` (405, with `Allow`), `route.case_mismatch` (400: the path
//! matches a route only when case is ignored), `request.path_parameters` and
//! `request.override_header` (400, where the route refuses them).

use std::sync::Arc;

use pinpoint_core::config::OverrideHeaders;
use pinpoint_core::{canonical, Denial, Outcome, Reason};

use crate::overrides::find_override_header;
use crate::pipeline::{Check, Filter, RequestCtx};
use crate::routes::{CompiledRoute, RouteMatch, RouteTable};

pub struct RouteFilter {
    table: Arc<RouteTable>,
}

impl RouteFilter {
    pub fn new(table: Arc<RouteTable>) -> Self {
        RouteFilter { table }
    }
}

/// The route's refusal of the request's shape, if any.
fn refused_by_route(route: &CompiledRoute, ctx: &RequestCtx<'_>) -> Option<Denial> {
    if !route.allow_path_parameters && canonical::has_path_parameters(ctx.path) {
        return Some(
            Denial::new(
                Reason::RequestPathParameters,
                "This route does not accept `;` parameters in the path.",
            )
            .rule(route.id.to_string()),
        );
    }
    if route.case_insensitive {
        if let Some(detail) = canonical::folding_confusable(ctx.path) {
            return Some(Denial::new(Reason::RequestPathConfusable, detail).rule(route.id.to_string()));
        }
    }
    // Other upgrades (`h2c`, `TLS/1.0`) may be ignored (RFC 9110 §7.8): they are stripped
    // as hop-by-hop headers and the request goes on as plain HTTP.
    if !route.websocket && asks_for_websocket(ctx.headers) {
        return Some(
            Denial::new(
                Reason::RouteUpgradeNotAllowed,
                "This route does not accept WebSocket upgrades.",
            )
            .rule(route.id.to_string()),
        );
    }
    if route.override_headers == OverrideHeaders::Refuse {
        if let Some(name) = find_override_header(ctx.headers) {
            return Some(
                Denial::new(
                    Reason::RequestOverrideHeader,
                    format!("This route does not accept the `{name}` header."),
                )
                .rule(route.id.to_string()),
            );
        }
    }
    None
}

/// Whether any `Upgrade` header names `websocket` (in any case, among other protocols).
fn asks_for_websocket(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    })
}

/// Whether the request is a WebSocket handshake (RFC 6455 §4.1): an HTTP/1.1 GET with
/// `Upgrade: websocket` alone and `upgrade` among the `Connection` tokens.
pub fn is_websocket_upgrade(method: &http::Method, headers: &http::HeaderMap) -> bool {
    let mut upgrades = headers.get_all(http::header::UPGRADE).iter();
    let websocket = matches!(
        (upgrades.next(), upgrades.next()),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"websocket")
    );
    let connection_says_upgrade = headers.get_all(http::header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    *method == http::Method::GET && websocket && connection_says_upgrade
}

impl Filter for RouteFilter {
    fn name(&self) -> &'static str {
        "route"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        let mut found = self.table.find(ctx.host, ctx.path, ctx.method);
        // A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
        // that no route takes as `OPTIONS` is routed by the method it asks about, so routes
        // with a method list do not answer browsers' preflights with 405. Such a request is
        // only ever answered, never forwarded (`unanswered_preflight`).
        if !matches!(found, RouteMatch::Found(_)) {
            if let Some(asked) = preflight_method(ctx) {
                if let by_asked @ RouteMatch::Found(_) = self.table.find(ctx.host, ctx.path, &asked) {
                    ctx.unanswered_preflight = refusal(found, ctx);
                    found = by_asked;
                }
            }
        }
        Check::Ready(match found {
            RouteMatch::Found(route) => {
                let refusal = refused_by_route(&route, ctx);
                let rule_id = Some(route.trace_id.clone());
                ctx.route_id = Some(route.id.clone());
                ctx.access = Some(route.access.clone());
                ctx.fold_case = route.case_insensitive;
                ctx.route = Some(route);
                match refusal {
                    Some(denial) => Outcome::Deny(denial),
                    None => Outcome::Allow { rule_id },
                }
            }
            other => match refusal(other, ctx) {
                Some(denial) => Outcome::Deny(denial),
                None => Outcome::allow(),
            },
        })
    }
}

/// The method a CORS preflight asks about: an `OPTIONS` request with `Origin` and a valid
/// `Access-Control-Request-Method`.
fn preflight_method(ctx: &RequestCtx<'_>) -> Option<http::Method> {
    if *ctx.method != http::Method::OPTIONS || !ctx.headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    let asked = ctx.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
    http::Method::from_bytes(asked.as_bytes()).ok()
}

/// The refusal for a request no route serves as it is (`None` when one does).
fn refusal(found: RouteMatch, ctx: &RequestCtx<'_>) -> Option<Denial> {
    match found {
        RouteMatch::Found(_) => None,
        RouteMatch::MethodNotAllowed { route_id, allow } => Some(
            Denial::new(
                Reason::RouteMethodNotAllowed,
                format!("{} is not allowed on {}; allowed: {allow}.", ctx.method, ctx.path),
            )
            .rule(route_id.to_string())
            .header("allow", allow),
        ),
        RouteMatch::CaseMismatch { route_id } => Some(
            Denial::new(
                Reason::RouteCaseMismatch,
                format!("No route serves {} exactly; paths here are case-sensitive.", ctx.path),
            )
            .rule(route_id.to_string())
            .note(format!(
                "the path matches route `{route_id}` only when letter case is ignored"
            )),
        ),
        RouteMatch::NotFound => Some(
            Denial::new(
                Reason::RouteNotFound,
                format!("No route serves {} {}.", ctx.method, ctx.path),
            )
            .note(format!(
                "host {:?} matched no route's host and path prefix",
                ctx.host.unwrap_or("-")
            )),
        ),
    }
}
