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
use pinpoint_policy::credential_text::{carries_in_header_name, carries_pinpoint_credential, OwnCredentials};
use pinpoint_policy::overrides::{dashed, OVERRIDE_HEADERS};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the common non-standard ones).
/// (`Transfer-Encoding` and `Content-Length` are set from the body Pinpoint forwards.)
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// Headers a `Connection` header may not remove: the ones the request was decided on.
const NOT_HOP_BY_HOP: [&str; 4] = ["host", "content-type", "cookie", "authorization"];

/// Headers that tell a server where the request came from or how it arrived: believed
/// only from the proxies `[net] trusted_proxies` names, removed from anyone else's
/// requests (Pinpoint states `X-Forwarded-For` and `X-Forwarded-Proto` itself).
const FORWARDING: [&str; 27] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-forwarded",
    "forwarded-for",
    "x-original-forwarded-for",
    "x-proxyuser-ip",
    "x-envoy-external-address",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded-server",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-host",
    "x-original-host",
    "x-http-host-override",
];

/// Headers that assert who the caller is, as auth proxies set them for upstreams: only
/// Pinpoint states identity (`X-Pinpoint-*`), so these never pass, from anyone. So does
/// `Forwarded`: the client address chain the decision used is restated in `X-Forwarded-For`.
const IDENTITY_ASSERTIONS: [&str; 48] = [
    "forwarded",
    "remote-user",
    "x-remote-user",
    "x-user",
    "x-username",
    "x-user-id",
    "x-user-email",
    "x-email",
    "x-auth-user",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-webauth-user",
    "x-roles",
    "x-groups",
    "x-userinfo",
    "x-jwt-payload",
    "x-endpoint-api-userinfo",
    "impersonate-user",
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-data",
    "x-amzn-oidc-accesstoken",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-goog-iap-jwt-assertion",
    "x-ms-client-principal",
    "x-ms-client-principal-name",
    "x-ms-client-principal-id",
    "cf-access-jwt-assertion",
    "cf-access-authenticated-user-email",
    "x-forwarded-client-cert",
    "x-ssl-client-verify",
    "x-ssl-client-s-dn",
    "x-client-verify",
];

/// Client-certificate header families a TLS-terminating proxy sets, matched by prefix.
const CLIENT_CERT_PREFIXES: [&str; 6] = [
    "x-ssl-client-",
    "ssl-client-",
    "x-client-cert",
    "x-arr-clientcert",
    // RFC 9440 (`Client-Cert`, `Client-Cert-Chain`) and Envoy's `X-Forwarded-Client-Cert`.
    "client-cert",
    "x-forwarded-client-cert",
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

/// Framing headers: Pinpoint forwards the body it read and frames it itself.
const FRAMING: [&str; 3] = ["transfer-encoding", "content-length", "expect"];

/// How the upstream request's headers are to be cleaned.
pub struct UpstreamHeaderRules<'a> {
    /// The route authenticates: every credential header is Pinpoint's and is removed.
    pub route_authenticates: bool,
    pub override_headers: OverrideHeaders,
    /// The peer is a trusted proxy: its forwarding headers pass.
    pub peer_is_trusted_proxy: bool,
    /// Recognises Pinpoint's own credentials (on routes that do not authenticate, other
    /// credentials pass to upstreams with their own auth).
    pub ours: OwnCredentials<'a>,
}

/// Which of the lists above a header name (lower case, `_` read as `-`) is on.
#[derive(Clone, Copy, Default)]
struct Class(u8);

impl Class {
    /// Hop-by-hop, set by the gateway, framing, or an identity assertion: removed whoever
    /// sent it.
    const ALWAYS_REMOVED: u8 = 1;
    const OVERRIDE: u8 = 2;
    const FORWARDING: u8 = 4;
    const CREDENTIAL: u8 = 8;

    fn is(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// The class of a header name, by one lookup in a table built from the lists at first use:
/// comparing each name with the lists one by one cost about 600 instructions a header (a
/// browser's dozen headers, 7,700 a request: bench/instructions.sh, route `headers`).
fn class_of(name: &str) -> Class {
    static TABLE: std::sync::LazyLock<std::collections::HashMap<&str, Class, foldhash::fast::FixedState>> =
        std::sync::LazyLock::new(|| {
            let mut table = std::collections::HashMap::with_hasher(foldhash::fast::FixedState::default());
            let lists: [(&[&'static str], u8); 7] = [
                (&HOP_BY_HOP, Class::ALWAYS_REMOVED),
                (&SET_BY_GATEWAY, Class::ALWAYS_REMOVED),
                (&FRAMING, Class::ALWAYS_REMOVED),
                (&IDENTITY_ASSERTIONS, Class::ALWAYS_REMOVED),
                (&OVERRIDE_HEADERS, Class::OVERRIDE),
                (&FORWARDING, Class::FORWARDING),
                (&CREDENTIAL_HEADERS, Class::CREDENTIAL),
            ];
            for (names, flag) in lists {
                for name in names {
                    table.entry(*name).or_insert(Class::default()).0 |= flag;
                }
            }
            table
        });
    TABLE.get(name).copied().unwrap_or_default()
}

/// Removes from a request bound upstream every header that is the gateway's to set, or
/// that would make the upstream read another request than the one decided on. One scan
/// of the headers; each value is also searched for a Pinpoint credential.
pub fn clean_upstream_request(headers: &mut HeaderMap, rules: &UpstreamHeaderRules<'_>) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut restored: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (name, value) in headers.iter() {
        let plain = name.as_str();
        let underscored = plain.contains('_');
        let read_as = dashed(plain);
        let read_as = read_as.as_ref();
        let class = class_of(read_as);
        let remove = class.is(Class::ALWAYS_REMOVED)
            || read_as.starts_with("x-pinpoint-")
            || (class.is(Class::OVERRIDE) && rules.override_headers != OverrideHeaders::Allow)
            || (class.is(Class::FORWARDING) && (underscored || !rules.peer_is_trusted_proxy))
            || CLIENT_CERT_PREFIXES.iter().any(|p| read_as.starts_with(p))
            || (class.is(Class::CREDENTIAL) && (rules.route_authenticates || underscored))
            // A Pinpoint credential in any header (cookies included), or in its name, in
            // the wrappings `carries_pinpoint_credential` undoes.
            || carries_pinpoint_credential(value.as_bytes(), rules.ours)
            || carries_in_header_name(plain, rules.ours);
        if remove && !doomed.contains(name) {
            doomed.push(name.clone());
            // A cookie header loses only the cookies that carry the credential.
            if read_as == "cookie" && !underscored {
                let kept: Vec<&str> = value
                    .to_str()
                    .unwrap_or_default()
                    .split(';')
                    .map(str::trim)
                    .filter(|pair| !pair.is_empty() && !carries_pinpoint_credential(pair.as_bytes(), rules.ours))
                    .collect();
                if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
                    if !kept.is_empty() {
                        restored.push((name.clone(), value));
                    }
                }
            }
        }
    }
    doomed.extend(named_by_connection(headers));
    for name in doomed {
        headers.remove(name);
    }
    for (name, value) in restored {
        headers.append(name, value);
    }
}

/// Whether the query or the body asks the upstream to use another method with a `_method`
/// parameter (Rails/Rack, Laravel and Symfony read it from the query, forms, multipart and
/// JSON bodies): another way to say what an override header says.
///
/// Frameworks disagree on how they read a body's type, boundary and field names, so the
/// body is read every way one of them might and refused if any finds `_method`: as a form
/// when the type is a form or none is given (Rack reads a typeless POST as a form), as
/// JSON when the `Content-Type` mentions JSON anywhere (Laravel's test), as multipart
/// with every boundary the header could be read to name; a multipart body whose
/// boundary cannot be found cannot be read, and counts as naming it.
pub fn method_override_parameter(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> bool {
    let names_method = |pairs: &[u8]| {
        pairs.split(|b| *b == b'&' || *b == b';').any(|pair| {
            let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
            let name: Vec<u8> = pinpoint_core::canonical::percent_decode(&String::from_utf8_lossy(name))
                .into_iter()
                .map(|b| if b == b'+' { b' ' } else { b })
                .collect();
            is_method_name(&name)
        })
    };
    if query.is_some_and(|q| names_method(q.as_bytes())) {
        return true;
    }
    if body.is_empty() {
        return false;
    }
    let content_type = content_type.unwrap_or_default();
    let lower = content_type.to_ascii_lowercase();
    // The media type ends at `;`, `,` (Rack) or white space (PHP).
    let media = lower
        .trim_start()
        .split([';', ',', ' ', '\t'])
        .next()
        .unwrap_or_default();
    if (media.is_empty() || media == "application/x-www-form-urlencoded") && names_method(body) {
        return true;
    }
    if pinpoint_core::canonical::mentions(lower.as_bytes(), b"multipart") {
        let boundaries = multipart_boundaries(content_type);
        if boundaries.is_empty() {
            return true;
        }
        if boundaries
            .iter()
            .any(|boundary| multipart_field_names(boundary, body).any(|name| is_method_name(name.as_bytes())))
        {
            return true;
        }
    }
    // Without the letters of `method` (in any case) or a `\u` escape, no key can be
    // `_method`: most bodies are settled by one scan (parsing a 1 KiB body to read its
    // keys cost 40,000 instructions, bench/instructions.sh's `waf-off`).
    pinpoint_core::canonical::mentions(lower.as_bytes(), b"json")
        && may_spell_method(body)
        && json_top_level_key_is_method(body)
}

/// Whether a form, query or multipart field name is `_method` as the frameworks read
/// names: any case; cut at a NUL (PHP); a leading `.`, space or `[` read as `_` (PHP);
/// brackets around or after it dropped (Rack's and PHP's nested names).
fn is_method_name(name: &[u8]) -> bool {
    let name = name.split(|b| *b == 0).next().unwrap_or_default().trim_ascii();
    let unbracketed: Vec<u8> = name.iter().copied().filter(|b| !matches!(b, b'[' | b']')).collect();
    let leading_read_as_underscore = |name: &[u8]| match name.split_first() {
        Some((first, rest)) => matches!(first, b'_' | b'.' | b' ' | b'[') && rest.eq_ignore_ascii_case(b"method"),
        None => false,
    };
    let mapped_then_unbracketed: Vec<u8> = match name.split_first() {
        Some((b'.' | b' ' | b'[', rest)) => std::iter::once(b'_')
            .chain(rest.iter().copied().filter(|b| !matches!(b, b'[' | b']')))
            .collect(),
        _ => unbracketed.clone(),
    };
    leading_read_as_underscore(&unbracketed) || leading_read_as_underscore(&mapped_then_unbracketed)
}

/// Every boundary a multipart `Content-Type` could be read to name: each `boundary=`
/// in it (PHP takes the first such text, even inside another parameter's name; others
/// the parameter), its value ended by `;`, `,` or white space, quotes removed.
fn multipart_boundaries(content_type: &str) -> Vec<String> {
    let lower = content_type.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find("boundary=") {
        let start = from + at + "boundary=".len();
        let value = content_type[start..]
            .split([';', ',', ' ', '\t'])
            .next()
            .unwrap_or_default()
            .trim_matches(['"', '\'']);
        if !value.is_empty() && !found.iter().any(|b| b == value) {
            found.push(value.to_owned());
        }
        from = start;
    }
    found
}

/// Whether a JSON text could spell `method` in a key: it holds those letters (in any case)
/// or a `\u` escape. memchr finds each `m`, `M` and backslash, and only those are looked
/// at further: on bench/instructions.sh's 1 KiB JSON POST a byte-by-byte pass cost 13,500
/// instructions a request (comparing six bytes at every offset, 19,000), memchr a few
/// hundred.
fn may_spell_method(body: &[u8]) -> bool {
    memchr::memchr3_iter(b'm', b'M', b'\\', body).any(|i| match body[i] {
        b'\\' => body.get(i + 1) == Some(&b'u'),
        _ => body.get(i..i + 6).is_some_and(|w| w.eq_ignore_ascii_case(b"method")),
    })
}

/// Whether a JSON object names `_method` (in any case) among its top-level keys: a value
/// or a nested key is the application's data. Values are skipped, not built.
fn json_top_level_key_is_method(body: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct TopLevel;
    impl<'de> Visitor<'de> for TopLevel {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut found = false;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                found |= key.eq_ignore_ascii_case("_method");
                map.next_value::<IgnoredAny>()?;
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(TopLevel)
        .is_ok_and(|found| found && de.end().is_ok())
}

/// The names of every part of a multipart body split at `boundary`: each part's
/// `Content-Disposition` `name`, and its `Content-ID` (Rack names a part by it), never
/// the parts' contents.
fn multipart_field_names<'b>(boundary: &str, body: &'b [u8]) -> impl Iterator<Item = String> + 'b {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.windows(delimiter.len()).position(|w| w == delimiter.as_slice()) {
        rest = &rest[at + delimiter.len()..];
        parts.push(rest);
    }
    parts.into_iter().flat_map(|part| {
        // Part headers end at a blank line, written with CRLFs or (as lenient parsers
        // such as PHP's accept) bare LFs.
        let head_end = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|end| part.windows(end.len()).position(|w| w == *end))
            .min()
            .unwrap_or(part.len());
        let head = String::from_utf8_lossy(&part[..head_end]);
        let mut names = Vec::new();
        for line in head.lines() {
            let lower = line.trim_start().to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                names.extend(line.split(';').skip(1).filter_map(|param| {
                    let (k, v) = param.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("name")
                        .then(|| v.trim().trim_matches(['"', '\'']).to_owned())
                }));
            } else if lower.starts_with("content-id:") {
                if let Some((_, id)) = line.split_once(':') {
                    names.push(id.trim().trim_matches(['<', '>', '"']).to_owned());
                }
            }
        }
        names
    })
}

/// Cleans a response from an upstream: hop-by-hop headers and those `Connection` names go,
/// and so do the headers only Pinpoint may send its callers (`X-Pinpoint-*`, such as the
/// reason of a refusal, and `X-Client-Request-Id`).
pub fn clean_upstream_response(headers: &mut HeaderMap) {
    let ours = |name: &HeaderName| {
        let name = name.as_str();
        HOP_BY_HOP.contains(&name) || name.starts_with("x-pinpoint-") || name == "x-client-request-id"
    };
    if !headers.keys().any(ours) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| ours(n)).cloned().collect();
    doomed.extend(named_by_connection(headers));
    for name in doomed {
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
        .filter(|name| !matches!(name.as_str(), "close" | "keep-alive") && !NOT_HOP_BY_HOP.contains(&name.as_str()))
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
    use pinpoint_policy::overrides::is_override_header;

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

    fn our_kid(kid: &str) -> bool {
        kid == "k1"
    }

    fn our_key(id: &str) -> bool {
        id == "0123456789abcdef"
    }

    const OURS: OwnCredentials<'static> = OwnCredentials {
        key_id: &our_key,
        kid: &our_kid,
    };

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
            peer_is_trusted_proxy: false,
            ours: OURS,
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
            peer_is_trusted_proxy: false,
            ours: OURS,
        };
        clean_upstream_request(&mut h, &rules);
        assert!(h.is_empty());

        rules.route_authenticates = false;
        let mut h = headers(&all);
        clean_upstream_request(&mut h, &rules);
        assert_eq!(left(&h), ["dd-api-key"], "the upstream's own credential passes");
        let mut h = headers(&[
            ("authorization", "bearer   pp_0123456789abcdef_x"),
            ("x_api_key", "anything"),
            ("x-api-key", "\"pp_0123456789abcdef_y\""),
            ("cookie", "session=1; api=pp_0123456789abcdef_z"),
            ("x-auth-token", "pp-0123456789abcdef-z"),
        ]);
        clean_upstream_request(&mut h, &rules);
        // The cookie header keeps the cookies that carry no credential.
        assert_eq!(left(&h), ["cookie"], "{h:?}");
        assert_eq!(h["cookie"], "session=1");
        // Values merely shaped like a key are the client's.
        let mut h = headers(&[
            ("cookie", "session=abc; last_app_5f3a9c1e2b4d6e8f=seen"),
            ("if-none-match", "\"pp_5f3a9c1e2b4d6e8f\""),
        ]);
        clean_upstream_request(&mut h, &rules);
        assert_eq!(left(&h), ["cookie", "if-none-match"]);
    }

    #[test]
    fn method_override_parameters_are_found_in_query_and_bodies() {
        let form = Some("application/x-www-form-urlencoded");
        assert!(method_override_parameter(Some("a=1&_method=DELETE"), None, b""));
        assert!(method_override_parameter(Some("%5Fmethod=DELETE"), None, b""));
        assert!(method_override_parameter(None, form, b"x=1&_method=DELETE"));
        assert!(method_override_parameter(
            None,
            Some("multipart/form-data; boundary=b"),
            b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--"
        ));
        assert!(method_override_parameter(
            None,
            Some("application/json"),
            br#"{"_method":"DELETE"}"#
        ));
        assert!(!method_override_parameter(
            Some("method=x&a_method=y"),
            form,
            b"my_method=1"
        ));
        assert!(!method_override_parameter(
            None,
            Some("application/json"),
            br#"{"method":"x"}"#
        ));
        // Spelled with escapes, or in another case, it is still the key.
        assert!(method_override_parameter(
            None,
            Some("application/json"),
            br#"{"a":[1,{"b":2}],"\u005f\u006dethod":"DELETE"}"#
        ));
        assert!(method_override_parameter(
            None,
            Some("application/json"),
            br#"{"_METHOD":"PUT"}"#
        ));
        // Data that only mentions it is the application's.
        assert!(!method_override_parameter(
            None,
            Some("application/json"),
            br#"{"x":"_method","y":{"_method":1}}"#
        ));
        // As Rack, PHP and Laravel read them: a media type ended by `,`, a name whose
        // leading `.` PHP turns into `_`, any JSON-like type, single-quoted and bare-LF
        // multipart heads.
        assert!(method_override_parameter(
            None,
            Some("application/x-www-form-urlencoded, text/plain"),
            b"_method=DELETE"
        ));
        assert!(method_override_parameter(Some(".method=DELETE"), None, b""));
        assert!(method_override_parameter(None, form, b"a=1&%2Emethod=PUT"));
        for json in [
            "text/json",
            "application/x-json",
            "application/vnd.api+json; charset=utf-8",
        ] {
            assert!(
                method_override_parameter(None, Some(json), br#"{"_method":"DELETE"}"#),
                "{json}"
            );
        }
        for body in [
            &b"--b\r\nContent-Disposition: form-data; name='_method'\r\n\r\nDELETE\r\n--b--"[..],
            b"--b\nContent-Disposition: form-data; name=\"_method\"\n\nDELETE\n--b--",
        ] {
            assert!(method_override_parameter(
                None,
                Some("multipart/form-data; boundary=b"),
                body
            ));
        }
        // The second attack's spellings (Rack 2.2 and Laravel 8 on PHP 8.2 ran each as DELETE).
        assert!(method_override_parameter(None, None, b"_method=DELETE"));
        for body in [
            &b"[_method]=DELETE"[..],
            b"_method]=DELETE",
            b"_method%00=DELETE",
            b"[method=PUT",
        ] {
            assert!(method_override_parameter(None, form, body), "{body:?}");
        }
        assert!(method_override_parameter(Some("_method%00=DELETE"), None, b""));
        assert!(method_override_parameter(
            None,
            Some("application/x-www-form-urlencoded x"),
            b"_method=DELETE"
        ));
        for json_type in [
            "text/plain; x=/json",
            "application/x-www-form-urlencoded, application/json",
        ] {
            assert!(
                method_override_parameter(None, Some(json_type), br#"{"_method":"DELETE"}"#),
                "{json_type}"
            );
        }
        let part = b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--";
        for multipart in [
            "multipart/form-data, boundary=b",
            "multipart/form-data boundary=b",
            "multipart/form-data; xboundary=b; boundary=z",
        ] {
            assert!(method_override_parameter(None, Some(multipart), part), "{multipart}");
        }
        assert!(method_override_parameter(
            None,
            Some("multipart/form-data; boundary=b"),
            b"--b\r\nContent-Disposition: form-data\r\nContent-ID: _method\r\n\r\nDELETE\r\n--b--"
        ));
        // A multipart body whose boundary cannot be found cannot be read: refused.
        assert!(method_override_parameter(None, Some("multipart/form-data"), b"x"));
        // Names that only contain the word are data.
        for body in [&b"payment_method=card"[..], b"methods=1", b"x=_method"] {
            assert!(!method_override_parameter(None, form, body), "{body:?}");
        }
        let upload = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"_method\"\r\n\r\n<input name=\"_method\" value=\"PUT\">\r\n--b--";
        assert!(!method_override_parameter(
            None,
            Some("multipart/form-data; boundary=b"),
            upload
        ));
    }

    #[test]
    fn override_headers_pass_only_where_allowed() {
        let mut h = headers(&[("x-http-method-override", "PUT"), ("x-original-url", "/x")]);
        let rules = UpstreamHeaderRules {
            route_authenticates: false,
            override_headers: OverrideHeaders::Allow,
            peer_is_trusted_proxy: false,
            ours: OURS,
        };
        clean_upstream_request(&mut h, &rules);
        assert_eq!(h.len(), 2);
        assert!(is_override_header(&HeaderName::from_static("x_http_method")));
        assert!(!is_override_header(&HeaderName::from_static("x-http")));
    }

    #[test]
    fn responses_lose_hop_by_hop_and_pinpoints_own_headers_only() {
        let mut h = headers(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("server", "up"),
            ("x-pinpoint-reason", "policy.explicit_deny"),
            ("x-client-request-id", "forged"),
        ]);
        clean_upstream_response(&mut h);
        assert_eq!(left(&h), ["server"]);
    }

    #[test]
    fn forwarding_headers_pass_only_from_trusted_proxies_and_connection_cannot_remove_host() {
        let sent = [
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-host", "admin.internal"),
            ("x-forwarded-prefix", "/admin"),
            ("connection", "host, x-hop"),
            ("host", "api.example.com"),
            ("x-hop", "1"),
        ];
        let mut rules = UpstreamHeaderRules {
            route_authenticates: false,
            override_headers: OverrideHeaders::Strip,
            peer_is_trusted_proxy: false,
            ours: OURS,
        };
        let mut h = headers(&sent);
        clean_upstream_request(&mut h, &rules);
        assert_eq!(left(&h), ["host"]);
        rules.peer_is_trusted_proxy = true;
        let mut h = headers(&sent);
        clean_upstream_request(&mut h, &rules);
        assert_eq!(
            left(&h),
            ["host", "x-forwarded-host", "x-real-ip"],
            "Forwarded is restated as X-Forwarded-For"
        );
    }
}
