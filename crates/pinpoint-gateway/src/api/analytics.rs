//! `GET /api/v2/analytics/decisions`: time series and top lists of decisions, answered from
//! the exact per-minute rollups (`pinpoint_store::rollups`), so every figure counts every
//! request whatever share of records the decision log keeps. Tenant-scoped like every
//! read: a caller sees the counts of its own organization's requests; platform
//! administrators see every organization's, and those of requests with no known caller.
//!
//! Query: `from`, `to` (Unix milliseconds; default the last hour), `interval` (`1m`, `5m`,
//! `1h`, ..., a whole number of minutes; default `1m`), filters `route`, `layer`, `reason`
//! (`-` for allowed requests), `org`, `principal`, `permission` (the one the authorization
//! layer granted), `status`, `mode` (`enforce`/`report`), `group_by` (comma-separated:
//! `route`, `layer`, `reason`, `org`, `principal`, `permission`, `status`, `mode`) and
//! `top` (how many groups, largest first; default 10). `-` matches "none" in any filter.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use pinpoint_core::{Mode, Reason};
use pinpoint_store::rollups::{self, RollupKey};

use super::{deny, envelope, ApiResult, Caller};
use crate::runtime::Shared;

/// The longest range one query may span (rollups are kept at least this long).
const MAX_RANGE_MS: i64 = 31 * 24 * 3_600_000;
/// The most points one series may have.
const MAX_POINTS: i64 = 10_000;

/// The dimensions: each is a filter and a `group_by` value.
const GROUPS: [&str; 8] = [
    "route",
    "layer",
    "reason",
    "org",
    "principal",
    "permission",
    "status",
    "mode",
];
/// The other query parameters.
const OPTIONS: [&str; 5] = ["from", "to", "interval", "group_by", "top"];

pub async fn decisions(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let bad = |detail: String| deny(Reason::ApiBadRequest, detail);
    if let Some(unknown) = query
        .keys()
        .find(|k| !GROUPS.contains(&k.as_str()) && !OPTIONS.contains(&k.as_str()))
    {
        return Err(bad(format!(
            "Unknown query parameter `{unknown}`; see the API reference for analytics."
        )));
    }
    let number = |name: &str| -> ApiResult<Option<i64>> {
        query
            .get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad(format!("`{name}` must be a whole number, not `{v}`.")))
            })
            .transpose()
    };
    let now = pinpoint_store::now_ms();
    let to = number("to")?.unwrap_or(now);
    let from = number("from")?.unwrap_or(to.saturating_sub(3_600_000));
    if from >= to || to.saturating_sub(from) > MAX_RANGE_MS {
        return Err(bad("`from` must be before `to`, at most 31 days apart.".into()));
    }
    let interval_ms = match query.get("interval") {
        None => 60_000,
        Some(text) => parse_interval(text).ok_or_else(|| {
            bad(format!(
                "`interval` is a whole number of minutes, hours or days (`1m`, `5m`, `1h`, `1d`), not `{text}`."
            ))
        })?,
    };
    if (to - from) / interval_ms > MAX_POINTS {
        return Err(bad(format!(
            "That range at that interval is more than {MAX_POINTS} points; widen `interval`."
        )));
    }
    let group_by: Vec<&'static str> = match query.get("group_by") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(|g| {
                GROUPS
                    .iter()
                    .copied()
                    .find(|known| *known == g)
                    .ok_or_else(|| bad(format!("`group_by` takes {}, not `{g}`.", GROUPS.join(", "))))
            })
            .collect::<ApiResult<_>>()?,
    };
    let top = match number("top")? {
        None => 10,
        Some(top @ 1..=1000) => top as usize,
        Some(_) => return Err(bad("`top` is a whole number from 1 to 1000.".into())),
    };
    let mode = match query.get("mode").map(String::as_str) {
        None => None,
        Some("enforce") => Some(Mode::Enforce),
        Some("report") => Some(Mode::Report),
        Some(other) => return Err(bad(format!("`mode` is `enforce` or `report`, not `{other}`."))),
    };
    let status = number("status")?;
    if status.is_some_and(|s| !(100..=599).contains(&s)) {
        return Err(bad("`status` is an HTTP status, 100 to 599.".into()));
    }

    // Whole intervals, aligned to the epoch, covering the range.
    let start = from.saturating_sub(from.rem_euclid(interval_ms));
    let rows = rollups::read(&shared.store, start, to).await?;
    let platform = caller.0.is_platform_admin();
    let mut groups: BTreeMap<Vec<(&'static str, Dimension)>, BTreeMap<i64, u64>> = BTreeMap::new();
    let mut total = 0u64;
    for row in &rows {
        let key = &row.key;
        // Another tenant's counts, and those of callers nobody knows, are not this caller's.
        let visible = platform || key.org_id.as_deref() == Some(caller.0.org_id());
        if !visible || !matches(key, &query, status, mode) {
            continue;
        }
        let group = group_by.iter().map(|g| (*g, dimension(key, g))).collect();
        let bucket = key.minute_ms - key.minute_ms.rem_euclid(interval_ms);
        *groups.entry(group).or_default().entry(bucket).or_default() += row.count;
        total += row.count;
    }
    let mut ranked: Vec<_> = groups
        .into_iter()
        .map(|(group, points)| (points.values().sum::<u64>(), group, points))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let groups_total = ranked.len();
    let listed: Vec<serde_json::Value> = ranked
        .into_iter()
        .take(top)
        .map(|(count, group, points)| {
            serde_json::json!({
                "key": group.into_iter().map(|(k, v)| (k.to_owned(), v.json())).collect::<serde_json::Map<_, _>>(),
                "total": count,
                "series": points.into_iter().map(|(at, n)| serde_json::json!([at, n])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(envelope(serde_json::json!({
        "type": "decision_analytics",
        "attributes": {
            "from": from,
            "to": to,
            "interval_ms": interval_ms,
            "group_by": group_by,
            "total": total,
            "groups_total": groups_total,
            "groups": listed,
        }
    })))
}

/// Whether a rollup row passes the query's filters.
fn matches(key: &RollupKey, query: &HashMap<String, String>, status: Option<i64>, mode: Option<Mode>) -> bool {
    let text = |name: &str, value: Option<&str>| query.get(name).is_none_or(|want| want == value.unwrap_or("-"));
    text("route", key.route.as_deref())
        && text("reason", key.reason.map(|r| r.code()))
        && text("layer", key.reason.map(Reason::layer))
        && text("org", key.org_id.as_deref())
        && text("principal", key.principal_id.as_deref())
        && text("permission", key.permission.as_deref())
        && status.is_none_or(|s| s == i64::from(key.status))
        && mode.is_none_or(|m| m == key.mode)
}

/// A row's value for one `group_by` dimension.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dimension {
    /// `None` where the row has none: an allowed request's reason and layer, an unknown
    /// caller's organization (`null` in the answer).
    Text(Option<String>),
    Status(u16),
}

impl Dimension {
    fn json(self) -> serde_json::Value {
        match self {
            Dimension::Text(text) => text.into(),
            Dimension::Status(status) => status.into(),
        }
    }
}

fn dimension(key: &RollupKey, name: &str) -> Dimension {
    let text = |value: Option<&str>| Dimension::Text(value.map(str::to_owned));
    match name {
        "route" => text(key.route.as_deref()),
        "layer" => text(key.reason.map(Reason::layer)),
        "reason" => text(key.reason.map(|r| r.code())),
        "org" => text(key.org_id.as_deref()),
        "principal" => text(key.principal_id.as_deref()),
        "permission" => text(key.permission.as_deref()),
        "status" => Dimension::Status(key.status),
        _ => text(Some(key.mode.as_str())),
    }
}

/// `1m`, `15m`, `1h`, `1d` in milliseconds (a whole number of minutes, at least one).
fn parse_interval(text: &str) -> Option<i64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let minutes = match unit {
        "m" => 1,
        "h" => 60,
        "d" => 1440,
        _ => return None,
    };
    let n: i64 = number.parse().ok().filter(|n| *n > 0 && *n <= 31 * 1440)?;
    Some(n * minutes * 60_000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn intervals_are_whole_minutes() {
        assert_eq!(super::parse_interval("1m"), Some(60_000));
        assert_eq!(super::parse_interval("5m"), Some(300_000));
        assert_eq!(super::parse_interval("1h"), Some(3_600_000));
        assert_eq!(super::parse_interval("1d"), Some(86_400_000));
        for bad in ["", "m", "0m", "1s", "1.5h", "-1m", "1mm", "99999999d"] {
            assert_eq!(super::parse_interval(bad), None, "{bad}");
        }
    }
}
