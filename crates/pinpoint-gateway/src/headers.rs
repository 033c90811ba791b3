//! Which request headers are the client's to pass upstream and which are the gateway's.
//!
//! An upstream must read the request Pinpoint decided on. So before forwarding, Pinpoint
//! removes: hop-by-hop headers and those `Connection` names; every header it sets itself
//! (`X-Pinpoint-*`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id`,
//! `X-Client-Request-Id`); method- and URL-override headers (unless the route allows
//! them); and its own credentials. A header spelled with `_` for `-` counts as the header
//! it would become, since CGI and WSGI servers read `X_Pinpoint_Principal` as
//! `X-Pinpoint-Principal`.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use pinpoint_core::config::OverrideHeaders;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the common non-standard ones).
/// (`Transfer-Encoding` and `Content-Length` are set from the body Pinpoint forwards.)
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Headers Pinpoint sets on the upstream request itself (besides `X-Pinpoint-*`).
const SET_BY_GATEWAY: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "x-client-request-id",
];

/// Headers that carry a credential Pinpoint may check.
pub const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "x-api-key", "dd-api-key", "dd-application-key"];

/// Headers that ask a server to use another method or URL than the request line's.
const OVERRIDE_HEADERS: [&str; 8] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
];

/// Framing headers: Pinpoint forwards the body it read and frames it itself.
const FRAMING: [&str; 3] = ["transfer-encoding", "content-length", "expect"];

/// `name` as a CGI-style server reads it: `_` as `-` (names are already lower-case).
fn dashed(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('_') {
        std::borrow::Cow::Owned(name.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Whether `name` asks the upstream to use another method or URL (any spelling).
pub fn is_override_header(name: &HeaderName) -> bool {
    OVERRIDE_HEADERS.contains(&dashed(name.as_str()).as_ref())
}

/// The first override header of a request, if any.
pub fn find_override_header(headers: &HeaderMap) -> Option<&HeaderName> {
    headers.keys().find(|name| is_override_header(name))
}

/// How the upstream request's headers are to be cleaned.
pub struct UpstreamHeaderRules<'a> {
    /// The route authenticates: every credential header is Pinpoint's and is removed.
    pub route_authenticates: bool,
    pub override_headers: OverrideHeaders,
    /// Recognises a Pinpoint credential in a header's value (for routes that do not
    /// authenticate, where other credentials pass to upstreams with their own auth).
    pub is_pinpoint_credential: &'a dyn Fn(&str) -> bool,
}

/// Removes from a request bound upstream every header that is the gateway's to set, or
/// that would make the upstream read another request than the one decided on. One scan;
/// allocates only when something is removed.
pub fn clean_upstream_request(headers: &mut HeaderMap, rules: &UpstreamHeaderRules<'_>) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let plain = name.as_str();
        let underscored = plain.contains('_');
        let read_as = dashed(plain);
        let read_as = read_as.as_ref();
        let remove = HOP_BY_HOP.contains(&read_as)
            || read_as.starts_with("x-pinpoint-")
            || SET_BY_GATEWAY.contains(&read_as)
            || FRAMING.contains(&read_as)
            || (OVERRIDE_HEADERS.contains(&read_as) && rules.override_headers != OverrideHeaders::Allow)
            || (CREDENTIAL_HEADERS.contains(&read_as)
                && (rules.route_authenticates
                    || underscored
                    || value
                        .to_str()
                        .is_ok_and(|v| (rules.is_pinpoint_credential)(credential_of(read_as, v)))));
        if remove && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    doomed.extend(named_by_connection(headers));
    for name in doomed {
        headers.remove(name);
    }
}

/// The credential in a header value: after the scheme for `Authorization`.
fn credential_of<'v>(header: &str, value: &'v str) -> &'v str {
    let value = value.trim();
    if header == "authorization" {
        if let Some((_scheme, rest)) = value.split_once(' ') {
            return rest.trim();
        }
    }
    value
}

/// Removes hop-by-hop headers and those `Connection` names (for responses from upstreams).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name.as_str())) {
        return;
    }
    let named = named_by_connection(headers);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

/// The headers a `Connection` header names.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !matches!(name.as_str(), "close" | "keep-alive"))
        .collect()
}

/// The upstream request's `Content-Length` after Pinpoint read its body: set when the
/// body is not empty or the client declared a length or a chunked body.
pub fn frame_body(headers: &mut HeaderMap, had_framing: bool, len: usize) {
    if len > 0 || had_framing {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
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

    fn left(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    fn ours(v: &str) -> bool {
        v.starts_with("pp_")
    }

    #[test]
    fn gateway_headers_are_removed_in_every_spelling() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-trace-hop"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("te", "trailers"),
            ("x-pinpoint-org", "forged"),
            ("x_pinpoint_principal", "forged"),
            ("x-pinpoint-anything", "forged"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-http-method-override", "DELETE"),
            ("x_original_url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("transfer_encoding", "chunked"),
            ("expect", "100-continue"),
            ("accept", "*/*"),
            ("x-kept", "yes"),
            ("x_kept_too", "yes"),
        ]);
        let rules = UpstreamHeaderRules {
            route_authenticates: false,
            override_headers: OverrideHeaders::Strip,
            is_pinpoint_credential: &ours,
        };
        clean_upstream_request(&mut h, &rules);
        assert_eq!(left(&h), ["accept", "x-kept", "x_kept_too"]);
    }

    #[test]
    fn credentials_are_removed_on_authenticating_routes_and_when_they_are_pinpoints() {
        let all = [
            ("authorization", "Bearer pp_0123456789abcdef_secret"),
            ("x-api-key", "pp_0123456789abcdef_secret"),
            ("dd-api-key", "upstream-own"),
        ];
        let mut h = headers(&all);
        let mut rules = UpstreamHeaderRules {
            route_authenticates: true,
            override_headers: OverrideHeaders::Strip,
            is_pinpoint_credential: &ours,
        };
        clean_upstream_request(&mut h, &rules);
        assert!(h.is_empty());

        rules.route_authenticates = false;
        let mut h = headers(&all);
        clean_upstream_request(&mut h, &rules);
        assert_eq!(left(&h), ["dd-api-key"], "the upstream's own credential passes");
        let mut h = headers(&[("authorization", "bearer   pp_x"), ("x_api_key", "anything")]);
        clean_upstream_request(&mut h, &rules);
        assert!(h.is_empty());
    }

    #[test]
    fn override_headers_pass_only_where_allowed() {
        let mut h = headers(&[("x-http-method-override", "PUT"), ("x-original-url", "/x")]);
        let rules = UpstreamHeaderRules {
            route_authenticates: false,
            override_headers: OverrideHeaders::Allow,
            is_pinpoint_credential: &ours,
        };
        clean_upstream_request(&mut h, &rules);
        assert_eq!(h.len(), 2);
        assert!(is_override_header(&HeaderName::from_static("x_http_method")));
        assert!(!is_override_header(&HeaderName::from_static("x-http")));
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_only() {
        let mut h = headers(&[("connection", "close, x-hop"), ("x-hop", "1"), ("server", "up")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(left(&h), ["server"]);
    }
}
