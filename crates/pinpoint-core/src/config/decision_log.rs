//! `[decision_log]`: the bounded queue between the proxy and the store, and retention.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};

/// `[decision_log]`: the bounded queue between the proxy and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// The share of allowed requests whose records are kept (a route's `decision_sample`
    /// wins): every refusal, report-mode would-deny and 5xx is kept whatever this says, and
    /// every request is counted in the per-minute rollups.
    pub sample_allowed: SampleRate,
    /// Decisions waiting to be written; beyond this they are dropped and counted.
    pub queue_capacity: usize,
    /// Decisions written per transaction at most.
    pub batch_size: usize,
    /// How long the writer gathers decisions before a transaction (the most a decision
    /// waits before `pinpoint explain` can see it, under light load).
    pub flush_interval_ms: u64,
    /// Decisions older than this are pruned from the store.
    pub retention_hours: u64,
    /// The most the decision records may take (MiB, estimated); beyond it the oldest are
    /// pruned, the newest 1,000 always kept (0: no limit).
    pub max_store_mb: u64,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            sample_allowed: SampleRate::from_ppm(10_000),
            queue_capacity: 10_000,
            batch_size: 1024,
            flush_interval_ms: 50,
            retention_hours: 24 * 7,
            max_store_mb: 1024,
        }
    }
}

/// A share of requests, 0.0 to 1.0 in the config, kept as parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct SampleRate(u32);

impl SampleRate {
    /// Every request.
    pub const ALL: SampleRate = SampleRate(1_000_000);

    pub const fn from_ppm(ppm: u32) -> SampleRate {
        SampleRate(if ppm > 1_000_000 { 1_000_000 } else { ppm })
    }

    /// Whether a request whose draw (uniform in 0..1,000,000) is `draw` is in the sample.
    pub fn keeps(self, draw: u32) -> bool {
        draw < self.0
    }
}

impl TryFrom<f64> for SampleRate {
    type Error = String;

    fn try_from(share: f64) -> Result<SampleRate, String> {
        if (0.0..=1.0).contains(&share) {
            Ok(SampleRate((share * 1_000_000.0).round() as u32))
        } else {
            Err(format!(
                "a sample rate is a share from 0.0 to 1.0 (0.01 keeps 1%), not {share}"
            ))
        }
    }
}

impl From<SampleRate> for f64 {
    fn from(rate: SampleRate) -> f64 {
        f64::from(rate.0) / 1_000_000.0
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
