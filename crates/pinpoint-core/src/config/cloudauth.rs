//! `[cloudauth]`: the AWS identity exchange (proof window, STS, limits, managed keys).

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::Diagnostics;

/// `[cloudauth]`: AWS identity exchange.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<CloudAuthConfig> {
    d.read_or_default(item)
}
