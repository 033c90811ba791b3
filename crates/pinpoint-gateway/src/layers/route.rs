//! The route layer: finds the route for the request (host, path prefix, method) and
//! records it for the layers after it. Codes: `route.not_found` (404),
//! `route.method_not_allowed` (405, with `Allow`).

use std::sync::Arc;

use pinpoint_core::{Denial, Outcome, Reason};

use crate::pipeline::{Check, Layer, RequestCtx};
use crate::routes::{RouteMatch, RouteTable};

pub struct RouteLayer {
    table: Arc<RouteTable>,
}

impl RouteLayer {
    pub fn new(table: Arc<RouteTable>) -> Self {
        RouteLayer { table }
    }
}

impl Layer for RouteLayer {
    fn name(&self) -> &'static str {
        "route"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        // A CORS preflight is routed by the method it asks about, so routes with a method
        // list do not answer browsers' preflights with 405.
        let requested = (ctx.method == http::Method::OPTIONS)
            .then(|| ctx.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD))
            .flatten()
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
        let method = requested.as_ref().unwrap_or(ctx.method);
        Check::Ready(match self.table.find(ctx.host, ctx.path, method) {
            RouteMatch::Found(route) => {
                let rule_id = Some(route.trace_id.clone());
                ctx.route_id = Some(route.id.clone());
                ctx.access = Some(route.access.clone());
                ctx.route = Some(route);
                Outcome::Allow { rule_id }
            }
            RouteMatch::MethodNotAllowed { route_id, allow } => Outcome::Deny(
                Denial::new(
                    Reason::RouteMethodNotAllowed,
                    format!("{} is not allowed on {}; allowed: {allow}.", ctx.method, ctx.path),
                )
                .rule(route_id.to_string())
                .header("allow", allow),
            ),
            RouteMatch::NotFound => Outcome::Deny(
                Denial::new(
                    Reason::RouteNotFound,
                    format!("No route serves {} {}.", ctx.method, ctx.path),
                )
                .note(format!(
                    "host {:?} matched no route's host and path prefix",
                    ctx.host.unwrap_or("-")
                )),
            ),
        })
    }
}
