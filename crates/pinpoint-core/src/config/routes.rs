//! `[[routes]]`: which requests go where, and what each route demands of them (methods,
//! authentication, permissions, tenant, owner, IP lists, body limits, path handling).

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use toml::Spanned;
use toml_edit::Item;

use super::diagnostics::{entry, place, Diagnostics};
use super::names::{is_identifier, is_permission, is_uuid, parse_method, read_methods, validate_prefix};

/// `[[routes]]`: which requests go where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub id: String,
    /// Exact host (case-insensitive, port ignored); `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, matched on segment boundaries (`/orders` matches `/orders/1`, not `/ordersx`).
    pub path_prefix: String,
    /// Allowed methods (HEAD follows GET); `None` allows every method (`methods = ["*"]`).
    /// Without a `methods` list a route allows [`DEFAULT_METHODS`]: WebDAV and other
    /// extension methods only where a route names them.
    pub methods: Option<Vec<http::Method>>,
    pub upstream: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Whether callers must authenticate.
    pub auth: AuthRequirement,
    /// The organization (tenant) this route belongs to; callers from other organizations
    /// are refused with `authz.tenant_mismatch`.
    pub org: Option<String>,
    /// Permission each method needs; `None` as method means every method.
    pub permissions: Vec<(Option<http::Method>, String)>,
    /// 1-based path segment after the prefix that must equal the caller's principal id.
    pub owner_segment: Option<usize>,
    pub ip_allow: Vec<ipnet::IpNet>,
    pub ip_deny: Vec<ipnet::IpNet>,
    /// The upstream folds letter case: the route, policy rules and deny rules match its
    /// paths ignoring ASCII case. Otherwise a path that matches this route only when case is
    /// ignored is refused (`route.case_mismatch`).
    pub case_insensitive: bool,
    /// Accept `;` path parameters (refused by default: `request.path_parameters`).
    pub allow_path_parameters: bool,
    /// Accept WebSocket upgrades (`Upgrade: websocket`): authorized like any request, then
    /// tunnelled both ways. Refused by default (`route.upgrade_not_allowed`).
    pub websocket: bool,
    /// Require a client certificate verified by the listener's `client_ca` (mTLS).
    pub client_cert_required: bool,
    /// Only these client certificates (implies `client_cert_required`), each entry
    /// compared with one kind of name (see `ClientCertificate::is_named_by`): subjects in
    /// RFC 4514 form (`CN=billing,O=acme`), URIs (`spiffe://acme/billing`), DNS names,
    /// `sha256:<fingerprint>`.
    pub client_cert_allow: Vec<String>,
    /// What to do with method- and URL-override headers.
    pub override_headers: OverrideHeaders,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: u64,
    /// Time allowed for the whole request body to arrive.
    pub body_timeout_ms: u64,
    /// How the route guards against cross-site requests (`[csrf]`).
    pub csrf: super::CsrfGuard,
    /// The WAF inspects this route's requests (`[waf]`): `true`, `false` or `"report"`
    /// (matches are traced as would-deny, never refused).
    pub waf: super::RouteWaf,
    /// The share of this route's allowed requests whose records are kept (absent:
    /// `[decision_log] sample_allowed`).
    pub decision_sample: Option<super::SampleRate>,
}

/// The methods a route without a `methods` list allows.
pub const DEFAULT_METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::OPTIONS,
];

/// Default `max_body_bytes` of a route: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default `body_timeout_ms` of a route.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;

/// A route's treatment of headers that ask servers to change the method or URL
/// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, `X-Original-URL`,
/// `X-Original-URI`, `X-Rewrite-URL`, in any case and with `_` for `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverrideHeaders {
    /// Removed before forwarding (the default).
    #[default]
    Strip,
    /// The request is refused with `request.override_header` (400).
    Refuse,
    /// Forwarded as sent: only for upstreams that need them.
    Allow,
}

/// Whether a route needs an authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequirement {
    /// No authentication: credentials are ignored.
    #[default]
    None,
    /// Credentials are checked when present; anonymous callers pass.
    Optional,
    /// Credentials are required.
    Required,
}

/// A route as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    id: Spanned<String>,
    host: Option<Spanned<String>>,
    path_prefix: Spanned<String>,
    methods: Option<Vec<Spanned<String>>>,
    upstream: Spanned<String>,
    #[serde(default)]
    strip_prefix: bool,
    auth: Option<AuthRequirement>,
    org: Option<Spanned<String>>,
    permissions: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    owner_segment: Option<Spanned<usize>>,
    #[serde(default)]
    ip_allow: Vec<ipnet::IpNet>,
    #[serde(default)]
    ip_deny: Vec<ipnet::IpNet>,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    allow_path_parameters: bool,
    #[serde(default)]
    websocket: bool,
    #[serde(default)]
    client_cert_required: bool,
    #[serde(default)]
    client_cert_allow: Vec<String>,
    #[serde(default)]
    override_headers: OverrideHeaders,
    max_body_bytes: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    csrf: super::CsrfGuard,
    #[serde(default)]
    waf: super::RouteWaf,
    #[serde(default)]
    decision_sample: Option<super::SampleRate>,
}

/// The route ids the file declares, whether or not each route is valid (so a rule naming
/// a broken route is not also reported as naming a missing one).
pub(super) fn declared(item: &Item) -> HashSet<String> {
    (0..)
        .map_while(|i| entry(item, i))
        .filter_map(|route| route.get("id").and_then(Item::as_str).map(str::to_owned))
        .collect()
}

pub(super) fn read(item: &Item, d: &mut Diagnostics, upstreams: &[String]) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    if !(item.is_none() || item.is_array_of_tables() || item.is_array()) {
        d.error(item.span(), "routes must be an array of tables ([[routes]])");
        return routes;
    }
    if entry(item, 0).is_none() {
        d.error(
            None,
            "the config defines no [[routes]], so every request would be 404 (an empty or truncated file?)",
        );
        return routes;
    }
    let mut ids = HashSet::new();
    for route_item in (0..).map_while(|i| entry(item, i)) {
        let Some(raw) = d.read::<RawRoute>(route_item) else {
            continue;
        };
        if let Some(route) = read_route(raw, route_item, d, upstreams, &mut ids) {
            routes.push(route);
        }
    }
    routes
}

fn read_route(
    r: RawRoute,
    route_item: &Item,
    d: &mut Diagnostics,
    upstreams: &[String],
    ids: &mut HashSet<String>,
) -> Option<RouteConfig> {
    let errors_before = d.error_count();
    let id = r.id.get_ref().clone();
    if !is_identifier(&id) {
        d.error(
            Some(r.id.span()),
            format!("route id `{id}` must use only letters, digits, `-` and `_`"),
        );
    }
    if !ids.insert(id.clone()) {
        d.error(Some(r.id.span()), format!("route id `{id}` is used twice"));
    }
    let path_prefix = validate_prefix(r.path_prefix.get_ref())
        .map_err(|m| d.error(Some(r.path_prefix.span()), m))
        .unwrap_or_default();
    if !upstreams.contains(r.upstream.get_ref()) {
        d.error(
            Some(r.upstream.span()),
            format!(
                "route `{id}` names upstream `{}`, which is not defined under [upstreams]",
                r.upstream.get_ref()
            ),
        );
    }
    let host = r.host.as_ref().and_then(|h| {
        let written = h.get_ref();
        if written.is_empty() || written.contains(['/', ' ']) {
            d.error(
                Some(h.span()),
                format!("route `{id}`: host `{written}` is not a host name"),
            );
            return None;
        }
        let bare = written.trim_start_matches('[').trim_end_matches(']');
        let host = crate::canonical::canonical_host(bare);
        if host.is_none() {
            d.error(
                Some(h.span()),
                format!("route `{id}`: host `{written}` is not an address in its usual form"),
            );
        }
        host
    });
    let mut permissions: Vec<(Option<http::Method>, String)> = Vec::new();
    for (key, permission) in r.permissions.iter().flatten() {
        let m = key.get_ref();
        let method = if m == "*" {
            None
        } else {
            match parse_method(m) {
                Ok(method) => Some(method),
                Err(e) => {
                    d.error(Some(key.span()), format!("permissions key: {e}, or `*`"));
                    continue;
                }
            }
        };
        if permissions.iter().any(|(seen, _)| *seen == method) {
            d.error(
                Some(key.span()),
                format!("route `{id}`: permissions name the method `{m}` twice"),
            );
        }
        if !is_permission(permission.get_ref()) {
            d.error(
                Some(permission.span()),
                format!(
                    "permission `{}` must look like `resource:action` (letters, digits, `_`, `-`, `:`, `.`)",
                    permission.get_ref()
                ),
            );
        }
        permissions.push((method, permission.get_ref().clone()));
    }
    if let Some(org) = &r.org {
        if !is_uuid(org.get_ref()) {
            d.error(
                Some(org.span()),
                format!(
                    "route `{id}`: org must be an organization id (a UUID), not `{}`",
                    org.get_ref()
                ),
            );
        }
    }
    if let Some(seg) = &r.owner_segment {
        if *seg.get_ref() == 0 {
            d.error(
                Some(seg.span()),
                "owner_segment counts from 1 (the first segment after the prefix)",
            );
        }
    }
    let scoped = !permissions.is_empty() || r.owner_segment.is_some() || r.org.is_some();
    let auth = r.auth.unwrap_or(if scoped {
        AuthRequirement::Required
    } else {
        AuthRequirement::None
    });
    if auth != AuthRequirement::Required && scoped {
        d.error(
            place(&[route_item.get("auth"), Some(route_item)]),
            format!("route `{id}` sets permissions, org or owner_segment, so `auth` must be \"required\""),
        );
    }
    let mut at_least_one = |value: &Option<Spanned<u64>>, field: &str, default: u64| match value {
        Some(v) if *v.get_ref() == 0 => {
            d.error(Some(v.span()), format!("{field} must be at least 1"));
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    };
    let max_body_bytes = at_least_one(&r.max_body_bytes, "max_body_bytes", DEFAULT_MAX_BODY_BYTES);
    let body_timeout_ms = at_least_one(&r.body_timeout_ms, "body_timeout_ms", DEFAULT_BODY_TIMEOUT_MS);
    let methods = match &r.methods {
        None => Some(DEFAULT_METHODS.to_vec()),
        Some(list) if list.iter().any(|m| m.get_ref() == "*") => None,
        Some(list) if list.is_empty() => {
            d.error(
                place(&[route_item.get("methods"), Some(route_item)]),
                format!("route `{id}`: `methods` is empty; list methods, or [\"*\"] for any"),
            );
            None
        }
        Some(_) => read_methods(&r.methods, d),
    };
    if d.error_count() > errors_before {
        return None;
    }
    Some(RouteConfig {
        id,
        host,
        path_prefix,
        methods,
        upstream: r.upstream.into_inner(),
        strip_prefix: r.strip_prefix,
        auth,
        org: r.org.as_ref().map(|o| o.get_ref().to_ascii_lowercase()),
        permissions,
        owner_segment: r.owner_segment.as_ref().map(|s| *s.get_ref()),
        ip_allow: r.ip_allow,
        ip_deny: r.ip_deny,
        case_insensitive: r.case_insensitive,
        allow_path_parameters: r.allow_path_parameters,
        websocket: r.websocket,
        client_cert_required: r.client_cert_required,
        client_cert_allow: r.client_cert_allow,
        override_headers: r.override_headers,
        max_body_bytes,
        body_timeout_ms,
        csrf: r.csrf,
        waf: r.waf,
        decision_sample: r.decision_sample,
    })
}
