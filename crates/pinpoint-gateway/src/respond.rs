//! Responses Pinpoint generates itself: the problem body of a [`Denial`] in the format the
//! client accepts, with the reason's extra headers, and the request-id header helpers.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use pinpoint_core::problem::{Problem, ProblemFormat};
use pinpoint_core::{request_id, Denial, Reason};
use pinpoint_policy::credential_text;

/// Builds the response for a denial.
pub fn problem(denial: &Denial, request_id: &str, format: ProblemFormat, reasons_url: &str) -> Response<Full<Bytes>> {
    let body = Problem::new(denial.reason, denial.detail.clone(), request_id, reasons_url).render(format);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(denial.reason.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-pinpoint-reason", HeaderValue::from_static(denial.reason.code()));
    if format == ProblemFormat::Grpc {
        // Trailers-only: HTTP 200, the outcome in grpc-status; the reason code leads the
        // message so gRPC clients, which show only these, see it too.
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(pinpoint_core::problem::grpc_status(denial.reason.status()))),
        );
        let message = pinpoint_core::problem::visible_ascii(&format!("{}: {}", denial.reason.code(), denial.detail));
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    }
    let headers = response.headers_mut();
    for (name, value) in &denial.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    if denial.reason.status() == 401 && !headers.contains_key(http::header::WWW_AUTHENTICATE) {
        let challenge = match denial.reason {
            Reason::AuthnCredentialsMissing => "Bearer realm=\"pinpoint\"",
            _ => "Bearer realm=\"pinpoint\", error=\"invalid_token\"",
        };
        headers.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

/// A fresh request id. Every request gets one, whatever the client sent: it keys the
/// request's decision, so no client can make its request replace another's.
pub fn new_request_id() -> String {
    new_request_id_at(pinpoint_store::now_ms())
}

/// [`new_request_id`] for a request received at `at_ms` (the proxy reads the clock once
/// for its id and its decision).
pub fn new_request_id_at(at_ms: i64) -> String {
    request_id::format(at_ms as u64, rand::random())
}

/// The client's own `X-Request-Id`, when well-formed: kept with the decision as
/// `client_request_id`, echoed back in `X-Client-Request-Id` and passed upstream. An id
/// that holds anything shaped like a credential is ignored (neither kept, echoed nor
/// forwarded): it would be written down in clear and sent where no credential goes.
pub fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| request_id::is_well_formed(id))
        .filter(|id| !credential_text::carries_pinpoint_credential(id.as_bytes(), credential_text::ANY_CREDENTIAL))
        .map(str::to_owned)
}

/// Sets `X-Request-Id` (Pinpoint's id) and, when the client sent one, `X-Client-Request-Id`.
pub fn set_request_ids(headers: &mut HeaderMap, id: &str, client_id: Option<&str>) {
    // Names parsed once: inserting by `&str` parses the name on every call (1,100
    // instructions a proxied request, which sets both twice).
    static REQUEST_ID: http::HeaderName = http::HeaderName::from_static(request_id::HEADER);
    static CLIENT_REQUEST_ID: http::HeaderName = http::HeaderName::from_static(request_id::CLIENT_HEADER);
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID.clone(), value);
    }
    if let Some(value) = client_id.and_then(|c| HeaderValue::from_str(c).ok()) {
        headers.insert(CLIENT_REQUEST_ID.clone(), value);
    }
}

/// The format the request's `Accept` header asks for.
pub fn format_of(headers: &HeaderMap) -> ProblemFormat {
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if ProblemFormat::is_grpc(content_type) {
        return ProblemFormat::Grpc;
    }
    ProblemFormat::negotiate(headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()))
}

/// Appends the filters' response headers to a response's, keeping what it already has
/// (an upstream's own `Vary`, say).
pub fn append_headers(to: &mut http::HeaderMap, from: Vec<(http::HeaderName, http::HeaderValue)>) {
    to.reserve(from.len());
    for (name, value) in from {
        to.append(name, value);
    }
}
