//! The rate filter: GCRA limits keyed by API key, principal, organization, route or client
//! address, and daily/monthly quotas per organization, counted in a
//! [`crate::world::RateState`]. Every limited route's responses carry IETF
//! `RateLimit-Policy` / `RateLimit` and `X-RateLimit-*` headers; a refusal adds
//! `Retry-After`. Codes: `rate.limited`, `quota.exhausted` (429).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pinpoint_core::config::{LimitKey, OnBackendError, QuotaPeriod, QuotaRule, RateLimitRule};
use pinpoint_core::{Denial, Outcome, Reason};

use crate::identity::{Credential, Identity};
use crate::pipeline::{Check, Filter, RequestCtx};
use crate::world::{Counted, CountedId, LimitAnswer, Limiter, RateState};

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

/// What a limit counts by, for this request.
fn counted_as<'c>(by: LimitKey, ctx: &'c RequestCtx<'_>) -> Option<Counted<'c>> {
    let identity = ctx.identity.as_ref();
    let principal = |i: &'c Identity| {
        i.principal
            .as_ref()
            .map(|p| ("principal", CountedId::Str(p.principal.id.as_str())))
    };
    let (kind, id) = match by {
        LimitKey::Key => identity.map(|i| match &i.credential {
            Credential::Key(key) => ("key", CountedId::Str(key.id())),
            // A token counts against its principal (or, without one, its organization).
            Credential::Token { .. } | Credential::ClientCert(_) => {
                principal(i).unwrap_or(("org", CountedId::Str(i.org_id())))
            }
        }),
        LimitKey::Principal => identity.and_then(principal),
        LimitKey::Org => identity.map(|i| ("org", CountedId::Str(i.org_id()))),
        LimitKey::Route => ctx.route_id.as_deref().map(|r| ("route", CountedId::Str(r))),
        LimitKey::ClientIp => Some(("ip", CountedId::Ip(ctx.client_ip))),
    }?;
    Some(Counted::new(kind, id))
}

impl Filter for RateFilter {
    fn name(&self) -> &'static str {
        "rate"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        let route = ctx.route_id.as_deref();
        let any_limit = self.limits.iter().any(|l| applies(&l.rule.routes, route));
        let any_quota = ctx.identity.is_some() && self.quotas.iter().any(|q| applies(&q.routes, route));
        if !(any_limit || any_quota) {
            return Check::Ready(Outcome::NotApplicable);
        }
        // Shared state answers after a round trip; in-process state at once (the future is
        // then ready on its first poll).
        Check::Pending(Box::pin(self.decide(ctx)))
    }
}

impl RateFilter {
    async fn decide(&self, ctx: &mut RequestCtx<'_>) -> Outcome {
        let mut tightest: Option<(&Limit, u32, u64)> = None;
        let mut applied = false;
        // A limit or quota that could not be counted and lets requests through then: the
        // request passes (if nothing else refuses it) with this traced as a would-deny.
        let mut uncounted: Option<Denial> = None;
        for limit in &self.limits {
            if !applies(&limit.rule.routes, ctx.route_id.as_deref()) {
                continue;
            }
            let Some(who) = counted_as(limit.rule.by, ctx) else {
                continue;
            };
            applied = true;
            let burst = limit.rule.burst.unwrap_or(limit.rule.requests);
            let per_cell_ms = u64::from(limit.rule.per_seconds) * 1000 / u64::from(limit.rule.requests.max(1));
            match limit.limiter.take(&who).get().await {
                LimitAnswer::Allowed { remaining } => {
                    let reset = (u64::from(burst - remaining.min(burst)) * per_cell_ms).div_ceil(1000);
                    if tightest.is_none_or(|(_, r, _)| remaining < r) {
                        tightest = Some((limit, remaining, reset));
                    }
                }
                LimitAnswer::Limited { wait } => {
                    let note = format!("{} {}", who.kind, who.id);
                    let retry = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let reset = (u64::from(burst) * per_cell_ms).div_ceil(1000);
                    add_headers(ctx, limit, 0, reset.max(retry));
                    return Outcome::Deny(
                        Denial::new(
                            Reason::RateLimited,
                            format!("Rate limit `{}` exceeded; retry in {retry} s.", limit.rule.id),
                        )
                        .rule(limit.rule.id.clone())
                        .note(note)
                        .header("retry-after", retry.max(1).to_string()),
                    );
                }
                LimitAnswer::Unavailable { why } => {
                    match backend_unavailable(&limit.rule.id, limit.rule.on_backend_error, &why) {
                        Err(refusal) => return Outcome::Deny(refusal),
                        Ok(reported) => uncounted = uncounted.or(Some(reported)),
                    }
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
                let used = match self
                    .state
                    .spend_quota(&quota.id, identity.org_id(), (start, end))
                    .get()
                    .await
                {
                    Ok(used) => used,
                    Err(why) => match backend_unavailable(&quota.id, quota.on_backend_error, &why) {
                        Err(refusal) => return Outcome::Deny(refusal),
                        Ok(reported) => {
                            uncounted = uncounted.or(Some(reported));
                            continue;
                        }
                    },
                };
                if used > quota.requests {
                    let retry = ((end - now).max(0) as u64).div_ceil(1000);
                    return Outcome::Deny(
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
                    );
                }
            }
        }
        match (uncounted, applied) {
            (Some(reported), _) => Outcome::Deny(reported),
            (None, true) => Outcome::allow(),
            (None, false) => Outcome::NotApplicable,
        }
    }
}

/// The answer when `rule`'s shared state could not count a request: `Err` with the
/// refusal (503), or `Ok` with the report-only denial that lets it through, traced.
fn backend_unavailable(rule: &str, on_error: OnBackendError, why: &str) -> Result<Denial, Denial> {
    let denial = Denial::new(
        Reason::RateBackendUnavailable,
        "Rate limits cannot be checked right now; retry shortly.",
    )
    .rule(rule.to_owned())
    .note(format!("shared rate state unavailable: {why}"));
    match on_error {
        OnBackendError::Refuse => Err(denial.header("retry-after", "1".to_owned())),
        OnBackendError::Allow => Ok(denial.report_only()),
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
/// to every response of the request. The values that change per request are written once,
/// as `RateLimit`'s (`"<id>";r=<remaining>;t=<reset>`), into one buffer that `Bytes` takes
/// over; `X-RateLimit-Remaining` and `-Reset` are slices of it. With `format!` and
/// `HeaderValue::from`, the chain cost about 2,500 instructions a request more; with a
/// buffer per value, about 180 more (bench/instructions.sh, the rate filter inclusive).
fn add_headers(ctx: &mut RequestCtx<'_>, limit: &Limit, remaining: u32, reset: u64) {
    let (mut remaining_digits, mut reset_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (remaining, reset) = (remaining_digits.format(remaining), reset_digits.format(reset));
    let prefix = limit.ratelimit_prefix.as_bytes();
    let mut buffer = Vec::with_capacity(prefix.len() + remaining.len() + 3 + reset.len());
    buffer.extend_from_slice(prefix);
    buffer.extend_from_slice(remaining.as_bytes());
    buffer.extend_from_slice(b";t=");
    buffer.extend_from_slice(reset.as_bytes());
    let ratelimit = bytes::Bytes::from(buffer);
    let remaining_at = prefix.len()..prefix.len() + remaining.len();
    let reset_at = ratelimit.len() - reset.len()..ratelimit.len();
    let value =
        |bytes: bytes::Bytes| HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static(""));
    ctx.response_headers.extend([
        (RATELIMIT_POLICY.clone(), limit.policy_header.clone()),
        (RATELIMIT.clone(), value(ratelimit.clone())),
        (X_RATELIMIT_LIMIT.clone(), limit.limit_header.clone()),
        (X_RATELIMIT_REMAINING.clone(), value(ratelimit.slice(remaining_at))),
        (X_RATELIMIT_RESET.clone(), value(ratelimit.slice(reset_at))),
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
            on_backend_error: Default::default(),
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
