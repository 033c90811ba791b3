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
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`); none keeps everything in
    /// the process.
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
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
            // The URL may hold a password: not repeated.
            d.error(
                place(&[item.get("redis"), Some(item)]),
                "cluster.redis must be a redis://, rediss:// or redis+unix:// URL",
            );
        }
    }
    for (value, field) in [
        (cluster.timeout_ms, "timeout_ms"),
        (cluster.heartbeat_ms, "heartbeat_ms"),
    ] {
        if value == 0 {
            d.error(
                place(&[item.get(field), Some(item)]),
                format!("cluster.{field} must be at least 1"),
            );
        }
    }
    Some(cluster)
}
