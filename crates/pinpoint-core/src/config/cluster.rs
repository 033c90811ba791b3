//! `[cluster]`: what replicas share beyond the store. With `redis`, rate limits, quotas,
//! the cloud-auth proof replay cache and replica heartbeats live in Redis, so every
//! replica counts against the same budgets. Read at start (a reload keeps the running
//! connection).

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};

/// `[cluster]`: shared counters and caches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` (or `redis+unix://`); none keeps everything
    /// in the process.
    pub redis: Option<String>,
    /// Prepended to every Redis key, so deployments (or tests) can share a server.
    pub key_prefix: String,
    /// The longest one Redis round trip may take before the state counts as unreachable.
    pub timeout_ms: u64,
    /// This replica's name in heartbeats and `pinpoint cluster status` (default: the host
    /// name and the process id).
    pub replica_name: Option<String>,
    /// How often this replica writes its heartbeat; one older than three of these is gone.
    pub heartbeat_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            key_prefix: "pinpoint:".into(),
            timeout_ms: 250,
            replica_name: None,
            heartbeat_ms: 1000,
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<ClusterConfig> {
    let cluster: ClusterConfig = d.read_or_default(item)?;
    if let Some(url) = &cluster.redis {
        // The URL may hold a password: not repeated. (The gateway also has the Redis client
        // read it when the config loads: a port or database it cannot use is refused then.)
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            d.error(
                place(&[item.get("redis"), Some(item)]),
                "cluster.redis must be a redis:// or redis+unix:// URL (TLS to Redis, rediss://, is not built in)",
            );
        }
    }
    for (value, field, most) in [
        (cluster.timeout_ms, "timeout_ms", 10_000),
        (cluster.heartbeat_ms, "heartbeat_ms", 60_000),
    ] {
        if !(1..=most).contains(&value) {
            d.error(
                place(&[item.get(field), Some(item)]),
                format!("cluster.{field} must be 1 to {most}"),
            );
        }
    }
    Some(cluster)
}
