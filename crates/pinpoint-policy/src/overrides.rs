//! Headers that ask a server to use another method or URL than the request line's
//! (`X-HTTP-Method-Override`, `X-Original-URL` and the like, in any spelling): the route
//! filter refuses them where a route says so, and the proxy strips them before forwarding.

use http::{HeaderMap, HeaderName};

/// Headers that ask a server to use another method or URL than the request line's.
pub const OVERRIDE_HEADERS: [&str; 15] = [
    "x-script-name",
    "script-name",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
    "x-original-url",
    "x-original-uri",
    "x-original-path",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
];

/// `name` as a CGI-style server reads it: `_` as `-` (names are already lower-case).
pub fn dashed(name: &str) -> std::borrow::Cow<'_, str> {
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
