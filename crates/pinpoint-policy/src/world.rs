//! The engine's seams: everything the filters need from the world, as traits the engine
//! declares and its host implements. The gateway implements them over its in-memory
//! directory, token service and store; an evaluation (replaying traffic against a
//! proposed config) implements them with a fixed clock, read-only identities and scratch
//! rate state, so the same filters decide the same way with no side effects.

use std::sync::Arc;
use std::time::Duration;

use pinpoint_core::config::{JwtConfig, RateLimitRule};
use pinpoint_core::Decision;

use crate::identity::{Claims, KeyEntry, KeyRefusal, PrincipalEntry, TokenRefusal};

/// Where a request's one wall-clock reading comes from.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that always reads the same time (evaluations, tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}

/// Keys, principals, organizations and tokens, as the authentication filter asks for them.
pub trait Identities: Send + Sync {
    /// Checks a presented API key: shape, id, secret (in constant time), revocation, expiry.
    fn verify_key(&self, presented: &str, now_ms: i64) -> Result<Arc<KeyEntry>, KeyRefusal>;
    /// A key by id, whatever its state (to name the owner of a refused key).
    fn key_by_id(&self, id: &str) -> Option<Arc<KeyEntry>>;
    /// A principal by id.
    fn principal(&self, id: &str) -> Option<Arc<PrincipalEntry>>;
    /// Verifies a bearer token Pinpoint signed.
    fn verify_token(&self, jwt: &JwtConfig, token: &str) -> Result<Claims, TokenRefusal>;
    /// Whether `kid` names one of Pinpoint's signing keys (a token of its own).
    fn token_kid_known(&self, kid: &str) -> bool;
    /// A key authenticated a request at `now_ms` (the live source writes last-use times
    /// behind; an evaluation writes nothing).
    fn key_used(&self, key: &KeyEntry, now_ms: i64);
}

/// A result that may need I/O to arrive (a shared cache's round trip).
pub type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An answer now (in-process state), or after a round trip (shared state).
pub enum Answer<'a, T> {
    Ready(T),
    Later(Pending<'a, T>),
}

impl<T> Answer<'_, T> {
    pub async fn get(self) -> T {
        match self {
            Answer::Ready(value) => value,
            Answer::Later(pending) => pending.await,
        }
    }
}

/// What one limiter says about one more request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitAnswer {
    /// Allowed, with this much burst left.
    Allowed { remaining: u32 },
    /// Over the limit until `wait` from now.
    Limited { wait: Duration },
    /// The state could not be reached; says why (for the operator's trace).
    Unavailable { why: String },
}

/// Whom a limit counts a request as: the kind (`key`, `principal`, `org`, `route`, `ip`)
/// and the id, with a seeded hash of both for in-process maps.
pub struct Counted<'a> {
    pub kind: &'static str,
    pub id: CountedId<'a>,
    /// SipHash of kind and id under a per-process random seed. The ids are
    /// caller-influenced (addresses, presented key ids), so callers must not be able to
    /// aim at one another's budgets; a collision (two callers sharing a budget) has odds
    /// of about n²/2⁶⁵. Shared state keys on the text instead (the same on every replica).
    pub hash: u64,
}

/// The id part of [`Counted`], borrowed from the request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CountedId<'a> {
    Str(&'a str),
    Ip(std::net::IpAddr),
}

impl std::fmt::Display for CountedId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountedId::Str(s) => f.write_str(s),
            CountedId::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl<'a> Counted<'a> {
    pub fn new(kind: &'static str, id: CountedId<'a>) -> Counted<'a> {
        use std::hash::{BuildHasher, Hash, Hasher};
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        let mut h = SEED.get_or_init(Default::default).build_hasher();
        kind.hash(&mut h);
        id.hash(&mut h);
        Counted {
            kind,
            id,
            hash: h.finish(),
        }
    }
}

/// One configured limit's state across callers.
pub trait Limiter: Send + Sync {
    /// Counts one request against `who`'s budget.
    fn take<'a>(&'a self, who: &'a Counted<'a>) -> Answer<'a, LimitAnswer>;
}

/// Rate-limit and quota state, which outlives config revisions.
pub trait RateState: Send + Sync {
    /// The limiter of `rule`: the same one for as long as the rule is unchanged, so a
    /// reload does not reset budgets.
    fn limiter(&self, rule: &RateLimitRule) -> Arc<dyn Limiter>;
    /// Counts one request against an organization's quota window (`window` is its start
    /// and end, Unix ms); the count, this one included, or why it could not be counted.
    fn spend_quota<'a>(
        &'a self,
        quota_id: &'a str,
        org_id: &'a str,
        window: (i64, i64),
    ) -> Answer<'a, Result<u64, String>>;
}

/// Whether a proof is used for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    Yes,
    /// Seen before; the note says where it was remembered (for the operator's trace).
    No {
        note: &'static str,
    },
}

/// Proofs already used (cloud identity exchange): a proof works once, across restarts and
/// replicas as far as the cache reaches.
pub trait ReplayCache: Send + Sync {
    /// Records `signature` as used until `until_s` (Unix seconds; it is now `now_s`), or
    /// says it was used before; `Err` says why the cache could not tell.
    fn first_use<'a>(&'a self, signature: &'a str, until_s: i64, now_s: i64) -> Pending<'a, Result<FirstUse, String>>;
}

/// Where finished decisions go.
pub trait DecisionSink: Send + Sync {
    /// Takes a finished decision; of allowed requests, `sample` is the share whose records
    /// are kept (every decision is counted).
    fn record(&self, decision: Decision, sample: pinpoint_core::config::SampleRate);
}

/// An evaluation's view of a live identity source: every lookup, and no writes (a key
/// used in an evaluation does not get a last-use time).
pub struct ReadOnlyIdentities(pub Arc<dyn Identities>);

impl Identities for ReadOnlyIdentities {
    fn verify_key(&self, presented: &str, now_ms: i64) -> Result<Arc<KeyEntry>, KeyRefusal> {
        self.0.verify_key(presented, now_ms)
    }

    fn key_by_id(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.0.key_by_id(id)
    }

    fn principal(&self, id: &str) -> Option<Arc<PrincipalEntry>> {
        self.0.principal(id)
    }

    fn verify_token(&self, jwt: &JwtConfig, token: &str) -> Result<Claims, TokenRefusal> {
        self.0.verify_token(jwt, token)
    }

    fn token_kid_known(&self, kid: &str) -> bool {
        self.0.token_kid_known(kid)
    }

    fn key_used(&self, _key: &KeyEntry, _now_ms: i64) {}
}
