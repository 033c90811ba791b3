//! Typed configuration: the TOML schema, its defaults, and validation that reports the
//! file, line and column of every mistake. Parsing is pure (a string in, a [`Config`]
//! or a [`ConfigError`] out); reading files and watching them is the gateway's job.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::verdict::Mode;

/// The built-in demo config, used when no file is given and `pinpoint.toml` is absent.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");
/// How the demo config is named as an origin (in errors and `config check`).
pub const DEMO_ORIGIN: &str = "<built-in demo>";

/// A refused config: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file (or `<built-in demo>`).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    pub message: String,
}

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
    pub rate: RateConfig,
    pub jwt: JwtConfig,
    pub keys: KeysConfig,
    pub cloudauth: CloudAuthConfig,
}

/// `[cloudauth]`: AWS identity exchange.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudAuthConfig {
    pub enabled: bool,
    /// Proofs older than this (by `X-Amz-Date`) are refused; also the replay-cache span.
    pub proof_window_seconds: i64,
    /// Send STS requests here instead of the proof's host (tests, VPC endpoints); the
    /// signed `Host` header is kept.
    pub sts_endpoint: Option<String>,
    pub allow_aws_cn: bool,
    pub allow_aws_us_gov: bool,
    /// Lifetime of tokens issued by `/api/v2/delegated-token`.
    pub token_ttl_seconds: u64,
    /// Bind a mapping to the role's (or user's) unique id on first use.
    pub bind_unique_id: bool,
    pub sts_timeout_ms: u64,
    /// Retries after a throttled or failed STS call.
    pub sts_retries: u32,
    pub exchanges_per_minute_per_org: u32,
    pub exchanges_per_minute_per_ip: u32,
    /// Managed intake keys are replaced after this long ...
    pub intake_key_rotation_seconds: u64,
    /// ... and the previous one keeps working this much longer.
    pub intake_key_overlap_seconds: u64,
}

impl Default for CloudAuthConfig {
    fn default() -> Self {
        CloudAuthConfig {
            enabled: true,
            proof_window_seconds: 300,
            sts_endpoint: None,
            allow_aws_cn: false,
            allow_aws_us_gov: false,
            token_ttl_seconds: 900,
            bind_unique_id: true,
            sts_timeout_ms: 5_000,
            sts_retries: 2,
            exchanges_per_minute_per_org: 600,
            exchanges_per_minute_per_ip: 60,
            intake_key_rotation_seconds: 24 * 3600,
            intake_key_overlap_seconds: 2 * 3600,
        }
    }
}

/// `[server]`: listeners, data directory and caller-facing links.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listener for proxied routes.
    pub proxy_listen: SocketAddr,
    /// Listener for Pinpoint's own API, `/metrics` and `/healthz`.
    pub api_listen: SocketAddr,
    /// Where the embedded store and the bootstrap admin key live.
    pub data_dir: PathBuf,
    /// Where docs/reasons.md is published; problem `type` links point into it. The default
    /// is served by the proxy listener itself.
    pub reasons_url: String,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout_ms: u64,
    /// How often the config file is checked for changes (0 disables; SIGHUP still works).
    pub reload_poll_ms: u64,
    /// Largest request head (request line and every header) the proxy accepts; larger
    /// ones are refused with `request.headers_too_large` (431).
    pub max_head_bytes: usize,
    /// Largest single header line (`name: value`).
    pub max_header_bytes: usize,
    /// Most header lines one request may carry.
    pub max_headers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: PathBuf::from("./pinpoint-data"),
            reasons_url: String::from(REASONS_PATH),
            drain_timeout_ms: 10_000,
            reload_poll_ms: 1_000,
            max_head_bytes: 32 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 90,
        }
    }
}

/// Path on the proxy listener that serves the reason catalogue.
pub const REASONS_PATH: &str = "/_pinpoint/reasons";

/// `[decision_log]`: the bounded queue between the proxy and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// Decisions waiting to be written; beyond this they are dropped and counted.
    pub queue_capacity: usize,
    /// Decisions written per transaction at most.
    pub batch_size: usize,
    /// How long the writer gathers decisions before a transaction (the most a decision
    /// waits before `pinpoint explain` can see it, under light load).
    pub flush_interval_ms: u64,
    /// Decisions older than this are pruned from the store.
    pub retention_hours: u64,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            queue_capacity: 10_000,
            batch_size: 1024,
            flush_interval_ms: 50,
            retention_hours: 24 * 7,
        }
    }
}

/// `[upstreams.NAME]`: a pool of targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub targets: Vec<Target>,
    pub connect_timeout_ms: u64,
    /// Time allowed for the response head.
    pub request_timeout_ms: u64,
    /// Upstream faults within `fail_timeout_ms` that eject a target (nginx's `max_fails`).
    /// Only the upstream's own faults count: a refused or timed-out connect, no response
    /// head in time, a malformed response. A client's slow or broken body never does.
    pub max_fails: u32,
    /// The window in which `max_fails` faults eject a target, and how long an ejected
    /// target stays out (nginx's `fail_timeout`).
    pub fail_timeout_ms: u64,
}

/// One upstream target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `host:port` (HTTP/1.1, keep-alive pooled).
    Addr(String),
    /// `builtin:echo`: the echo service Pinpoint starts itself, for the demo.
    BuiltinEcho,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => f.write_str(a),
            Target::BuiltinEcho => f.write_str("builtin:echo"),
        }
    }
}

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
    /// What to do with method- and URL-override headers.
    pub override_headers: OverrideHeaders,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: u64,
    /// Time allowed for the whole request body to arrive.
    pub body_timeout_ms: u64,
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

/// Where the authentication layer looks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    /// `Authorization: Bearer <api key or JWT>`.
    Authorization,
    /// `X-API-Key: <api key>`.
    XApiKey,
    /// Datadog's pair: `DD-API-KEY` (the organization) + `DD-APPLICATION-KEY` (the principal).
    DdKeys,
}

/// `[authn]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnConfig {
    pub mode: Mode,
    pub sources: Vec<CredentialSource>,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig {
            mode: Mode::Enforce,
            sources: vec![
                CredentialSource::Authorization,
                CredentialSource::XApiKey,
                CredentialSource::DdKeys,
            ],
        }
    }
}

/// `[authz]`: the mode and the explicit deny rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzConfig {
    pub mode: Mode,
    pub deny: Vec<DenyRule>,
}

/// `[[authz.deny]]`: refuses matching callers even when a role grants the permission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub id: String,
    /// Role names; the rule applies to callers holding any of them.
    pub roles: Option<Vec<String>>,
    /// Principal ids.
    pub principals: Option<Vec<String>>,
    /// Organization ids.
    pub orgs: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_methods")]
    pub methods: Option<Vec<http::Method>>,
    pub path_prefix: Option<String>,
    pub description: Option<String>,
}

fn de_methods<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<http::Method>>, D::Error> {
    let names: Option<Vec<String>> = Option::deserialize(d)?;
    names
        .map(|names| {
            names
                .iter()
                .map(|n| parse_method(n).map_err(serde::de::Error::custom))
                .collect()
        })
        .transpose()
}

/// A method named in config: any case (matching is on the upper-case form, the only one
/// the proxy lets through), a token of letters, digits, `-` and `_`.
pub fn parse_method(name: &str) -> Result<http::Method, String> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("`{name}` is not an HTTP method (a token such as GET or POST)"));
    }
    http::Method::from_bytes(name.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{name}` is not an HTTP method"))
}

/// Whether a method list names `method`, where naming GET also names HEAD: the one rule
/// for route method lists, policy rules and deny rules (a HEAD is a GET without its body).
pub fn method_listed(list: &[http::Method], method: &http::Method) -> bool {
    list.contains(method) || (*method == http::Method::HEAD && list.contains(&http::Method::GET))
}

/// `[net]`: global IP lists and the proxies trusted to report client addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    pub mode: Mode,
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    /// Only connections from these addresses may set `X-Forwarded-For` / `Forwarded`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[cors]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub mode: Mode,
    /// Exact origins (`https://app.example.com`) or `*`.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub max_age_seconds: u64,
    pub allow_credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            mode: Mode::Enforce,
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allowed_headers: [
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "dd-api-key",
                "dd-application-key",
            ]
            .map(String::from)
            .to_vec(),
            max_age_seconds: 600,
            allow_credentials: false,
        }
    }
}

/// `[rate]`: GCRA limits and quotas.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub mode: Mode,
    pub limits: Vec<RateLimitRule>,
    pub quotas: Vec<QuotaRule>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    Key,
    Principal,
    Org,
    Route,
    ClientIp,
}

/// `[[rate.limits]]`: `requests` per `per_seconds`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    pub id: String,
    pub by: LimitKey,
    pub requests: u32,
    pub per_seconds: u32,
    pub burst: Option<u32>,
    pub routes: Option<Vec<String>>,
}

/// Quota windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// `[[rate.quotas]]`: at most `requests` per organization per calendar day or month (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub id: String,
    pub period: QuotaPeriod,
    pub requests: u64,
    /// Organization ids; `None` applies to every organization.
    pub orgs: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
}

/// `[jwt]`: tokens Pinpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    pub issuer: String,
    pub ttl_seconds: u64,
    /// A signing key signs for this long; it stays published until its last token expires.
    pub rotate_after_hours: u64,
    /// Clock skew tolerated when checking `exp`.
    pub leeway_seconds: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::from("pinpoint"),
            ttl_seconds: 900,
            rotate_after_hours: 24,
            leeway_seconds: 30,
        }
    }
}

/// `[keys]`: API-key lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// After a rotation, the old key keeps working for this long.
    pub rotation_overlap_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rotation_overlap_seconds: 24 * 3600,
        }
    }
}

/// `[policy]`: the static policy layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub rules: Vec<PolicyRule>,
}

/// `[[policy.rules]]`: an explicit deny rule. Every given condition must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub id: String,
    /// Route ids; `None` means every route.
    pub routes: Option<Vec<String>>,
    pub methods: Option<Vec<http::Method>>,
    pub path_prefix: Option<String>,
    /// Operator-side description, shown by `pinpoint explain`.
    pub description: Option<String>,
}

// ---- raw (as written) -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    decision_log: DecisionLogConfig,
    #[serde(default)]
    upstreams: BTreeMap<Spanned<String>, Spanned<RawUpstream>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    authn: AuthnConfig,
    #[serde(default)]
    authz: RawAuthz,
    #[serde(default)]
    net: NetConfig,
    #[serde(default)]
    cors: CorsConfig,
    #[serde(default)]
    rate: RateConfig,
    #[serde(default)]
    jwt: JwtConfig,
    #[serde(default)]
    keys: KeysConfig,
    #[serde(default)]
    cloudauth: CloudAuthConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    deny: Vec<Spanned<DenyRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: Spanned<u64>,
    #[serde(default = "default_request_timeout")]
    request_timeout_ms: Spanned<u64>,
    #[serde(default = "default_max_fails")]
    max_fails: Spanned<u32>,
    #[serde(default = "default_fail_timeout")]
    fail_timeout_ms: u64,
}

fn default_connect_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 1_000)
}
fn default_request_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}
fn default_max_fails() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_fail_timeout() -> u64 {
    10_000
}

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
    override_headers: OverrideHeaders,
    max_body_bytes: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    routes: Option<Vec<Spanned<String>>>,
    methods: Option<Vec<Spanned<String>>>,
    path_prefix: Option<Spanned<String>>,
    description: Option<String>,
}

// ---- parsing and validation --------------------------------------------------------

impl Config {
    /// Parses and validates `source`; `origin` names it in errors (a path or `<built-in demo>`).
    pub fn parse(source: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = |span: Range<usize>, message: String| locate(source, origin, span.start, message);
        let raw: RawConfig = toml::from_str(source).map_err(|e| {
            let start = e.span().map(|s| s.start).unwrap_or(0);
            locate(source, origin, start, e.message().trim().to_owned())
        })?;

        let d = &raw.decision_log;
        if d.queue_capacity == 0 || d.batch_size == 0 {
            return Err(at(
                find_span(source, &["[decision_log]"]),
                "decision_log.queue_capacity and batch_size must be at least 1".into(),
            ));
        }

        let server = &raw.server;
        if !(1024..=1 << 20).contains(&server.max_head_bytes)
            || !(64..=server.max_head_bytes).contains(&server.max_header_bytes)
            || !(1..=1000).contains(&server.max_headers)
        {
            return Err(at(
                find_span(source, &["[server]"]),
                "server: max_head_bytes must be 1024 to 1048576, max_header_bytes 64 to max_head_bytes, max_headers 1 to 1000".into(),
            ));
        }

        let mut upstreams = BTreeMap::new();
        for (name, up) in &raw.upstreams {
            let (name_span, name) = (name.span(), name.get_ref().clone());
            let up_span = up.span();
            let up = up.get_ref();
            if !is_identifier(&name) {
                return Err(at(
                    name_span,
                    format!("upstream name `{name}` must use only letters, digits, `-` and `_`"),
                ));
            }
            if up.targets.get_ref().is_empty() {
                return Err(at(
                    up.targets.span(),
                    format!("upstream `{name}` needs at least one target"),
                ));
            }
            let mut targets = Vec::new();
            for t in up.targets.get_ref() {
                targets.push(parse_target(t.get_ref()).map_err(|m| at(t.span(), m))?);
            }
            for (value, field) in [
                (&up.connect_timeout_ms, "connect_timeout_ms"),
                (&up.request_timeout_ms, "request_timeout_ms"),
            ] {
                if *value.get_ref() == 0 {
                    let span = if value.span().is_empty() {
                        up_span.clone()
                    } else {
                        value.span()
                    };
                    return Err(at(span, format!("{field} must be greater than 0")));
                }
            }
            if *up.max_fails.get_ref() == 0 {
                return Err(at(up.max_fails.span(), "max_fails must be at least 1".into()));
            }
            upstreams.insert(
                name,
                UpstreamConfig {
                    targets,
                    connect_timeout_ms: *up.connect_timeout_ms.get_ref(),
                    request_timeout_ms: *up.request_timeout_ms.get_ref(),
                    max_fails: *up.max_fails.get_ref(),
                    fail_timeout_ms: up.fail_timeout_ms,
                },
            );
        }

        let mut routes = Vec::new();
        let mut route_ids = HashSet::new();
        for route in &raw.routes {
            let r = route.get_ref();
            let id = r.id.get_ref().clone();
            if !is_identifier(&id) {
                return Err(at(
                    r.id.span(),
                    format!("route id `{id}` must use only letters, digits, `-` and `_`"),
                ));
            }
            if !route_ids.insert(id.clone()) {
                return Err(at(r.id.span(), format!("route id `{id}` is used twice")));
            }
            let path_prefix = validate_prefix(r.path_prefix.get_ref()).map_err(|m| at(r.path_prefix.span(), m))?;
            if !upstreams.contains_key(r.upstream.get_ref()) {
                return Err(at(
                    r.upstream.span(),
                    format!(
                        "route `{id}` names upstream `{}`, which is not defined under [upstreams]",
                        r.upstream.get_ref()
                    ),
                ));
            }
            let host = match &r.host {
                Some(h) if h.get_ref().is_empty() || h.get_ref().contains(['/', ' ']) => {
                    return Err(at(
                        h.span(),
                        format!("route `{id}`: host `{}` is not a host name", h.get_ref()),
                    ))
                }
                Some(h) => {
                    let bare = h.get_ref().trim_start_matches('[').trim_end_matches(']');
                    match crate::canonical::canonical_host(bare) {
                        Some(host) => Some(host),
                        None => {
                            return Err(at(
                                h.span(),
                                format!(
                                    "route `{id}`: host `{}` is not an address in its usual form",
                                    h.get_ref()
                                ),
                            ))
                        }
                    }
                }
                None => None,
            };
            let mut permissions: Vec<(Option<http::Method>, String)> = Vec::new();
            for (key, permission) in r.permissions.iter().flatten() {
                let m = key.get_ref();
                let method = if m == "*" {
                    None
                } else {
                    Some(parse_method(m).map_err(|e| at(key.span(), format!("permissions key: {e}, or `*`")))?)
                };
                if permissions.iter().any(|(seen, _)| *seen == method) {
                    return Err(at(
                        key.span(),
                        format!("route `{id}`: permissions name the method `{m}` twice"),
                    ));
                }
                if !is_permission(permission.get_ref()) {
                    return Err(at(
                        permission.span(),
                        format!(
                            "permission `{}` must look like `resource:action` (letters, digits, `_`, `-`, `:`, `.`)",
                            permission.get_ref()
                        ),
                    ));
                }
                permissions.push((method, permission.get_ref().clone()));
            }
            if let Some(org) = &r.org {
                if !is_uuid(org.get_ref()) {
                    return Err(at(
                        org.span(),
                        format!(
                            "route `{id}`: org must be an organization id (a UUID), not `{}`",
                            org.get_ref()
                        ),
                    ));
                }
            }
            if let Some(seg) = &r.owner_segment {
                if *seg.get_ref() == 0 {
                    return Err(at(
                        seg.span(),
                        "owner_segment counts from 1 (the first segment after the prefix)".into(),
                    ));
                }
            }
            let auth = r.auth.unwrap_or(
                if permissions.is_empty() && r.owner_segment.is_none() && r.org.is_none() {
                    AuthRequirement::None
                } else {
                    AuthRequirement::Required
                },
            );
            if auth != AuthRequirement::Required
                && (!permissions.is_empty() || r.owner_segment.is_some() || r.org.is_some())
            {
                return Err(at(
                    route.span(),
                    format!("route `{id}` sets permissions, org or owner_segment, so `auth` must be \"required\""),
                ));
            }
            let mut limits = [
                (&r.max_body_bytes, "max_body_bytes"),
                (&r.body_timeout_ms, "body_timeout_ms"),
            ]
            .into_iter()
            .map(|(value, field)| match value {
                Some(v) if *v.get_ref() == 0 => Err(at(v.span(), format!("{field} must be at least 1"))),
                Some(v) => Ok(Some(*v.get_ref())),
                None => Ok(None),
            });
            let max_body_bytes = limits.next().unwrap_or(Ok(None))?.unwrap_or(DEFAULT_MAX_BODY_BYTES);
            let body_timeout_ms = limits.next().unwrap_or(Ok(None))?.unwrap_or(DEFAULT_BODY_TIMEOUT_MS);
            let methods = match &r.methods {
                None => Some(DEFAULT_METHODS.to_vec()),
                Some(list) if list.iter().any(|m| m.get_ref() == "*") => None,
                Some(list) if list.is_empty() => {
                    return Err(at(
                        route.span(),
                        format!("route `{id}`: `methods` is empty; list methods, or [\"*\"] for any"),
                    ))
                }
                Some(_) => parse_methods(&r.methods, &at)?,
            };
            routes.push(RouteConfig {
                id,
                host,
                path_prefix,
                methods,
                upstream: r.upstream.get_ref().clone(),
                strip_prefix: r.strip_prefix,
                auth,
                org: r.org.as_ref().map(|o| o.get_ref().to_ascii_lowercase()),
                permissions,
                owner_segment: r.owner_segment.as_ref().map(|s| *s.get_ref()),
                ip_allow: r.ip_allow.clone(),
                ip_deny: r.ip_deny.clone(),
                case_insensitive: r.case_insensitive,
                allow_path_parameters: r.allow_path_parameters,
                override_headers: r.override_headers,
                max_body_bytes,
                body_timeout_ms,
            });
        }

        if routes.is_empty() {
            return Err(at(
                0..0,
                "the config defines no [[routes]], so every request would be 404 (an empty or truncated file?)".into(),
            ));
        }

        let mut rules = Vec::new();
        let mut rule_ids = HashSet::new();
        for rule in &raw.policy.rules {
            let r = rule.get_ref();
            let id = r.id.get_ref().clone();
            if !is_identifier(&id) {
                return Err(at(
                    r.id.span(),
                    format!("rule id `{id}` must use only letters, digits, `-` and `_`"),
                ));
            }
            if !rule_ids.insert(id.clone()) {
                return Err(at(r.id.span(), format!("rule id `{id}` is used twice")));
            }
            if let Some(route_refs) = &r.routes {
                for route_ref in route_refs {
                    if !route_ids.contains(route_ref.get_ref()) {
                        return Err(at(
                            route_ref.span(),
                            format!(
                                "rule `{id}` names route `{}`, which is not defined",
                                route_ref.get_ref()
                            ),
                        ));
                    }
                }
            }
            let path_prefix = match &r.path_prefix {
                Some(p) => Some(validate_prefix(p.get_ref()).map_err(|m| at(p.span(), m))?),
                None => None,
            };
            rules.push(PolicyRule {
                id,
                routes: r
                    .routes
                    .as_ref()
                    .map(|v| v.iter().map(|s| s.get_ref().clone()).collect()),
                methods: parse_methods(&r.methods, &at)?,
                path_prefix,
                description: r.description.clone(),
            });
        }

        let mut deny_rules = Vec::new();
        let mut deny_ids = HashSet::new();
        for rule in &raw.authz.deny {
            let r = rule.get_ref();
            if !is_identifier(&r.id) || !deny_ids.insert(r.id.clone()) {
                return Err(at(
                    rule.span(),
                    format!("authz deny rule id `{}` must be a unique identifier", r.id),
                ));
            }
            for route_ref in r.routes.iter().flatten() {
                if !route_ids.contains(route_ref) {
                    return Err(at(
                        rule.span(),
                        format!(
                            "authz deny rule `{}` names route `{route_ref}`, which is not defined",
                            r.id
                        ),
                    ));
                }
            }
            let mut r = r.clone();
            if let Some(p) = &r.path_prefix {
                let p = validate_prefix(p).map_err(|m| at(rule.span(), format!("authz deny rule `{}`: {m}", r.id)))?;
                r.path_prefix = Some(p);
            }
            deny_rules.push(r);
        }
        let mut limit_ids = HashSet::new();
        for limit in &raw.rate.limits {
            if !is_identifier(&limit.id) || !limit_ids.insert(limit.id.clone()) {
                return Err(at(
                    rule_span(source, "[[rate.limits]]", &limit.id),
                    format!("rate limit id `{}` must be a unique identifier", limit.id),
                ));
            }
            if limit.requests == 0 || limit.per_seconds == 0 || limit.burst == Some(0) {
                return Err(at(
                    rule_span(source, "[[rate.limits]]", &limit.id),
                    format!(
                        "rate limit `{}`: requests, per_seconds and burst must be at least 1",
                        limit.id
                    ),
                ));
            }
        }
        let rate_routes = raw.rate.limits.iter().map(|l| (&l.id, &l.routes));
        for (id, refs) in rate_routes.chain(raw.rate.quotas.iter().map(|q| (&q.id, &q.routes))) {
            for route_ref in refs.iter().flatten() {
                if !route_ids.contains(route_ref) {
                    let rule = rule_span(source, "[[rate.", id);
                    let span = find_span(&source[rule.start..], &[&format!("\"{route_ref}\"")]);
                    let span = if span.is_empty() {
                        rule
                    } else {
                        rule.start + span.start..rule.start + span.end
                    };
                    return Err(at(
                        span,
                        format!("rate limit or quota `{id}` names route `{route_ref}`, which is not defined"),
                    ));
                }
            }
        }
        for quota in &raw.rate.quotas {
            if !is_identifier(&quota.id) || !limit_ids.insert(quota.id.clone()) {
                return Err(at(
                    rule_span(source, "[[rate.quotas]]", &quota.id),
                    format!("quota id `{}` must be a unique identifier", quota.id),
                ));
            }
        }
        for origin in &raw.cors.allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(at(
                    find_span(source, &["[cors]", &format!("\"{origin}\"")]),
                    format!("cors origin `{origin}` must be `*` or start with http:// or https://"),
                ));
            }
        }
        if raw.jwt.ttl_seconds == 0 || raw.jwt.rotate_after_hours == 0 {
            return Err(at(
                find_span(source, &["[jwt]"]),
                "jwt.ttl_seconds and jwt.rotate_after_hours must be at least 1".into(),
            ));
        }

        Ok(Config {
            revision: revision_of(source),
            origin: origin.to_owned(),
            server: raw.server,
            decision_log: raw.decision_log,
            upstreams,
            routes,
            policy: PolicyConfig {
                mode: raw.policy.mode,
                rules,
            },
            authn: raw.authn,
            authz: AuthzConfig {
                mode: raw.authz.mode,
                deny: deny_rules,
            },
            net: raw.net,
            cors: raw.cors,
            rate: raw.rate,
            jwt: raw.jwt,
            keys: raw.keys,
            cloudauth: raw.cloudauth,
        })
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
    let mut out = String::from("r");
    for b in &digest[..6] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Where a value without a span of its own stands in the source: each needle is looked
/// for after the one before, and the last one's place is the span (`0..0`, the file's
/// start, when one is missing). For errors in sections read without spans.
fn find_span(source: &str, needles: &[&str]) -> Range<usize> {
    let mut from = 0;
    let mut span = 0..0;
    for needle in needles {
        match source.get(from..).and_then(|rest| rest.find(needle)) {
            Some(at) => {
                span = from + at..from + at + needle.len();
                from = span.end;
            }
            None => return span,
        }
    }
    span
}

/// The `id = "..."` line of an array-of-tables entry (`[[rate.limits]]`, say).
fn rule_span(source: &str, table: &str, id: &str) -> Range<usize> {
    let mut from = 0;
    while let Some(at) = source.get(from..).and_then(|rest| rest.find(table)) {
        let start = from + at;
        let id_span = find_span(&source[start..], &["id", &format!("\"{id}\"")]);
        if !id_span.is_empty() {
            let entry_end = source[start + table.len()..]
                .find("[[")
                .map_or(source.len(), |n| start + table.len() + n);
            if start + id_span.start < entry_end {
                return start + id_span.start..start + id_span.end;
            }
        }
        from = start + table.len();
    }
    find_span(source, &[table])
}

fn locate(source: &str, origin: &str, offset: usize, message: String) -> ConfigError {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    ConfigError {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// Whether `s` is a permission name like `orders:write`.
pub fn is_permission(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'*'))
}

/// Whether `s` is a UUID in its hyphenated form.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A path prefix as routes and rules match it: canonical, without a trailing slash.
fn validate_prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("path_prefix `{p}` must start with `/`"));
    }
    if p.contains(['?', '#', ' ']) {
        return Err(format!(
            "path_prefix `{p}` must be a plain path (no `?`, `#` or spaces)"
        ));
    }
    match crate::canonical::canonical_path(p) {
        Ok(canonical) if canonical == p => {}
        Ok(canonical) => {
            return Err(format!(
                "path_prefix `{p}` is not in canonical form; write `{canonical}` (requests are matched after canonicalisation)"
            ))
        }
        Err(refusal) => return Err(format!("path_prefix `{p}`: {}", refusal.detail)),
    }
    // `/orders/` and `/orders` mean the same prefix.
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        String::from("/")
    } else {
        trimmed.to_owned()
    })
}

fn parse_methods(
    methods: &Option<Vec<Spanned<String>>>,
    at: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<Vec<http::Method>>, ConfigError> {
    let Some(methods) = methods else { return Ok(None) };
    let mut out = Vec::new();
    for m in methods {
        let method = parse_method(m.get_ref()).map_err(|e| at(m.span(), e))?;
        if !out.contains(&method) {
            out.push(method);
        }
    }
    Ok(Some(out))
}

fn parse_target(t: &str) -> Result<Target, String> {
    if t == "builtin:echo" {
        return Ok(Target::BuiltinEcho);
    }
    if t.contains("://") {
        return Err(format!("target `{t}` must be `host:port` (HTTP), without a scheme"));
    }
    let (host, port) = t
        .rsplit_once(':')
        .ok_or_else(|| format!("target `{t}` must be `host:port` or `builtin:echo`"))?;
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!("target `{t}` must be `host:port` with a port from 1 to 65535"));
    }
    Ok(Target::Addr(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let c = Config::demo();
        assert!(!c.routes.is_empty());
        assert!(c.revision.starts_with('r') && c.revision.len() == 13);
    }

    #[test]
    fn errors_name_line_and_column() {
        let src = "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"nope\"\n";
        let e = Config::parse(src, "t.toml").unwrap_err();
        assert_eq!((e.line, e.column), (7, 12), "{e}");
        assert!(
            e.to_string()
                .starts_with("t.toml:7:12: route `x` names upstream `nope`"),
            "{e}"
        );

        let e = Config::parse("[server]\nproxy_listen = \"nope\"\n", "t.toml").unwrap_err();
        assert_eq!(e.line, 2, "{e}");

        let e = Config::parse("[server]\nbogus = 1\n", "t.toml").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("bogus"), "{e}");

        let e = Config::parse("[upstreams.a]\ntargets = [\"http://x:1\"]\n", "t.toml").unwrap_err();
        assert_eq!((e.line, e.column), (2, 12), "{e}");

        let e = Config::parse("[[routes]\n", "t.toml").unwrap_err();
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
        assert!(Config::parse(&bad, "t")
            .unwrap_err()
            .message
            .contains("not an HTTP method"));
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
    fn errors_in_sections_read_without_spans_still_name_their_line() {
        let base = "[upstreams.a]\ntargets = [\"localhost:9\"]\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"a\"\n";
        let cases = [
            ("[jwt]\nttl_seconds = 0\n", 7),
            ("[cors]\nallowed_origins = [\"ftp://a\"]\n", 8),
            ("[decision_log]\nbatch_size = 0\n", 7),
            (
                "[[rate.limits]]\nid = \"l1\"\nby = \"key\"\nrequests = 0\nper_seconds = 1\n",
                8,
            ),
            (
                "[[rate.limits]]\nid = \"l1\"\nby = \"key\"\nrequests = 1\nper_seconds = 1\nroutes = [\"nope\"]\n",
                12,
            ),
        ];
        for (extra, line) in cases {
            let e = Config::parse(&format!("{base}{extra}"), "t.toml").unwrap_err();
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
    }

    #[test]
    fn revision_depends_on_content_only() {
        assert_eq!(revision_of("a"), revision_of("a"));
        assert_ne!(revision_of("a"), revision_of("b"));
    }
}
