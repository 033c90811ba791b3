//! The cloud-authentication exchange: takes a Datadog-format AWS identity proof, checks it
//! locally (pinpoint-cloudauth), burns its signature in the replay cache, forwards the
//! rebuilt GetCallerIdentity to STS (no redirects, no proxy, timeouts, bounded retries),
//! reads the identity only from STS's answer, and resolves it through the organization's
//! registered accounts and mappings. Every refusal is a `cloudauth.*` denial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinpoint_cloudauth::arn::{Identity, Pattern};
use pinpoint_cloudauth::proof::{self, Partitions, Proof, ProofError};
use pinpoint_cloudauth::sts::{self, CallerIdentity, StsError};
use pinpoint_core::config::{CloudAuthConfig, LimitKey, OnBackendError, RateLimitRule};
use pinpoint_core::identity::Organization;
use pinpoint_core::{Denial, Reason};
use pinpoint_policy::world::{Counted, CountedId, FirstUse, LimitAnswer, Pending, RateState, ReplayCache};
use pinpoint_store::cloudauth::Mapping;
use pinpoint_store::prelude::*;
use pinpoint_store::{Store, StoreError};

use crate::directory::Directory;

/// A proof that STS confirmed, with the organization it logs into.
pub struct Verified {
    pub org: std::sync::Arc<Organization>,
    pub caller: CallerIdentity,
    pub proof: Proof,
}

pub struct CloudAuth {
    http: reqwest::Client,
    /// Proof signatures already used.
    replay: Arc<dyn ReplayCache>,
    /// Where the exchange budgets are counted (per organization and per client
    /// address): in the process, or in `[cluster] redis` so replicas share them.
    rate: Arc<dyn RateState>,
}

/// An exchange budget as a rate-limit rule: `per_minute` a minute, bursts of as many. Its
/// id has a `:`, which configured rule ids cannot, so it never shares a configured rule's
/// state.
fn exchange_rule(id: &str, by: LimitKey, per_minute: u32) -> RateLimitRule {
    RateLimitRule {
        id: id.to_owned(),
        by,
        requests: per_minute.max(1),
        per_seconds: 60,
        burst: None,
        routes: None,
        on_backend_error: OnBackendError::Refuse,
    }
}

/// Spends one exchange of `who` from the budget of `rule`; the refusal when it is spent
/// (or cannot be counted).
async fn spend_exchange(rate: &dyn RateState, rule: RateLimitRule, who: Counted<'_>, what: &str) -> Result<(), Denial> {
    match rate.limiter(&rule).take(&who).get().await {
        LimitAnswer::Allowed { .. } => Ok(()),
        LimitAnswer::Limited { wait } => Err(Denial::new(
            Reason::RateLimited,
            format!("Too many identity exchanges {what}."),
        )
        .rule(rule.id)
        .header("retry-after", (wait.as_secs() + 1).to_string())),
        LimitAnswer::Unavailable { why } => Err(Denial::new(
            Reason::RateBackendUnavailable,
            "Identity exchanges cannot be counted right now; retry shortly.",
        )
        .rule(rule.id)
        .note(why)
        .header("retry-after", "1".to_owned())),
    }
}

fn store_denial(e: StoreError) -> Denial {
    tracing::error!(error = %e, "cloud auth store query failed");
    Denial::new(Reason::ApiStoreUnavailable, "The store could not be read.")
}

impl CloudAuth {
    pub fn new(
        config: &CloudAuthConfig,
        replay: Arc<dyn ReplayCache>,
        rate: Arc<dyn RateState>,
    ) -> Result<CloudAuth, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_millis(config.sts_timeout_ms))
            .timeout(Duration::from_millis(config.sts_timeout_ms))
            .build()?;
        Ok(CloudAuth { http, replay, rate })
    }

    /// Checks a proof end to end and returns the confirmed identity.
    pub async fn verify(
        &self,
        config: &CloudAuthConfig,
        store: &Store,
        directory: &Directory,
        authorization: Option<&str>,
        client_ip: std::net::IpAddr,
    ) -> Result<Verified, Denial> {
        if !config.enabled {
            return Err(Denial::new(
                Reason::ApiNotFound,
                "Cloud authentication is not enabled on this gateway.",
            ));
        }
        spend_exchange(
            &*self.rate,
            exchange_rule(
                "cloudauth:per-address",
                LimitKey::ClientIp,
                config.exchanges_per_minute_per_ip,
            ),
            Counted::new("ip", CountedId::Ip(client_ip)),
            "from your address",
        )
        .await?;
        let authorization = authorization.ok_or_else(|| {
            Denial::new(
                Reason::CloudauthProofMalformed,
                "Send the proof as `Authorization: Delegated ...`.",
            )
        })?;
        let now = pinpoint_store::now_ms() / 1000;
        let partitions = Partitions {
            aws_cn: config.allow_aws_cn,
            aws_us_gov: config.allow_aws_us_gov,
        };
        let proof = proof::parse(authorization, partitions, now, config.proof_window_seconds).map_err(|e| {
            let reason = match &e {
                ProofError::Malformed(_) => Reason::CloudauthProofMalformed,
                ProofError::HostNotAllowed(_) => Reason::CloudauthStsHostNotAllowed,
                ProofError::RequestNotAllowed(_) => Reason::CloudauthRequestNotAllowed,
                ProofError::OrgMismatch(_) => Reason::CloudauthOrgMismatch,
                ProofError::Expired(_) => Reason::CloudauthProofExpired,
            };
            Denial::new(reason, e.to_string())
        })?;
        let org = directory.org(&proof.org_id).filter(|o| !o.suspended).ok_or_else(|| {
            Denial::new(
                Reason::CloudauthOrgMismatch,
                "The signed organization id names no active organization.",
            )
            .note(format!("org header {:?}", proof.org_id))
        })?;
        let remember_until = proof.signed_at + config.proof_window_seconds + 61;
        match self.replay.first_use(&proof.signature, remember_until, now).await {
            Ok(FirstUse::Yes) => {}
            Ok(FirstUse::No { note }) => {
                return Err(Denial::new(Reason::CloudauthProofReplayed, "This proof was already used.").note(note))
            }
            Err(e) => {
                tracing::error!(error = %e, "the proof replay cache could not be read");
                return Err(Denial::new(Reason::ApiStoreUnavailable, "The store could not be read."));
            }
        }
        let caller = self.call_sts(config, &proof).await?;
        // The organization's budget is charged only for identities STS confirmed, so forged
        // proofs (org ids are not secret) cannot exhaust it; they count per address above.
        spend_exchange(
            &*self.rate,
            exchange_rule(
                "cloudauth:per-organization",
                LimitKey::Org,
                config.exchanges_per_minute_per_org,
            ),
            Counted::new("org", CountedId::Str(&org.id)),
            "for this organization",
        )
        .await?;
        tracing::info!(
            target: "pinpoint::audit",
            arn = %caller.identity,
            unique_id = %caller.unique_id,
            session = caller.identity.session().unwrap_or("-"),
            access_key_id = %proof.access_key_id,
            sts_request_id = caller.request_id.as_deref().unwrap_or("-"),
            org = %org.id,
            "cloud identity confirmed by STS"
        );
        let accounts = store.aws_accounts(&org.id).await.map_err(store_denial)?;
        if !accounts.contains(&caller.account) {
            return Err(Denial::new(
                Reason::CloudauthAccountNotRegistered,
                format!(
                    "AWS account {} is not registered for this organization.",
                    caller.account
                ),
            ));
        }
        Ok(Verified { org, caller, proof })
    }

    async fn call_sts(&self, config: &CloudAuthConfig, proof: &Proof) -> Result<CallerIdentity, Denial> {
        let url = match &config.sts_endpoint {
            Some(endpoint) => format!("{}/", endpoint.trim_end_matches('/')),
            None => format!("https://{}/", proof.host),
        };
        let mut last = StsError::Unavailable(String::from("not attempted"));
        for attempt in 0..=config.sts_retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            }
            // The running config's timeout, so a reload applies it (the client's own is the
            // one at start, for connecting).
            let mut request = self
                .http
                .post(&url)
                .timeout(Duration::from_millis(config.sts_timeout_ms))
                .body(proof.body.clone());
            for (name, value) in &proof.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match read_capped(response, sts::MAX_RESPONSE_BYTES).await {
                        Ok(body) => sts::interpret(status, content_type.as_deref(), &body, proof.partition),
                        Err(why) => Err(StsError::Unavailable(why)),
                    }
                }
                Err(e) => Err(StsError::Unavailable(if e.is_timeout() {
                    "timeout".into()
                } else {
                    "connection failed".into()
                })),
            };
            match outcome {
                Ok(caller) => return Ok(caller),
                Err(e @ (StsError::Throttled | StsError::Unavailable(_))) => last = e,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        Err(sts_denial(last))
    }

    /// The mapping of `kind` that matches the identity, bound to its unique id.
    pub async fn resolve(
        &self,
        config: &CloudAuthConfig,
        store: &Store,
        verified: &Verified,
        kind: &str,
    ) -> Result<Mapping, Denial> {
        let identity = &verified.caller.identity;
        let mappings = store.mappings(&verified.org.id, kind).await.map_err(store_denial)?;
        let found = mappings
            .into_iter()
            .find(|m| Pattern::parse(&m.arn_pattern).is_ok_and(|p| p.matches(identity)));
        let Some(mapping) = found else {
            return Err(no_mapping(identity, kind, None));
        };
        if config.bind_unique_id {
            let bound = store
                .bind_mapping(&mapping.id, &verified.caller.unique_id)
                .await
                .map_err(store_denial)?;
            if bound != verified.caller.unique_id {
                return Err(no_mapping(
                    identity,
                    kind,
                    Some(format!(
                        "mapping {} is bound to unique id {bound}, the caller has {} (recreated role or user?)",
                        mapping.id, verified.caller.unique_id
                    )),
                ));
            }
        }
        Ok(mapping)
    }
}

/// The caller's answer when STS did not vouch for a usable identity.
fn sts_denial(error: StsError) -> Denial {
    match error {
        StsError::SignatureRejected(code) => Denial::new(
            Reason::CloudauthSignatureRejected,
            "AWS STS rejected the signed request.",
        )
        .note(format!("STS error {code}")),
        StsError::Throttled => Denial::new(Reason::CloudauthStsThrottled, "AWS STS is throttling; retry shortly.")
            .header("retry-after", "5"),
        StsError::IdentityRefused(why) => Denial::new(Reason::CloudauthIdentityNotAccepted, why),
        StsError::Unavailable(why) => {
            Denial::new(Reason::CloudauthStsUnavailable, "AWS STS could not be reached.").note(why)
        }
    }
}

fn no_mapping(identity: &Identity, kind: &str, note: Option<String>) -> Denial {
    let mut denial = Denial::new(
        Reason::CloudauthNoMapping,
        format!(
            "No {kind} mapping matches your AWS identity {identity}; a mapping with arn_pattern {} would.",
            Pattern::suggestion_for(identity)
        ),
    );
    if let Some(note) = note {
        denial = denial.note(note);
    }
    denial
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| String::from("response body failed"))?
    {
        if body.len() + chunk.len() > cap {
            return Err(String::from("response too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Managed intake keys: one per intake identity and rotation period, derived (not stored)
/// from the server pepper, so every exchange in a period returns the same key while only
/// its hash is stored. A key works until the end of the next period plus the overlap, so
/// the previous key keeps working while clients pick up the new one.
pub mod intake {
    /// The key id and secret for `(mapping, identity, generation)`.
    pub fn derive(pepper: &[u8], mapping_id: &str, identity: &str, generation: i64) -> (String, String) {
        use base64::Engine;
        let hasher = pinpoint_core::keys::SecretHasher::new(pepper);
        let mac = |label: &str| {
            hasher.hash(&format!(
                "pinpoint intake key|{label}|{mapping_id}|{identity}|{generation}"
            ))
        };
        let id: String = pinpoint_core::hex::lower(&mac("id")[..8]);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac("secret"));
        (id, secret)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn keys_are_stable_within_a_generation_and_differ_across() {
            let a = super::derive(b"pepper", "m", "arn:aws:sts::1:assumed-role/R", 7);
            assert_eq!(a, super::derive(b"pepper", "m", "arn:aws:sts::1:assumed-role/R", 7));
            assert_ne!(a, super::derive(b"pepper", "m", "arn:aws:sts::1:assumed-role/R", 8));
            assert_ne!(a, super::derive(b"pepper", "m", "arn:aws:sts::1:assumed-role/S", 7));
            assert_ne!(a, super::derive(b"other", "m", "arn:aws:sts::1:assumed-role/R", 7));
            assert!(pinpoint_core::keys::parse(&pinpoint_core::keys::format(&a.0, &a.1)).is_some());
        }
    }
}

/// The replay cache of one process: signatures in memory (the hot answer), and in the
/// store, so a restart does not make a used proof new again.
pub struct ProofReplay {
    /// Signature -> Unix second until which it is remembered.
    seen: Mutex<HashMap<String, i64>>,
    store: Store,
}

impl ProofReplay {
    pub fn new(store: Store) -> ProofReplay {
        ProofReplay {
            seen: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// Forgets signatures whose proofs can no longer be fresh; run periodically.
    pub fn housekeeping(&self, now_s: i64) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until >= now_s);
    }
}

impl ReplayCache for ProofReplay {
    fn first_use<'a>(&'a self, signature: &'a str, until_s: i64, now_s: i64) -> Pending<'a, Result<FirstUse, String>> {
        Box::pin(async move {
            {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() > 100_000 {
                    seen.retain(|_, until| *until >= now_s);
                }
                match seen.get(signature) {
                    Some(until) if *until >= now_s => {
                        return Ok(FirstUse::No {
                            note: "remembered in memory",
                        })
                    }
                    _ => {
                        seen.insert(signature.to_owned(), until_s);
                    }
                }
            }
            match self.store.burn_proof(signature, until_s, now_s).await {
                Ok(true) => Ok(FirstUse::Yes),
                Ok(false) => Ok(FirstUse::No {
                    note: "remembered by the store (used before the last restart, or by another process)",
                }),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// STS's failures cannot all be provoked with moto (it never vouches for an account
    /// root), so the mapping from each to its reason is checked here.
    #[test]
    fn each_sts_failure_has_its_own_reason() {
        let root = match Identity::parse("arn:aws:iam::123456789012:root") {
            Err(e) => e.to_string(),
            Ok(identity) => panic!("a root identity was accepted: {identity}"),
        };
        let refused = sts_denial(StsError::IdentityRefused(root));
        assert_eq!(refused.reason, Reason::CloudauthIdentityNotAccepted);
        assert!(refused.detail.contains("root"), "{}", refused.detail);
        let cases = [
            (
                StsError::SignatureRejected("InvalidClientTokenId".into()),
                Reason::CloudauthSignatureRejected,
            ),
            (StsError::Throttled, Reason::CloudauthStsThrottled),
            (StsError::Unavailable("timeout".into()), Reason::CloudauthStsUnavailable),
        ];
        for (error, reason) in cases {
            assert_eq!(sts_denial(error).reason, reason);
        }
    }
}
