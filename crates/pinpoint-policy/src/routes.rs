//! The compiled route table: host, path prefix (on segment boundaries) and method
//! matching, longest prefix first, on the canonical path. Built once per config revision,
//! shared read-only. Matching is case-sensitive and fails closed on ambiguity: a path that
//! matches a more specific route only when letter case is ignored is a
//! [`RouteMatch::CaseMismatch`], unless that route declares `case_insensitive`.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use pinpoint_core::config::{method_listed, AuthRequirement, OverrideHeaders, RouteConfig};

/// A route ready for matching.
pub struct CompiledRoute {
    pub id: Arc<str>,
    /// The id as the route layer's trace entry names it (JSON form built once).
    pub trace_id: Arc<str>,
    host: Option<String>,
    prefix: String,
    /// `None`: every method.
    methods: Option<Vec<Method>>,
    /// The upstream pool's name (the host keeps the pools).
    pub upstream: Arc<str>,
    pub strip_prefix: bool,
    pub access: Arc<RouteAccess>,
    /// The route's paths match (and its rules match them) ignoring ASCII case.
    pub case_insensitive: bool,
    pub allow_path_parameters: bool,
    /// Whether WebSocket upgrades are accepted.
    pub websocket: bool,
    /// How the route guards against cross-site requests.
    pub csrf: pinpoint_core::config::CsrfGuard,
    /// Whether the WAF inspects this route's requests, and enforces or reports.
    pub waf: pinpoint_core::config::RouteWaf,
    pub override_headers: OverrideHeaders,
    pub max_body_bytes: u64,
    /// The share of allowed requests whose decision records are kept, when the route sets
    /// one (else `[decision_log] sample_allowed`).
    pub decision_sample: Option<pinpoint_core::config::SampleRate>,
    pub body_timeout: Duration,
}

/// What a route (or an API endpoint) demands of callers.
#[derive(Debug, Default)]
pub struct RouteAccess {
    pub auth: AuthRequirement,
    /// Permission per method; `None` as method means every method.
    /// Shared, so an allow can name the permission without allocating or escaping it.
    pub permissions: Vec<(Option<Method>, Arc<str>)>,
    /// The organization the route belongs to.
    pub org: Option<String>,
    /// 1-based path segment after `prefix` that must equal the caller's principal id.
    pub owner_segment: Option<usize>,
    pub prefix: String,
    pub ip_allow: Vec<ipnet::IpNet>,
    pub ip_deny: Vec<ipnet::IpNet>,
    /// A verified client certificate is required (mTLS).
    pub client_cert_required: bool,
    /// When not empty: only these certificates (subject, subjectAltName or
    /// `sha256:<fingerprint>`).
    pub client_cert_allow: Vec<String>,
}

/// What a route's permission map asks of a method.
#[derive(Debug, PartialEq, Eq)]
pub enum MethodRequirement<'a> {
    /// The route has no permission map: no permission is needed.
    Nothing,
    /// This permission is needed.
    Permission(&'a Arc<str>),
    /// The map names neither the method nor `*`: the method is refused (fail closed).
    NotPermitted,
}

impl RouteAccess {
    /// What `method` needs: its own entry, else GET's for HEAD, else `*`'s. A method the
    /// map leaves out is not permitted at all.
    pub fn requirement_for(&self, method: &Method) -> MethodRequirement<'_> {
        if self.permissions.is_empty() {
            return MethodRequirement::Nothing;
        }
        let named = |wanted: &Method| self.permissions.iter().find(|(m, _)| m.as_ref() == Some(wanted));
        named(method)
            .or_else(|| (*method == Method::HEAD).then(|| named(&Method::GET)).flatten())
            .or_else(|| self.permissions.iter().find(|(m, _)| m.is_none()))
            .map_or(MethodRequirement::NotPermitted, |(_, p)| {
                MethodRequirement::Permission(p)
            })
    }

    /// The path segment that names the resource owner, if the route has an owner rule.
    /// (`path` is under the route's prefix, so the prefix's length is where it ends, in any
    /// letter case.)
    pub fn owner_in<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        let n = self.owner_segment?;
        let rest = if self.prefix == "/" {
            path
        } else {
            path.get(self.prefix.len()..).unwrap_or("")
        };
        Some(rest.split('/').filter(|s| !s.is_empty()).nth(n - 1))
    }
}

/// The result of matching a request against the table.
pub enum RouteMatch {
    Found(Arc<CompiledRoute>),
    /// Host and path matched but no route allows the method.
    MethodNotAllowed {
        route_id: Arc<str>,
        allow: String,
    },
    /// The path matches this route's prefix only when letter case is ignored, and no
    /// route at least as specific matches it exactly.
    CaseMismatch {
        route_id: Arc<str>,
    },
    NotFound,
}

/// How a route's prefix covers a path.
#[derive(PartialEq, Eq)]
enum PathMatch {
    Yes,
    /// Only when ASCII case is ignored (and the route is case-sensitive).
    OnlyIgnoringCase,
    No,
}

/// Every route of one config revision, longest prefix first.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<CompiledRoute>>,
}

impl CompiledRoute {
    pub fn new(config: &RouteConfig) -> Self {
        CompiledRoute {
            id: Arc::from(config.id.as_str()),
            trace_id: Arc::<str>::from(config.id.as_str()),
            host: config.host.clone(),
            prefix: config.path_prefix.clone(),
            methods: config.methods.clone(),
            upstream: Arc::from(config.upstream.as_str()),
            strip_prefix: config.strip_prefix,
            access: Arc::new(RouteAccess {
                auth: config.auth,
                permissions: config
                    .permissions
                    .iter()
                    .map(|(m, p)| (m.clone(), Arc::<str>::from(p.as_str())))
                    .collect(),
                org: config.org.clone(),
                owner_segment: config.owner_segment,
                prefix: config.path_prefix.clone(),
                ip_allow: config.ip_allow.clone(),
                ip_deny: config.ip_deny.clone(),
                client_cert_required: config.client_cert_required || !config.client_cert_allow.is_empty(),
                client_cert_allow: config.client_cert_allow.clone(),
            }),
            case_insensitive: config.case_insensitive,
            allow_path_parameters: config.allow_path_parameters,
            websocket: config.websocket,
            csrf: config.csrf,
            waf: config.waf,
            override_headers: config.override_headers,
            max_body_bytes: config.max_body_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            decision_sample: config.decision_sample,
        }
    }

    /// How specific the route is: a host route over a host-less one, then the longer prefix.
    fn specificity(&self) -> (bool, usize) {
        (self.host.is_some(), self.prefix.len())
    }

    fn matches_host(&self, host: Option<&str>) -> bool {
        self.host.as_deref().is_none_or(|want| host == Some(want))
    }

    fn matches_path(&self, path: &str) -> PathMatch {
        if !self.case_insensitive && prefix_matches(&self.prefix, path) {
            PathMatch::Yes
        } else if prefix_matches_ignoring_case(&self.prefix, path) {
            if self.case_insensitive {
                PathMatch::Yes
            } else {
                PathMatch::OnlyIgnoringCase
            }
        } else {
            PathMatch::No
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| method_listed(m, method))
    }

    /// The methods to list in `Allow` (HEAD wherever GET is).
    fn allowed_methods(&self) -> impl Iterator<Item = &Method> {
        let methods = self.methods.as_deref().unwrap_or_default();
        let implied_head =
            (methods.contains(&Method::GET) && !methods.contains(&Method::HEAD)).then_some(&Method::HEAD);
        methods.iter().chain(implied_head)
    }

    /// The path to send upstream.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        if !self.strip_prefix || self.prefix == "/" {
            return path;
        }
        match path.get(self.prefix.len()..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

/// Whether `prefix` (normalised, no trailing slash unless `/`) covers `path`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// [`prefix_matches`] ignoring ASCII letter case.
pub fn prefix_matches_ignoring_case(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => {
            let rest = &path[prefix.len()..];
            rest.is_empty() || rest.starts_with('/')
        }
        _ => false,
    }
}

impl RouteTable {
    pub fn new(mut routes: Vec<Arc<CompiledRoute>>) -> Self {
        // Routes for the request's host before routes for any host (as a server block
        // before the default one), longest prefix first within each; stable otherwise,
        // so config order breaks ties.
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        RouteTable { routes }
    }

    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> RouteMatch {
        let mut best: Option<&Arc<CompiledRoute>> = None;
        // The most specific route the path matches only when case is ignored.
        let mut resembled: Option<&Arc<CompiledRoute>> = None;
        let mut allow: Vec<&Method> = Vec::new();
        for route in &self.routes {
            if let Some(b) = best {
                if route.specificity() < b.specificity() {
                    break;
                }
            }
            if !route.matches_host(host) {
                continue;
            }
            match route.matches_path(path) {
                PathMatch::No => continue,
                PathMatch::OnlyIgnoringCase => {
                    resembled.get_or_insert(route);
                    continue;
                }
                PathMatch::Yes => {}
            }
            if let Some(other) = resembled {
                if other.specificity() > route.specificity() {
                    return RouteMatch::CaseMismatch {
                        route_id: other.id.clone(),
                    };
                }
            }
            if route.allows(method) {
                return RouteMatch::Found(route.clone());
            }
            best.get_or_insert(route);
            for m in route.allowed_methods() {
                if !allow.contains(&m) {
                    allow.push(m);
                }
            }
        }
        match (best, resembled) {
            (Some(route), _) => RouteMatch::MethodNotAllowed {
                route_id: route.id.clone(),
                allow: allow.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
            },
            (None, Some(route)) => RouteMatch::CaseMismatch {
                route_id: route.id.clone(),
            },
            (None, None) => RouteMatch::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/orders", "/orders"));
        assert!(prefix_matches("/orders", "/orders/1"));
        assert!(!prefix_matches("/orders", "/ordersx"));
        assert!(!prefix_matches("/orders", "/order"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches_ignoring_case("/admin", "/ADMIN/users"));
        assert!(!prefix_matches_ignoring_case("/admin", "/ADMINx"));
        assert!(!prefix_matches_ignoring_case("/admin", "/adm"));
    }

    #[test]
    fn a_permission_map_fails_closed_and_head_follows_get() {
        let access = RouteAccess {
            permissions: vec![
                (Some(Method::GET), Arc::<str>::from("shop:read")),
                (Some(Method::POST), Arc::<str>::from("shop:write")),
            ],
            ..RouteAccess::default()
        };
        let needs = |m: Method| match access.requirement_for(&m) {
            MethodRequirement::Permission(p) => Some(p.to_string()),
            MethodRequirement::NotPermitted => None,
            MethodRequirement::Nothing => Some(String::new()),
        };
        assert_eq!(needs(Method::GET).as_deref(), Some("shop:read"));
        assert_eq!(needs(Method::HEAD).as_deref(), Some("shop:read"));
        assert_eq!(needs(Method::POST).as_deref(), Some("shop:write"));
        for m in ["PUT", "PATCH", "DELETE", "OPTIONS", "MKCOL", "PROPFIND"] {
            assert_eq!(needs(Method::from_bytes(m.as_bytes()).unwrap()), None, "{m}");
        }
        let open = RouteAccess::default();
        assert_eq!(open.requirement_for(&Method::DELETE), MethodRequirement::Nothing);
    }
}
