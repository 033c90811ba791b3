//! The edge: what Pinpoint accepts of a client's request before it decides, and how it
//! takes the body it forwards. Every refusal here is a `request.*` reason with a problem
//! body, made before any byte goes upstream.
//!
//! - [`canonical_request`]: head limits (size, one header's size, header count), one
//!   `Host`, the canonical method and path (`pinpoint_core::canonical`). The route layer
//!   and everything after it see only the canonical request.
//! - [`read_body`]: the whole body, within the route's size limit and time limit, read
//!   before the upstream is contacted; so a client that aborts, stalls or sends broken
//!   framing is refused here and never counts against the upstream's health.
//! - [`settle_unread_body`]: when Pinpoint answers without reading the body, it drains a
//!   small remainder or says `Connection: close`, so a client reusing the connection never
//!   finds it silently closed.

use pinpoint_policy::credential_text;
use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, EXPECT, HOST};
use http::{HeaderMap, Method, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use pinpoint_core::canonical;
use pinpoint_core::config::ServerConfig;
use pinpoint_core::{Denial, Reason};

/// The path a decision (and the access log) records for a request refused because its URL
/// carries a credential: the path itself is never written down.
pub const WITHHELD_PATH: &str = "/(withheld: the URL carried a credential)";

/// The request as every layer sees it.
pub struct CanonicalRequest<'a> {
    /// The canonical path (borrowed from the request when it was already canonical).
    pub path: Cow<'a, str>,
    /// Host without port, lower-case.
    pub host: Option<String>,
}

/// Checks the request head and builds its canonical form, or refuses it. (Kept out of line
/// so `bench/instructions.sh` can attribute its instructions; one call per request.)
#[inline(never)]
pub fn canonical_request<'a>(
    version: Version,
    method: &Method,
    uri: &'a Uri,
    headers: &HeaderMap,
    limits: &ServerConfig,
    ours: credential_text::OwnCredentials<'_>,
) -> Result<CanonicalRequest<'a>, Denial> {
    // First, so a request refused for any other reason never has its credential written
    // down either (the decision records such a path as withheld).
    refuse_credential_in_url(method, uri, headers, ours)?;
    check_head_size(method, uri, headers, limits)?;
    check_singletons(headers)?;
    canonical::check_method(method.as_str())?;
    let host = host_of(version, uri, headers)?;
    check_transfer_encoding(headers)?;
    let path = canonical::canonical_path(uri.path())?;
    // What is forwarded must fit a request target (and the configured head).
    let target_len = path.len() + uri.query().map_or(0, |q| q.len() + 1);
    if target_len > limits.max_head_bytes.min(MAX_TARGET_BYTES) {
        return Err(Denial::new(
            Reason::RequestTargetTooLong,
            "The request's path and query are longer than this gateway forwards.",
        )
        .note(format!("{target_len} bytes after canonicalisation")));
    }
    Ok(CanonicalRequest { path, host })
}

/// Refuses a request line (method, path, query string) or Host that carries a Pinpoint
/// credential: it cannot be removed without changing the request, and request lines are
/// logged everywhere. The proxy asks about its own keys and tokens; the API, whose
/// requests never hold one, about any.
pub fn refuse_credential_in_url(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    ours: credential_text::OwnCredentials<'_>,
) -> Result<(), Denial> {
    match url_part_with_credential(method, uri, headers, ours) {
        Some(part) => Err(Denial::new(
            Reason::RequestCredentialInUrl,
            format!("The {part} carries a Pinpoint credential."),
        )),
        None => Ok(()),
    }
}

/// Which part of the request line (the method, the path, the query string) or the Host
/// holds a Pinpoint credential, in the wrappings `carries_pinpoint_credential` undoes
/// (percent-encoding included, as often as a server might decode), whole and piece by
/// piece (each path segment and query field alone, so a wrapping such as base64 is read
/// from where it starts; `/` and `=` belong to base64's alphabet).
fn url_part_with_credential(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    ours: credential_text::OwnCredentials<'_>,
) -> Option<&'static str> {
    let carries = |text: &str| credential_text::carries_pinpoint_credential(text.as_bytes(), ours);
    // Text shorter than a credential holds none, and neither do its pieces: most paths,
    // queries and hosts are not split at all (with the search's own length check, this
    // function went from about 730 to 190 instructions a bare request, bench/instructions.sh).
    let long_enough = |text: &[u8]| text.len() >= credential_text::MIN_CREDENTIAL_BYTES;
    if carries(method.as_str()) {
        return Some("method");
    }
    let path = uri.path();
    if long_enough(path.as_bytes()) && (carries(path) || path.split('/').any(carries)) {
        return Some("path");
    }
    if uri
        .query()
        .is_some_and(|q| long_enough(q.as_bytes()) && (carries(q) || q.split(['&', ';', '=']).any(carries)))
    {
        return Some("query string");
    }
    let host = headers.get(HOST).filter(|h| long_enough(h.as_bytes()));
    if host.is_some_and(|h| carries(&String::from_utf8_lossy(h.as_bytes())))
        || uri.authority().is_some_and(|a| carries(a.as_str()))
    {
        return Some("Host");
    }
    None
}

/// Headers a request may carry once: with two, layers and upstreams could each read another.
static SINGLETONS: [HeaderName; 9] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("dd-api-key"),
    HeaderName::from_static("dd-application-key"),
    HeaderName::from_static("x-request-id"),
    http::header::ORIGIN,
    http::header::CONTENT_TYPE,
    http::header::ACCESS_CONTROL_REQUEST_METHOD,
    HeaderName::from_static("sec-fetch-site"),
];

/// One scan of the header lines. Measured with bench/instructions.sh: a lookup per
/// singleton (eight hashed names) and formatting an IPv4 Host to compare it cost the edge
/// 4,364 instructions per bare request; this scan and an in-place octet check, 2,206.
fn check_singletons(headers: &HeaderMap) -> Result<(), Denial> {
    let mut seen = 0u16;
    for name in headers.iter().map(|(name, _)| name) {
        if let Some(i) = SINGLETONS.iter().position(|s| s == name) {
            if seen & (1 << i) != 0 {
                return Err(Denial::new(
                    Reason::RequestHeaderRepeated,
                    format!("The request has more than one `{name}` header."),
                ));
            }
            seen |= 1 << i;
        }
    }
    Ok(())
}

/// The longest request target forwarded (the HTTP library's limit is just below 64 KiB).
const MAX_TARGET_BYTES: usize = 65_000;

/// Only `chunked` is accepted as a transfer coding: Pinpoint forwards the body it read with
/// a length, so another coding (`gzip, chunked`) could not be passed on as sent.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Denial> {
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        let chunked_only = value
            .to_str()
            .is_ok_and(|v| v.split(',').map(str::trim).all(|c| c.eq_ignore_ascii_case("chunked")));
        if !chunked_only {
            return Err(Denial::new(
                Reason::RequestTransferEncoding,
                "Only `Transfer-Encoding: chunked` is accepted.",
            ));
        }
    }
    Ok(())
}

fn check_head_size(method: &Method, uri: &Uri, headers: &HeaderMap, limits: &ServerConfig) -> Result<(), Denial> {
    if headers.len() > limits.max_headers {
        return Err(Denial::new(
            Reason::RequestTooManyHeaders,
            format!("The request has more than {} headers.", limits.max_headers),
        )
        .note(format!("{} header lines", headers.len())));
    }
    // The request line, then `name: value\r\n` for each header.
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + "https://".len());
    let mut total = method.as_str().len() + target + " HTTP/1.1\r\n".len() + 1;
    for (name, value) in headers {
        let line = name.as_str().len() + value.len() + 4;
        if line > limits.max_header_bytes {
            let shown: String = name.as_str().chars().take(64).collect();
            return Err(Denial::new(
                Reason::RequestHeaderTooLarge,
                format!("The header `{shown}` is larger than {} bytes.", limits.max_header_bytes),
            ));
        }
        total += line;
    }
    if total > limits.max_head_bytes {
        return Err(Denial::new(
            Reason::RequestHeadersTooLarge,
            format!(
                "The request line and headers are larger than {} bytes.",
                limits.max_head_bytes
            ),
        )
        .note(format!("{total} bytes")));
    }
    Ok(())
}

/// The host the request is for, without port, lower-case: from its one `Host` header, or
/// from an absolute-form target (which must then agree with `Host`).
fn host_of(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<Option<String>, Denial> {
    let invalid = |detail: &str, note: String| Err(Denial::new(Reason::RequestHostInvalid, detail).note(note));
    let mut hosts = headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return invalid(
            "The request has more than one `Host` header.",
            String::from("several Host headers"),
        );
    }
    let header = match header.map(HeaderValue::to_str) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return invalid("The `Host` header is not a host name.", String::from("non-ASCII Host")),
        None => None,
    };
    let target = uri.authority().map(|a| a.as_str());
    let authority = match (header, target) {
        (Some(h), Some(t)) if !h.eq_ignore_ascii_case(t) => {
            return invalid(
                "The request target's authority differs from the `Host` header.",
                format!("target authority {t:?}, Host {h:?}"),
            )
        }
        (Some(h), _) => h,
        // HTTP/1.1 requires Host (RFC 9112 §3.2). An older request without one is refused
        // too: the upstream request always carries a Host (the client fills in the
        // upstream's own authority), so a request decided as hostless would reach the
        // upstream under a host that routes could name.
        (None, _) => {
            return invalid(
                "The request has no `Host` header.",
                format!("no Host header ({version:?})"),
            )
        }
    };
    if uri
        .scheme()
        .is_some_and(|s| *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS)
    {
        return invalid(
            "The request target's scheme must be http or https.",
            format!("scheme {:?}", uri.scheme_str()),
        );
    }
    // Brackets hold an IPv6 address and nothing may follow them but a port: text after
    // `]` (`[::1]@internal.example`) is read as the host by some URL parsers.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) if host.contains(':') => (host, None),
            Some((host, rest)) if host.contains(':') => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => ("", None),
            },
            _ => ("", None),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    // One spelling of a host: no trailing dot (`api.example.com.` is the same name to DNS
    // and most servers, but not to a route's `host`), a numeric port.
    let well_formed = !host.is_empty()
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        let shown: String = authority.chars().take(64).collect();
        return invalid("The `Host` header is not a host name.", format!("Host {shown:?}"));
    }
    match canonical::canonical_host(host) {
        Some(host) => Ok(Some(host)),
        None => invalid(
            "The `Host` header is not a host name.",
            format!("Host {host:?} is another spelling of an address"),
        ),
    }
}

/// A body Pinpoint could not take, and whether the connection must close after the
/// refusal (the rest of the body is still on the wire).
pub struct BodyRefusal {
    pub denial: Denial,
    pub close: bool,
}

/// Reads the whole request body within `max_bytes` and `timeout`. A request without a
/// body costs no wait and no allocation.
pub async fn read_body(body: Incoming, max_bytes: u64, timeout: Duration) -> Result<Bytes, BodyRefusal> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let too_large = || BodyRefusal {
        denial: Denial::new(
            Reason::RequestBodyTooLarge,
            format!("The request body is larger than this route accepts ({max_bytes} bytes)."),
        ),
        close: true,
    };
    // A declared length over the limit is refused at once, unread.
    if body.size_hint().lower() > max_bytes {
        return Err(too_large());
    }
    let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(BodyRefusal {
            denial: Denial::new(
                Reason::RequestBodyIncomplete,
                "The request body ended early or its framing is invalid.",
            )
            .note(format!("reading the body failed: {e}")),
            close: true,
        }),
        Err(_) => Err(BodyRefusal {
            denial: Denial::new(
                Reason::RequestBodyTimeout,
                format!("The request body did not arrive within {} ms.", timeout.as_millis()),
            ),
            close: true,
        }),
    }
}

/// At most this much of an unread body is drained to keep the connection.
const DRAIN_BYTES: u64 = 64 * 1024;
/// ... and for at most this long.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// For a response Pinpoint made without reading the request body: drains a small
/// remainder (at most 64 KiB, within 500 ms) so the connection can be reused, or marks the
/// response `Connection: close`. A client waiting for `100 Continue` has sent nothing yet,
/// so its connection closes rather than waiting for a body it should not send.
pub async fn settle_unread_body<B>(body: Incoming, headers: &HeaderMap, response: &mut Response<B>) {
    if body.is_end_stream() {
        return;
    }
    let expects_continue = headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let drained = !expects_continue
        && body.size_hint().upper().is_none_or(|declared| declared <= DRAIN_BYTES)
        && matches!(
            tokio::time::timeout(DRAIN_TIME, drain(body, DRAIN_BYTES)).await,
            Ok(true)
        );
    if !drained {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Reads and discards the body; true when it ended within `max` bytes.
async fn drain(mut body: Incoming, max: u64) -> bool {
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > max {
                        return false;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(target: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().uri(target);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn limits() -> ServerConfig {
        ServerConfig {
            max_head_bytes: 1024,
            max_header_bytes: 256,
            max_headers: 10,
            ..ServerConfig::default()
        }
    }

    fn decide(p: &http::request::Parts) -> Result<CanonicalRequest<'_>, Denial> {
        let ours = credential_text::OwnCredentials {
            key_id: &|id| id == "0123456789abcdef",
            kid: &|_| false,
        };
        canonical_request(p.version, &p.method, &p.uri, &p.headers, &limits(), ours)
    }

    fn refusal(p: &http::request::Parts) -> Option<Reason> {
        decide(p).err().map(|d| d.reason)
    }

    #[test]
    fn heads_over_the_limits_are_refused_with_what_was_exceeded() {
        let big = "x".repeat(300);
        let too_big = parts("/a", &[("host", "a"), ("x-big", &big)]);
        assert_eq!(refusal(&too_big), Some(Reason::RequestHeaderTooLarge));
        let many: Vec<(String, String)> = (0..11).map(|i| (format!("x-h{i}"), String::from("v"))).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(refusal(&parts("/a", &many)), Some(Reason::RequestTooManyHeaders));
        let mid = "y".repeat(200);
        let several: Vec<(&str, &str)> = ["x-a", "x-b", "x-c", "x-d", "x-e", "x-f"]
            .iter()
            .map(|n| (*n, mid.as_str()))
            .collect();
        assert_eq!(refusal(&parts("/a", &several)), Some(Reason::RequestHeadersTooLarge));
        assert_eq!(refusal(&parts("/a", &[("host", "api.example.com")])), None);
    }

    #[test]
    fn host_must_be_one_well_formed_and_agree_with_the_target() {
        assert_eq!(
            refusal(&parts("/a", &[("host", "a.example"), ("host", "b.example")])),
            Some(Reason::RequestHostInvalid)
        );
        assert_eq!(
            refusal(&parts("http://a.example/x", &[("host", "b.example")])),
            Some(Reason::RequestHostInvalid)
        );
        for bad in [
            "a b",
            "api.example.com.",
            "api.example.com.:80",
            "zzz:abc",
            "a:",
            "[::1",
            "[public.example]",
            "[::1]@internal.example",
            "[::1]x",
            "[::1]:",
        ] {
            assert_eq!(
                refusal(&parts("/x", &[("host", bad)])),
                Some(Reason::RequestHostInvalid),
                "{bad}"
            );
        }
        let host = |p: &http::request::Parts| decide(p).unwrap().host;
        let absolute = parts("http://A.example:8080/x", &[("host", "a.example:8080")]);
        assert_eq!(host(&absolute).as_deref(), Some("a.example"));
        assert_eq!(host(&parts("/x", &[("host", "[::1]:8080")])).as_deref(), Some("::1"));
        // HTTP/1.1 needs a Host; the target's authority never stands in for one.
        assert_eq!(refusal(&parts("/a", &[])), Some(Reason::RequestHostInvalid));
        assert_eq!(refusal(&parts("http://zzz/x", &[])), Some(Reason::RequestHostInvalid));
        // HTTP/1.0 too: the upstream request always carries a Host, so none is decided on.
        let mut old = parts("/x", &[]);
        old.version = Version::HTTP_10;
        assert_eq!(refusal(&old), Some(Reason::RequestHostInvalid));
        let mut old_absolute = parts("http://zzz/x", &[]);
        old_absolute.version = Version::HTTP_10;
        assert_eq!(refusal(&old_absolute), Some(Reason::RequestHostInvalid));
        // Addresses in one spelling.
        assert_eq!(
            host(&parts("/x", &[("host", "[0:0:0:0:0:0:0:1]")])).as_deref(),
            Some("::1")
        );
        assert_eq!(host(&parts("/x", &[("host", "[0::1]:80")])).as_deref(), Some("::1"));
        for other in ["127.1", "2130706433", "0x7f.0.0.1", "127.000.000.001", "0177.0.0.1"] {
            assert_eq!(
                refusal(&parts("/x", &[("host", other)])),
                Some(Reason::RequestHostInvalid),
                "{other}"
            );
        }
        assert_eq!(
            host(&parts("/x", &[("host", "127.0.0.1")])).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            host(&parts("/x", &[("host", "cafe.example")])).as_deref(),
            Some("cafe.example")
        );
        assert_eq!(host(&parts("/x", &[("host", "deadbeef")])).as_deref(), Some("deadbeef"));
        // Headers that may appear once.
        let twice = parts(
            "/x",
            &[
                ("host", "a"),
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b"),
            ],
        );
        assert_eq!(refusal(&twice), Some(Reason::RequestHeaderRepeated));
        assert_eq!(
            refusal(&parts("ftp://a/x", &[("host", "a")])),
            Some(Reason::RequestHostInvalid)
        );
    }

    #[test]
    fn only_chunked_is_a_transfer_coding_and_targets_fit_what_is_forwarded() {
        for te in ["gzip, chunked", "identity", "xchunked"] {
            let p = parts("/x", &[("host", "a"), ("transfer-encoding", te)]);
            assert_eq!(refusal(&p), Some(Reason::RequestTransferEncoding), "{te}");
        }
        assert_eq!(
            refusal(&parts("/x", &[("host", "a"), ("transfer-encoding", "Chunked")])),
            None
        );
        let long = format!("/{}", "\u{e9}".repeat(300));
        assert_eq!(
            refusal(&parts(&long, &[("host", "a")])),
            Some(Reason::RequestTargetTooLong)
        );
        let keyed = parts("/x?api_key=pp%5F0123456789abcdef_secret", &[("host", "a")]);
        assert_eq!(refusal(&keyed), Some(Reason::RequestCredentialInUrl));
    }
}
