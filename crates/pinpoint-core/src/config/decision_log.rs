//! `[decision_log]`: the bounded queue between the proxy and the store, and retention.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};

/// `[decision_log]`: the bounded queue between the proxy and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<DecisionLogConfig> {
    let log: DecisionLogConfig = d.read_or_default(item)?;
    for (value, field) in [(log.queue_capacity, "queue_capacity"), (log.batch_size, "batch_size")] {
        if value == 0 {
            d.error(
                place(&[item.get(field), Some(item)]),
                format!("decision_log.{field} must be at least 1"),
            );
        }
    }
    Some(log)
}
