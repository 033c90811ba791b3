//! In-memory rate-limit and quota state ([`MemoryRateState`], the [`RateState`] of one
//! process): GCRA limiters (governor) per configured limit, keyed by 64-bit caller hashes,
//! and quota counters per (quota, organization, window). It outlives config revisions, so
//! a reload does not reset budgets; the host saves and restores quota counters.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use pinpoint_core::config::RateLimitRule;

use crate::world::{Answer, Counted, LimitAnswer, Limiter, RateState};

/// Limiter keys are 64-bit hashes of `(what, id)` under a secret seed ([`hashed`]): no
/// allocation per request, and a collision (two callers sharing a budget) has odds of about
/// n²/2⁶⁵. Being uniformly random already, they index the limiter's map as they are.
type KeyedLimiter = RateLimiter<u64, LimiterStates, DefaultClock, StateInformationMiddleware>;

/// One limit's GCRA states (each the theoretical arrival time, in nanoseconds since the
/// limiter started, as governor's own stores keep it), by limiter key. The map's reads take
/// no lock: when both cores serve the same caller, the one shared write per request is the
/// compare-and-swap of that caller's state (a locking map would add its lock word).
#[derive(Default)]
struct LimiterStates(papaya::HashMap<u64, AtomicU64, BuildHasherDefault<SeededKey>>);

impl StateStore for LimiterStates {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let states = self.0.pin();
        let state = match states.get(key) {
            Some(state) => state,
            None => states.get_or_insert_with(*key, || AtomicU64::new(0)),
        };
        // governor's own compare-and-swap loop: 0 means "never measured".
        let mut previous = state.load(Ordering::Acquire);
        loop {
            let (result, next) = f(NonZeroU64::new(previous).map(|n| Nanos::from(n.get())))?;
            match state.compare_exchange_weak(previous, next.into(), Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(result),
                Err(current) => previous = current,
            }
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for LimiterStates {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.0
            .pin()
            .retain(|_, state| state.load(Ordering::Relaxed) > drop_below);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The "hasher" of limiter keys: passes the already seeded hash through.
#[derive(Default, Clone, Copy)]
struct SeededKey(u64);

impl Hasher for SeededKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); fold anything else in regardless.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Limiter and quota state shared across config revisions.
#[derive(Default)]
pub struct MemoryRateState {
    limiters: Mutex<HashMap<RateLimitRule, Arc<GovernorLimiter>>>,
    /// (quota id, org id, window start ms) -> requests counted.
    quota_counts: papaya::HashMap<(String, String, i64), AtomicU64>,
}

impl MemoryRateState {
    /// The limiter for `rule`: the existing one when the rule is unchanged.
    fn governor_limiter(&self, rule: &RateLimitRule) -> Arc<GovernorLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(rule.clone())
            .or_insert_with(|| {
                let per_cell = Duration::from_secs(u64::from(rule.per_seconds)) / rule.requests.max(1);
                let burst = NonZeroU32::new(rule.burst.unwrap_or(rule.requests)).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(burst);
                Arc::new(GovernorLimiter(
                    RateLimiter::<u64, LimiterStates, DefaultClock>::new(
                        quota,
                        LimiterStates::default(),
                        DefaultClock::default(),
                    )
                    .with_middleware::<StateInformationMiddleware>(),
                ))
            })
            .clone()
    }

    /// Counts one request against a quota window; the count, this one included.
    pub fn spend(&self, quota_id: &str, org_id: &str, window_start_ms: i64) -> u64 {
        let counts = self.quota_counts.pin();
        let key = (quota_id.to_owned(), org_id.to_owned(), window_start_ms);
        counts
            .get_or_insert_with(key, || AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// Puts saved quota counters back (so a restart does not reset quotas).
    pub fn restore_quotas(&self, saved: impl IntoIterator<Item = (String, String, i64, u64)>) {
        let counts = self.quota_counts.pin();
        for (quota, org, window, used) in saved {
            counts.insert((quota, org, window), AtomicU64::new(used));
        }
    }

    /// Every quota counter: (quota id, organization id, window start ms, requests).
    pub fn quota_counters(&self) -> Vec<(String, String, i64, u64)> {
        self.quota_counts
            .pin()
            .iter()
            .map(|((q, o, w), used)| (q.clone(), o.clone(), *w, used.load(Ordering::Relaxed)))
            .collect()
    }

    /// Forgets idle keys and past quota windows; run periodically.
    pub fn housekeeping(&self, now_ms: i64) {
        for limiter in self.limiters.lock().unwrap_or_else(|p| p.into_inner()).values() {
            limiter.0.retain_recent();
        }
        self.quota_counts
            .pin()
            .retain(|(_, _, start), _| now_ms - *start < QUOTA_HORIZON_MS);
    }
}

/// Quota windows older than this (longer than any month) are forgotten.
pub const QUOTA_HORIZON_MS: i64 = 32 * 86_400_000;

/// One limit's governor limiter.
struct GovernorLimiter(KeyedLimiter);

impl GovernorLimiter {
    fn take_key(&self, key: u64) -> LimitAnswer {
        match self.0.check_key(&key) {
            Ok(state) => LimitAnswer::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => LimitAnswer::Limited {
                wait: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }
}

impl Limiter for GovernorLimiter {
    fn take<'a>(&'a self, who: &'a Counted<'a>) -> Answer<'a, LimitAnswer> {
        Answer::Ready(self.take_key(who.hash))
    }
}

impl RateState for MemoryRateState {
    fn limiter(&self, rule: &RateLimitRule) -> Arc<dyn Limiter> {
        self.governor_limiter(rule)
    }

    fn spend_quota<'a>(
        &'a self,
        quota_id: &'a str,
        org_id: &'a str,
        (window_start_ms, _): (i64, i64),
    ) -> Answer<'a, Result<u64, String>> {
        Answer::Ready(Ok(self.spend(quota_id, org_id, window_start_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpoint_core::config::LimitKey;

    fn limiter(requests: u32, per_seconds: u32) -> Arc<GovernorLimiter> {
        let rule = RateLimitRule {
            id: "t".into(),
            by: LimitKey::Key,
            requests,
            per_seconds,
            burst: None,
            routes: None,
            on_backend_error: Default::default(),
        };
        MemoryRateState::default().governor_limiter(&rule)
    }

    #[test]
    fn the_lock_free_state_store_counts_each_key_apart_and_keeps_busy_keys() {
        let limiter = limiter(2, 3600);
        assert!(matches!(limiter.take_key(1), LimitAnswer::Allowed { .. }));
        assert!(matches!(limiter.take_key(1), LimitAnswer::Allowed { .. }));
        assert!(
            matches!(limiter.take_key(1), LimitAnswer::Limited { .. }),
            "the third request in the hour is over the limit"
        );
        assert_eq!(
            limiter.take_key(2),
            LimitAnswer::Allowed { remaining: 1 },
            "another key has its own budget"
        );
        assert_eq!(limiter.0.len(), 2);
        // Housekeeping keeps keys whose state still differs from a fresh one.
        limiter.0.retain_recent();
        assert!(
            matches!(limiter.take_key(1), LimitAnswer::Limited { .. }),
            "a housekeeping pass does not reset a budget"
        );
    }

    #[test]
    fn quotas_count_per_quota_organization_and_window() {
        let state = MemoryRateState::default();
        assert_eq!(state.spend("q", "o", 0), 1);
        assert_eq!(state.spend("q", "o", 0), 2);
        assert_eq!(state.spend("q", "p", 0), 1);
        assert_eq!(state.spend("q", "o", 1), 1);
        let restored = MemoryRateState::default();
        restored.restore_quotas(state.quota_counters());
        assert_eq!(restored.spend("q", "o", 0), 3);
    }
}
