//! One rule's arithmetic and states, with no I/O: what the rollups say about a window
//! ([`observe`]), whether that breaches the rule, and the firing / resolved / cool-down
//! state machine ([`RuleState::step`]) that turns breaches into at most one alert per
//! episode.

use std::collections::HashMap;

use pinpoint_core::config::{AlertRule, Baseline};
use pinpoint_store::rollups::RollupRow;

const MINUTE_MS: i64 = 60_000;
pub const WEEK_MS: i64 = 7 * 24 * 60 * MINUTE_MS;

/// The minutes a rule reads at `now_ms`: its window (the current minute included) and
/// its baseline, each `[from, to)` in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub window: (i64, i64),
    pub baseline: (i64, i64),
}

pub fn ranges(rule: &AlertRule, now_ms: i64) -> Ranges {
    let current_minute = now_ms - now_ms.rem_euclid(MINUTE_MS);
    let window_from = current_minute - (i64::from(rule.window_minutes) - 1) * MINUTE_MS;
    let window = (window_from, current_minute + MINUTE_MS);
    let baseline = match rule.baseline {
        Baseline::Trailing => (window_from - i64::from(rule.baseline_minutes) * MINUTE_MS, window_from),
        Baseline::LastWeek => (window.0 - WEEK_MS, window.1 - WEEK_MS),
    };
    Ranges { window, baseline }
}

/// What the counts say about one rule's window.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Matching requests in the window.
    pub count: u64,
    /// What the baseline leads one to expect in a window.
    pub expected: f64,
    /// The first minute of the window `ratio` times above the baseline's rate: when the
    /// spike began.
    pub began_ms: i64,
    /// The commonest status among the matching requests.
    pub status: Option<u16>,
    pub top_routes: Vec<(String, u64)>,
    /// Principals, or `org:ID` for an organization's key, or `anonymous`.
    pub top_callers: Vec<(String, u64)>,
    pub top_reasons: Vec<(String, u64)>,
}

impl Observation {
    /// Nothing seen (a rule no longer evaluated).
    pub fn none(began_ms: i64) -> Observation {
        Observation {
            count: 0,
            expected: 0.0,
            began_ms,
            status: None,
            top_routes: Vec::new(),
            top_callers: Vec::new(),
            top_reasons: Vec::new(),
        }
    }

    /// How many times the baseline the count is (none when the baseline is none).
    pub fn ratio(&self) -> Option<f64> {
        (self.expected > 0.0).then(|| self.count as f64 / self.expected)
    }
}

/// Whether a rollup row counts for `rule`: a refusal (or would-deny, by the rule's mode)
/// that passes every filter.
pub fn matches(rule: &AlertRule, row: &RollupRow) -> bool {
    let key = &row.key;
    let Some(reason) = key.reason else {
        return false;
    };
    key.mode == rule.mode
        && rule.reason.as_deref().is_none_or(|want| want == reason.code())
        && rule.layer.as_deref().is_none_or(|want| want == reason.layer())
        && rule
            .route
            .as_deref()
            .is_none_or(|want| key.route.as_deref() == Some(want))
        && rule
            .org
            .as_deref()
            .is_none_or(|want| key.org_id.as_deref() == Some(want))
}

/// How many names the top lists give.
const TOP: usize = 3;

/// Reads the `window` rows (limited to its range) and the baseline's total for `rule`.
pub fn observe(rule: &AlertRule, ranges: Ranges, window: &[RollupRow], baseline_total: u64) -> Observation {
    let window_minutes = f64::from(rule.window_minutes);
    let expected = match rule.baseline {
        Baseline::Trailing => baseline_total as f64 * window_minutes / f64::from(rule.baseline_minutes),
        Baseline::LastWeek => baseline_total as f64,
    };
    let (mut count, mut per_minute) = (0u64, HashMap::<i64, u64>::new());
    let (mut routes, mut callers, mut reasons, mut statuses) = (
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::<u16, u64>::new(),
    );
    for row in window.iter().filter(|r| matches(rule, r)) {
        let key = &row.key;
        count += row.count;
        *per_minute.entry(key.minute_ms).or_default() += row.count;
        *routes
            .entry(key.route.clone().unwrap_or_else(|| "-".into()))
            .or_default() += row.count;
        let caller = match (&key.principal_id, &key.org_id) {
            (Some(principal), _) => principal.to_string(),
            (None, Some(org)) => format!("org:{org}"),
            (None, None) => "anonymous".into(),
        };
        *callers.entry(caller).or_default() += row.count;
        if let Some(reason) = key.reason {
            *reasons.entry(reason.code().to_owned()).or_default() += row.count;
        }
        *statuses.entry(key.status).or_default() += row.count;
    }
    // The spike began in the first minute that alone rose `ratio` times above the
    // baseline's rate (a stray refusal at the usual rate does not date it).
    let per_minute_threshold = rule.ratio * expected / window_minutes;
    let began_ms = (0..i64::from(rule.window_minutes))
        .map(|i| ranges.window.0 + i * MINUTE_MS)
        .find(|minute| per_minute.get(minute).is_some_and(|n| *n as f64 > per_minute_threshold))
        .unwrap_or(ranges.window.0);
    Observation {
        count,
        expected,
        began_ms,
        status: statuses
            .into_iter()
            .max_by_key(|(s, n)| (*n, std::cmp::Reverse(*s)))
            .map(|(s, _)| s),
        top_routes: top(routes),
        top_callers: top(callers),
        top_reasons: top(reasons),
    }
}

fn top(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut list: Vec<_> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(TOP);
    list
}

/// Whether `observation` breaches `rule`: at least `min_count`, and at least `ratio`
/// times the baseline (any count beats a baseline of none).
pub fn breaches(rule: &AlertRule, observation: &Observation) -> bool {
    observation.count >= rule.min_count && observation.count as f64 >= rule.ratio * observation.expected
}

/// Where one rule stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RuleState {
    #[default]
    Quiet,
    Firing {
        /// When it fired.
        since_ms: i64,
        /// When the spike began (for the resolved alert).
        began_ms: i64,
        /// The last evaluation that breached the rule.
        last_breach_ms: i64,
    },
    /// Resolved; quiet until `until_ms` whatever the counts.
    Cooling { until_ms: i64 },
}

/// What an evaluation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Resolved {
        since_ms: i64,
        began_ms: i64,
    },
    /// Breached while cooling down: not announced, counted.
    Suppressed,
}

impl RuleState {
    /// Takes one evaluation at `now_ms` (`breached`, and when the spike began) and says
    /// what, if anything, is to be announced. A firing rule resolves once it has not been
    /// breached for `quiet_ms` (its window: the turn of a minute, which empties the
    /// current minute's count, does not end a spike that goes on).
    pub fn step(
        &mut self,
        now_ms: i64,
        breached: bool,
        began_ms: i64,
        cooldown_ms: i64,
        quiet_ms: i64,
    ) -> Option<Transition> {
        if let RuleState::Cooling { until_ms } = *self {
            if now_ms < until_ms {
                return breached.then_some(Transition::Suppressed);
            }
            *self = RuleState::Quiet;
        }
        match self {
            RuleState::Quiet if breached => {
                *self = RuleState::Firing {
                    since_ms: now_ms,
                    began_ms,
                    last_breach_ms: now_ms,
                };
                Some(Transition::Fired)
            }
            RuleState::Quiet | RuleState::Cooling { .. } => None,
            RuleState::Firing { last_breach_ms, .. } if breached => {
                *last_breach_ms = now_ms;
                None
            }
            RuleState::Firing {
                since_ms,
                began_ms,
                last_breach_ms,
            } => {
                if now_ms - *last_breach_ms < quiet_ms {
                    return None;
                }
                let resolved = Transition::Resolved {
                    since_ms: *since_ms,
                    began_ms: *began_ms,
                };
                *self = RuleState::Cooling {
                    until_ms: now_ms + cooldown_ms,
                };
                Some(resolved)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pinpoint_core::{Mode, Reason};
    use pinpoint_store::rollups::RollupKey;

    use super::*;

    fn rule(toml_extra: &str) -> AlertRule {
        let source = format!(
            "[upstreams.echo]\ntargets = [\"builtin:echo\"]\n\
             [[routes]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"echo\"\n\
             [[alerting.webhooks]]\nid = \"ops\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"s\"\n\
             [[alerts]]\nid = \"a\"\nnotify = [\"ops\"]\n{toml_extra}"
        );
        pinpoint_core::config::Config::parse(&source, "test")
            .unwrap()
            .alerts
            .remove(0)
    }

    fn row(minute: i64, reason: Option<Reason>, route: &str, principal: Option<&str>, count: u64) -> RollupRow {
        RollupRow {
            key: RollupKey {
                minute_ms: minute * MINUTE_MS,
                route: Some(route.into()),
                reason,
                org_id: Some(Arc::from("org-1")),
                principal_id: principal.map(Arc::from),
                permission: None,
                status: reason.map_or(200, Reason::status),
                mode: Mode::Enforce,
            },
            count,
        }
    }

    #[test]
    fn a_trailing_baseline_is_scaled_to_the_window_and_the_spike_dated() {
        let rule = rule("reason = \"authz.permission_missing\"\nwindow_minutes = 5\nbaseline_minutes = 60\nmin_count = 10\nratio = 4.0\n");
        let now = 1000 * MINUTE_MS + 30_000;
        let r = ranges(&rule, now);
        assert_eq!(r.window, (996 * MINUTE_MS, 1001 * MINUTE_MS));
        assert_eq!(r.baseline, (936 * MINUTE_MS, 996 * MINUTE_MS));
        let missing = Some(Reason::AuthzPermissionMissing);
        // 24 in the hour before: 2 expected in five minutes.
        let baseline = 24;
        let window = vec![
            row(996, missing, "orders", Some("p1"), 1),
            row(998, missing, "orders", Some("p2"), 30),
            row(999, missing, "orders", Some("p1"), 5),
            row(999, Some(Reason::AuthnCredentialsMissing), "orders", None, 50),
            row(999, None, "orders", Some("p1"), 500),
        ];
        let seen = observe(&rule, r, &window, baseline);
        assert_eq!(seen.count, 36);
        assert_eq!(seen.expected, 2.0);
        assert_eq!(seen.ratio(), Some(18.0));
        assert_eq!(
            seen.began_ms,
            998 * MINUTE_MS,
            "the first minute above 4 x 0.4 a minute"
        );
        assert_eq!(seen.status, Some(403));
        assert_eq!(seen.top_callers, vec![("p2".into(), 30), ("p1".into(), 6)]);
        assert!(breaches(&rule, &seen));
        // Four times 2 is 8: 7 is not enough, nor is anything under min_count.
        let calm = observe(&rule, r, &[row(999, missing, "orders", Some("p1"), 7)], baseline);
        assert!(!breaches(&rule, &calm));
    }

    #[test]
    fn last_week_is_the_same_window_seven_days_before_and_none_is_any_rise() {
        let rule = rule("baseline = \"last_week\"\nwindow_minutes = 1\nmin_count = 3\n");
        let now = WEEK_MS + 5 * MINUTE_MS + 1;
        let r = ranges(&rule, now);
        assert_eq!(r.baseline, (5 * MINUTE_MS, 6 * MINUTE_MS));
        let denied = Some(Reason::AuthzPermissionMissing);
        let seen = observe(&rule, r, &[row(now / MINUTE_MS, denied, "orders", None, 3)], 0);
        assert_eq!((seen.expected, seen.ratio()), (0.0, None));
        assert!(breaches(&rule, &seen));
        assert_eq!(seen.top_callers, vec![("org:org-1".into(), 3)]);
    }

    #[test]
    fn an_episode_fires_once_resolves_after_a_quiet_window_then_cools_down() {
        let mut state = RuleState::default();
        let (cooldown, quiet) = (10 * MINUTE_MS, MINUTE_MS);
        assert_eq!(state.step(0, false, 0, cooldown, quiet), None);
        assert_eq!(state.step(1_000, true, 0, cooldown, quiet), Some(Transition::Fired));
        // Deduplicated while it lasts; quiet moments shorter than the window (a minute
        // turning) do not resolve it.
        assert_eq!(state.step(2_000, true, 0, cooldown, quiet), None);
        assert_eq!(state.step(30_000, false, 0, cooldown, quiet), None);
        assert_eq!(state.step(50_000, true, 0, cooldown, quiet), None);
        assert_eq!(state.step(100_000, false, 0, cooldown, quiet), None);
        assert_eq!(
            state.step(110_000, false, 0, cooldown, quiet),
            Some(Transition::Resolved {
                since_ms: 1_000,
                began_ms: 0
            })
        );
        // Cooling down: a new breach is suppressed, not announced.
        assert_eq!(
            state.step(120_000, true, 0, cooldown, quiet),
            Some(Transition::Suppressed)
        );
        assert_eq!(state.step(130_000, false, 0, cooldown, quiet), None);
        // After the cool-down it fires again.
        let later = 110_000 + cooldown;
        assert_eq!(state.step(later, true, later, cooldown, quiet), Some(Transition::Fired));
    }
}
