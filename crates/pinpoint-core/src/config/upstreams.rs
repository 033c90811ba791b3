//! `[upstreams.NAME]`: pools of targets, their timeouts and passive health settings.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};
use super::names::is_identifier;

/// `[upstreams.NAME]`: a pool of targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub targets: Vec<WeightedTarget>,
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
    /// How a request's target is chosen among the available ones.
    pub balance: Balance,
    /// Active health checks, beside the passive ones (absent: passive only).
    pub health_check: Option<HealthCheck>,
    /// For `https://` targets: which CA, which name, which client certificate.
    pub tls: UpstreamTls,
    /// Speak HTTP/2 to `http://` targets (prior knowledge). `https://` targets use HTTP/2
    /// whenever they offer it by ALPN.
    pub http2: bool,
}

/// One target and its share of requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTarget {
    pub target: Target,
    /// Relative share under `round_robin` (1 to 100; default 1).
    pub weight: u32,
}

/// One upstream target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `host:port` or `http://host:port`: plain HTTP.
    Http(String),
    /// `https://host[:port]` (port 443 by default): TLS with rustls.
    Https(String),
    /// `builtin:echo`: the echo service Pinpoint starts itself, for the demo.
    BuiltinEcho,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Http(a) => f.write_str(a),
            Target::Https(a) => write!(f, "https://{a}"),
            Target::BuiltinEcho => f.write_str("builtin:echo"),
        }
    }
}

/// `balance`: how a target is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin (nginx's smooth variant: weights interleave).
    #[default]
    RoundRobin,
    /// The available target with the fewest requests in flight (ties in turn).
    LeastConnections,
}

/// `[upstreams.NAME.health_check]`: each target is asked `GET path` every `interval_ms`;
/// a 2xx or 3xx within `timeout_ms` is a pass. `unhealthy_threshold` failures in a row take
/// a target out, `healthy_threshold` passes in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default = "default_check_path")]
    pub path: String,
    #[serde(default = "default_check_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_check_path() -> String {
    String::from("/")
}
fn default_check_interval() -> u64 {
    2_000
}
fn default_check_timeout() -> u64 {
    1_000
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// `[upstreams.NAME.tls]`: how `https://` targets are verified and what Pinpoint shows
/// them. Relative paths are taken from the config file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// CA certificates (PEM) the targets' certificates must chain to; absent: the system's
    /// trusted roots.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// The name sent as SNI and verified in the certificate; absent: the target's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain and key (PEM) for targets that ask for one.
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
}

impl UpstreamTls {
    /// Makes relative paths relative to `dir`.
    pub fn resolve_relative_to(&mut self, dir: &std::path::Path) {
        for path in [&mut self.ca, &mut self.client_cert, &mut self.client_key]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }
}

/// An upstream as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    targets: Vec<Spanned<toml::Value>>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout")]
    request_timeout_ms: u64,
    #[serde(default = "default_max_fails")]
    max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    fail_timeout_ms: u64,
    #[serde(default)]
    balance: Balance,
    #[serde(default)]
    health_check: Option<HealthCheck>,
    #[serde(default)]
    tls: UpstreamTls,
    #[serde(default)]
    http2: bool,
}

fn default_connect_timeout() -> u64 {
    1_000
}
fn default_request_timeout() -> u64 {
    30_000
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> u64 {
    10_000
}

/// The names `[upstreams]` declares, whether or not each one is valid (so a route naming
/// a broken upstream is not also reported as naming a missing one).
pub(super) fn declared(item: &Item) -> Vec<String> {
    item.as_table_like()
        .map(|t| t.iter().map(|(name, _)| name.to_owned()).collect())
        .unwrap_or_default()
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> BTreeMap<String, UpstreamConfig> {
    let mut upstreams = BTreeMap::new();
    if item.is_none() {
        return upstreams;
    }
    let Some(table) = item.as_table_like() else {
        d.error(
            item.span(),
            "upstreams must be a table of named pools ([upstreams.NAME])",
        );
        return upstreams;
    };
    for (name, entry) in table.iter() {
        let name_span = table.key(name).and_then(|k| k.span());
        if !is_identifier(name) {
            d.error(
                name_span.clone().or(entry.span()),
                format!("upstream name `{name}` must use only letters, digits, `-` and `_`"),
            );
        }
        let Some(up) = d.read::<RawUpstream>(entry) else {
            continue;
        };
        let at = |field: &str| place(&[entry.get(field), Some(entry)]).or(name_span.clone());
        if up.targets.is_empty() {
            d.error(at("targets"), format!("upstream `{name}` needs at least one target"));
        }
        let mut targets = Vec::new();
        for t in &up.targets {
            match weighted_target(t.get_ref()) {
                Ok(target) => targets.push(target),
                Err(m) => d.error(Some(t.span()), m),
            }
        }
        if let Some(check) = &up.health_check {
            let at_check = || place(&[entry.get("health_check"), Some(entry)]);
            if !check.path.starts_with('/') {
                d.error(at_check(), "health_check.path must start with `/`");
            }
            if check.interval_ms < 100 || check.timeout_ms == 0 || check.timeout_ms > check.interval_ms {
                d.error(
                    at_check(),
                    "health_check needs interval_ms of at least 100 and timeout_ms from 1 to interval_ms",
                );
            }
            if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
                d.error(at_check(), "health_check thresholds must be at least 1");
            }
        }
        if up.tls.client_cert.is_some() != up.tls.client_key.is_some() {
            d.error(at("tls"), "tls.client_cert and tls.client_key go together");
        }
        for (value, field) in [
            (up.connect_timeout_ms, "connect_timeout_ms"),
            (up.request_timeout_ms, "request_timeout_ms"),
        ] {
            if value == 0 {
                d.error(at(field), format!("{field} must be greater than 0"));
            }
        }
        if up.max_fails == 0 {
            d.error(at("max_fails"), "max_fails must be at least 1");
        }
        upstreams.insert(
            name.to_owned(),
            UpstreamConfig {
                targets,
                connect_timeout_ms: up.connect_timeout_ms,
                request_timeout_ms: up.request_timeout_ms,
                max_fails: up.max_fails,
                fail_timeout_ms: up.fail_timeout_ms,
                balance: up.balance,
                health_check: up.health_check,
                tls: up.tls,
                http2: up.http2,
            },
        );
    }
    upstreams
}

/// A target as written: `"host:port"`, `"http://host:port"`, `"https://host[:port]"`,
/// `"builtin:echo"`, or `{ target = "...", weight = N }`.
fn weighted_target(value: &toml::Value) -> Result<WeightedTarget, String> {
    match value {
        toml::Value::String(t) => Ok(WeightedTarget {
            target: parse_target(t)?,
            weight: 1,
        }),
        toml::Value::Table(table) => {
            if let Some(unknown) = table.keys().find(|k| *k != "target" && *k != "weight") {
                return Err(format!(
                    "unknown field `{unknown}` in a target (expected `target`, `weight`)"
                ));
            }
            let target = table
                .get("target")
                .and_then(toml::Value::as_str)
                .ok_or("a target table needs `target = \"host:port\"`")?;
            let weight = match table.get("weight") {
                None => 1,
                Some(w) => w
                    .as_integer()
                    .filter(|w| (1..=100).contains(w))
                    .ok_or("a target's weight must be a whole number from 1 to 100")? as u32,
            };
            Ok(WeightedTarget {
                target: parse_target(target)?,
                weight,
            })
        }
        _ => Err(String::from(
            "a target is a string (`\"host:port\"`) or a table (`{ target, weight }`)",
        )),
    }
}

fn parse_target(t: &str) -> Result<Target, String> {
    if t == "builtin:echo" {
        return Ok(Target::BuiltinEcho);
    }
    let (https, rest) = match t.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "target `{t}`: the scheme must be http or https, not `{scheme}`"
            ))
        }
        None => (false, t),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "target `{t}` must be a scheme, host and port only (no path or user)"
        ));
    }
    let authority = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
                return Err(format!("target `{t}` must have a host and a port from 1 to 65535"));
            }
            rest.to_owned()
        }
        _ if https && !rest.is_empty() => format!("{rest}:443"),
        _ => {
            return Err(format!(
                "target `{t}` must be `host:port`, `https://host` or `builtin:echo`"
            ))
        }
    };
    Ok(if https {
        Target::Https(authority)
    } else {
        Target::Http(authority)
    })
}
