//! Side-effect-free evaluation: what the live proxy would decide about a request, under a
//! given config, without touching the world. The same edge (canonical request) and the
//! same pipeline run, built on read-only identities (no last-use times), scratch rate
//! state (no budget spent) and a fixed clock; nothing is recorded, counted or forwarded.
//! Replaying recorded traffic against a proposed config builds on this.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};
use pinpoint_core::config::{Config, REASONS_PATH};
use pinpoint_core::{LayerTrace, Reason};
use pinpoint_policy::pipeline::{Pipeline, RequestCtx};
use pinpoint_policy::rate_state::MemoryRateState;
use pinpoint_policy::world::{Clock, Identities, ReadOnlyIdentities};

use crate::edge;
use crate::runtime::{build_pipeline, route_table, World};
use pinpoint_policy::credential_text::OwnCredentials;

/// A config's pipeline, built for evaluation.
pub struct Evaluator {
    config: Config,
    pipeline: Pipeline,
    identities: Arc<dyn Identities>,
    clock: Arc<dyn Clock>,
}

/// What the proxy would do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The enforced refusal's reason, or `None` when the request would be forwarded (or
    /// answered by a filter, as a CORS preflight is).
    pub reason: Option<Reason>,
    /// The trace the live proxy would record (layer timings aside).
    pub trace: Vec<LayerTrace>,
}

impl Evaluator {
    /// An evaluator of `config` over `identities` (read, never written), at `clock`'s time.
    pub fn new(config: Config, identities: Arc<dyn Identities>, clock: Arc<dyn Clock>) -> Evaluator {
        let identities: Arc<dyn Identities> = Arc::new(ReadOnlyIdentities(identities));
        let world = World {
            identities: identities.clone(),
            rate: Arc::new(MemoryRateState::default()),
        };
        let pipeline = build_pipeline(&config, route_table(&config), &world);
        Evaluator {
            config,
            pipeline,
            identities,
            clock,
        }
    }

    /// Decides about one request head from `peer`, as the proxy would.
    pub fn evaluate(
        &self,
        version: Version,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Evaluation {
        if uri.path() == REASONS_PATH {
            return Evaluation {
                reason: None,
                trace: Vec::new(),
            };
        }
        let client_ip = pinpoint_policy::forwarded::client_ip(peer.ip(), headers, &self.config.net.trusted_proxies);
        let is_key_id = |id: &str| self.identities.key_by_id(id).is_some();
        let is_kid = |kid: &str| self.identities.token_kid_known(kid);
        let ours = OwnCredentials {
            key_id: &is_key_id,
            kid: &is_kid,
        };
        let canonical = match edge::canonical_request(version, method, uri, headers, &self.config.server, ours) {
            Ok(canonical) => canonical,
            Err(denial) => {
                return Evaluation {
                    reason: Some(denial.reason),
                    trace: Vec::new(),
                }
            }
        };
        let mut ctx = RequestCtx::new(
            method,
            &canonical.path,
            canonical.host.as_deref(),
            headers,
            peer,
            client_ip,
            "evaluation",
            self.clock.now_ms(),
        );
        ctx.query = uri.query();
        let verdict = pinpoint_policy::block_on(self.pipeline.run(&mut ctx));
        Evaluation {
            reason: verdict.denial.map(|d| d.reason),
            trace: verdict.trace,
        }
    }
}

/// Who can: what the proxy would decide about `method path` (with `Host: host`, from
/// `peer`) for an anonymous caller and for each key presented as a bearer credential,
/// through the same edge and pipeline as [`Evaluator`] (one pipeline built for all of
/// them). Secrets are not needed: the evaluation's identities take a key by its id
/// ([`KeyHolders`]), and refuse it when it is revoked or expired as the live check would.
pub fn who_can(
    config: Config,
    identities: Arc<dyn Identities>,
    now_ms: i64,
    request: &WhoCanRequest<'_>,
    key_ids: &[String],
) -> WhoCan {
    let evaluator = Evaluator::new(
        config,
        Arc::new(KeyHolders(identities)),
        Arc::new(pinpoint_policy::world::FixedClock(now_ms)),
    );
    let mut headers = HeaderMap::new();
    if let Ok(host) = http::HeaderValue::from_str(request.host) {
        headers.insert(http::header::HOST, host);
    }
    let evaluate =
        |headers: &HeaderMap| evaluator.evaluate(Version::HTTP_11, request.method, request.uri, headers, request.peer);
    let anonymous = evaluate(&headers);
    let placeholder = "x".repeat(pinpoint_core::keys::SECRET_LEN);
    let keys = key_ids
        .iter()
        .map(|id| {
            let mut headers = headers.clone();
            let presented = format!("{}{id}_{placeholder}", pinpoint_core::keys::PREFIX);
            if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {presented}")) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
            evaluate(&headers)
        })
        .collect();
    WhoCan { anonymous, keys }
}

/// [`who_can`]'s answer.
pub struct WhoCan {
    /// For a caller without credentials.
    pub anonymous: Evaluation,
    /// For each key asked about, in order.
    pub keys: Vec<Evaluation>,
}

/// The request [`who_can`] asks about.
pub struct WhoCanRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub host: &'a str,
    pub peer: SocketAddr,
}

/// Identities that take a presented key by its id alone (the secret is not checked), for
/// [`who_can`]; everything else as the wrapped source says.
struct KeyHolders(Arc<dyn Identities>);

impl Identities for KeyHolders {
    fn verify_key(
        &self,
        presented: &str,
        now_ms: i64,
    ) -> Result<Arc<pinpoint_policy::identity::KeyEntry>, pinpoint_policy::identity::KeyRefusal> {
        use pinpoint_policy::identity::KeyRefusal;
        let parts = pinpoint_core::keys::parse(presented).ok_or(KeyRefusal::Malformed)?;
        let entry = self.0.key_by_id(parts.id).ok_or(KeyRefusal::Unknown)?;
        if entry.revoked {
            return Err(KeyRefusal::Revoked);
        }
        if entry.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(KeyRefusal::Expired);
        }
        Ok(entry)
    }

    fn key_by_id(&self, id: &str) -> Option<Arc<pinpoint_policy::identity::KeyEntry>> {
        self.0.key_by_id(id)
    }

    fn principal(&self, id: &str) -> Option<Arc<pinpoint_policy::identity::PrincipalEntry>> {
        self.0.principal(id)
    }

    fn verify_token(
        &self,
        jwt: &pinpoint_core::config::JwtConfig,
        token: &str,
    ) -> Result<pinpoint_policy::identity::Claims, pinpoint_policy::identity::TokenRefusal> {
        self.0.verify_token(jwt, token)
    }

    fn token_kid_known(&self, kid: &str) -> bool {
        self.0.token_kid_known(kid)
    }

    fn key_used(&self, _key: &pinpoint_policy::identity::KeyEntry, _now_ms: i64) {}
}
