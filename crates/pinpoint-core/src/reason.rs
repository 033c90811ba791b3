//! The reason catalogue: every response Pinpoint generates itself has exactly one
//! [`Reason`], defined once here with its status, public title, caller-safe hint and
//! operator description. `docs/reasons.md` is rendered from this table
//! ([`render_markdown`]) and a test keeps the two equal.

use serde::{Deserialize, Serialize};

/// Everything the catalogue says about one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonInfo {
    /// Stable `layer.reason` code; never renamed once shipped.
    pub code: &'static str,
    /// The layer (the part before the dot).
    pub layer: &'static str,
    /// HTTP status sent to the caller.
    pub status: u16,
    /// Who is at fault, or who decided.
    pub source: Source,
    /// Public, short title (RFC 9457 `title`).
    pub title: &'static str,
    /// Caller-safe hint: what the caller can do about it.
    pub hint: &'static str,
    /// Operator-side description: what happened and where to look.
    pub description: &'static str,
}

/// Who a reason puts at fault, or who decided: the one fact from which the status class
/// follows. Checked for every entry when the catalogue compiles ([`status_fits_source`]):
/// 403 only when a policy decided, 4xx for the caller or a policy, 5xx for an upstream or
/// Pinpoint itself (and 429 for an upstream's own limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request itself is wrong (malformed, unknown route, bad credentials): the caller
    /// can fix it.
    Caller,
    /// A configured rule or a grant decided no (access, IP lists, CORS, limits, quotas).
    Policy,
    /// A service behind Pinpoint failed (an upstream target, AWS STS).
    Upstream,
    /// Pinpoint could not do its own part (its store).
    Pinpoint,
}

impl Source {
    /// How docs/reasons.md names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Caller => "the caller",
            Source::Policy => "a policy",
            Source::Upstream => "an upstream",
            Source::Pinpoint => "Pinpoint",
        }
    }
}

/// Whether `status` is an honest answer for a reason from `source`.
pub const fn status_fits_source(status: u16, source: Source) -> bool {
    match source {
        Source::Policy => status >= 400 && status < 500,
        Source::Caller => status >= 400 && status < 500 && status != 403,
        // 429 from an upstream passes its limit on (AWS STS throttling an exchange).
        Source::Upstream => (status >= 500 && status < 600) || status == 429,
        Source::Pinpoint => status >= 500 && status < 600,
    }
}

macro_rules! reasons {
    ($( $(#[$meta:meta])* $variant:ident => {
        code: $code:literal, status: $status:literal, source: $source:ident, title: $title:literal,
        hint: $hint:literal, description: $desc:literal $(,)?
    } ),* $(,)?) => {
        /// A stable reason code. Serialized as its `layer.reason` string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $( $(#[$meta])* $variant ),* }

        impl Reason {
            /// Every reason, in catalogue order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant ),* ];

            /// The catalogue entry of this reason.
            pub fn info(self) -> &'static ReasonInfo {
                match self { $( Reason::$variant => &const {
                    assert!(
                        status_fits_source($status, Source::$source),
                        concat!($code, ": its status does not fit its source"),
                    );
                    ReasonInfo {
                    code: $code,
                    layer: layer_of($code),
                    status: $status,
                    source: Source::$source,
                    title: $title,
                    hint: $hint,
                    description: $desc,
                } } ),* }
            }
        }
    };
}

const fn layer_of(code: &'static str) -> &'static str {
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            let (layer, _) = bytes.split_at(i);
            return match std::str::from_utf8(layer) {
                Ok(layer) => layer,
                Err(_) => code,
            };
        }
        i += 1;
    }
    code
}

reasons! {
    /// The method is not written in upper case.
    RequestMethodNotCanonical => {
        code: "request.method_not_canonical", status: 400, source: Caller, title: "Method not in upper case",
        hint: "Send the method in upper case, as HTTP defines it: GET, POST, PUT, PATCH, DELETE, ...",
        description: "The request method contains lower-case letters (`post`, `Get`). Methods are case-sensitive, so Pinpoint refuses them rather than guess which method the upstream will read.",
    },
    /// The request target is not an absolute path.
    RequestPathNotAbsolute => {
        code: "request.path_not_absolute", status: 400, source: Caller, title: "Request target is not a path",
        hint: "Send a request target that starts with `/`.",
        description: "The request target is `*` (server-wide OPTIONS), an authority (CONNECT) or empty; routes match absolute paths only.",
    },
    /// The path has a broken percent-escape.
    RequestPathInvalidEncoding => {
        code: "request.path_invalid_encoding", status: 400, source: Caller, title: "Invalid percent-encoding in path",
        hint: "Percent-encode the path as UTF-8, writing every `%` as two hex digits after it (a literal `%` as `%25`).",
        description: "A `%` in the path is not followed by two hex digits, or the escapes of a segment do not decode to UTF-8 (an overlong `%C0%AE`, a Latin-1 `%E9`). Servers disagree on what such a path means, so it is refused before routing.",
    },
    /// The path has `%2F` or `%5C`.
    RequestPathEncodedSeparator => {
        code: "request.path_encoded_separator", status: 400, source: Caller, title: "Encoded slash in path",
        hint: "Do not percent-encode `/` or `\\` in the path (`%2F`, `%5C`); send identifiers that contain them in the query or body.",
        description: "The path contains `%2F` or `%5C`. Some upstream servers decode them into segment separators and some do not, so the route the gateway matched might not be the resource served. The trace note shows the path as sent.",
    },
    /// The path has a raw backslash.
    RequestPathBackslash => {
        code: "request.path_backslash", status: 400, source: Caller, title: "Backslash in path",
        hint: "Separate path segments with `/`, not `\\`.",
        description: "The path contains a raw `\\`, which some servers (IIS, some frameworks) read as `/`.",
    },
    /// A `.` or `..` segment is written with escapes.
    RequestPathEncodedDotSegment => {
        code: "request.path_encoded_dot_segment", status: 400, source: Caller, title: "Encoded dot-segment in path",
        hint: "Do not percent-encode `.` or `..` path segments (`%2e%2e`); send the path you mean.",
        description: "A path segment decodes to `.` or `..` but was written with escapes (`%2e`, `.%2E`). Plain dot-segments are resolved before routing; encoded ones are refused, since upstreams resolve them after decoding, behind the gateway's decision.",
    },
    /// The path has an escaped percent-escape.
    RequestPathDoubleEncoded => {
        code: "request.path_double_encoded", status: 400, source: Caller, title: "Double-encoded path",
        hint: "Percent-encode the path once; `%25` followed by hex digits reads as an escape to servers that decode twice.",
        description: "The path contains `%25` followed by two hex digits (`%252e`, `%252F`): an escape that is itself escaped. Servers that decode twice would read another path than the gateway routed.",
    },
    /// The path has a character servers may read as another ASCII character.
    RequestPathConfusable => {
        code: "request.path_confusable", status: 400, source: Caller, title: "Ambiguous character in path",
        hint: "Write the path in plain ASCII where it means ASCII; `detail` names the kind of character that was refused.",
        description: "The path has a character outside ASCII that servers normalising paths read as ASCII: its Unicode compatibility form is ASCII (fullwidth letters, ligatures, `ſ`, the Kelvin sign, `／`), or it vanishes (zero-width characters). On a `case_insensitive` route, also what a case-folding (often Windows) server misreads: `ı`, `İ`, `ß`, a combining mark after an ASCII letter, a segment ending in a dot or a space, an NTFS stream (`name::$DATA`), an 8.3 short name (`NAME~1`), an ASP.NET cookieless-session segment (`(S(x))`). An upstream could serve a route the path did not match.",
    },
    /// The request target is longer than Pinpoint forwards.
    RequestTargetTooLong => {
        code: "request.target_too_long", status: 414, source: Caller, title: "Request target too long",
        hint: "Send a shorter path and query; move large parameters into the body.",
        description: "The canonical path and query exceed what can be forwarded (64 KB, or `[server] max_head_bytes` if smaller).",
    },
    /// A transfer coding other than chunked.
    RequestTransferEncoding => {
        code: "request.transfer_encoding", status: 501, source: Pinpoint, title: "Transfer coding not supported",
        hint: "Send the body with `Content-Length` or `Transfer-Encoding: chunked` only.",
        description: "The request's `Transfer-Encoding` is not exactly `chunked` (`gzip, chunked`, `identity`, ...). Pinpoint forwards bodies it read whole with `Content-Length`, so it cannot pass another coding on faithfully.",
    },
    /// `CONNECT`: a tunnel, which a reverse proxy does not open.
    RequestConnectNotSupported => {
        code: "request.connect_not_supported", status: 501, source: Pinpoint, title: "CONNECT not supported",
        hint: "Pinpoint is a reverse proxy: send the request itself (GET, POST, ...) to its route instead of asking for a tunnel.",
        description: "The request's method is `CONNECT`. Pinpoint decides on each request it forwards, so it opens no tunnels; an upstream would read a `CONNECT` as a request to reach another address, not the route's path. Refused on every route, `methods = [\"*\"]` included; nothing is sent upstream.",
    },
    /// A request target with an encoded `?` or `#`.
    RequestPathEncodedDelimiter => {
        code: "request.path_encoded_delimiter", status: 400, source: Caller, title: "Encoded ? or # in path",
        hint: "Send `?` only to start the query, and `#` not at all; a literal `?` or `#` in a path name is not accepted.",
        description: "The path holds `%3F` (`?`) or `%23` (`#`). A server or rewrite step that decodes the path before splitting off the query reads a shorter path than the one Pinpoint routed and decided on (`/admin/secret%3F.json` as `/admin/secret`), so such a path is refused.",
    },
    /// The path has a control character.
    RequestPathControlCharacter => {
        code: "request.path_control_character", status: 400, source: Caller, title: "Control character in path",
        hint: "Remove NUL, line breaks and other control characters (`%00`-`%1F`, `%7F`) from the path.",
        description: "The path contains a control character, raw or escaped. Such paths truncate or split in upstream servers and logs.",
    },
    /// `..` would climb above the root.
    RequestPathAboveRoot => {
        code: "request.path_above_root", status: 400, source: Caller, title: "Path climbs above the root",
        hint: "Remove the `..` segments that go above `/`.",
        description: "Resolving the path's `..` segments would go above `/` (`/../etc/passwd`).",
    },
    /// The path has `;` parameters on a route that does not accept them.
    RequestPathParameters => {
        code: "request.path_parameters", status: 400, source: Caller, title: "Path parameters not accepted",
        hint: "Remove the `;...` part from the path segments.",
        description: "A path segment carries `;` parameters (raw or `%3B`), which servers such as Tomcat and Jetty strip before routing. Set `allow_path_parameters = true` on the route if its upstream needs them.",
    },
    /// A header that would change the method or URL upstream was sent to a route that refuses it.
    RequestOverrideHeader => {
        code: "request.override_header", status: 400, source: Caller, title: "Override header not accepted",
        hint: "Send the method and URL you mean directly; this route does not accept `X-HTTP-Method-Override` or `X-Original-URL`-style headers.",
        description: "The route has `override_headers = \"refuse\"` and the request carries a method- or URL-override header (any case, `_` for `-`). With the default `\"strip\"` they are removed instead.",
    },
    /// The Host header is missing its match, repeated or malformed.
    RequestHostInvalid => {
        code: "request.host_invalid", status: 400, source: Caller, title: "Invalid Host",
        hint: "Send exactly one `Host` header, matching the authority of an absolute request target if you use one.",
        description: "The request has several `Host` headers, a `Host` that is not a host name, or an absolute-form target whose authority differs from `Host`. Upstreams might read another host than the one routed on.",
    },
    /// A header that may appear once appears more than once.
    RequestHeaderRepeated => {
        code: "request.header_repeated", status: 400, source: Caller, title: "Header sent twice",
        hint: "Send the header named in `detail` once.",
        description: "A header that may appear only once (`Authorization`, `X-API-Key`, `DD-API-KEY`, `DD-APPLICATION-KEY`, `X-Request-Id`, `Origin`, `Content-Type`, `Access-Control-Request-Method`, `Sec-Fetch-Site`) appears more than once; the gateway and the upstream could each read a different one.",
    },
    /// The URL (or the request line's method, or the Host) carries a Pinpoint credential.
    RequestCredentialInUrl => {
        code: "request.credential_in_url", status: 400, source: Caller, title: "Credential in the URL",
        hint: "Send the key or token in a header (`Authorization: Bearer ...`), never in the URL, and replace the key: URLs are logged.",
        description: "The path, the query string, the Host or the method holds a Pinpoint API key or a Pinpoint-issued token (as it is or wrapped: percent-encoded, base64, hex, ...). Pinpoint never passes its credentials to an upstream, and it cannot remove one from the URL without changing the request, so it refuses it.",
    },
    /// The request line and headers together are too large.
    RequestHeadersTooLarge => {
        code: "request.headers_too_large", status: 431, source: Caller, title: "Request headers too large",
        hint: "Send fewer or smaller headers (large cookies are the usual cause).",
        description: "The request line and headers together exceed `[server] max_head_bytes`. Heads far beyond it are refused by the HTTP parser itself (counted in `pinpoint_connection_errors_total`).",
    },
    /// One header is too large.
    RequestHeaderTooLarge => {
        code: "request.header_too_large", status: 431, source: Caller, title: "Request header too large",
        hint: "Shorten the header named in `detail`.",
        description: "One header line exceeds `[server] max_header_bytes`.",
    },
    /// The request has too many headers.
    RequestTooManyHeaders => {
        code: "request.too_many_headers", status: 431, source: Caller, title: "Too many request headers",
        hint: "Send fewer headers.",
        description: "The request has more header lines than `[server] max_headers`.",
    },
    /// The body is larger than the route accepts.
    RequestBodyTooLarge => {
        code: "request.body_too_large", status: 413, source: Caller, title: "Request body too large",
        hint: "Send a smaller body; `detail` names the limit.",
        description: "The declared `Content-Length`, or the bytes of a chunked body so far, exceed the route's `max_body_bytes`. Nothing was sent upstream.",
    },
    /// The body did not arrive in time.
    RequestBodyTimeout => {
        code: "request.body_timeout", status: 408, source: Caller, title: "Request body too slow",
        hint: "Send the whole body promptly, or ask for a longer limit for large uploads.",
        description: "The request body did not arrive completely within the route's `body_timeout_ms`. Nothing was sent upstream, and the upstream's health is not charged.",
    },
    /// The client's body ended early or was malformed.
    RequestBodyIncomplete => {
        code: "request.body_incomplete", status: 400, source: Caller, title: "Request body incomplete",
        hint: "Send a complete, well-formed body (check `Content-Length` and chunked framing).",
        description: "The client closed the connection before its body was complete, or sent invalid chunked framing. Nothing was sent upstream, and the upstream's health is not charged.",
    },
    /// The request head is not HTTP the parser can read.
    RequestMalformed => {
        code: "request.malformed", status: 400, source: Caller, title: "Malformed request",
        hint: "Send a well-formed HTTP/1.1 request: a request line `METHOD /path HTTP/1.1`, header lines `Name: value` (a token name, visible characters in the value), at most one `Content-Length`.",
        description: "The HTTP parser could not read the request head: an invalid request line or HTTP version, a header line without a colon or with a space before it, a header name or value with characters HTTP does not allow, or conflicting `Content-Length` headers. Nothing was routed or sent upstream, and the connection is closed. The decision records no method or path: there were none Pinpoint could read.",
    },
    /// No configured route matches the request's host and path.
    RouteNotFound => {
        code: "route.not_found", status: 404, source: Caller, title: "No route for this request",
        hint: "Check the path and host; this gateway serves only the routes it is configured for.",
        description: "No route's host and path prefix matched. Compare the request's host and path with the `[[routes]]` table of the config revision in the trace.",
    },
    /// A route matches the path, but not the method.
    RouteMethodNotAllowed => {
        code: "route.method_not_allowed", status: 405, source: Caller, title: "Method not allowed on this route",
        hint: "Use one of the methods listed in the Allow header.",
        description: "A route matched host and path, but its `methods` list does not contain the request's method. The response carries an `Allow` header.",
    },
    /// The path matches a route only when letter case is ignored.
    RouteCaseMismatch => {
        code: "route.case_mismatch", status: 400, source: Caller, title: "Path differs from a route in letter case",
        hint: "Paths are case-sensitive here; send the path with the letter case the API documents.",
        description: "No route matches the path exactly, or only a less specific one does, but a route's prefix matches when case is ignored (the trace names it). Refused because an upstream that folds case would serve that route without its rules. Set `case_insensitive = true` on the route if its upstream folds case.",
    },
    /// The request asks for a WebSocket where its route does not allow one.
    RouteUpgradeNotAllowed => {
        code: "route.upgrade_not_allowed", status: 400, source: Caller, title: "WebSocket not allowed on this route",
        hint: "Send this request without `Upgrade`, or open the WebSocket on a route meant for it.",
        description: "The request's `Upgrade` header names `websocket` and its route does not set `websocket = true`. Nothing was sent upstream. Other upgrades (`h2c`) are ignored: the request is served as plain HTTP.",
    },
    /// A policy rule explicitly denies the request.
    PolicyExplicitDeny => {
        code: "policy.explicit_deny", status: 403, source: Policy, title: "Denied by policy",
        hint: "This operation is not permitted through the gateway; ask the API's operators if you need it.",
        description: "A `[[policy.rules]]` entry matched route, method and path and denies the request. The trace names the rule id.",
    },
    /// Every target of the route's upstream is ejected or none is configured.
    UpstreamUnavailable => {
        code: "upstream.unavailable", status: 503, source: Upstream, title: "Service temporarily unavailable",
        hint: "The service behind this route is down; retry later with backoff.",
        description: "No target of the route's upstream is available: each is ejected by passive health checks (recent failures; back after `fail_timeout_ms`) or fails its active health checks (back after `healthy_threshold` passes). The response's `Retry-After` says when one may be back.",
    },
    /// Connecting to the chosen upstream target failed.
    UpstreamConnectFailed => {
        code: "upstream.connect_failed", status: 502, source: Upstream, title: "Bad gateway",
        hint: "The service behind this route could not be reached; retry later.",
        description: "The TCP connection to the upstream target failed (refused, reset or unreachable). The target is ejected after `max_fails` consecutive failures.",
    },
    /// The upstream did not answer in time.
    UpstreamTimeout => {
        code: "upstream.timeout", status: 504, source: Upstream, title: "Gateway timeout",
        hint: "The service behind this route did not answer in time; retry later or with a smaller request.",
        description: "Connecting took longer than `connect_timeout_ms` or the response head took longer than `request_timeout_ms`.",
    },
    /// The upstream answered with something that is not valid HTTP.
    UpstreamBadResponse => {
        code: "upstream.bad_response", status: 502, source: Upstream, title: "Bad gateway",
        hint: "The service behind this route sent an invalid response; retry later.",
        description: "The upstream target closed the connection or sent a malformed HTTP response before a complete response head.",
    },
    /// No credentials were presented to an endpoint that needs them.
    AuthnCredentialsMissing => {
        code: "authn.credentials_missing", status: 401, source: Caller, title: "Credentials required",
        hint: "Send an API key or token as `Authorization: Bearer <credential>`, an API key as `X-API-Key`, or the `DD-API-KEY` + `DD-APPLICATION-KEY` pair.",
        description: "The request carried none of the accepted credential headers.",
    },
    /// The route needs a client certificate and the connection presented none.
    AuthnClientCertMissing => {
        code: "authn.client_cert_missing", status: 401, source: Caller, title: "Client certificate required",
        hint: "Send a client certificate issued by the CA this gateway trusts (connect over TLS with it).",
        description: "The route sets `client_cert_required` (or `client_cert_allow`) and the TLS connection carried no verified client certificate (the listener's `client_ca` verifies them; with `client_cert_required = false` there, clients may connect without one).",
    },
    /// The client certificate is valid, but the route does not accept it.
    AuthnClientCertNotAllowed => {
        code: "authn.client_cert_not_allowed", status: 403, source: Policy, title: "Client certificate not accepted here",
        hint: "Use the client certificate issued for this service, or ask its operators to accept yours.",
        description: "The client certificate verified, but neither its subject, nor a subjectAltName, nor its SHA-256 fingerprint is in the route's `client_cert_allow`. The trace names the subject presented.",
    },
    /// The presented key is not known.
    AuthnKeyUnknown => {
        code: "authn.key_unknown", status: 401, source: Caller, title: "Unknown API key",
        hint: "Check that the key was copied whole and has not been deleted.",
        description: "The key's id is not in the store, or its secret does not match the stored hash.",
    },
    /// The presented key is not shaped like a Pinpoint key.
    AuthnKeyMalformed => {
        code: "authn.key_malformed", status: 401, source: Caller, title: "Malformed API key",
        hint: "Pinpoint keys look like `pp_<16 hex>_<43 characters>`; check for truncation or extra characters.",
        description: "The credential does not parse as a Pinpoint API key.",
    },
    /// The key's expiry has passed.
    AuthnKeyExpired => {
        code: "authn.key_expired", status: 401, source: Caller, title: "API key expired",
        hint: "Create or rotate to a new key; expired keys cannot be renewed.",
        description: "The key exists and its secret matches, but its `expires_at` (or the end of its rotation overlap) has passed.",
    },
    /// The key was rotated and its overlap window has passed.
    AuthnKeyRotated => {
        code: "authn.key_rotated", status: 401, source: Caller, title: "API key rotated",
        hint: "Use the key that replaced this one (ask whoever rotated it); rotated keys stop working when their overlap ends.",
        description: "The key exists and its secret matches, but it was rotated and `[keys] rotation_overlap_seconds` has passed. The trace names its successor.",
    },
    /// The key was revoked.
    AuthnKeyRevoked => {
        code: "authn.key_revoked", status: 401, source: Caller, title: "API key revoked",
        hint: "This key was revoked; ask for a new one.",
        description: "The key exists and its secret matches, but it was revoked (by an operator, or with its cloud-auth mapping).",
    },
    /// The bearer token's `exp` has passed.
    AuthnTokenExpired => {
        code: "authn.token_expired", status: 401, source: Caller, title: "Token expired",
        hint: "Obtain a fresh token; tokens are short-lived by design.",
        description: "The JWT verified, but its `exp` is in the past (beyond the configured leeway).",
    },
    /// The bearer token failed verification.
    AuthnTokenInvalid => {
        code: "authn.token_invalid", status: 401, source: Caller, title: "Invalid token",
        hint: "Use a token issued by this gateway, unmodified.",
        description: "The JWT is malformed, names an unknown `kid`, uses an algorithm other than the one pinned to its key, has a bad signature or issuer, or names a principal that no longer exists.",
    },
    /// The bearer token was issued for another audience.
    AuthnTokenAudience => {
        code: "authn.token_audience", status: 401, source: Caller, title: "Token not valid here",
        hint: "Use a token issued for this organization.",
        description: "The JWT verified, but its `aud` is not the organization of its subject (or of the route).",
    },
    /// The authenticated principal is suspended.
    AuthnPrincipalSuspended => {
        code: "authn.principal_suspended", status: 403, source: Policy, title: "Account suspended",
        hint: "Your account is suspended; contact your organization's administrators.",
        description: "The credential is valid, but its user or service account is suspended.",
    },
    /// The principal's organization is suspended.
    AuthnOrganizationSuspended => {
        code: "authn.organization_suspended", status: 403, source: Policy, title: "Organization suspended",
        hint: "Your organization is suspended; contact the gateway's operators.",
        description: "The credential is valid, but its organization is suspended.",
    },
    /// No role of the caller grants the permission the operation needs (implicit deny).
    AuthzPermissionMissing => {
        code: "authz.permission_missing", status: 403, source: Policy, title: "Permission missing",
        hint: "Ask an administrator of your organization for a role that grants the permission named in `detail`.",
        description: "Implicit deny: the route needs the permission named in the trace and none of the principal's roles grants it.",
    },
    /// The route's permission map does not name the method.
    AuthzMethodNotPermitted => {
        code: "authz.method_not_permitted", status: 403, source: Policy, title: "Method not permitted on this route",
        hint: "Use a method this route permits (the API's documentation lists them), or ask its operators to permit the one named in `detail`.",
        description: "The route has a `permissions` map and it names neither the request's method nor `*` (HEAD follows GET unless named). Methods a permission map leaves out are denied, not open; `pinpoint config check` warns about them.",
    },
    /// An explicit deny rule matched.
    AuthzExplicitDeny => {
        code: "authz.explicit_deny", status: 403, source: Policy, title: "Denied by an access rule",
        hint: "An access rule forbids this operation for you even if a role grants it; ask the gateway's operators.",
        description: "An `[[authz.deny]]` rule matched the caller and the request; the trace names the rule id.",
    },
    /// The key's scopes do not include the permission.
    AuthzScopeMissing => {
        code: "authz.scope_missing", status: 403, source: Policy, title: "Key scope too narrow",
        hint: "Use a key whose scopes include the permission named in `detail`: a new key from an administrator of your organization (an organization key acts only with its scopes; a user's key may also be unscoped).",
        description: "The principal holds the permission, but the API key used is scoped and its scopes exclude it; or an organization key (which acts only with its scopes) lacks it.",
    },
    /// The route or resource belongs to another organization.
    AuthzTenantMismatch => {
        code: "authz.tenant_mismatch", status: 403, source: Policy, title: "Not available to your organization",
        hint: "Check that you are using credentials of the right organization.",
        description: "The route (`org`) or resource belongs to another organization than the caller's. The caller is told nothing about the other organization.",
    },
    /// A resource-ownership rule failed.
    AuthzNotOwner => {
        code: "authz.not_owner", status: 403, source: Policy, title: "Not the owner",
        hint: "Use a path that names your own principal id (`GET /api/v2/current_user` on the API shows it); on this route you can act only on your own resources.",
        description: "The route's `owner_segment` path segment is not the caller's principal id.",
    },
    /// The client address is on a deny list.
    NetIpDenied => {
        code: "net.ip_denied", status: 403, source: Policy, title: "Address denied",
        hint: "Call from another network, or ask the API's operators to lift the block on the address in `detail` (if it is a proxy's, ask them to trust that proxy).",
        description: "The client address (after trusted-proxy resolution) is in a global or route `deny` list.",
    },
    /// An allow list exists and the client address is not on it.
    NetIpNotAllowed => {
        code: "net.ip_not_allowed", status: 403, source: Policy, title: "Address not allowed",
        hint: "Call from a network this route allows (a VPN or office network, say), or ask the API's operators to allow the address in `detail`.",
        description: "A global or route `allow` list is set and the client address is on none of them.",
    },
    /// A CORS preflight came from an origin that is not allowed.
    CorsOriginNotAllowed => {
        code: "cors.origin_not_allowed", status: 403, source: Policy, title: "Origin not allowed",
        hint: "Call this API from an allowed origin, or ask its operators to add your page's origin to the allowed origins.",
        description: "A preflight (`OPTIONS` with `Access-Control-Request-Method`) named an `Origin` not in `[cors] allowed_origins`.",
    },
    /// A state-changing request came from another site (`Sec-Fetch-Site: cross-site` or `same-site`).
    CsrfCrossSite => {
        code: "csrf.cross_site", status: 403, source: Policy, title: "Cross-site request refused",
        hint: "Send this request from a page of the site itself, or ask the API's operators to add your site's origin to the trusted origins.",
        description: "The browser said the request came from another site (`Sec-Fetch-Site` was `cross-site` or `same-site`) and its `Origin` is not trusted (`[csrf] trusted_origins`, `[cors] allowed_origins`). The trace shows both headers and the origin Pinpoint compared them with.",
    },
    /// `Origin` names another origin than the request's own.
    CsrfOriginMismatch => {
        code: "csrf.origin_mismatch", status: 403, source: Policy, title: "Request origin does not match",
        hint: "Send the request from a page on this site's own origin; behind a proxy, ask its operator to forward the original host and scheme (X-Forwarded-Host, X-Forwarded-Proto).",
        description: "The `Origin` header differs from the request's own origin (scheme and host as the client addressed them: from a trusted proxy's `X-Forwarded-Proto`/`-Host` or `Forwarded`, else this connection and its `Host`) and is not trusted. The trace shows the origin Pinpoint compared with and where it came from, which diagnoses a proxy that does not forward the original host.",
    },
    /// Neither `Origin` nor `Sec-Fetch-Site`, on a route that refuses that.
    CsrfOriginMissing => {
        code: "csrf.origin_missing", status: 403, source: Policy, title: "Request origin unknown",
        hint: "Send the Origin header (browsers do), or use an API credential in the Authorization header instead of a cookie.",
        description: "A state-changing request authenticated by cookie carried neither `Origin` nor `Sec-Fetch-Site`, and `[csrf] refuse_without_origin` is on.",
    },
    /// The double-submit token is missing or does not match its cookie.
    CsrfTokenMismatch => {
        code: "csrf.token_mismatch", status: 403, source: Policy, title: "CSRF token missing or wrong",
        hint: "Send the value of the CSRF token cookie in the CSRF token header (X-CSRF-Token by default); reload the page to get a fresh one.",
        description: "On a route with `csrf = \"token\"`, the header named by `[csrf] token_header` was missing or differed from the cookie named by `token_cookie` (compared in constant time).",
    },
    /// The WAF found SQL injection.
    WafSqli => {
        code: "waf.sqli", status: 403, source: Policy, title: "Refused as SQL injection",
        hint: "Remove or encode the content of the part named in `detail`; if it is legitimate, give the API's operators the request id so they can exclude it.",
        description: "A SQL injection rule matched a part of the request (libinjection in the built-in engine; the CRS's 942 rules with `[waf] engine = \"crs\"`); the trace lists every rule that contributed with its part, paranoia level, score and a masked fragment.",
    },
    /// The WAF found cross-site scripting.
    WafXss => {
        code: "waf.xss", status: 403, source: Policy, title: "Refused as cross-site scripting",
        hint: "Remove or encode the content of the part named in `detail`; if it is legitimate, give the API's operators the request id so they can exclude it.",
        description: "A cross-site scripting rule matched a part of the request: libinjection (also after HTML entity decoding), a `javascript:`/`vbscript:`/`data:text/html` URI, or an XML element or attribute a browser would run (built-in engine); the CRS's 941 rules.",
    },
    /// The WAF found a path traversal.
    WafTraversal => {
        code: "waf.traversal", status: 403, source: Policy, title: "Refused as path traversal",
        hint: "Remove `../` sequences from the part named in `detail`; if it is legitimate, give the API's operators the request id.",
        description: "A decoded value holds a `../`, `..\\` or `..;/` sequence, a well-known system file (`/etc/passwd`, `win.ini`, `/proc/self/`) or a `file:` URL (built-in engine); the CRS's 930 and 931 rules.",
    },
    /// The WAF found a JNDI lookup (Log4Shell).
    WafJndi => {
        code: "waf.jndi", status: 403, source: Policy, title: "Refused as a JNDI lookup",
        hint: "Remove `${...}` lookups from the part named in `detail`; if it is legitimate, give the API's operators the request id.",
        description: "A decoded value holds a `${jndi:` lookup, also when spelled with nested `${lower:}`, `${upper:}`, `${::-}` or `${env:...:-}` lookups.",
    },
    /// The WAF found OS command injection.
    WafRce => {
        code: "waf.rce", status: 403, source: Policy, title: "Refused as command injection",
        hint: "Remove shell syntax (`;`, `|`, `$(...)`, backquotes before a command) from the part named in `detail`; if it is legitimate, give the API's operators the request id.",
        description: "A decoded value runs a shell command: a known command (also by full path, and as a shell reads it through quotes, backslashes and `${IFS}`) inside `$(...)`, `<(...)` or backquotes, or after `;`, `|`, `&` or a newline followed by the end or an argument's shape (an option, a path, a URL, a host name) (built-in engine); the CRS's 932-934 rules.",
    },
    /// The WAF found a NoSQL operator in JSON.
    WafNosql => {
        code: "waf.nosql", status: 403, source: Policy, title: "Refused as NoSQL operator injection",
        hint: "Send plain values instead of objects with `$` operators in the part named in `detail`.",
        description: "A MongoDB-style query operator (`$ne`, `$gt`, `$where`, `$regex`, ...) is a JSON key, or a query, form, cookie or multipart name (`pass[$ne]`, `pass.$gt`, `$where`).",
    },
    /// The WAF found an XML external entity.
    WafXxe => {
        code: "waf.xxe", status: 403, source: Policy, title: "Refused as an XML external entity",
        hint: "Send XML without a DOCTYPE that declares external entities (`<!ENTITY ... SYSTEM`).",
        description: "An XML body has a DOCTYPE with an internal subset (entities, default attributes) or an external DTD, refers to an entity it declared, or uses XInclude: declarations parsers may resolve to local files, internal URLs or an expansion bomb.",
    },
    /// The WAF found a server-side template expression.
    WafTemplate => {
        code: "waf.template", status: 403, source: Policy, title: "Refused as template injection",
        hint: "Remove template expressions (`{{...}}`, `${...}`, `<%= ... %>`) from the part named in `detail`; if it is legitimate, give the API's operators the request id.",
        description: "A decoded value holds a server-side template expression that computes or reaches into objects (`{{7*7}}`, `${7*7}`, `<%= ... %>`, `{{self.__class__}}`).",
    },
    /// The CRS engine's protocol rules matched (request anomalies, scanners, multipart
    /// and session-fixation attacks).
    WafProtocol => {
        code: "waf.protocol", status: 403, source: Policy, title: "Refused as a protocol attack",
        hint: "Send a well-formed request (standard headers, no smuggling or splitting sequences); if it is legitimate, give the API's operators the request id.",
        description: "With `[waf] engine = \"crs\"`: a Core Rule Set protocol rule (enforcement 920, attack 921, multipart 922, method 911, scanner 913, session fixation 943) contributed the highest score.",
    },
    /// A body's declared type is not one the WAF accepts on this route.
    WafContentType => {
        code: "waf.content_type", status: 415, source: Caller, title: "Body type not accepted",
        hint: "Send the body as one of the accepted types (JSON, form data, multipart, XML or plain text unless the operator changed `[waf] content_types`).",
        description: "The request declares a body type not in `[waf] content_types`; a WAF can inspect only what it can parse.",
    },
    /// The configured WAF engine is not running.
    WafEngineUnavailable => {
        code: "waf.engine_unavailable", status: 503, source: Pinpoint, title: "Request inspection unavailable",
        hint: "Retry later; if it persists, tell the API's operators (their log says why the WAF engine did not start).",
        description: "The route's WAF must inspect the request, and the engine `[waf] engine` names did not start (its rule files went missing after the config was checked); the request is refused rather than passed uninspected.",
    },
    /// A body the WAF must inspect does not parse as its declared type.
    WafBodyUnparsable => {
        code: "waf.body_unparsable", status: 400, source: Caller, title: "Body does not parse as its type",
        hint: "Send a body that is valid for its Content-Type (JSON or form data), unencoded.",
        description: "The route's WAF inspects bodies; this one did not parse unambiguously as the type its `Content-Type` declared (JSON with a key named twice, XML that is not one well-formed UTF-8 document, multipart with two boundaries, doubled or folded part headers or a part after the end; or a body sent with a `Content-Encoding`), so it could not be inspected.",
    },
    /// A JSON body nests deeper than the WAF inspects.
    WafBodyTooDeep => {
        code: "waf.body_too_deep", status: 400, source: Caller, title: "Body nested too deeply",
        hint: "Send a JSON body nested less deeply (see `[waf] max_json_depth`).",
        description: "The JSON body nests deeper than `[waf] max_json_depth`.",
    },
    /// A body holds more values than the WAF inspects.
    WafTooManyValues => {
        code: "waf.too_many_values", status: 400, source: Caller, title: "Too many values in the request",
        hint: "Send fewer fields or array entries in one request (see `[waf] max_values`).",
        description: "The body holds more values than `[waf] max_values`.",
    },
    /// A body larger than the WAF inspects.
    WafBodyTooLarge => {
        code: "waf.body_too_large", status: 413, source: Caller, title: "Body too large to inspect",
        hint: "Send a smaller body, or split it over several requests (see `[waf] max_inspected_bytes`).",
        description: "A body on a route with the WAF on holds more than `[waf] max_inspected_bytes` to inspect: the whole body, or a multipart body's fields (its file contents are not inspected).",
    },
    /// A GCRA rate limit is exceeded.
    RateLimited => {
        code: "rate.limited", status: 429, source: Policy, title: "Too many requests",
        hint: "Slow down; retry after the number of seconds in `Retry-After`.",
        description: "A `[[rate.limits]]` rule (named in the trace) ran out of burst capacity for this key, principal, organization, route or address.",
    },
    /// The shared rate state (Redis) could not be reached, for a limit that refuses then.
    RateBackendUnavailable => {
        code: "rate.backend_unavailable", status: 503, source: Pinpoint, title: "Rate limits cannot be checked",
        hint: "Retry shortly; the gateway cannot reach the store its rate limits are counted in.",
        description: "A `[[rate.limits]]` or `[[rate.quotas]]` rule counted in `[cluster] redis` could not be counted (Redis unreachable or too slow). With `on_backend_error = \"refuse\"` (the default) the request is refused with 503; with `\"allow\"` it passes and this reason is traced as a report-mode would-deny.",
    },
    /// A daily or monthly quota is used up.
    QuotaExhausted => {
        code: "quota.exhausted", status: 429, source: Policy, title: "Quota exhausted",
        hint: "Wait until the quota resets (the seconds in `Retry-After`), or ask the API's operators for a larger quota for your organization.",
        description: "A `[[rate.quotas]]` rule (named in the trace) counted its limit for the organization in the current UTC day or month.",
    },
    /// The API request is invalid.
    ApiBadRequest => {
        code: "api.bad_request", status: 400, source: Caller, title: "Invalid request",
        hint: "Fix the request as `detail` says.",
        description: "The API request body or parameters failed validation.",
    },
    /// An API path that is not in its canonical form.
    ApiPathNotCanonical => {
        code: "api.path_not_canonical", status: 400, source: Caller, title: "API path not in canonical form",
        hint: "Send the API path as documented: no percent-escapes where none are needed, no `.` or `..` segments, no doubled `/`.",
        description: "The canonical form of the API path (escapes of plain characters decoded, dot-segments resolved, doubled slashes merged) differs from the path sent. The API's router and its explicit-deny rules could read such a path differently, so it is refused rather than served.",
    },
    /// An API request body carries a Pinpoint credential.
    ApiCredentialInBody => {
        code: "api.credential_in_body", status: 400, source: Caller, title: "Credential in the request body",
        hint: "Send your credential only in the Authorization header; if one was pasted into a field by mistake, remove it (and rotate it if others saw it).",
        description: "A field of the body holds a Pinpoint API key or token (in any wrapping). No field of the API takes one, and what is sent in a field may be stored and shown to others, so the request is refused and the credential is neither stored nor repeated.",
    },
    /// The API request conflicts with existing state.
    ApiConflict => {
        code: "api.conflict", status: 409, source: Caller, title: "Conflict",
        hint: "Choose another name, or read the resource again and retry the change against its current state; a PATCH goes to the path of the resource its `data.id` names.",
        description: "A uniqueness or state constraint refused the change, or a PATCH body's `data.id` names another resource than its path.",
    },
    /// The identity proof could not be decoded.
    CloudauthProofMalformed => {
        code: "cloudauth.proof_malformed", status: 400, source: Caller, title: "Malformed identity proof",
        hint: "Send `Authorization: Delegated <b64 body>|<b64 headers>|POST|<b64 url>` as produced by a Pinpoint or Datadog client; `detail` says which part is wrong.",
        description: "The proof failed size, base64, JSON, header or SigV4 `Authorization` parsing before anything was sent to STS.",
    },
    /// The proof names an STS host this gateway does not accept.
    CloudauthStsHostNotAllowed => {
        code: "cloudauth.sts_host_not_allowed", status: 403, source: Policy, title: "STS host not allowed",
        hint: "Sign the request for https://sts.amazonaws.com or https://sts.<region>.amazonaws.com.",
        description: "The proof's URL is not a global or regional STS endpoint of an enabled partition (aws-cn and aws-us-gov are off unless configured).",
    },
    /// The proof is not exactly a GetCallerIdentity request.
    CloudauthRequestNotAllowed => {
        code: "cloudauth.request_not_allowed", status: 403, source: Policy, title: "Request not allowed",
        hint: "Sign exactly `POST /` with body `Action=GetCallerIdentity&Version=2011-06-15`, scoped to the sts service and the host's region.",
        description: "Scheme, method, path, query, body, signature scope or an X-Amz-* header is not what a GetCallerIdentity proof may contain.",
    },
    /// The signed organization header is missing or names another organization.
    CloudauthOrgMismatch => {
        code: "cloudauth.org_mismatch", status: 403, source: Policy, title: "Organization not signed or unknown",
        hint: "Sign the header `x-ddog-org-id: <organization id>` with the organization you are logging into.",
        description: "The org header is not among the signed headers, or names no organization (or a suspended one).",
    },
    /// The proof's X-Amz-Date is outside the accepted window.
    CloudauthProofExpired => {
        code: "cloudauth.proof_expired", status: 401, source: Caller, title: "Identity proof expired",
        hint: "Sign a fresh proof right before sending it; check the clock of the signing host.",
        description: "`X-Amz-Date` is older than `[cloudauth] proof_window_seconds` or in the future.",
    },
    /// The proof was already used.
    CloudauthProofReplayed => {
        code: "cloudauth.proof_replayed", status: 401, source: Caller, title: "Identity proof already used",
        hint: "Sign a new proof for every exchange.",
        description: "A proof with this signature was exchanged before, within the proof window (replay cache).",
    },
    /// STS refused the signature.
    CloudauthSignatureRejected => {
        code: "cloudauth.signature_rejected", status: 401, source: Caller, title: "AWS rejected the proof",
        hint: "Check the AWS credentials used to sign, and that the request was not modified after signing.",
        description: "STS answered the forwarded GetCallerIdentity with a signature or credential error (the STS error code is in the trace).",
    },
    /// The caller's AWS account is not registered for the organization.
    CloudauthAccountNotRegistered => {
        code: "cloudauth.account_not_registered", status: 403, source: Policy, title: "AWS account not registered",
        hint: "Ask the organization's administrators to register your AWS account for cloud authentication.",
        description: "The account STS returned is not in the organization's registered AWS accounts.",
    },
    /// No mapping matches the caller's ARN.
    CloudauthNoMapping => {
        code: "cloudauth.no_mapping", status: 403, source: Policy, title: "No mapping for this AWS identity",
        hint: "`detail` shows your ARN as AWS reported it and the pattern that would match; ask an administrator to add that mapping.",
        description: "No persona or intake mapping of the organization matches the ARN (or the matching mapping is bound to another role unique id: the role was recreated).",
    },
    /// STS verified the proof, but the identity is of a kind that cannot log in.
    CloudauthIdentityNotAccepted => {
        code: "cloudauth.identity_not_accepted", status: 403, source: Policy, title: "This kind of AWS identity cannot log in",
        hint: "Sign with the credentials of an IAM user or of an assumed-role session; `detail` says what AWS reported.",
        description: "STS verified the proof, but the identity it returned is not one Pinpoint maps (an account root or a federated user, say); `detail` names the principal type.",
    },
    /// The managed intake key of this identity was revoked.
    CloudauthIntakeKeyRevoked => {
        code: "cloudauth.intake_key_revoked", status: 403, source: Policy, title: "Intake key revoked",
        hint: "An administrator revoked the intake key issued to your AWS identity; ask them to issue a new one.",
        description: "An administrator revoked the managed intake key derived for this identity, mapping and rotation period, so the exchange will not hand it out again. A new key is derived when the rotation period ends or the identity's intake mapping is recreated.",
    },
    /// The mapped principal is suspended.
    CloudauthPrincipalSuspended => {
        code: "cloudauth.principal_suspended", status: 403, source: Policy, title: "Mapped account suspended",
        hint: "The account your AWS identity maps to is suspended; contact your organization's administrators.",
        description: "The persona mapping's user or service account is suspended or deleted.",
    },
    /// STS throttled the forwarded request.
    CloudauthStsThrottled => {
        code: "cloudauth.sts_throttled", status: 429, source: Upstream, title: "AWS STS is throttling",
        hint: "Retry after the number of seconds in `Retry-After`, with backoff.",
        description: "STS answered with throttling after the configured retries.",
    },
    /// STS could not be reached.
    CloudauthStsUnavailable => {
        code: "cloudauth.sts_unavailable", status: 503, source: Upstream, title: "AWS STS unavailable",
        hint: "Retry later; the gateway could not verify your identity with AWS.",
        description: "STS could not be reached (connect error, timeout) or answered with a server error or an invalid response, after the configured retries.",
    },
    /// The requested API resource does not exist.
    ApiNotFound => {
        code: "api.not_found", status: 404, source: Caller, title: "Not found",
        hint: "Check the identifier; decisions are kept for the store's retention period.",
        description: "The API path or the resource it names (for example a request id with no recorded decision) does not exist.",
    },
    /// The decision asked for is most likely still being written.
    ApiDecisionPending => {
        code: "api.decision_pending", status: 503, source: Pinpoint, title: "Decision not written yet",
        hint: "Retry in a second (see `Retry-After`): decisions are written within moments of their request.",
        description: "No decision is stored under this Pinpoint request id yet, and the id was made in the last 30 seconds: the decision log writes in batches (every `flush_interval_ms`), and the API waited for one batch before answering. After 30 seconds the answer is `api.not_found`.",
    },
    /// The database cannot be reached.
    StoreUnavailable => {
        code: "store.unavailable", status: 503, source: Pinpoint, title: "Store unreachable",
        hint: "Retry shortly; nothing was changed. Requests through the gateway are still decided meanwhile.",
        description: "An API call that reads or writes the store could not reach its database (with `[store] url`, the PostgreSQL server refused or dropped the connection, or did not answer within the pool's wait). Nothing was written. The proxy keeps deciding requests from the directory it holds, and their decisions wait in a local spool until the store is back (`/healthz` `store`).",
    },
    /// The store could not answer.
    ApiStoreUnavailable => {
        code: "api.store_unavailable", status: 503, source: Pinpoint, title: "Store unavailable",
        hint: "Retry shortly.",
        description: "A store query failed (database closed, locked or unreachable). The operator log has the underlying error.",
    },
}

impl Reason {
    /// The stable `layer.reason` code.
    pub fn code(self) -> &'static str {
        self.info().code
    }

    /// The layer part of the code.
    pub fn layer(self) -> &'static str {
        self.info().layer
    }

    /// HTTP status for this reason.
    pub fn status(self) -> u16 {
        self.info().status
    }

    /// Looks a reason up by its code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The fragment (`#...`) that names this reason's entry in docs/reasons.md.
    pub fn anchor(self) -> &'static str {
        self.code()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Reason::from_code(&code).ok_or_else(|| serde::de::Error::custom(format!("unknown reason code `{code}`")))
    }
}

/// Renders the catalogue as the Markdown page `docs/reasons.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Pinpoint reason codes\n\n\
         <!-- Generated from crates/pinpoint-core/src/reason.rs by `pinpoint reasons --markdown`. Do not edit. -->\n\n\
         Every response Pinpoint generates itself (a denial, a missing route, a dead upstream) carries one\n\
         of these codes in the `reason` field of its problem body and in the decision trace.\n\n\
         | code | status | title |\n|---|---|---|\n",
    );
    for reason in Reason::ALL {
        let i = reason.info();
        out.push_str(&format!(
            "| [`{}`](#{}) | {} | {} |\n",
            i.code, i.code, i.status, i.title
        ));
    }
    for reason in Reason::ALL {
        let i = reason.info();
        out.push_str(&format!(
            "\n<a id=\"{code}\"></a>\n\n## {code}\n\n- **Status:** {status}\n- **Layer:** `{layer}`\n- **Source:** {source}\n- **Title:** {title}\n- **Hint (sent to the caller):** {hint}\n\n{desc}\n",
            code = i.code,
            status = i.status,
            layer = i.layer,
            source = i.source.as_str(),
            title = i.title,
            hint = i.hint,
            desc = i.description,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_page_is_rendered_from_the_catalogue() {
        let on_disk = include_str!("../../../docs/reasons.md");
        assert_eq!(
            on_disk,
            render_markdown(),
            "docs/reasons.md is stale: run `cargo run -- reasons --markdown > docs/reasons.md`"
        );
    }

    #[test]
    fn codes_are_unique_well_formed_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            let (layer, rest) = r.code().split_once('.').expect("layer.reason");
            assert_eq!(layer, r.layer());
            assert!(!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), *r);
            assert!((400..600).contains(&r.status()));
        }
    }

    #[test]
    fn every_hint_names_a_next_step_for_the_caller() {
        // A hint says what to do, not only what the rule is: it holds an action.
        const ACTIONS: &[&str] = &[
            "send",
            "use",
            "ask",
            "check",
            "retry",
            "remove",
            "write",
            "sign",
            "fix",
            "slow down",
            "shorten",
            "create",
            "obtain",
            "separate",
            "contact",
            "percent-encode",
            "do not",
            "call",
            "wait",
            "choose",
        ];
        for r in Reason::ALL {
            let hint = r.info().hint.to_ascii_lowercase();
            let words: Vec<&str> = hint
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .filter(|w| !w.is_empty())
                .collect();
            let acts = ACTIONS.iter().any(|action| match action.split_once(' ') {
                Some(_) => hint.contains(action),
                None => words.contains(action),
            });
            assert!(acts, "{r}: the hint names no next step: {}", r.info().hint);
        }
    }

    #[test]
    fn forbidden_is_only_for_policy_decisions() {
        // The catalogue cannot compile otherwise (a const assertion per entry); this
        // states the rule it checks.
        assert!(status_fits_source(403, Source::Policy));
        assert!(!status_fits_source(403, Source::Caller));
        assert!(!status_fits_source(403, Source::Upstream));
        assert!(!status_fits_source(502, Source::Caller));
        assert!(!status_fits_source(400, Source::Pinpoint));
        for r in Reason::ALL {
            assert!(status_fits_source(r.status(), r.info().source), "{r}");
        }
    }
}
