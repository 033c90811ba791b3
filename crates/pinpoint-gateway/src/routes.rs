//! The compiled route table: host, path prefix (on segment boundaries) and method
//! matching, longest prefix first. Built once per config revision, shared read-only.

use std::sync::Arc;

use http::Method;
use pinpoint_core::config::{AuthRequirement, RouteConfig};
use pinpoint_core::RecordedText;

use crate::upstream::Upstream;

/// A route ready for matching.
pub struct CompiledRoute {
    pub id: Arc<str>,
    /// The id as the route layer's trace entry names it (JSON form built once).
    pub trace_id: RecordedText,
    host: Option<String>,
    prefix: String,
    methods: Option<Vec<Method>>,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: bool,
    pub access: Arc<RouteAccess>,
}

/// What a route (or an API endpoint) demands of callers.
#[derive(Debug, Default)]
pub struct RouteAccess {
    pub auth: AuthRequirement,
    /// Permission per method; `None` as method means every method.
    /// Shared, so an allow can name the permission without allocating or escaping it.
    pub permissions: Vec<(Option<Method>, RecordedText)>,
    /// The organization the route belongs to.
    pub org: Option<String>,
    /// 1-based path segment after `prefix` that must equal the caller's principal id.
    pub owner_segment: Option<usize>,
    pub prefix: String,
    pub ip_allow: Vec<ipnet::IpNet>,
    pub ip_deny: Vec<ipnet::IpNet>,
}

impl RouteAccess {
    /// The permission `method` needs, if any.
    pub fn permission_for(&self, method: &Method) -> Option<&RecordedText> {
        self.permissions
            .iter()
            .find(|(m, _)| m.as_ref() == Some(method))
            .or_else(|| self.permissions.iter().find(|(m, _)| m.is_none()))
            .map(|(_, p)| p)
    }

    /// The path segment that names the resource owner, if the route has an owner rule.
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
    NotFound,
}

/// Every route of one config revision, longest prefix first.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<CompiledRoute>>,
}

impl CompiledRoute {
    pub fn new(config: &RouteConfig, upstream: Arc<Upstream>) -> Self {
        CompiledRoute {
            id: Arc::from(config.id.as_str()),
            trace_id: RecordedText::new(&config.id),
            host: config.host.clone(),
            prefix: config.path_prefix.clone(),
            methods: config.methods.clone(),
            upstream,
            strip_prefix: config.strip_prefix,
            access: Arc::new(RouteAccess {
                auth: config.auth,
                permissions: config
                    .permissions
                    .iter()
                    .map(|(m, p)| (m.clone(), RecordedText::new(p)))
                    .collect(),
                org: config.org.clone(),
                owner_segment: config.owner_segment,
                prefix: config.path_prefix.clone(),
                ip_allow: config.ip_allow.clone(),
                ip_deny: config.ip_deny.clone(),
            }),
        }
    }

    fn matches_path(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            if host != Some(want.as_str()) {
                return false;
            }
        }
        prefix_matches(&self.prefix, path)
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
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

impl RouteTable {
    pub fn new(mut routes: Vec<Arc<CompiledRoute>>) -> Self {
        // Longest prefix first; host-specific before any-host at equal length; stable
        // otherwise, so config order breaks ties.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        RouteTable { routes }
    }

    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> RouteMatch {
        let mut best: Option<&Arc<CompiledRoute>> = None;
        let mut allow: Vec<&Method> = Vec::new();
        for route in &self.routes {
            if let Some(b) = best {
                if route.prefix.len() < b.prefix.len() {
                    break;
                }
            }
            if !route.matches_path(host, path) {
                continue;
            }
            if route.allows(method) {
                return RouteMatch::Found(route.clone());
            }
            best.get_or_insert(route);
            if let Some(methods) = &route.methods {
                for m in methods {
                    if !allow.contains(&m) {
                        allow.push(m);
                    }
                }
            }
        }
        match best {
            Some(route) => RouteMatch::MethodNotAllowed {
                route_id: route.id.clone(),
                allow: allow.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
            },
            None => RouteMatch::NotFound,
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
    }
}
