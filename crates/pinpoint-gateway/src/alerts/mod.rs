//! Spike alerts: every `[alerting] evaluate_every_ms`, each `[[alerts]]` rule is read
//! against the exact per-minute rollups in the store (`rule`), its state stepped, and a
//! firing or resolved alert rendered (who and what is behind it, the decisions query, and
//! the config revision loaded shortly before it began, from `pinpoint_store::revisions`)
//! and queued for its webhooks (`crate::webhooks`). Runs on the api thread; states live in
//! memory and begin quiet at start. Replicas sharing `[cluster] redis` hand the rules to
//! one of them (a lease in Redis), so each alert is sent once.

pub mod rule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pinpoint_core::config::{AlertRule, Config, WebhookConfig};
use pinpoint_core::time::rfc3339;
use pinpoint_store::revisions::{self, ConfigLoad};
use pinpoint_store::rollups::{self, RefusalFilter};
use tokio::sync::watch;

use rule::{Observation, RuleState, Transition};

use crate::runtime::Shared;
use crate::webhooks::{Alert, Webhook};

/// Metric: alert transitions by rule and state (`firing`, `resolved`, `suppressed`).
pub const ALERTS_METRIC: &str = "pinpoint_alerts_total";

/// How often the loop looks at the config (a reload that shortens `evaluate_every_ms`
/// applies within this).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Evaluates the rules until `stop` turns true. `api_addr` is where the API listens:
/// links point there unless `[alerting] link_base` says otherwise.
pub async fn run(shared: Arc<Shared>, api_addr: Option<std::net::SocketAddr>, mut stop: watch::Receiver<bool>) {
    let mut evaluator = Evaluator {
        api_addr,
        ..Evaluator::default()
    };
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.changed() => return,
        }
        let runtime = shared.runtime.load_full();
        let every = Duration::from_millis(runtime.config.alerting.evaluate_every_ms);
        if last.is_some_and(|at| at.elapsed() < every) {
            continue;
        }
        last = Some(tokio::time::Instant::now());
        // Replicas sharing Redis: one evaluates (the lease outlives three evaluations, so a
        // replica that stops hands over within that). Redis unreachable: each evaluates,
        // rather than none.
        if let Some(cluster) = &shared.services.cluster {
            if !runtime.config.alerts.is_empty() {
                let lease = (every * 3).max(Duration::from_secs(3));
                if let Ok(false) = cluster.lead_alerts(lease).await {
                    // Another replica's episodes are its own to announce.
                    evaluator.states.clear();
                    continue;
                }
            }
        }
        evaluator
            .evaluate(&shared, &runtime.config, pinpoint_store::now_ms())
            .await;
    }
}

#[derive(Default)]
struct Evaluator {
    api_addr: Option<std::net::SocketAddr>,
    /// By rule id; a rule whose definition changes starts again quiet.
    states: HashMap<String, (AlertRule, RuleState)>,
    /// The webhooks' queues, with the config each was started from.
    queues: HashMap<String, Webhook>,
    /// Whether the rollups could not be read last time (a failing store is logged once).
    failing: bool,
}

impl Evaluator {
    async fn evaluate(&mut self, shared: &Shared, config: &Config, now_ms: i64) {
        self.follow_webhooks(&config.alerting.webhooks);
        let base = link_base(config, self.api_addr);
        // A rule removed or changed while firing: its episode is closed, said so.
        let ended: Vec<(AlertRule, RuleState)> = self
            .states
            .iter()
            .filter(|(id, (old, _))| config.alerts.iter().all(|r| r.id != **id || r != old))
            .map(|(_, entry)| entry.clone())
            .collect();
        self.states
            .retain(|id, (old, _)| config.alerts.iter().any(|r| r.id == *id && r == old));
        for (old, state) in ended {
            if let RuleState::Firing { since_ms, began_ms, .. } = state {
                let seen = Observation::none(began_ms);
                let ended = Happening::Ended {
                    since_ms,
                    began_ms,
                    why: "the rule was changed or removed",
                };
                let alert = render(config, &base, &old, &seen, ended, now_ms);
                self.announce(&old, "resolved", alert);
            }
        }
        for rule in &config.alerts {
            let observation = match observe(shared, rule, now_ms).await {
                Ok(seen) => {
                    if self.failing {
                        self.failing = false;
                        tracing::info!("alert rules can read the decision rollups again");
                    }
                    seen
                }
                Err(e) => {
                    if !self.failing {
                        self.failing = true;
                        tracing::warn!(error = %e, "cannot read the decision rollups; alert rules wait");
                    }
                    return;
                }
            };
            let entry = self
                .states
                .entry(rule.id.clone())
                .or_insert_with(|| (rule.clone(), RuleState::default()));
            let breached = rule::breaches(rule, &observation);
            let cooldown_ms = i64::from(rule.cooldown_minutes) * 60_000;
            let quiet_ms = i64::from(rule.window_minutes) * 60_000;
            let Some(transition) = entry
                .1
                .step(now_ms, breached, observation.began_ms, cooldown_ms, quiet_ms)
            else {
                continue;
            };
            let state = match transition {
                Transition::Fired => "firing",
                Transition::Resolved { .. } => "resolved",
                Transition::Suppressed => "suppressed",
            };
            if transition == Transition::Suppressed {
                metrics::counter!(ALERTS_METRIC, "alert" => rule.id.clone(), "state" => state).increment(1);
                continue;
            }
            let cause;
            let happening = match transition {
                Transition::Resolved { since_ms, began_ms } => Happening::Resolved { since_ms, began_ms },
                _ => {
                    cause = likely_cause(shared, config, observation.began_ms).await;
                    Happening::Fired { cause: cause.as_ref() }
                }
            };
            let alert = render(config, &base, rule, &observation, happening, now_ms);
            self.announce(rule, state, alert);
        }
    }

    /// Logs, counts and queues an alert for each webhook its rule notifies.
    fn announce(&self, rule: &AlertRule, state: &'static str, alert: Alert) {
        metrics::counter!(ALERTS_METRIC, "alert" => rule.id.clone(), "state" => state).increment(1);
        tracing::warn!(alert = %rule.id, state, summary = %alert.json["summary"].as_str().unwrap_or(""), "alert");
        let alert = Arc::new(alert);
        for hook in &rule.notify {
            if let Some(queue) = self.queues.get(hook) {
                queue.enqueue(alert.clone());
            }
        }
    }

    /// Starts a queue for each new or changed webhook and drops those no longer configured
    /// (a dropped queue's task finishes what it holds); unchanged ones keep their queue.
    fn follow_webhooks(&mut self, webhooks: &[WebhookConfig]) {
        self.queues
            .retain(|id, queue| webhooks.iter().any(|hook| hook.id == *id && hook == &queue.config));
        for hook in webhooks {
            if self.queues.contains_key(&hook.id) {
                continue;
            }
            match Webhook::start(hook.clone()) {
                Ok(queue) => {
                    self.queues.insert(hook.id.clone(), queue);
                }
                Err(e) => tracing::error!(webhook = %hook.id, error = %e, "webhook not started; its alerts are lost"),
            }
        }
    }
}

async fn observe(shared: &Shared, rule: &AlertRule, now_ms: i64) -> Result<Observation, pinpoint_store::StoreError> {
    let ranges = rule::ranges(rule, now_ms);
    let filter = RefusalFilter {
        mode: rule.mode,
        reason: rule.reason.as_deref(),
        layer: rule.layer.as_deref(),
        route: rule.route.as_deref(),
        org: rule.org.as_deref(),
    };
    let window = rollups::refusals(&shared.store, ranges.window.0, ranges.window.1, filter).await?;
    let baseline = rollups::refusal_total(&shared.store, ranges.baseline.0, ranges.baseline.1, filter).await?;
    Ok(rule::observe(rule, ranges, &window, baseline))
}

/// The last config load in the lookback before the spike began (or in its first minute).
async fn likely_cause(shared: &Shared, config: &Config, began_ms: i64) -> Option<ConfigLoad> {
    let lookback = i64::from(config.alerting.revision_lookback_minutes) * 60_000;
    match revisions::latest(&shared.store, began_ms - lookback, began_ms + 60_000).await {
        Ok(load) => load,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read config loads for an alert");
            None
        }
    }
}

/// What a rule watches, in words: `403 authz.permission_missing on orders`.
fn subject(rule: &AlertRule, status: Option<u16>) -> String {
    let mut words = Vec::new();
    // A would-deny's status is the one the request got (it passed): not the refusal's.
    if let Some(status) = status.filter(|_| rule.mode == pinpoint_core::Mode::Enforce) {
        words.push(status.to_string());
    }
    words.push(match (&rule.reason, &rule.layer) {
        (Some(reason), _) => reason.clone(),
        (None, Some(layer)) => format!("{layer} refusals"),
        (None, None) => "refusals".into(),
    });
    if rule.mode == pinpoint_core::Mode::Report {
        words.push("(report mode)".into());
    }
    words.push(match &rule.route {
        Some(route) => format!("on {route}"),
        None => "on all routes".into(),
    });
    if let Some(org) = &rule.org {
        words.push(format!("for organization {org}"));
    }
    words.join(" ")
}

/// What an alert announces.
#[derive(Clone, Copy)]
enum Happening<'a> {
    /// A spike, with the config load shortly before it began, if any.
    Fired {
        cause: Option<&'a ConfigLoad>,
    },
    Resolved {
        since_ms: i64,
        began_ms: i64,
    },
    /// A firing rule that is no longer evaluated as it was.
    Ended {
        since_ms: i64,
        began_ms: i64,
        why: &'a str,
    },
}

fn render(
    config: &Config,
    link_base: &str,
    rule: &AlertRule,
    seen: &Observation,
    happening: Happening<'_>,
    now_ms: i64,
) -> Alert {
    let cause = match happening {
        Happening::Fired { cause } => cause,
        _ => None,
    };
    let id = pinpoint_core::hex::lower(&rand::random::<[u8; 16]>());
    let subject = subject(rule, seen.status);
    let window = rule.window_minutes;
    let against = format!(
        "{} in the last {window} min against {:.1} expected",
        seen.count, seen.expected
    );
    let (state, summary, began_ms) = match happening {
        Happening::Resolved { since_ms, began_ms } | Happening::Ended { since_ms, began_ms, .. } => {
            let how = match happening {
                Happening::Ended { why, .. } => format!("is no longer watched: {why}"),
                _ => format!("is back to normal ({against})"),
            };
            (
                "resolved",
                format!("{subject} {how}; it fired at {}", rfc3339(since_ms)),
                began_ms,
            )
        }
        Happening::Fired { .. } => {
            let rise = match seen.ratio() {
                Some(ratio) if ratio < 10.0 => format!("rose {ratio:.1}x ({against})"),
                Some(ratio) => format!("rose {ratio:.0}x ({against})"),
                None => format!("rose from none to {} in the last {window} min", seen.count),
            };
            let cause_text = match cause {
                Some(load) => {
                    let minutes = (seen.began_ms - load.at_ms).max(0) / 60_000;
                    let revision = &load.revision;
                    if minutes == 0 {
                        format!(", starting within a minute of loading revision {revision}")
                    } else {
                        let plural = if minutes == 1 { "" } else { "s" };
                        format!(", starting {minutes} minute{plural} after revision {revision} was loaded")
                    }
                }
                None => format!(
                    "; no config revision was loaded in the {} minutes before it began",
                    config.alerting.revision_lookback_minutes
                ),
            };
            ("firing", format!("{subject} {rise}{cause_text}"), seen.began_ms)
        }
    };
    let links = links(link_base, rule, began_ms);
    let pairs = |list: &[(String, u64)], name: &str| {
        list.iter()
            .map(|(value, count)| serde_json::json!({ name: value, "count": count }))
            .collect::<Vec<_>>()
    };
    let json = serde_json::json!({
        "type": "pinpoint.alert",
        "id": id,
        "alert": rule.id,
        "state": state,
        "summary": summary,
        "at": rfc3339(now_ms),
        "began_at": rfc3339(began_ms),
        "filter": {
            "reason": rule.reason, "layer": rule.layer, "route": rule.route,
            "org": rule.org, "mode": rule.mode.as_str(),
        },
        "window_minutes": window,
        "count": seen.count,
        "baseline": { "kind": rule.baseline, "expected": seen.expected },
        "ratio": seen.ratio(),
        "status": seen.status,
        "top": {
            "routes": pairs(&seen.top_routes, "route"),
            "callers": pairs(&seen.top_callers, "caller"),
            "reasons": pairs(&seen.top_reasons, "reason"),
        },
        "config": {
            "revision": config.revision,
            "loaded_before": cause.map(|load| serde_json::json!({
                "revision": load.revision,
                "previous": load.previous,
                "trigger": load.trigger,
                "at": rfc3339(load.at_ms),
                "minutes_before": (seen.began_ms - load.at_ms).max(0) / 60_000,
            })),
        },
        "links": links,
    });
    let listed = |list: &[(String, u64)]| {
        list.iter()
            .map(|(name, count)| format!("`{name}` ({count})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let icon = if state == "firing" {
        ":rotating_light:"
    } else {
        ":white_check_mark:"
    };
    let mut detail = format!("{icon} *{}* {}: {summary}", state.to_uppercase(), rule.id);
    if state == "firing" {
        detail.push_str(&format!(
            "\nTop routes: {}\nTop callers: {}\nTop reasons: {}",
            listed(&seen.top_routes),
            listed(&seen.top_callers),
            listed(&seen.top_reasons)
        ));
    }
    let slack = serde_json::json!({
        "text": format!("[{}] {}: {summary}", state.to_uppercase(), rule.id),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": detail } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("<{}|Decisions> · <{}|Analytics> · revision {}", links["decisions"].as_str().unwrap_or(""), links["analytics"].as_str().unwrap_or(""), config.revision) },
            ] },
        ],
    });
    Alert { json, slack }
}

/// Where links point: `[alerting] link_base`, else the API listener's address.
fn link_base(config: &Config, api_addr: Option<std::net::SocketAddr>) -> String {
    match &config.alerting.link_base {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if config.server.api_tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", api_addr.unwrap_or(config.server.api_listen))
        }
    }
}

/// The decisions query (refusals only) and the analytics query behind an alert, from
/// `began_ms` on.
fn links(base: &str, rule: &AlertRule, began_ms: i64) -> serde_json::Value {
    let mut filters = Vec::new();
    for (name, value) in [
        ("reason", &rule.reason),
        ("layer", &rule.layer),
        ("route", &rule.route),
        ("org", &rule.org),
    ] {
        if let Some(value) = value {
            filters.push(format!("{name}={}", encode(value)));
        }
    }
    let filters = filters.iter().map(|f| format!("&{f}")).collect::<String>();
    // The decisions list filters on the outcome's reason: a would-deny's request was let
    // through, so for report-mode rules only the analytics link applies.
    let decisions = (rule.mode == pinpoint_core::Mode::Enforce)
        .then(|| format!("{base}/api/v2/decisions?since={began_ms}{filters}"));
    serde_json::json!({
        "decisions": decisions,
        "analytics": format!(
            "{base}/api/v2/analytics/decisions?from={}&mode={}&group_by=route,reason{filters}",
            began_ms - i64::from(rule.window_minutes) * 60_000,
            rule.mode.as_str()
        ),
    })
}

/// Percent-encodes a query value (ids and codes: letters, digits and `-_.:` pass).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
