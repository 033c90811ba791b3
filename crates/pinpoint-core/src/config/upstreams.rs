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

/// An upstream as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    targets: Vec<Spanned<String>>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout")]
    request_timeout_ms: u64,
    #[serde(default = "default_max_fails")]
    max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    fail_timeout_ms: u64,
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
            match parse_target(t.get_ref()) {
                Ok(target) => targets.push(target),
                Err(m) => d.error(Some(t.span()), m),
            }
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
            },
        );
    }
    upstreams
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
