//! Typed configuration: the TOML schema, its defaults, and validation that reports the
//! file, line and column of every mistake, all of a file's mistakes at once. Parsing is
//! pure (a string in, a [`Config`] or [`ConfigErrors`] out); reading files and watching
//! them is the gateway's job.
//!
//! One module per section owns that section's types, how it is read and how it is
//! validated; this module parses the document, hands each section its part, passes on
//! the names sections refer to (upstreams, route ids), and gathers the errors.
//! [`diagnostics`] turns places into `file:line:column`; [`names`] holds the forms of
//! methods, ids and prefixes that several sections share.

mod alerts;
mod authn;
mod authz;
mod cloudauth;
mod cluster;
mod cors;
mod csrf;
mod decision_log;
mod diagnostics;
mod jwt;
mod keys;
mod names;
mod net;
mod policy;
mod rate;
pub mod reference;
mod routes;
mod server;
mod store;
mod upstreams;
mod waf;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use alerts::{AlertRule, AlertingConfig, Baseline, WebhookConfig, WebhookFormat};
pub use authn::ClientCertIdentity;
pub use authn::{AuthnConfig, CredentialSource};
pub use authz::{AuthzConfig, DenyRule};
pub use cloudauth::CloudAuthConfig;
pub use cluster::ClusterConfig;
pub use cors::CorsConfig;
pub use csrf::{CsrfConfig, CsrfGuard};
pub use decision_log::{DecisionLogConfig, SampleRate};
pub use diagnostics::{ConfigError, ConfigErrors};
pub use jwt::JwtConfig;
pub use keys::KeysConfig;
pub use names::{is_permission, is_uuid, method_listed, parse_method};
pub use net::NetConfig;
pub use policy::{PolicyConfig, PolicyRule};
pub use rate::{LimitKey, OnBackendError, QuotaPeriod, QuotaRule, RateConfig, RateLimitRule};
pub use routes::{
    AuthRequirement, OverrideHeaders, RouteConfig, DEFAULT_BODY_TIMEOUT_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_METHODS,
};
pub use server::{CertificateFiles, MetricsAccess, ServerConfig, TlsConfig, REASONS_PATH};
pub use store::StoreConfig;
pub use upstreams::{Balance, HealthCheck, Target, UpstreamConfig, UpstreamTls, WeightedTarget};
pub use waf::{RouteWaf, WafConfig, WafEngineKind, WafExclusion, STRUCTURED_HEADERS, WAF_FAMILIES};

use diagnostics::Diagnostics;

/// The built-in demo config, used when no file is given and `pinpoint.toml` is absent.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");
/// How the demo config is named as an origin (in errors and `config check`).
pub const DEMO_ORIGIN: &str = "<built-in demo>";

/// The top-level sections a config may have.
const SECTIONS: [&str; 19] = [
    "server",
    "decision_log",
    "upstreams",
    "routes",
    "policy",
    "authn",
    "authz",
    "net",
    "cors",
    "csrf",
    "waf",
    "rate",
    "jwt",
    "keys",
    "cloudauth",
    "alerting",
    "alerts",
    "cluster",
    "store",
];

/// A validated config and the revision id that names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Content hash of the source text: `r` + 12 hex digits. The same text always gets
    /// the same revision.
    pub revision: String,
    /// Where it came from.
    pub origin: String,
    pub server: ServerConfig,
    pub decision_log: DecisionLogConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub policy: PolicyConfig,
    pub authn: AuthnConfig,
    pub authz: AuthzConfig,
    pub net: NetConfig,
    pub cors: CorsConfig,
    pub csrf: CsrfConfig,
    pub waf: WafConfig,
    pub rate: RateConfig,
    pub jwt: JwtConfig,
    pub keys: KeysConfig,
    pub cloudauth: CloudAuthConfig,
    pub alerting: AlertingConfig,
    pub alerts: Vec<AlertRule>,
    pub cluster: ClusterConfig,
    pub store: StoreConfig,
}

impl Config {
    /// Parses and validates `source`; `origin` names it in errors (a path or `<built-in
    /// demo>`). A file that is not TOML is refused at its first syntax error; otherwise
    /// every mistake in every section is reported, in file order.
    pub fn parse(source: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let document = toml_edit::ImDocument::parse(source)
            .map_err(|e| Diagnostics::fatal(source, origin, e.span(), e.message()))?;
        let root = document.as_item();
        let mut d = Diagnostics::new(source, origin);
        if let Some(table) = root.as_table_like() {
            for (name, item) in table.iter() {
                if !SECTIONS.contains(&name) {
                    let span = table.key(name).and_then(|k| k.span()).or(item.span());
                    d.error(
                        span,
                        format!("unknown section `{name}`, expected one of: {}", SECTIONS.join(", ")),
                    );
                }
            }
        }
        let section = |name: &str| root.get(name).unwrap_or(&toml_edit::Item::None);

        let server = server::read(section("server"), &mut d);
        let decision_log = decision_log::read(section("decision_log"), &mut d);
        let upstream_names = upstreams::declared(section("upstreams"));
        let upstreams = upstreams::read(section("upstreams"), &mut d);
        let route_ids = routes::declared(section("routes"));
        let routes = routes::read(section("routes"), &mut d, &upstream_names);
        let policy = policy::read(section("policy"), &mut d, &route_ids);
        let authn = authn::read(section("authn"), &mut d);
        let authz = authz::read(section("authz"), &mut d, &route_ids);
        let net = net::read(section("net"), &mut d);
        let cors = cors::read(section("cors"), &mut d);
        let csrf = csrf::read(section("csrf"), &mut d);
        let waf = waf::read(section("waf"), &mut d, &route_ids);
        let rate = rate::read(section("rate"), &mut d, &route_ids);
        let jwt = jwt::read(section("jwt"), &mut d);
        let keys = keys::read(section("keys"), &mut d);
        let cloudauth = cloudauth::read(section("cloudauth"), &mut d);
        let alerting = alerts::read_alerting(section("alerting"), &mut d);
        let webhooks = alerts::declared_webhooks(section("alerting"));
        let alert_rules = alerts::read_rules(section("alerts"), &mut d, &route_ids, &webhooks);
        let cluster = cluster::read(section("cluster"), &mut d);
        let store = store::read(section("store"), &mut d);

        // Every reader has reported into `d`; a section missing here had an error there.
        let config = (|| {
            Some(Config {
                revision: revision_of(source),
                origin: origin.to_owned(),
                server: server?,
                decision_log: decision_log?,
                upstreams,
                routes,
                policy,
                authn: authn?,
                authz,
                net: net?,
                cors: cors?,
                csrf: csrf?,
                waf: waf?,
                rate: rate?,
                jwt: jwt?,
                keys: keys?,
                cloudauth: cloudauth?,
                alerting: alerting?,
                alerts: alert_rules,
                cluster: cluster?,
                store: store?,
            })
        })();
        match d.finish(config)? {
            Some(config) => Ok(config),
            // A reader returned nothing without saying why: refuse rather than guess.
            None => Err(Diagnostics::fatal(source, origin, None, "the config could not be read")),
        }
    }

    /// What `pinpoint config check` points out in a valid config: routes whose permission
    /// map leaves methods the route accepts unnamed (they are refused, which may surprise),
    /// and routes that authenticate but require no permission of anyone.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for route in &self.routes {
            let id = &route.id;
            if route.permissions.is_empty() {
                if route.auth == AuthRequirement::Required && route.org.is_none() && route.owner_segment.is_none() {
                    out.push(format!(
                        "route `{id}` requires authentication but no permission: any authenticated caller, of any organization, may use every method it accepts"
                    ));
                }
                continue;
            }
            if route.permissions.iter().any(|(m, _)| m.is_none()) {
                continue;
            }
            let named: Vec<http::Method> = route.permissions.iter().filter_map(|(m, _)| m.clone()).collect();
            match &route.methods {
                None => out.push(format!(
                    "route `{id}` accepts every method but its permissions name only {}: every other method is refused with authz.method_not_permitted (add `\"*\" = \"...\"` or narrow `methods`)",
                    join_methods(&named)
                )),
                Some(accepted) => {
                    let open: Vec<http::Method> =
                        accepted.iter().filter(|m| !method_listed(&named, m)).cloned().collect();
                    if !open.is_empty() {
                        out.push(format!(
                            "route `{id}` accepts {} but its permissions do not name them: they are refused with authz.method_not_permitted (name them, add `\"*\"`, or narrow `methods`)",
                            join_methods(&open)
                        ));
                    }
                }
            }
        }
        // A rule limited to routes and to a path none of them serves never applies.
        let rules = self
            .policy
            .rules
            .iter()
            .map(|r| ("policy rule", &r.id, &r.routes, &r.path_prefix));
        let denies = self
            .authz
            .deny
            .iter()
            .map(|r| ("authz deny rule", &r.id, &r.routes, &r.path_prefix));
        for (what, id, routes, path_prefix) in rules.chain(denies) {
            let (Some(routes), Some(prefix)) = (routes, path_prefix) else {
                continue;
            };
            let overlaps = |route: &RouteConfig| {
                let (a, b) = match route.case_insensitive {
                    true => (prefix.to_ascii_lowercase(), route.path_prefix.to_ascii_lowercase()),
                    false => (prefix.clone(), route.path_prefix.clone()),
                };
                let under = |outer: &str, inner: &str| {
                    let outer = outer.trim_end_matches('/');
                    inner
                        .strip_prefix(outer)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                };
                under(&b, &a) || under(&a, &b)
            };
            let named: Vec<&RouteConfig> = self.routes.iter().filter(|r| routes.contains(&r.id)).collect();
            if !named.is_empty() && !named.iter().any(|r| overlaps(r)) {
                out.push(format!(
                    "{what} `{id}`: its path_prefix `{prefix}` is outside every route it names, so it never applies (rules match the path as sent, before strip_prefix)"
                ));
            }
        }
        out
    }

    /// The built-in demo config.
    pub fn demo() -> Config {
        match Config::parse(DEMO_CONFIG, DEMO_ORIGIN) {
            Ok(config) => config,
            // The demo is a compile-time constant covered by a unit test.
            Err(e) => panic!("built-in demo config is invalid: {e}"),
        }
    }
}

fn join_methods(methods: &[http::Method]) -> String {
    methods.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ")
}

/// The revision id of a config text.
pub fn revision_of(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    format!("r{}", crate::hex::lower(&digest[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first error of a config that must be refused, passing over the missing-routes
    /// one when there are others (most fragments here define no routes).
    fn first_error(src: &str) -> ConfigError {
        let errors = Config::parse(src, "t.toml").unwrap_err();
        let mut all = errors.errors().iter();
        let first = all.next().unwrap().clone();
        match all.next() {
            Some(next) if first.message.contains("no [[routes]]") => next.clone(),
            _ => first,
        }
    }

    #[test]
    fn demo_config_is_valid() {
        let c = Config::demo();
        assert!(!c.routes.is_empty());
        assert!(c.revision.starts_with('r') && c.revision.len() == 13);
    }

    #[test]
    fn errors_name_line_and_column() {
        let src = "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"nope\"\n";
        let e = first_error(src);
        assert_eq!((e.line, e.column), (7, 12), "{e}");
        assert!(
            e.to_string()
                .starts_with("t.toml:7:12: route `x` names upstream `nope`"),
            "{e}"
        );

        let e = first_error("[server]\nproxy_listen = \"nope\"\n");
        assert_eq!(e.line, 2, "{e}");

        let e = first_error("[server]\nbogus = 1\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("bogus"), "{e}");

        let e = first_error("[upstreams.a]\ntargets = [\"ftp://x:1\"]\n");
        assert_eq!((e.line, e.column), (2, 12), "{e}");

        let e = first_error("[[routes]\n");
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn prefixes_and_methods_are_normalised() {
        let src = "[upstreams.a]\ntargets = [\"localhost:9\"]\n[[routes]]\nid = \"x\"\npath_prefix = \"/x/\"\nmethods = [\"GET\", \"GET\"]\nupstream = \"a\"\n";
        let c = Config::parse(src, "t").unwrap();
        assert_eq!(c.routes[0].path_prefix, "/x");
        assert_eq!(c.routes[0].methods.as_deref(), Some(&[http::Method::GET][..]));
        // Methods in config may be written in any case; requests may not.
        let lower = src.replace("\"GET\", \"GET\"", "\"get\", \"Post\"");
        let c = Config::parse(&lower, "t").unwrap();
        assert_eq!(
            c.routes[0].methods.as_deref(),
            Some(&[http::Method::GET, http::Method::POST][..])
        );
        let bad = src.replace("\"GET\", \"GET\"", "\"G ET\"");
        assert!(first_error(&bad).message.contains("not an HTTP method"));
        // No list: the standard methods; `*`: every method.
        let c = Config::parse(&src.replace("methods = [\"GET\", \"GET\"]\n", ""), "t").unwrap();
        assert_eq!(c.routes[0].methods.as_deref(), Some(&DEFAULT_METHODS[..]));
        let c = Config::parse(&src.replace("\"GET\", \"GET\"", "\"*\""), "t").unwrap();
        assert_eq!(c.routes[0].methods, None);
        // Prefixes are matched against canonical paths, so they must be canonical.
        for prefix in ["/x//y", "/x/../y", "/%78", "/a%2fb", "/a\\\\b"] {
            let bad = src.replace("\"/x/\"", &format!("\"{prefix}\""));
            assert!(Config::parse(&bad, "t").is_err(), "{prefix}");
        }
    }

    #[test]
    fn errors_point_at_the_value_at_fault() {
        let base = "[upstreams.a]\ntargets = [\"localhost:9\"]\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"a\"\n";
        let cases = [
            ("[jwt]\nttl_seconds = 0\n", 8),
            ("[cors]\nallowed_origins = [\"ftp://a\"]\n", 8),
            ("[cors]\nallowed_origins = [\"https://app.example/\"]\n", 8),
            ("[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n", 9),
            ("[csrf]\ntrusted_origins = [\"https://a.example/x\"]\n", 8),
            ("[decision_log]\nbatch_size = 0\n", 8),
            (
                "[[rate.limits]]\nid = \"l1\"\nby = \"key\"\nrequests = 0\nper_seconds = 1\n",
                10,
            ),
            (
                "[[rate.limits]]\nid = \"l1\"\nby = \"key\"\nrequests = 1\nper_seconds = 1\nroutes = [\"nope\"]\n",
                12,
            ),
        ];
        for (extra, line) in cases {
            let e = first_error(&format!("{base}{extra}"));
            assert_eq!(e.line, line, "{extra}: {e}");
        }
    }

    #[test]
    fn config_check_warns_about_methods_a_permission_map_leaves_out() {
        let warnings = Config::demo().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("route `shop` accepts PUT, PATCH, DELETE, OPTIONS"),
            "{warnings:?}"
        );
        let src = "[upstreams.a]\ntargets = [\"localhost:9\"]\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nmethods = [\"*\"]\nupstream = \"a\"\npermissions = { GET = \"x:read\" }\n";
        let warnings = Config::parse(src, "t").unwrap().warnings();
        assert!(warnings[0].contains("accepts every method"), "{warnings:?}");
        let open = src.replace("GET = \"x:read\"", "GET = \"x:read\", \"*\" = \"x:admin\"");
        assert!(Config::parse(&open, "t").unwrap().warnings().is_empty());
        let outside = format!(
            "{open}\n[[policy.rules]]\nid = \"nowhere\"\nroutes = [\"{}\"]\npath_prefix = \"/elsewhere/x\"\n",
            Config::parse(&open, "t").unwrap().routes[0].id
        );
        let warnings = Config::parse(&outside, "t").unwrap().warnings();
        assert!(
            warnings.len() == 1 && warnings[0].contains("policy rule `nowhere`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn every_mistake_in_a_file_is_reported_at_once_in_file_order() {
        let src = "[server]\nmax_headers = 0\n\n[upstreams.a]\ntargets = [\"ftp://x:1\"]\n\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"nope\"\n\n[[routes]]\nid = \"y\"\npath_prefix = \"/y\"\nupstream = \"a\"\nauth = \"maybe\"\n\n[[policy.rules]]\nid = \"r\"\nroutes = [\"gone\"]\n\n[jwt]\nttl_seconds = 0\n\n[cors]\nallowed_origins = [\"https://ok\", \"ftp://a\"]\n";
        let errors = Config::parse(src, "t.toml").unwrap_err();
        let found: Vec<(usize, usize, &str)> = errors
            .errors()
            .iter()
            .map(|e| (e.line, e.column, e.message.as_str()))
            .collect();
        let expected = [
            (2, 15, "server.max_headers"),
            (5, 12, "target `ftp://x:1`"),
            (10, 12, "names upstream `nope`"),
            (16, 8, "unknown variant `maybe`"),
            (20, 11, "names route `gone`"),
            (23, 15, "jwt.ttl_seconds"),
            (26, 34, "cors origin `ftp://a`"),
        ];
        assert_eq!(found.len(), expected.len(), "{errors}");
        for ((line, column, message), (want_line, want_column, want)) in found.iter().zip(expected) {
            assert_eq!((*line, *column), (want_line, want_column), "{errors}");
            assert!(message.contains(want), "{message} lacks {want}");
        }
        // One per line, each with its place.
        assert_eq!(errors.to_string().lines().count(), expected.len());
        assert!(errors.to_string().lines().all(|l| l.starts_with("t.toml:")));
        // An unknown section is named as such; a broken upstream is not also "undefined".
        let e = first_error("[sever]\nproxy_listen = \"127.0.0.1:1\"\n[upstreams.a]\ntargets = [\"x\"]\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"a\"\n");
        assert!(e.message.contains("unknown section `sever`"), "{e}");
        let errors = Config::parse(
            "[upstreams.a]\ntargets = [\"x\"]\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"a\"\n",
            "t",
        )
        .unwrap_err();
        assert_eq!(errors.errors().len(), 1, "{errors}");
    }

    #[test]
    fn a_value_that_cannot_be_read_does_not_hide_the_next_one() {
        let base = "[upstreams.a]\ntargets = [\"localhost:9\"]\n";
        let route = "[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"a\"\n";
        let cases = [
            (
                format!("{base}{route}[server]\nmax_headers = 0\nmax_head_bytes = 10\ndrain_timeout_ms = -5\n"),
                vec![(8, 15), (9, 18), (10, 20)],
            ),
            (
                format!("{base}{route}[net]\nallow = [\"10.0.0.0/33\", \"notacidr\"]\n"),
                vec![(8, 10), (8, 25)],
            ),
            (
                format!("{base}[[routes]]\nid = \"z\"\npath_prefix = \"/z\"\nupstream = \"zz\"\nauth = \"maybe\"\n"),
                vec![(6, 12), (7, 8)],
            ),
            (
                format!("{base}{route}[server]\ndrain_timeout_ms = -5\nreload_poll_ms = \"x\"\ntypo_field = 1\n"),
                vec![(8, 20), (9, 18), (10, 1)],
            ),
        ];
        for (src, expected) in cases {
            let errors = Config::parse(&src, "t.toml").unwrap_err();
            let found: Vec<(usize, usize)> = errors.errors().iter().map(|e| (e.line, e.column)).collect();
            assert_eq!(found, expected, "{src}\n{errors}");
        }
        // A parser's message on several lines is one line here.
        let errors = Config::parse("x = [1,\n", "t.toml").unwrap_err();
        assert_eq!(errors.to_string().lines().count(), 1, "{errors}");
    }

    #[test]
    fn revision_depends_on_content_only() {
        assert_eq!(revision_of("a"), revision_of("a"));
        assert_ne!(revision_of("a"), revision_of("b"));
    }
}
