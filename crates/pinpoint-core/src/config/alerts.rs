//! `[alerting]` and `[[alerts]]`: spike alerts on the decision rollups, and the webhooks
//! they are delivered to. A rule counts refusals (or report-mode would-denies) matching its
//! filters over a window and fires when the count reaches `min_count` and `ratio` times
//! its baseline; the gateway's `alerts` module evaluates and delivers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{entry, place, Diagnostics};
use super::names::is_identifier;
use crate::verdict::Mode;
use crate::Reason;

/// `[alerting]`: how often rules are evaluated, what links in alerts point at, and the
/// webhooks alerts go to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// How often every rule is evaluated.
    pub evaluate_every_ms: u64,
    /// Where links in alerts point (`https://pinpoint.example.com`); the API listener's
    /// address when absent.
    pub link_base: Option<String>,
    /// How long before a spike began a config load is named as a likely cause.
    pub revision_lookback_minutes: u32,
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            evaluate_every_ms: 15_000,
            link_base: None,
            revision_lookback_minutes: 30,
            webhooks: Vec::new(),
        }
    }
}

/// How a webhook's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Pinpoint's alert document.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` and `blocks`).
    Slack,
}

/// `[[alerting.webhooks]]`: one receiver of alerts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub id: String,
    /// `http://` or `https://`; never logged (it may hold a token).
    pub url: String,
    /// A file holding the HMAC-SHA256 signing secret; required for `json`.
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Attempts per alert, the first included (retried with doubling waits from 1 s).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Alerts waiting for this webhook; beyond it they are dropped and counted.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// How long one attempt may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_queue_capacity() -> usize {
    100
}
fn default_timeout_ms() -> u64 {
    5_000
}

impl WebhookConfig {
    /// Takes a relative `secret_file` from `dir` (the config file's directory).
    pub fn resolve_relative_to(&mut self, dir: &Path) {
        if let Some(file) = &mut self.secret_file {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
    }
}

/// What a rule's count is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The `baseline_minutes` before the window, scaled to the window's length.
    #[default]
    Trailing,
    /// The same minutes a week earlier.
    LastWeek,
}

/// `[[alerts]]`: one spike rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub id: String,
    /// Only refusals with this reason code.
    pub reason: Option<String>,
    /// Only refusals by this layer (`authz`).
    pub layer: Option<String>,
    /// Only requests on this route.
    pub route: Option<String>,
    /// Only requests of this organization (its id).
    pub org: Option<String>,
    /// `enforce`: refusals; `report`: report-mode would-denies.
    #[serde(default)]
    pub mode: Mode,
    /// The fewest matching requests in the window that can fire.
    #[serde(default = "default_min_count")]
    pub min_count: u64,
    /// How many times its baseline the count must be to fire.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    #[serde(default)]
    pub baseline: Baseline,
    /// The window counted, in minutes, the current (partial) minute included.
    #[serde(default = "default_window_minutes")]
    pub window_minutes: u32,
    /// The trailing baseline's length, in minutes.
    #[serde(default = "default_baseline_minutes")]
    pub baseline_minutes: u32,
    /// After resolving, how long the rule stays quiet whatever the counts.
    #[serde(default = "default_cooldown_minutes")]
    pub cooldown_minutes: u32,
    /// The webhooks (`[[alerting.webhooks]]` ids) it is delivered to.
    pub notify: Vec<String>,
}

fn default_min_count() -> u64 {
    20
}
fn default_ratio() -> f64 {
    5.0
}
fn default_window_minutes() -> u32 {
    5
}
fn default_baseline_minutes() -> u32 {
    60
}
fn default_cooldown_minutes() -> u32 {
    15
}

pub(super) fn read_alerting(item: &Item, d: &mut Diagnostics) -> Option<AlertingConfig> {
    let alerting: AlertingConfig = d.read_or_default(item)?;
    if !(100..=600_000).contains(&alerting.evaluate_every_ms) {
        d.error(
            place(&[item.get("evaluate_every_ms"), Some(item)]),
            "alerting.evaluate_every_ms must be 100 to 600000 (ten minutes)",
        );
    }
    if alerting.revision_lookback_minutes > 1440 {
        d.error(
            place(&[item.get("revision_lookback_minutes"), Some(item)]),
            "alerting.revision_lookback_minutes must be at most 1440 (a day)",
        );
    }
    if let Some(base) = &alerting.link_base {
        if host_of(base).is_none_or(str::is_empty) {
            d.error(
                place(&[item.get("link_base"), Some(item)]),
                format!("alerting.link_base `{base}` must be an http:// or https:// URL with a host"),
            );
        }
    }
    let list = item.get("webhooks");
    let mut ids = HashSet::new();
    for (i, hook) in alerting.webhooks.iter().enumerate() {
        let entry = list.and_then(|l| entry(l, i));
        let at = |field: &str| place(&[entry.and_then(|e| e.get(field)), entry, Some(item)]);
        if !is_identifier(&hook.id) || !ids.insert(hook.id.clone()) {
            d.error(
                at("id"),
                format!("webhook id `{}` must be a unique identifier", hook.id),
            );
        }
        if host_of(&hook.url).is_none_or(str::is_empty) || hook.url.parse::<http::Uri>().is_err() {
            // The URL may carry a token: the message does not repeat it.
            d.error(
                at("url"),
                format!(
                    "webhook `{}`: url must be an http:// or https:// URL with a host",
                    hook.id
                ),
            );
        }
        if hook.secret_file.is_none() && hook.format == WebhookFormat::Json {
            d.error(
                at("secret_file"),
                format!(
                    "webhook `{}` needs secret_file: JSON alerts are signed (HMAC-SHA256) so receivers can tell them from forgeries",
                    hook.id
                ),
            );
        }
        for (value, field, most) in [
            (u64::from(hook.max_attempts), "max_attempts", 20),
            (hook.queue_capacity as u64, "queue_capacity", 10_000),
            (hook.timeout_ms, "timeout_ms", 60_000),
        ] {
            if !(1..=most).contains(&value) {
                d.error(at(field), format!("webhook `{}`: {field} must be 1 to {most}", hook.id));
            }
        }
    }
    Some(alerting)
}

pub(super) fn read_rules(
    item: &Item,
    d: &mut Diagnostics,
    route_ids: &HashSet<String>,
    webhooks: &HashSet<String>,
) -> Vec<AlertRule> {
    let mut rules = Vec::new();
    if item.is_none() {
        return rules;
    }
    if !(item.is_array_of_tables() || item.is_array()) {
        d.error(item.span(), "alerts must be an array of tables ([[alerts]])");
        return rules;
    }
    let mut ids = HashSet::new();
    for rule_item in (0..).map_while(|i| entry(item, i)) {
        let Some(rule) = d.read::<AlertRule>(rule_item) else {
            continue;
        };
        let at = |field: &str| place(&[rule_item.get(field), Some(rule_item)]);
        let id = &rule.id;
        if !is_identifier(id) || !ids.insert(id.clone()) {
            d.error(at("id"), format!("alert id `{id}` must be a unique identifier"));
        }
        if let Some(code) = &rule.reason {
            if Reason::from_code(code).is_none() {
                d.error(
                    at("reason"),
                    format!("alert `{id}`: `{code}` is not a reason code (see docs/reasons.md)"),
                );
            }
        }
        if let (Some(code), Some(layer)) = (&rule.reason, &rule.layer) {
            if Reason::from_code(code).is_some_and(|r| r.layer() != layer) {
                d.error(
                    at("layer"),
                    format!("alert `{id}`: reason `{code}` is not of layer `{layer}`, so nothing could match"),
                );
            }
        }
        if let Some(layer) = &rule.layer {
            let known = Reason::ALL.iter().any(|r| r.layer() == layer);
            if !known {
                d.error(
                    at("layer"),
                    format!("alert `{id}`: `{layer}` is not a layer any reason code names"),
                );
            }
        }
        if let Some(route) = &rule.route {
            if !route_ids.contains(route) {
                d.error(
                    at("route"),
                    format!("alert `{id}` names route `{route}`, which is not defined"),
                );
            }
        }
        if rule.min_count == 0 {
            d.error(at("min_count"), format!("alert `{id}`: min_count must be at least 1"));
        }
        if !(rule.ratio.is_finite() && rule.ratio >= 1.0) {
            d.error(
                at("ratio"),
                format!("alert `{id}`: ratio must be a number of at least 1.0"),
            );
        }
        if !(1..=60).contains(&rule.window_minutes) {
            d.error(
                at("window_minutes"),
                format!("alert `{id}`: window_minutes must be 1 to 60"),
            );
        }
        if !(1..=7 * 24 * 60).contains(&rule.baseline_minutes) {
            d.error(
                at("baseline_minutes"),
                format!("alert `{id}`: baseline_minutes must be 1 to 10080 (a week)"),
            );
        }
        if rule.cooldown_minutes > 7 * 24 * 60 {
            d.error(
                at("cooldown_minutes"),
                format!("alert `{id}`: cooldown_minutes must be at most 10080 (a week)"),
            );
        }
        if rule.notify.is_empty() {
            d.error(
                at("notify"),
                format!("alert `{id}` notifies nobody: name at least one [[alerting.webhooks]] id"),
            );
        }
        for hook in &rule.notify {
            if !webhooks.contains(hook) {
                d.error(
                    at("notify"),
                    format!("alert `{id}` notifies webhook `{hook}`, which [[alerting.webhooks]] does not define"),
                );
            }
        }
        rules.push(rule);
    }
    rules
}

/// The host of an `http://` or `https://` URL (none for another scheme).
fn host_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    rest.split(['/', '?', '#']).next()
}

/// The webhook ids `[alerting]` declares, read even when the section has mistakes, so
/// rules are checked against them.
pub(super) fn declared_webhooks(item: &Item) -> HashSet<String> {
    let list = item.get("webhooks");
    (0..)
        .map_while(|i| list.and_then(|l| entry(l, i)))
        .filter_map(|hook| hook.get("id")?.as_str().map(str::to_owned))
        .collect()
}
