//! The rate filter: GCRA limits keyed by API key, principal, organization, route or client
//! address, and daily/monthly quotas per organization, counted in a
//! [`crate::world::RateState`]. Every limited route's responses carry IETF
//! `RateLimit-Policy` / `RateLimit` and `X-RateLimit-*` headers; a refusal adds
//! `Retry-After`. Codes: `rate.limited`, `quota.exhausted` (429).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pinpoint_core::config::{LimitKey, QuotaPeriod, QuotaRule, RateLimitRule};
use pinpoint_core::{Denial, Outcome, Reason};

use crate::identity::{Credential, Identity};
use crate::pipeline::{Check, Filter, RequestCtx};
use crate::world::{LimitAnswer, Limiter, RateState};

struct Limit {
    rule: RateLimitRule,
    limiter: Arc<dyn Limiter>,
    /// `RateLimit-Policy`, which does not change per request.
    policy_header: HeaderValue,
    /// `X-RateLimit-Limit`, likewise.
    limit_header: HeaderValue,
    /// `"<id>";r=`, the start of every `RateLimit` value.
    ratelimit_prefix: Box<str>,
}

pub struct RateFilter {
    limits: Vec<Limit>,
    quotas: Vec<QuotaRule>,
    state: Arc<dyn RateState>,
}

impl RateFilter {
    pub fn new(limits: &[RateLimitRule], quotas: &[QuotaRule], state: Arc<dyn RateState>) -> Self {
        RateFilter {
            limits: limits
                .iter()
                .map(|rule| Limit {
                    limiter: state.limiter(rule),
                    policy_header: header(format!("\"{}\";q={};w={}", rule.id, rule.requests, rule.per_seconds)),
                    limit_header: HeaderValue::from(rule.burst.unwrap_or(rule.requests)),
                    ratelimit_prefix: format!("\"{}\";r=", rule.id).into_boxed_str(),
                    rule: rule.clone(),
                })
                .collect(),
            quotas: quotas.to_vec(),
            state,
        }
    }
}

/// A header value from text built of a config's ids (validated as identifiers).
fn header(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn applies(routes: &Option<Vec<String>>, route_id: Option<&str>) -> bool {
    routes
        .as_ref()
        .is_none_or(|ids| route_id.is_some_and(|r| ids.iter().any(|i| i == r)))
}

/// What a limit counts by, for this request: the kind and the id (for the limiter key and
/// the trace).
fn counted_as<'c>(by: LimitKey, ctx: &'c RequestCtx<'_>) -> Option<(&'static str, KeyPart<'c>)> {
    let identity = ctx.identity.as_ref();
    let principal = |i: &'c Identity| {
        i.principal
            .as_ref()
            .map(|p| ("principal", KeyPart::Str(p.principal.id.as_str())))
    };
    match by {
        LimitKey::Key => identity.map(|i| match &i.credential {
            Credential::Key(key) => ("key", KeyPart::Str(key.id())),
            // A token counts against its principal (or, without one, its organization).
            Credential::Token(_) | Credential::ClientCert(_) => {
                principal(i).unwrap_or(("org", KeyPart::Str(i.org_id())))
            }
        }),
        LimitKey::Principal => identity.and_then(principal),
        LimitKey::Org => identity.map(|i| ("org", KeyPart::Str(i.org_id()))),
        LimitKey::Route => ctx.route_id.as_deref().map(|r| ("route", KeyPart::Str(r))),
        LimitKey::ClientIp => Some(("ip", KeyPart::Ip(ctx.client_ip))),
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

/// The limiter key of `(kind, id)`: SipHash under a per-process random seed. The ids are
/// caller-influenced (addresses, presented key ids), so callers must not be able to aim at
/// one another's budgets; a collision (two callers sharing a budget) has odds of about
/// n²/2⁶⁵.
fn limiter_key(kind: &str, part: &KeyPart<'_>) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let mut h = SEED.get_or_init(Default::default).build_hasher();
    kind.hash(&mut h);
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
            let Some((kind, part)) = counted_as(limit.rule.by, ctx) else {
                continue;
            };
            applied = true;
            let burst = limit.rule.burst.unwrap_or(limit.rule.requests);
            let per_cell_ms = u64::from(limit.rule.per_seconds) * 1000 / u64::from(limit.rule.requests.max(1));
            match limit.limiter.take(limiter_key(kind, &part)) {
                LimitAnswer::Allowed { remaining } => {
                    let reset = (u64::from(burst - remaining.min(burst)) * per_cell_ms).div_ceil(1000);
                    if tightest.is_none_or(|(_, r, _)| remaining < r) {
                        tightest = Some((limit, remaining, reset));
                    }
                }
                LimitAnswer::Limited { wait } => {
                    let who = format!("{kind} {part}");
                    let retry = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let reset = (u64::from(burst) * per_cell_ms).div_ceil(1000);
                    add_headers(ctx, limit, 0, reset.max(retry));
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
            add_headers(ctx, limit, remaining, reset);
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
                let used = self.state.spend_quota(&quota.id, identity.org_id(), start);
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

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Adds `RateLimit-Policy`, `RateLimit` and `X-RateLimit-Limit` / `-Remaining` / `-Reset`
/// to every response of the request. The three values that change per request are
/// rendered with `itoa` into buffers of their exact size, which `Bytes` takes over as they
/// are: with `format!` and `HeaderValue::from`, the chain cost about 2,500 instructions a
/// request more (bench/instructions.sh).
fn add_headers(ctx: &mut RequestCtx<'_>, limit: &Limit, remaining: u32, reset: u64) {
    let (mut remaining_digits, mut reset_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (remaining, reset) = (remaining_digits.format(remaining), reset_digits.format(reset));
    let value = |parts: &[&[u8]]| {
        let mut buffer = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| buffer.extend_from_slice(p));
        HeaderValue::from_maybe_shared(bytes::Bytes::from(buffer)).unwrap_or_else(|_| HeaderValue::from_static(""))
    };
    ctx.response_headers.extend([
        (RATELIMIT_POLICY.clone(), limit.policy_header.clone()),
        (
            RATELIMIT.clone(),
            value(&[
                limit.ratelimit_prefix.as_bytes(),
                remaining.as_bytes(),
                b";t=",
                reset.as_bytes(),
            ]),
        ),
        (X_RATELIMIT_LIMIT.clone(), limit.limit_header.clone()),
        (X_RATELIMIT_REMAINING.clone(), value(&[remaining.as_bytes()])),
        (X_RATELIMIT_RESET.clone(), value(&[reset.as_bytes()])),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_state::MemoryRateState;

    #[test]
    fn limited_routes_answer_with_their_rate_limit_headers() {
        let rule = RateLimitRule {
            id: "render".into(),
            by: LimitKey::Route,
            requests: 10,
            per_seconds: 1,
            burst: None,
            routes: None,
        };
        let filter = RateFilter::new(&[rule], &[], Arc::new(MemoryRateState::default()));
        let headers = http::HeaderMap::new();
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut ctx = RequestCtx::new(&http::Method::GET, "/", None, &headers, peer, peer.ip(), "t", 0);
            ctx.route_id = Some(Arc::from("r"));
            assert!(matches!(
                crate::block_on(async {
                    match filter.check(&mut ctx) {
                        Check::Ready(o) => o,
                        Check::Pending(f) => f.await,
                    }
                }),
                Outcome::Allow { .. }
            ));
            answers.push(ctx.response_headers.into_iter().collect::<http::HeaderMap>());
        }
        let text = |map: &http::HeaderMap, name: &str| map[name].to_str().unwrap().to_owned();
        assert_eq!(text(&answers[0], "ratelimit-policy"), "\"render\";q=10;w=1");
        assert_eq!(text(&answers[0], "ratelimit"), "\"render\";r=9;t=1");
        assert_eq!(text(&answers[0], "x-ratelimit-limit"), "10");
        assert_eq!(text(&answers[0], "x-ratelimit-remaining"), "9");
        assert_eq!(text(&answers[0], "x-ratelimit-reset"), "1");
        assert_eq!(text(&answers[1], "ratelimit"), "\"render\";r=8;t=1");
        assert_eq!(text(&answers[1], "x-ratelimit-remaining"), "8");
    }
}
