//! The rate layer: GCRA limits (governor) keyed by API key, principal, organization,
//! route or client address, and daily/monthly quotas per organization. Every limited
//! route's responses carry IETF `RateLimit-Policy` / `RateLimit` and `X-RateLimit-*`
//! headers; a refusal adds `Retry-After`. Limiter state lives in a [`RateRegistry`] that
//! outlives config reloads, so a reload does not reset counters.
//! Codes: `rate.limited`, `quota.exhausted` (429).

use std::collections::{HashMap, HashSet};
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
use http::{HeaderMap, HeaderName, HeaderValue};
use pinpoint_core::config::{LimitKey, QuotaPeriod, QuotaRule, RateLimitRule};
use pinpoint_core::{Denial, Outcome, Reason};

use crate::identity::Credential;
use crate::pipeline::{Check, Filter, RequestCtx};

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
pub struct RateRegistry {
    limiters: Mutex<HashMap<RateLimitRule, Arc<KeyedLimiter>>>,
    /// (quota id, org id, window start ms) -> requests counted.
    quota_counts: papaya::HashMap<(String, String, i64), AtomicU64>,
}

impl RateRegistry {
    /// The limiter for `rule`: the existing one when the rule is unchanged.
    fn limiter(&self, rule: &RateLimitRule) -> Arc<KeyedLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(rule.clone())
            .or_insert_with(|| {
                let per_cell = Duration::from_secs(u64::from(rule.per_seconds)) / rule.requests.max(1);
                let burst = NonZeroU32::new(rule.burst.unwrap_or(rule.requests)).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(burst);
                Arc::new(
                    RateLimiter::<u64, LimiterStates, DefaultClock>::new(
                        quota,
                        LimiterStates::default(),
                        DefaultClock::default(),
                    )
                    .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    /// Loads saved quota counters (so a restart does not reset quotas).
    pub async fn load_quotas(&self, store: &pinpoint_store::Store) -> Result<(), pinpoint_store::StoreError> {
        let since = pinpoint_store::now_ms() - QUOTA_HORIZON_MS;
        let saved = store.quota_usage(since).await?;
        let counts = self.quota_counts.pin();
        for (quota, org, window, used) in saved {
            counts.insert((quota, org, window), AtomicU64::new(used));
        }
        Ok(())
    }

    /// Saves quota counters; run periodically and at shutdown.
    pub async fn save_quotas(&self, store: &pinpoint_store::Store) -> Result<(), pinpoint_store::StoreError> {
        let counters: Vec<_> = self
            .quota_counts
            .pin()
            .iter()
            .map(|((q, o, w), used)| (q.clone(), o.clone(), *w, used.load(Ordering::Relaxed)))
            .collect();
        store
            .save_quota_usage(&counters, pinpoint_store::now_ms() - QUOTA_HORIZON_MS)
            .await
    }

    /// Forgets idle keys and past quota windows; run periodically.
    pub fn housekeeping(&self, now_ms: i64) {
        for limiter in self.limiters.lock().unwrap_or_else(|p| p.into_inner()).values() {
            limiter.retain_recent();
        }
        self.quota_counts
            .pin()
            .retain(|(_, _, start), _| now_ms - *start < QUOTA_HORIZON_MS);
    }
}

/// Quota windows older than this (longer than any month) are forgotten.
const QUOTA_HORIZON_MS: i64 = 32 * 86_400_000;

struct Limit {
    rule: RateLimitRule,
    limiter: Arc<KeyedLimiter>,
    /// The headers that do not change per request, built once.
    policy_header: HeaderValue,
    limit_header: HeaderValue,
    /// `"<id>";r=`, the start of every `RateLimit` value (interned, see [`kept`]).
    ratelimit_prefix: &'static str,
}

pub struct RateFilter {
    limits: Vec<Limit>,
    quotas: Vec<QuotaRule>,
    registry: Arc<RateRegistry>,
    clock: DefaultClock,
}

impl RateFilter {
    pub fn new(limits: &[RateLimitRule], quotas: &[QuotaRule], registry: Arc<RateRegistry>) -> Self {
        RateFilter {
            limits: limits
                .iter()
                .map(|rule| Limit {
                    limiter: registry.limiter(rule),
                    policy_header: header(format!("\"{}\";q={};w={}", rule.id, rule.requests, rule.per_seconds)),
                    limit_header: header(rule.burst.unwrap_or(rule.requests).to_string()),
                    ratelimit_prefix: kept(format!("\"{}\";r=", rule.id)),
                    rule: rule.clone(),
                })
                .collect(),
            quotas: quotas.to_vec(),
            registry,
            clock: DefaultClock::default(),
        }
    }
}

/// A header value that never changes for a configured limit, as a static value: cloning it
/// per response then writes no shared reference count (which, with both cores answering
/// for one limit, costs more than the copy it saves).
fn header(text: String) -> HeaderValue {
    let text = kept(text);
    HeaderValue::from_str(text)
        .map(|_| HeaderValue::from_static(text))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The process's one copy of a header text that belongs to a configured limit. Each
/// distinct text is kept once for the life of the process, so config reloads add only
/// texts never seen before, and equal texts are the same pointer.
fn kept(text: String) -> &'static str {
    static TEXTS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut texts = TEXTS.lock().unwrap_or_else(|p| p.into_inner());
    let texts = texts.get_or_insert_with(HashSet::new);
    match texts.get(text.as_str()) {
        Some(kept) => kept,
        None => {
            let kept: &'static str = Box::leak(text.into_boxed_str());
            texts.insert(kept);
            kept
        }
    }
}

fn applies(routes: &Option<Vec<String>>, route_id: Option<&str>) -> bool {
    routes
        .as_ref()
        .is_none_or(|ids| route_id.is_some_and(|r| ids.iter().any(|i| i == r)))
}

/// What a limiter key counts: one API key, principal, organization, route or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Key,
    Principal,
    Org,
    Route,
    Ip,
}

impl LimitKind {
    fn as_str(self) -> &'static str {
        match self {
            LimitKind::Key => "key",
            LimitKind::Principal => "principal",
            LimitKind::Org => "org",
            LimitKind::Route => "route",
            LimitKind::Ip => "ip",
        }
    }
}

/// The limiter key of `(kind, id)`. Directory entries hash theirs once at load (keys,
/// principals, organizations); routes and addresses are hashed per request.
pub fn limiter_key(kind: LimitKind, id: &str) -> u64 {
    hashed(kind, &KeyPart::Str(id))
}

/// What a limit counts by, for this request: the limiter key, and what it names.
fn limit_key<'c>(by: LimitKey, ctx: &'c RequestCtx<'_>) -> Option<(u64, LimitKind, KeyPart<'c>)> {
    let identity = ctx.identity.as_ref();
    let principal = |i: &'c crate::identity::Identity| {
        i.principal
            .as_ref()
            .map(|p| (p.rate_key, LimitKind::Principal, KeyPart::Str(p.principal.id.as_str())))
    };
    match by {
        LimitKey::Key => identity.map(|i| match &i.credential {
            Credential::Key(key) => (key.rate_key, LimitKind::Key, KeyPart::Str(key.id())),
            // A token counts against its principal (or, without one, its organization).
            Credential::Token(_) => principal(i).unwrap_or((i.org.rate_key, LimitKind::Org, KeyPart::Str(i.org_id()))),
        }),
        LimitKey::Principal => identity.and_then(principal),
        LimitKey::Org => identity.map(|i| (i.org.rate_key, LimitKind::Org, KeyPart::Str(i.org_id()))),
        LimitKey::Route => ctx.route_id.as_deref().map(|r| {
            let part = KeyPart::Str(r);
            (hashed(LimitKind::Route, &part), LimitKind::Route, part)
        }),
        LimitKey::ClientIp => {
            let part = KeyPart::Ip(ctx.client_ip);
            Some((hashed(LimitKind::Ip, &part), LimitKind::Ip, part))
        }
    }
}

/// The id part of a limiter key, borrowed from the request.
#[derive(Hash)]
enum KeyPart<'c> {
    Str(&'c str),
    Ip(std::net::IpAddr),
}

impl std::fmt::Display for KeyPart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPart::Str(s) => f.write_str(s),
            KeyPart::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// SipHash under a per-process random seed: the ids are caller-influenced (addresses,
/// presented key ids), so callers must not be able to aim at one another's budgets.
fn hashed(kind: LimitKind, part: &KeyPart<'_>) -> u64 {
    use std::hash::{BuildHasher, Hash};
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let mut h = SEED.get_or_init(Default::default).build_hasher();
    kind.as_str().hash(&mut h);
    part.hash(&mut h);
    h.finish()
}

impl Filter for RateFilter {
    fn name(&self) -> &'static str {
        "rate"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        let mut tightest: Option<(&Limit, u32, u64)> = None;
        let mut applied = false;
        for limit in &self.limits {
            if !applies(&limit.rule.routes, ctx.route_id.as_deref()) {
                continue;
            }
            let Some((key, kind, part)) = limit_key(limit.rule.by, ctx) else {
                continue;
            };
            applied = true;
            let burst = limit.rule.burst.unwrap_or(limit.rule.requests);
            let per_cell_ms = u64::from(limit.rule.per_seconds) * 1000 / u64::from(limit.rule.requests.max(1));
            match limit.limiter.check_key(&key) {
                Ok(state) => {
                    let remaining = state.remaining_burst_capacity();
                    let reset = (u64::from(burst - remaining.min(burst)) * per_cell_ms).div_ceil(1000);
                    if tightest.is_none_or(|(_, r, _)| remaining < r) {
                        tightest = Some((limit, remaining, reset));
                    }
                }
                Err(not_until) => {
                    let who = format!("{} {part}", kind.as_str());
                    let wait = not_until.wait_time_from(self.clock.now());
                    let retry = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let reset = (u64::from(burst) * per_cell_ms).div_ceil(1000);
                    push_headers(ctx, limit, 0, reset.max(retry));
                    return Check::Ready(Outcome::Deny(
                        Denial::new(
                            Reason::RateLimited,
                            format!("Rate limit `{}` exceeded; retry in {retry} s.", limit.rule.id),
                        )
                        .rule(limit.rule.id.clone())
                        .note(who)
                        .header("retry-after", retry.max(1).to_string()),
                    ));
                }
            }
        }
        if let Some((limit, remaining, reset)) = tightest {
            push_headers(ctx, limit, remaining, reset);
        }
        if let Some(identity) = ctx.identity.as_ref() {
            let now = ctx.at_ms;
            for quota in &self.quotas {
                if !applies(&quota.routes, ctx.route_id.as_deref())
                    || !quota
                        .orgs
                        .as_ref()
                        .is_none_or(|o| o.iter().any(|id| *id == identity.org_id()))
                {
                    continue;
                }
                applied = true;
                let (start, end) = match quota.period {
                    QuotaPeriod::Day => pinpoint_core::time::day_window(now),
                    QuotaPeriod::Month => pinpoint_core::time::month_window(now),
                };
                let used = self
                    .registry
                    .quota_counts
                    .pin()
                    .get_or_insert_with((quota.id.clone(), identity.org_id().to_string(), start), || {
                        AtomicU64::new(0)
                    })
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if used > quota.requests {
                    let retry = ((end - now).max(0) as u64).div_ceil(1000);
                    return Check::Ready(Outcome::Deny(
                        Denial::new(
                            Reason::QuotaExhausted,
                            format!(
                                "Your organization's {} quota `{}` is used up.",
                                period_name(quota.period),
                                quota.id
                            ),
                        )
                        .rule(quota.id.clone())
                        .note(format!(
                            "org {} used {} of {}",
                            identity.org_id(),
                            used - 1,
                            quota.requests
                        ))
                        .header("retry-after", retry.to_string()),
                    ));
                }
            }
        }
        Check::Ready(if applied {
            Outcome::allow()
        } else {
            Outcome::NotApplicable
        })
    }
}

fn period_name(p: QuotaPeriod) -> &'static str {
    match p {
        QuotaPeriod::Day => "daily",
        QuotaPeriod::Month => "monthly",
    }
}

/// The rate-limit headers of one response, held inline (no allocation, no header-name
/// clones) until the response exists; see [`crate::pipeline::ResponseHeaders`].
pub struct RateHeaders {
    policy: HeaderValue,
    ratelimit: HeaderValue,
    limit: HeaderValue,
    remaining: HeaderValue,
    reset: HeaderValue,
}

impl RateHeaders {
    /// How many headers [`RateHeaders::append_to`] adds.
    pub const COUNT: usize = 5;

    /// Appends `RateLimit-Policy`, `RateLimit` and `X-RateLimit-Limit` / `-Remaining` /
    /// `-Reset`.
    pub fn append_to(self, headers: &mut HeaderMap) {
        headers.append(&RATELIMIT_POLICY, self.policy);
        headers.append(&RATELIMIT, self.ratelimit);
        headers.append(&X_RATELIMIT_LIMIT, self.limit);
        headers.append(&X_RATELIMIT_REMAINING, self.remaining);
        headers.append(&X_RATELIMIT_RESET, self.reset);
    }
}

/// The per-request values (`RateLimit`, `X-RateLimit-Remaining`, `-Reset`) a thread
/// rendered last for one limit. A caller well under its limit gets the same values on
/// every request (its full budget less one, reset in one emission interval), so they are
/// rendered once and cloned after that; only this thread touches their reference counts.
struct LastRendered {
    /// The limit's interned `"<id>";r=` text: the same pointer means the same limit text.
    prefix: &'static str,
    remaining: u32,
    reset: u64,
    values: RenderedValues,
}

/// `RateLimit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` for one response.
#[derive(Clone)]
struct RenderedValues {
    ratelimit: HeaderValue,
    remaining: HeaderValue,
    reset: HeaderValue,
}

/// Limits whose last values a thread keeps; beyond this, the oldest entry is replaced.
const RENDERED_PER_THREAD: usize = 16;

thread_local! {
    static LAST_RENDERED: std::cell::RefCell<Vec<LastRendered>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Adds the rate-limit headers. The two that never change are static values (see
/// [`header`]); the three that change per request come from this thread's
/// [`LastRendered`] when they repeat, or are rendered, each into a buffer of its exact size
/// (`HeaderValue::from(u32)` and a `String` with spare capacity cost a second allocation
/// for `Bytes`' wrapper).
fn push_headers(ctx: &mut RequestCtx<'_>, limit: &Limit, remaining: u32, reset: u64) {
    let values = LAST_RENDERED.with(|cell| {
        let Ok(mut rendered) = cell.try_borrow_mut() else {
            return render(limit.ratelimit_prefix, remaining, reset);
        };
        let slot = rendered
            .iter()
            .position(|r| std::ptr::eq(r.prefix, limit.ratelimit_prefix));
        if let Some(last) = slot.map(|i| &rendered[i]) {
            if last.remaining == remaining && last.reset == reset {
                return last.values.clone();
            }
        }
        let values = render(limit.ratelimit_prefix, remaining, reset);
        let entry = LastRendered {
            prefix: limit.ratelimit_prefix,
            remaining,
            reset,
            values: values.clone(),
        };
        match slot {
            Some(i) => rendered[i] = entry,
            None => {
                if rendered.len() >= RENDERED_PER_THREAD {
                    rendered.remove(0);
                }
                rendered.push(entry);
            }
        }
        values
    });
    ctx.response_headers.rate = Some(RateHeaders {
        policy: limit.policy_header.clone(),
        ratelimit: values.ratelimit,
        limit: limit.limit_header.clone(),
        remaining: values.remaining,
        reset: values.reset,
    });
}

/// Renders `RateLimit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`, each copied once
/// into a buffer of its exact size, which `Bytes` takes over without a wrapper allocation.
fn render(prefix: &str, remaining: u32, reset: u64) -> RenderedValues {
    let (mut remaining_digits, mut reset_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (remaining, reset) = (remaining_digits.format(remaining), reset_digits.format(reset));
    let value = |parts: &[&[u8]]| {
        let mut buffer = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| buffer.extend_from_slice(p));
        HeaderValue::from_maybe_shared(bytes::Bytes::from(buffer)).unwrap_or_else(|_| HeaderValue::from_static(""))
    };
    RenderedValues {
        ratelimit: value(&[prefix.as_bytes(), remaining.as_bytes(), b";t=", reset.as_bytes()]),
        remaining: value(&[remaining.as_bytes()]),
        reset: value(&[reset.as_bytes()]),
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per_seconds: u32) -> Arc<KeyedLimiter> {
        let rule = RateLimitRule {
            id: "t".into(),
            by: LimitKey::Key,
            requests,
            per_seconds,
            burst: None,
            routes: None,
        };
        RateRegistry::default().limiter(&rule)
    }

    #[test]
    fn the_lock_free_state_store_counts_each_key_apart_and_keeps_busy_keys() {
        let limiter = limiter(2, 3600);
        assert!(limiter.check_key(&1).is_ok());
        assert!(limiter.check_key(&1).is_ok());
        assert!(
            limiter.check_key(&1).is_err(),
            "the third request in the hour is over the limit"
        );
        let state = limiter.check_key(&2).expect("another key has its own budget");
        assert_eq!(state.remaining_burst_capacity(), 1);
        assert_eq!(limiter.len(), 2);
        // Housekeeping keeps keys whose state still differs from a fresh one.
        limiter.retain_recent();
        assert!(
            limiter.check_key(&1).is_err(),
            "a housekeeping pass does not reset a budget"
        );
    }

    #[test]
    fn repeated_values_are_rendered_once_per_thread_and_new_values_anew() {
        let rule = RateLimitRule {
            id: "render".into(),
            by: LimitKey::Key,
            requests: 10,
            per_seconds: 1,
            burst: None,
            routes: None,
        };
        let layer = RateFilter::new(&[rule], &[], Arc::new(RateRegistry::default()));
        let limit = &layer.limits[0];
        let headers = http::HeaderMap::new();
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let render = |remaining, reset| {
            let mut ctx = RequestCtx::new(&http::Method::GET, "/", None, &headers, peer, peer.ip(), "t");
            push_headers(&mut ctx, limit, remaining, reset);
            let mut map = http::HeaderMap::new();
            ctx.response_headers.append_to(&mut map);
            map
        };
        let text = |map: &http::HeaderMap, name: &str| map[name].to_str().unwrap().to_owned();
        let first = render(9, 1);
        assert_eq!(text(&first, "ratelimit-policy"), "\"render\";q=10;w=1");
        assert_eq!(text(&first, "ratelimit"), "\"render\";r=9;t=1");
        assert_eq!(text(&first, "x-ratelimit-limit"), "10");
        assert_eq!(text(&first, "x-ratelimit-remaining"), "9");
        assert_eq!(text(&first, "x-ratelimit-reset"), "1");
        let again = render(9, 1);
        assert_eq!(
            again["ratelimit"].as_bytes().as_ptr(),
            first["ratelimit"].as_bytes().as_ptr(),
            "the same values are cloned, not rendered again"
        );
        let next = render(8, 1);
        assert_eq!(text(&next, "ratelimit"), "\"render\";r=8;t=1");
        assert_eq!(text(&next, "x-ratelimit-remaining"), "8");
        assert_eq!(text(&next, "x-ratelimit-reset"), "1");
        assert_eq!(
            text(&first, "ratelimit"),
            "\"render\";r=9;t=1",
            "earlier responses keep their values"
        );
    }

    #[test]
    fn constant_header_values_are_kept_once_per_text() {
        let a = header("\"t\";q=5;w=1".to_string());
        let b = header("\"t\";q=5;w=1".to_string());
        assert_eq!(a, "\"t\";q=5;w=1");
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "a reload reuses the kept text"
        );
        assert_eq!(header("bad\nvalue".to_string()), "");
    }
}
