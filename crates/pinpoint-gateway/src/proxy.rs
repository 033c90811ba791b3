//! The proxy listener: accepts connections, runs each request through the current
//! revision's pipeline, forwards allowed requests to an upstream target, answers denials
//! with problem bodies, and records every decision (trace, metrics, access log).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pinpoint_core::config::REASONS_PATH;
use pinpoint_core::{Decision, Denial, LayerTrace, Mark, Mode, Reason};
use tokio::net::TcpListener;

use crate::identity::Identity;
use crate::pipeline::{RequestCtx, NO_ROUTE};
use crate::respond;
use crate::routes::CompiledRoute;
use crate::runtime::Shared;
use crate::telemetry;

/// Body of a proxy response: streamed from upstream, or generated here.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Serves the proxy on `listener` until `shutdown` resolves, then drains in-flight
/// requests for at most the configured drain timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let service = service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "proxy connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = Duration::from_millis(shared.runtime.load().config.server.drain_timeout_ms);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "proxy drain timed out; closing remaining connections"
        );
    }
}

/// Handles one request end to end.
pub async fn handle(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let started = Instant::now();
    let runtime = shared.runtime.load_full();
    let request_id = respond::request_id_of(req.headers());
    let format = respond::format_of(req.headers());
    let reasons_url = runtime.config.server.reasons_url.as_str();

    if req.uri().path() == REASONS_PATH {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(
            pinpoint_core::reason::render_markdown(),
        ))));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        );
        respond::set_request_id(response.headers_mut(), &request_id);
        return response;
    }

    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let host = host_of(&req);
    let client_ip = crate::layers::net::client_ip(peer.ip(), req.headers(), &runtime.config.net.trusted_proxies);
    let (verdict, route, identity, answered, extra_headers, at_ms) = {
        let mut ctx = RequestCtx::new(
            &method,
            &path,
            host.as_deref(),
            req.headers(),
            peer,
            client_ip,
            &request_id,
        );
        let verdict = runtime.pipeline.run(&mut ctx).await;
        (
            verdict,
            ctx.route.take(),
            ctx.identity.take(),
            ctx.answered,
            std::mem::take(&mut ctx.response_headers),
            ctx.at_ms,
        )
    };
    let route_label: Arc<str> = route
        .as_ref()
        .map(|r| r.id.clone())
        .unwrap_or_else(|| Arc::from(NO_ROUTE));
    let mut trace = verdict.trace;

    let (mut response, reason, upstream_target) = match (verdict.denial, route) {
        (None, _) if answered => {
            let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
            *response.status_mut() = http::StatusCode::NO_CONTENT;
            (response, None, None)
        }
        (Some(denial), _) => {
            let reason = denial.reason;
            (deny(&denial, &request_id, format, reasons_url), Some(reason), None)
        }
        (None, Some(route)) => {
            let ctx = ForwardCtx {
                peer,
                request_id: &request_id,
                identity: identity.as_ref(),
                format,
                reasons_url,
            };
            forward(&route, req, &ctx, &mut trace).await
        }
        (None, None) => {
            // The route layer always enforces, so an allowed request has a route.
            let denial = Denial::new(Reason::RouteNotFound, format!("No route serves {method} {path}."));
            (
                deny(&denial, &request_id, format, reasons_url),
                Some(Reason::RouteNotFound),
                None,
            )
        }
    };
    // Room for everything added below at once: one resize of the map, not one per header.
    response.headers_mut().reserve(1 + extra_headers.len());
    respond::set_request_id(response.headers_mut(), &request_id);
    extra_headers.append_to(response.headers_mut());

    let status = response.status();
    let elapsed = started.elapsed();
    let route_name = (route_label.as_ref() != NO_ROUTE).then(|| route_label.to_string());
    telemetry::finish_request(
        &shared.decisions,
        &route_label,
        Decision {
            request_id,
            at_ms,
            method: method.to_string(),
            path,
            host,
            client_addr: if client_ip == peer.ip() {
                peer.to_string()
            } else {
                format!("{client_ip} (via {peer})")
            },
            route: route_name,
            principal: identity.as_ref().map(|i| i.who()),
            org_id: identity.as_ref().map(|i| i.org.id.clone()),
            status: status.as_u16(),
            reason,
            upstream_target,
            config_revision: runtime.config.revision.clone(),
            duration_micros: elapsed.as_micros() as u64,
            trace,
        },
    );
    response
}

fn deny(
    denial: &Denial,
    request_id: &str,
    format: pinpoint_core::problem::ProblemFormat,
    reasons_url: &str,
) -> Response<ProxyBody> {
    respond::problem(denial, request_id, format, reasons_url).map(Either::Right)
}

/// What forwarding needs to know about the request beyond the request itself.
struct ForwardCtx<'a> {
    peer: SocketAddr,
    request_id: &'a str,
    identity: Option<&'a Identity>,
    format: pinpoint_core::problem::ProblemFormat,
    reasons_url: &'a str,
}

async fn forward(
    route: &CompiledRoute,
    req: Request<Incoming>,
    fwd: &ForwardCtx<'_>,
    trace: &mut Vec<LayerTrace>,
) -> (Response<ProxyBody>, Option<Reason>, Option<String>) {
    let (request_id, format, reasons_url) = (fwd.request_id, fwd.format, fwd.reasons_url);
    let started = Instant::now();
    let upstream = &route.upstream;
    let fail = |reason: Reason, note: String, target: Option<String>, trace: &mut Vec<LayerTrace>| {
        let detail = match reason {
            Reason::UpstreamUnavailable => "The service behind this route is unavailable.",
            Reason::UpstreamTimeout => "The service behind this route did not answer in time.",
            Reason::UpstreamConnectFailed => "The service behind this route could not be reached.",
            _ => "The service behind this route sent an invalid response.",
        };
        telemetry::count_denial(reason, &route.id, Mode::Enforce);
        trace.push(upstream_entry(Mark::Deny, Some(reason), note, started));
        let denial = Denial::new(reason, detail);
        (deny(&denial, request_id, format, reasons_url), Some(reason), target)
    };

    let Some(target) = upstream.pick() else {
        return fail(Reason::UpstreamUnavailable, upstream.unavailable_note(), None, trace);
    };
    let (mut parts, body) = req.into_parts();
    let upstream_path = route.upstream_path(parts.uri.path());
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{upstream_path}?{q}"),
        None => upstream_path.to_owned(),
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(target.authority.as_str())
        .path_and_query(path_and_query)
        .build();
    let uri = match uri {
        Ok(uri) => uri,
        Err(e) => {
            let note = format!("cannot build upstream URI for {}: {e}", target.authority);
            return fail(
                Reason::UpstreamConnectFailed,
                note,
                Some(target.authority.clone()),
                trace,
            );
        }
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    // Room for the forwarding and identity headers at once: one resize, not several.
    parts.headers.reserve(UPSTREAM_HEADERS_ADDED);
    prepare_upstream_headers(&mut parts.headers, route, fwd.identity);
    add_forwarding_headers(&mut parts.headers, fwd.peer, request_id);

    match upstream.send(&target, Request::from_parts(parts, body)).await {
        Ok(mut response) => {
            strip_headers(response.headers_mut(), &[]);
            trace.push(upstream_entry(Mark::Pass, None, target.authority.clone(), started));
            (response.map(Either::Left), None, Some(target.authority.clone()))
        }
        Err(failure) => fail(failure.reason, failure.note, Some(target.authority.clone()), trace),
    }
}

fn upstream_entry(mark: Mark, reason: Option<Reason>, note: String, started: Instant) -> LayerTrace {
    LayerTrace {
        layer: "upstream".into(),
        mark,
        mode: Mode::Enforce,
        reason,
        rule_id: None,
        detail: None,
        note: Some(note),
        micros: started.elapsed().as_micros() as u64,
    }
}

/// Host from the `Host` header (or the URI's authority), lower-case, without port.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => raw.split(':').next().unwrap_or(raw),
    };
    Some(host.to_ascii_lowercase())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the common non-standard ones).
/// (`Transfer-Encoding` is left to hyper, which re-frames bodies itself.)
static HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

/// The position of a hop-by-hop header in [`HOP_BY_HOP`] (a match on the name's text,
/// which compiles to a switch on its length; a unit test keeps the two in step).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "trailer" => Some(6),
        "upgrade" => Some(7),
        _ => None,
    }
}

/// Removes hop-by-hop headers, those the `Connection` header names, and `also` (at most
/// 64 names). One scan of the few headers present notes which of them are doomed; each is
/// then removed by name. Allocates nothing unless a `Connection` header names others.
fn strip_headers(headers: &mut HeaderMap, also: &[&HeaderName]) {
    let (mut hop_found, mut also_found) = (0u64, 0u64);
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            hop_found |= 1 << i;
        } else if !also.is_empty() {
            if let Some(i) = also.iter().take(64).position(|doomed| *doomed == name) {
                also_found |= 1 << i;
            }
        }
    }
    if hop_found == 0 && also_found == 0 {
        return;
    }
    let named_by_connection: Vec<HeaderName> = if hop_found & 1 == 0 {
        Vec::new()
    } else {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect()
    };
    let found = |mask: u64, i: usize| mask & (1 << i) != 0;
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found(hop_found, i) {
            headers.remove(name);
        }
    }
    for (i, name) in also.iter().take(64).enumerate() {
        if found(also_found, i) {
            headers.remove(*name);
        }
    }
    for name in named_by_connection {
        headers.remove(name);
    }
}

/// Headers a client may not pass upstream on any route: identity is Pinpoint's to state.
const IDENTITY_HEADERS: [&HeaderName; 2] = [&X_PINPOINT_PRINCIPAL, &X_PINPOINT_ORG];
/// ... and on routes where Pinpoint authenticates, the credentials it checked too.
const IDENTITY_AND_CREDENTIAL_HEADERS: [&HeaderName; 6] = [
    &X_PINPOINT_PRINCIPAL,
    &X_PINPOINT_ORG,
    &http::header::AUTHORIZATION,
    &X_API_KEY,
    &DD_API_KEY,
    &DD_APPLICATION_KEY,
];

/// Prepares the request headers for the upstream: strips hop-by-hop headers, and states
/// who the caller is in `X-Pinpoint-Principal` / `X-Pinpoint-Org` (never taken from a
/// client: those headers are always replaced). Upstreams never see Pinpoint's credentials
/// on routes where Pinpoint authenticates.
fn prepare_upstream_headers(headers: &mut HeaderMap, route: &CompiledRoute, identity: Option<&Identity>) {
    let strip: &[&HeaderName] = if route.access.auth == pinpoint_core::config::AuthRequirement::None {
        &IDENTITY_HEADERS
    } else {
        &IDENTITY_AND_CREDENTIAL_HEADERS
    };
    strip_headers(headers, strip);
    if let Some(identity) = identity {
        if let Some(p) = &identity.principal {
            headers.insert(X_PINPOINT_PRINCIPAL.clone(), p.id_header.clone());
        }
        headers.insert(X_PINPOINT_ORG.clone(), identity.org.header.clone());
    }
}

/// Headers Pinpoint adds to an upstream request: `X-Forwarded-For`, `X-Forwarded-Proto`,
/// `X-Request-Id`, `X-Pinpoint-Principal`, `X-Pinpoint-Org`.
const UPSTREAM_HEADERS_ADDED: usize = 5;

static X_PINPOINT_PRINCIPAL: HeaderName = HeaderName::from_static("x-pinpoint-principal");
static X_PINPOINT_ORG: HeaderName = HeaderName::from_static("x-pinpoint-org");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static DD_API_KEY: HeaderName = HeaderName::from_static("dd-api-key");
static DD_APPLICATION_KEY: HeaderName = HeaderName::from_static("dd-application-key");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn add_forwarding_headers(headers: &mut HeaderMap, peer: SocketAddr, request_id: &str) {
    let client_ip = peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    respond::set_request_id(headers, request_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn hop_by_hop_index_matches_the_hop_by_hop_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&http::header::AUTHORIZATION), None);
    }

    #[test]
    fn strips_hop_by_hop_connection_named_and_asked_for_headers_only() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-trace-hop"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("te", "trailers"),
            ("authorization", "Bearer pp_secret"),
            ("x-pinpoint-org", "forged"),
            ("accept", "*/*"),
            ("x-kept", "yes"),
        ]);
        strip_headers(&mut h, &IDENTITY_AND_CREDENTIAL_HEADERS);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-kept"]);

        let mut h = headers(&[
            ("authorization", "Bearer upstream-own"),
            ("x-pinpoint-principal", "forged"),
        ]);
        strip_headers(&mut h, &IDENTITY_HEADERS);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["authorization"]);

        let mut untouched = headers(&[("accept", "*/*")]);
        strip_headers(&mut untouched, &[]);
        assert_eq!(untouched.len(), 1);
    }
}
