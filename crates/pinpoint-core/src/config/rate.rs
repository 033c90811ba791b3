//! `[rate]`: GCRA rate limits and calendar quotas, and the routes they apply to.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{entry, place, Diagnostics};
use super::names::is_identifier;
use crate::verdict::Mode;

/// `[rate]`: GCRA limits and quotas.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub mode: Mode,
    pub limits: Vec<RateLimitRule>,
    pub quotas: Vec<QuotaRule>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    Key,
    Principal,
    Org,
    Route,
    ClientIp,
}

/// `[[rate.limits]]`: `requests` per `per_seconds`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    pub id: String,
    pub by: LimitKey,
    pub requests: u32,
    pub per_seconds: u32,
    pub burst: Option<u32>,
    pub routes: Option<Vec<String>>,
    /// What a request gets when the shared state (`[cluster] redis`) cannot count it.
    #[serde(default)]
    pub on_backend_error: OnBackendError,
}

/// What a limit or quota counted in shared state does when that state cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    /// 503 `rate.backend_unavailable`: nothing passes uncounted (fail closed).
    #[default]
    Refuse,
    /// The request passes; `rate.backend_unavailable` is traced as a report-mode
    /// would-deny and counted (fail open).
    Allow,
}

/// Quota windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// `[[rate.quotas]]`: at most `requests` per organization per calendar day or month (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub id: String,
    pub period: QuotaPeriod,
    pub requests: u64,
    /// Organization ids; `None` applies to every organization.
    pub orgs: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
    /// What a request gets when the shared state (`[cluster] redis`) cannot count it.
    #[serde(default)]
    pub on_backend_error: OnBackendError,
}

pub(super) fn read(item: &Item, d: &mut Diagnostics, route_ids: &HashSet<String>) -> Option<RateConfig> {
    let rate: RateConfig = d.read_or_default(item)?;
    let (limits, quotas) = (item.get("limits"), item.get("quotas"));
    let mut ids = HashSet::new();
    for (i, limit) in rate.limits.iter().enumerate() {
        let entry = limits.and_then(|l| entry(l, i));
        let at = |field: &str| place(&[entry.and_then(|e| e.get(field)), entry, Some(item)]);
        if !is_identifier(&limit.id) || !ids.insert(limit.id.clone()) {
            d.error(
                at("id"),
                format!("rate limit id `{}` must be a unique identifier", limit.id),
            );
        }
        for (value, field) in [
            (Some(limit.requests), "requests"),
            (Some(limit.per_seconds), "per_seconds"),
            (limit.burst, "burst"),
        ] {
            if value == Some(0) {
                d.error(
                    at(field),
                    format!("rate limit `{}`: {field} must be at least 1", limit.id),
                );
            }
        }
        check_routes(d, entry, &limit.id, &limit.routes, route_ids);
    }
    for (i, quota) in rate.quotas.iter().enumerate() {
        let entry = quotas.and_then(|q| entry(q, i));
        if !is_identifier(&quota.id) || !ids.insert(quota.id.clone()) {
            d.error(
                place(&[entry.and_then(|e| e.get("id")), entry, Some(item)]),
                format!(
                    "quota id `{}` must be a unique identifier (limits and quotas share ids)",
                    quota.id
                ),
            );
        }
        check_routes(d, entry, &quota.id, &quota.routes, route_ids);
    }
    Some(rate)
}

fn check_routes(
    d: &mut Diagnostics,
    entry: Option<&Item>,
    id: &str,
    routes: &Option<Vec<String>>,
    route_ids: &HashSet<String>,
) {
    let list = entry.and_then(|e| e.get("routes"));
    for (i, route) in routes.iter().flatten().enumerate() {
        if !route_ids.contains(route) {
            d.error(
                place(&[list.and_then(|l| super::diagnostics::entry(l, i)), list, entry]),
                format!("rate limit or quota `{id}` names route `{route}`, which is not defined"),
            );
        }
    }
}
