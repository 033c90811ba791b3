//! The proxy listener: accepts connections, builds each request's canonical form at the
//! edge (`edge`), runs it through the current revision's pipeline, reads the body and
//! forwards exactly that request to an upstream target (retrying once on another target
//! where that is safe), answers denials with problem bodies, and records every decision
//! (trace, metrics, access log).

use pinpoint_policy::credential_text;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pinpoint_core::config::{OverrideHeaders, REASONS_PATH};
use pinpoint_core::{Decision, Denial, LayerTrace, Mark, Mode, Reason};
use tokio::net::TcpListener;

use crate::runtime::Shared;
use crate::trace_context::TraceContext;
use crate::upstream::UpstreamFailure;
use crate::{edge, headers, listener, respond, telemetry};
use pinpoint_policy::filters::route::is_websocket_upgrade;
use pinpoint_policy::identity::{recorded_caller, Identity};
use pinpoint_policy::pipeline::{RequestCtx, Verdict, NO_ROUTE};
use pinpoint_policy::routes::CompiledRoute;

/// How many header lines hyper's HTTP/1 parser takes when not told.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Body of a proxy response: streamed from upstream, or generated here.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Serves the proxy on `listener` (HTTP/1.1, and HTTP/2 over TLS or as h2c where enabled)
/// until `shutdown` resolves, then drains in-flight requests for at most the configured
/// drain timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The parser's own limits sit above the configured ones, so a head over those is
    // refused by the edge with a problem body; only heads far beyond them meet the
    // parser's 431 (counted in `pinpoint_connection_errors_total`, and given its problem
    // body by `parse_errors`). Read at start.
    let server = shared.runtime.load().config.server.clone();
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size((server.max_head_bytes * 2).max(16 * 1024));
    // hyper's parser takes 100 header lines unless told otherwise; told any number, it
    // allocates and fills two arrays of that many slots for every request it parses
    // (about 1,700 instructions a request, bench/instructions.sh). So it is told only when
    // the configured limit needs more room than its default.
    let parser_max_headers = server.max_headers + 10;
    if parser_max_headers > HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(parser_max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_head_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let for_connections = shared.clone();
    let make = move |conn: listener::Connection| {
        let shared = for_connections.clone();
        service_fn(move |req| {
            let (shared, conn) = (shared.clone(), conn.clone());
            async move { Ok::<_, Infallible>(handle(&shared, req, conn).await) }
        })
    };
    let drain = Duration::from_millis(server.drain_timeout_ms);
    listener::serve(
        "proxy",
        listener,
        shared.proxy_tls.clone(),
        server.h2c,
        builder,
        Some(crate::parse_errors::refusals_for(shared.clone(), NO_ROUTE)),
        make,
        shutdown,
        drain,
    )
    .await;
}

/// Handles one request end to end.
pub async fn handle(shared: &Shared, mut req: Request<Incoming>, conn: listener::Connection) -> Response<ProxyBody> {
    let started = Instant::now();
    let peer = conn.peer;
    // A WebSocket handshake keeps hold of its connection's upgrade, for a route that
    // allows the tunnel (the route layer refuses it everywhere else).
    let client_upgrade = is_websocket_upgrade(req.method(), req.headers()).then(|| hyper::upgrade::on(&mut req));
    let trace_context = TraceContext::of(req.headers());
    let runtime = shared.runtime.load_full();
    let received_ms = pinpoint_store::now_ms();
    let request_id = respond::new_request_id_at(received_ms);
    let client_request_id = respond::client_request_id(req.headers());
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
        respond::set_request_ids(response.headers_mut(), &request_id, client_request_id.as_deref());
        return response;
    }

    let (mut parts, body) = req.into_parts();
    // HTTP/2 names the host in `:authority` (RFC 9113 §8.3.1), where HTTP/1.1 has `Host`:
    // read as that `Host`, so routing, the record and the upstream see one host either way.
    if parts.version >= http::Version::HTTP_2 && !parts.headers.contains_key(http::header::HOST) {
        if let Some(authority) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(http::header::HOST, authority);
        }
    }
    // HTTP/2 may split `Cookie` into several fields (RFC 9113 §8.2.3); one field, joined
    // with "; ", is what HTTP/1.1 upstreams and the credential scrub read.
    if parts.headers.get_all(http::header::COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            parts.headers.insert(http::header::COOKIE, value);
        }
    }
    // The body is read once: early, when a filter's body phase asks for it (only then is
    // it inspected), else after the header phase allowed the request.
    let mut unread = Some(body);
    let mut read_early: Option<Result<Bytes, edge::BodyRefusal>> = None;
    let trusted_proxies = &runtime.config.net.trusted_proxies;
    let client_ip = pinpoint_policy::forwarded::client_ip(peer.ip(), &parts.headers, trusted_proxies);
    let raw_path = parts.uri.path();
    // The edge: one canonical request that every layer, the record and the upstream share,
    // or a refusal that says what was wrong with the request as sent.
    let edge_started = Instant::now();
    let is_key_id = |id: &str| shared.services.directory.key_by_id(id).is_some();
    let is_kid = |kid: &str| shared.services.tokens.is_our_kid(kid);
    let ours = credential_text::OwnCredentials {
        key_id: &is_key_id,
        kid: &is_kid,
    };
    let edge = edge::canonical_request(
        parts.version,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &runtime.config.server,
        ours,
    );
    let decided = match edge {
        Err(denial) => {
            telemetry::count_denial(denial.reason, &Arc::from(NO_ROUTE), Mode::Enforce);
            let trace = vec![edge_entry(Mark::Deny, &denial, edge_started)];
            Decided {
                verdict: Verdict {
                    trace,
                    denial: Some(denial),
                },
                canonical: None,
                route: None,
                identity: None,
                known_caller: None,
                answered: false,
                response_headers: Vec::new(),
                at_ms: received_ms,
            }
        }
        Ok(canonical) => {
            telemetry::count_canonicalised(raw_path != canonical.path);
            let mut ctx = RequestCtx::new(
                &parts.method,
                &canonical.path,
                canonical.host.as_deref(),
                &parts.headers,
                peer,
                client_ip,
                &request_id,
                received_ms,
            );
            ctx.query = parts.uri.query();
            ctx.client_cert = conn.client_cert.as_deref();
            let mut verdict = runtime.pipeline.run(&mut ctx).await;
            if verdict.denial.is_none() && !ctx.answered && runtime.pipeline.body_wanted(&ctx).is_some() {
                if let (Some(route), Some(incoming)) = (ctx.route.clone(), unread.take()) {
                    let read = edge::read_body(incoming, route.max_body_bytes, route.body_timeout).await;
                    if let Ok(bytes) = &read {
                        runtime.pipeline.run_body(&mut ctx, bytes, &mut verdict);
                    }
                    read_early = Some(read);
                }
            }
            telemetry::count_trace_denials(&verdict.trace, &ctx.route_label());
            let (route, identity, known_caller) = (ctx.route.take(), ctx.identity.take(), ctx.known_caller.take());
            let (answered, at_ms) = (ctx.answered, ctx.at_ms);
            let response_headers = std::mem::take(&mut ctx.response_headers);
            Decided {
                verdict,
                canonical: Some(canonical),
                route,
                identity,
                known_caller,
                answered,
                response_headers,
                at_ms,
            }
        }
    };
    let Decided {
        verdict,
        canonical,
        route,
        identity,
        known_caller,
        answered,
        response_headers: extra_headers,
        at_ms,
    } = decided;
    let route_label: Arc<str> = route
        .as_ref()
        .map(|r| r.id.clone())
        .unwrap_or_else(|| Arc::from(NO_ROUTE));
    let mut trace = verdict.trace;
    let path = canonical.as_ref().map_or(raw_path, |c| &c.path);

    let decision_sample = route.as_ref().map(|r| r.decision_sample);
    let (mut response, reason, upstream_target) = match (verdict.denial, route) {
        (None, Some(route)) if !answered => {
            let read = match (read_early, unread) {
                (Some(read), _) => read,
                (None, Some(incoming)) => edge::read_body(incoming, route.max_body_bytes, route.body_timeout).await,
                // Read early, or not at all: never both unread and missing.
                (None, None) => Err(edge::BodyRefusal {
                    denial: Denial::new(Reason::RequestBodyIncomplete, "The request body could not be read."),
                    close: true,
                }),
            };
            // A `_method` parameter says what an override header says: it goes no further
            // than the route's override rule lets it.
            let read = read.and_then(|bytes| {
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                if route.override_headers != OverrideHeaders::Allow
                    && headers::method_override_parameter(parts.uri.query(), content_type, &bytes)
                {
                    Err(edge::BodyRefusal {
                        denial: Denial::new(
                            Reason::RequestOverrideHeader,
                            "This route does not accept a `_method` parameter; send the method you mean.",
                        ),
                        close: false,
                    })
                } else {
                    Ok(bytes)
                }
            });
            match read {
                Ok(bytes) => {
                    let fwd = ForwardCtx {
                        peer,
                        client_cert: conn.client_cert.as_deref(),
                        trace: &trace_context,
                        secure: conn.secure,
                        peer_is_trusted_proxy: pinpoint_policy::forwarded::is_trusted_proxy(peer.ip(), trusted_proxies),
                        request_id: &request_id,
                        client_request_id: client_request_id.as_deref(),
                        identity: identity.as_ref(),
                        format,
                        reasons_url,
                        ours,
                        upstreams: &runtime.upstreams,
                    };
                    let headers = std::mem::take(&mut parts.headers);
                    let request = ForwardRequest {
                        method: &parts.method,
                        path,
                        query: parts.uri.query(),
                        headers,
                        body: bytes,
                        upgrade: client_upgrade.filter(|_| route.websocket),
                    };
                    forward(&route, request, &fwd, &mut trace).await
                }
                Err(refusal) => {
                    telemetry::count_denial(refusal.denial.reason, &route_label, Mode::Enforce);
                    trace.push(edge_entry(Mark::Deny, &refusal.denial, started));
                    let mut response = deny(&refusal.denial, &request_id, format, reasons_url);
                    if refusal.close {
                        response
                            .headers_mut()
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    (response, Some(refusal.denial.reason), None)
                }
            }
        }
        (denial, _) => {
            // Pinpoint answers itself: a denial, or a CORS preflight.
            let (mut response, reason) = match denial {
                Some(denial) => (deny(&denial, &request_id, format, reasons_url), Some(denial.reason)),
                None if answered => {
                    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
                    *response.status_mut() = http::StatusCode::NO_CONTENT;
                    (response, None)
                }
                None => {
                    // The route layer always enforces, so an allowed request has a route.
                    let denial = Denial::new(
                        Reason::RouteNotFound,
                        format!("No route serves {} {path}.", parts.method),
                    );
                    (deny(&denial, &request_id, format, reasons_url), Some(denial.reason))
                }
            };
            if let Some(incoming) = unread {
                edge::settle_unread_body(incoming, &parts.headers, &mut response).await;
            }
            (response, reason, None)
        }
    };
    // Room for everything added below at once: one resize of the map, not one per header.
    response.headers_mut().reserve(2 + extra_headers.len());
    respond::set_request_ids(response.headers_mut(), &request_id, client_request_id.as_deref());
    respond::append_headers(response.headers_mut(), extra_headers);

    let status = response.status();
    let elapsed = started.elapsed();
    let route_name = (route_label.as_ref() != NO_ROUTE).then(|| route_label.to_string());
    let sample = decision_sample
        .flatten()
        .unwrap_or(runtime.config.decision_log.sample_allowed);
    let (path, raw_path) = match reason {
        // A credential in the URL is never written down: not in the decision log, not in
        // the access log.
        Some(Reason::RequestCredentialInUrl) => (String::from(edge::WITHHELD_PATH), None),
        _ => (path.to_owned(), (raw_path != path).then(|| raw_path.to_owned())),
    };
    let host = canonical.and_then(|c| c.host);
    let caller = recorded_caller(identity.as_ref(), known_caller);
    let decision = Decision {
        request_id,
        client_request_id,
        at_ms,
        trace_id: Some(trace_context.trace_id.clone()),
        client_cert: conn.client_cert.as_ref().map(|c| c.subject.clone()),
        method: parts.method.as_str().to_owned(),
        path,
        raw_path,
        host,
        client_addr: if client_ip == peer.ip() {
            pinpoint_core::addr::socket(peer)
        } else {
            let mut text = pinpoint_core::addr::ip(client_ip);
            text.push_str(" (via ");
            pinpoint_core::addr::push_socket(&mut text, peer);
            text.push(')');
            text
        },
        route: route_name,
        principal: None,
        caller,
        status: status.as_u16(),
        reason,
        upstream_target,
        config_revision: runtime.config.revision.clone(),
        duration_micros: elapsed.as_micros() as u64,
        trace,
    };
    let span = shared.otlp.as_deref().map(|otlp| (otlp, &trace_context));
    telemetry::finish_request(shared.decisions.as_ref(), &route_label, decision, sample, span);
    response
}

/// What the edge and the pipeline established about a request.
struct Decided<'a> {
    verdict: Verdict,
    /// `None` when the edge refused the request as sent.
    canonical: Option<edge::CanonicalRequest<'a>>,
    route: Option<Arc<CompiledRoute>>,
    identity: Option<Identity>,
    /// Whom a refused credential belongs to (for the record only).
    known_caller: Option<pinpoint_core::CallerRecord>,
    answered: bool,
    response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    at_ms: i64,
}

/// The trace entry of a refusal made at the edge (before routing, or reading the body).
fn edge_entry(mark: Mark, denial: &Denial, started: Instant) -> LayerTrace {
    LayerTrace {
        layer: "request".into(),
        mark,
        mode: Mode::Enforce,
        reason: Some(denial.reason),
        rule_id: denial.rule_id.as_deref().map(Arc::<str>::from),
        detail: Some(denial.detail.clone()),
        note: denial.note.clone(),
        platform_note: denial.platform_note.as_deref().map(String::from),
        micros: started.elapsed().as_micros() as u64,
    }
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
    /// The verified client certificate (mTLS), told to the upstream.
    client_cert: Option<&'a pinpoint_policy::identity::ClientCertificate>,
    /// The request's W3C trace, propagated to the upstream.
    trace: &'a TraceContext,
    /// The client's connection is TLS (`X-Forwarded-Proto: https`).
    secure: bool,
    /// The peer is a trusted proxy: the `X-Forwarded-For` it sent is passed on, extended.
    peer_is_trusted_proxy: bool,
    request_id: &'a str,
    client_request_id: Option<&'a str>,
    identity: Option<&'a Identity>,
    format: pinpoint_core::problem::ProblemFormat,
    reasons_url: &'a str,
    /// Recognises Pinpoint's own credentials (keys in the directory, its signing keys).
    ours: credential_text::OwnCredentials<'a>,
    /// The revision's upstream pools, by name.
    upstreams: &'a std::collections::BTreeMap<Arc<str>, Arc<crate::upstream::Upstream>>,
}

/// Whether a failed attempt may be tried once more on another target: always when nothing
/// was sent (the connection failed), else only for methods that are safe to repeat.
fn may_retry(method: &Method, failure: &UpstreamFailure) -> bool {
    !failure.maybe_sent || matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request to forward: the canonical method and path, the query as sent, the
/// client's headers and the body read at the edge.
struct ForwardRequest<'a> {
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: HeaderMap,
    body: Bytes,
    /// A WebSocket handshake on a route that allows it: the client connection's upgrade.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Sends the canonical request to one of the route's targets, retrying once on another
/// target where [`may_retry`] allows.
async fn forward(
    route: &CompiledRoute,
    req: ForwardRequest<'_>,
    fwd: &ForwardCtx<'_>,
    trace: &mut Vec<LayerTrace>,
) -> (Response<ProxyBody>, Option<Reason>, Option<String>) {
    let (request_id, format, reasons_url) = (fwd.request_id, fwd.format, fwd.reasons_url);
    let started = Instant::now();
    let Some(upstream) = fwd.upstreams.get(&route.upstream) else {
        // Validation guarantees every route's upstream exists in its revision.
        let denial = Denial::new(
            Reason::UpstreamUnavailable,
            "The service behind this route is unavailable.",
        );
        return (
            deny(&denial, request_id, format, reasons_url),
            Some(denial.reason),
            None,
        );
    };
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

    let Some(mut target) = upstream.pick() else {
        let (mut response, reason, target) =
            fail(Reason::UpstreamUnavailable, upstream.unavailable_note(), None, trace);
        // When a target may be back: the nearest end of an ejection, or what checks need.
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(upstream.retry_after_secs()),
        );
        return (response, reason, target);
    };
    let upstream_path = route.upstream_path(req.path);
    let path_and_query = match req.query {
        Some(q) => format!("{upstream_path}?{q}"),
        None => upstream_path.to_owned(),
    };
    let (method, body, client_upgrade) = (req.method, req.body, req.upgrade);
    // `TE: trailers` is the one hop-by-hop header meant end to end: gRPC servers ask for it.
    let wants_trailers = req
        .headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let mut headers = upstream_headers(req.headers, route, fwd, body.len());
    if wants_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if client_upgrade.is_some() {
        // The handshake's own hop-by-hop headers, which cleaning removed, go to the target.
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    // A copy for the one retry, only where there is another target to retry on.
    let mut spare_headers = (upstream.target_count() > 1).then(|| headers.clone());
    loop {
        let uri = Uri::builder()
            .scheme(target.scheme())
            .authority(target.authority.as_str())
            .path_and_query(path_and_query.as_str())
            .build();
        let uri = match uri {
            Ok(uri) => uri,
            Err(e) => {
                let note = format!("cannot build upstream URI for {}: {e}", target.label);
                return fail(Reason::UpstreamConnectFailed, note, Some(target.label.clone()), trace);
            }
        };
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match upstream.send(&target, request).await {
            Ok(mut response) => {
                let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                let tunnel = match (switching, client_upgrade) {
                    (true, Some(client)) => Some((client, hyper::upgrade::on(&mut response))),
                    // Switching protocols on a request that asked for no upgrade: nothing
                    // the client can be given.
                    (true, None) => {
                        let note = format!("{} answered 101 to a request that asked for no upgrade", target.label);
                        return fail(Reason::UpstreamBadResponse, note, Some(target.label.clone()), trace);
                    }
                    _ => None,
                };
                headers::clean_upstream_response(response.headers_mut());
                let mut note = target.label.clone();
                if let Some((client, upstream_side)) = tunnel {
                    let headers = response.headers_mut();
                    headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
                    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
                    note.push_str("; upgraded to websocket");
                    tokio::spawn(tunnel_websocket(
                        client,
                        upstream_side,
                        TunnelLog {
                            request_id: request_id.to_owned(),
                            route: route.id.clone(),
                            upstream: target.label.clone(),
                        },
                    ));
                }
                trace.push(upstream_entry(Mark::Pass, None, note, started));
                return (response.map(Either::Left), None, Some(target.label.clone()));
            }
            Err(failure) => {
                let retry = match spare_headers.take() {
                    Some(spare) if may_retry(method, &failure) => {
                        upstream.pick_other_than(Some(&target)).map(|next| (next, spare))
                    }
                    _ => None,
                };
                let Some((next, spare)) = retry else {
                    return fail(failure.reason, failure.note, Some(target.label.clone()), trace);
                };
                let mut entry = upstream_entry(
                    Mark::Skip,
                    Some(failure.reason),
                    format!("{}; retried on {}", failure.note, next.label),
                    started,
                );
                entry.rule_id = Some(Arc::<str>::from(target.label.as_str()));
                trace.push(entry);
                telemetry::count_upstream_retry(&route.id);
                target = next;
                headers = spare;
            }
        }
    }
}

/// What the access log says of a WebSocket tunnel when it closes.
struct TunnelLog {
    request_id: String,
    route: Arc<str>,
    upstream: String,
}

/// Joins the client's upgraded connection to the target's, both ways, until either side
/// closes; then writes an access-log line with the bytes each way and the duration.
async fn tunnel_websocket(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, log: TunnelLog) {
    let opened = Instant::now();
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(request_id = %log.request_id, error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let (from_client, from_upstream, outcome) = match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((a, b)) => (a, b, "closed"),
        Err(_) => (0, 0, "broken"),
    };
    telemetry::count_websocket_closed(&log.route);
    tracing::info!(
        target: "pinpoint::access",
        request_id = %log.request_id,
        route = %log.route,
        upstream = %log.upstream,
        bytes_from_client = from_client,
        bytes_from_upstream = from_upstream,
        duration_ms = opened.elapsed().as_millis() as u64,
        outcome,
        "websocket closed"
    );
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
        platform_note: None,
        micros: started.elapsed().as_micros() as u64,
    }
}

/// The headers of the upstream request: the client's, cleaned of everything that is the
/// gateway's (see [`headers`]), framed for the body read at the edge, and with who the
/// caller is and where the request came from stated by Pinpoint.
fn upstream_headers(mut out: HeaderMap, route: &CompiledRoute, fwd: &ForwardCtx<'_>, body_len: usize) -> HeaderMap {
    let had_framing =
        out.contains_key(http::header::CONTENT_LENGTH) || out.contains_key(http::header::TRANSFER_ENCODING);
    // From a trusted proxy, the chain the decision read (every line, or `Forwarded`).
    let prior_forwarded_for = fwd
        .peer_is_trusted_proxy
        .then(|| pinpoint_policy::forwarded::forwarded_hops(&out).join(", "))
        .filter(|chain| !chain.is_empty());

    headers::clean_upstream_request(
        &mut out,
        &headers::UpstreamHeaderRules {
            route_authenticates: route.access.auth != pinpoint_core::config::AuthRequirement::None,
            override_headers: route.override_headers,
            peer_is_trusted_proxy: fwd.peer_is_trusted_proxy,
            ours: fwd.ours,
        },
    );
    // Room for the headers added below at once: one resize, not several.
    out.reserve(UPSTREAM_HEADERS_ADDED);
    headers::frame_body(&mut out, had_framing, body_len);
    if let Some(identity) = fwd.identity {
        if let Some(p) = &identity.principal {
            out.insert(X_PINPOINT_PRINCIPAL.clone(), p.id_header.clone());
        }
        out.insert(X_PINPOINT_ORG.clone(), identity.org.header.clone());
    }
    let client_ip = pinpoint_core::addr::ip(fwd.peer.ip());
    let forwarded_for = match prior_forwarded_for {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        out.insert(X_FORWARDED_FOR.clone(), v);
    }
    out.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if fwd.secure { "https" } else { "http" }),
    );
    respond::set_request_ids(&mut out, fwd.request_id, fwd.client_request_id);
    fwd.trace.propagate(&mut out);
    if let Some(certificate) = fwd.client_cert {
        // Clients cannot send these (`x-pinpoint-*` is stripped): the upstream can trust them.
        let subject = pinpoint_core::problem::visible_ascii(&certificate.subject);
        if let Ok(value) = HeaderValue::from_str(&subject) {
            out.insert(X_PINPOINT_CLIENT_CERT_SUBJECT.clone(), value);
        }
        if let Ok(value) = HeaderValue::from_str(&certificate.sha256) {
            out.insert(X_PINPOINT_CLIENT_CERT_SHA256.clone(), value);
        }
    }
    out
}

static X_PINPOINT_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-pinpoint-client-cert-subject");
static X_PINPOINT_CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-pinpoint-client-cert-sha256");

/// Headers Pinpoint adds to an upstream request: `Content-Length`, `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Request-Id`, `X-Client-Request-Id`, `X-Pinpoint-Principal`,
/// `X-Pinpoint-Org`, `traceparent`, `tracestate`.
const UPSTREAM_HEADERS_ADDED: usize = 9;

static X_PINPOINT_PRINCIPAL: HeaderName = HeaderName::from_static("x-pinpoint-principal");
static X_PINPOINT_ORG: HeaderName = HeaderName::from_static("x-pinpoint-org");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
