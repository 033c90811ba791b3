//! The authentication layer: finds the credential in the configured places (`Authorization:
//! Bearer` with an API key or a JWT, `X-API-Key`, or Datadog's `DD-API-KEY` +
//! `DD-APPLICATION-KEY`), verifies it against the directory or the token service, and
//! records the [`Identity`] for the layers after it. Codes: `authn.credentials_missing`,
//! `.key_malformed`, `.key_unknown`, `.key_expired`, `.key_rotated`, `.key_revoked`, `.token_expired`,
//! `.token_invalid`, `.token_audience` (401), `.principal_suspended`,
//! `.organization_suspended` (403).

use std::sync::Arc;

use pinpoint_core::config::{AuthRequirement, ClientCertIdentity, CredentialSource, JwtConfig};
use pinpoint_core::{Denial, Outcome, Reason};

use crate::identity::{
    key_trace_label, ClientCertificate, Credential, Identity, KeyEntry, KeyRefusal, OrgStanding, TokenRefusal,
};
use crate::pipeline::{Check, Filter, RequestCtx};
use crate::world::Identities;

static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
static DD_API_KEY: http::HeaderName = http::HeaderName::from_static("dd-api-key");
static DD_APPLICATION_KEY: http::HeaderName = http::HeaderName::from_static("dd-application-key");

pub struct AuthnFilter {
    identities: Arc<dyn Identities>,
    jwt: JwtConfig,
    sources: Vec<CredentialSource>,
    client_certs: Vec<ClientCertIdentity>,
}

/// A refused credential, and whom it belongs to when that is known.
struct Refused {
    /// Boxed: refusals are the rare path, and a small `Err` keeps the `Ok` path lean.
    denial: Box<Denial>,
    caller: Option<pinpoint_core::CallerRecord>,
}

impl From<Denial> for Refused {
    fn from(denial: Denial) -> Self {
        Refused {
            denial: Box::new(denial),
            caller: None,
        }
    }
}

/// A credential as found in the request.
enum Presented<'h> {
    Key(&'h str),
    Token(&'h str),
    DdPair { api: &'h str, app: Option<&'h str> },
    DdAppOnly,
}

impl AuthnFilter {
    pub fn new(identities: Arc<dyn Identities>, jwt: JwtConfig, sources: Vec<CredentialSource>) -> Self {
        AuthnFilter {
            identities,
            jwt,
            sources,
            client_certs: Vec::new(),
        }
    }

    /// Client certificates that authenticate as principals (`[[authn.client_certs]]`).
    pub fn with_client_certs(mut self, client_certs: Vec<ClientCertIdentity>) -> Self {
        self.client_certs = client_certs;
        self
    }

    /// The identity a verified client certificate stands for, when a mapping names it.
    fn certificate_identity(&self, certificate: &ClientCertificate) -> Option<Result<Identity, Denial>> {
        let mapping = self
            .client_certs
            .iter()
            .find(|m| certificate.is_named_by(std::slice::from_ref(&m.certificate)))?;
        let Some(principal) = self.identities.principal(&mapping.principal) else {
            return Some(Err(Denial::new(
                Reason::AuthnClientCertNotAllowed,
                "This client certificate identifies nobody here.",
            )
            .rule(format!("client-cert {}", certificate.subject))
            .note(format!(
                "[[authn.client_certs]] names principal {}, which does not exist",
                mapping.principal
            ))));
        };
        Some(Ok(Identity {
            org: principal.org.clone(),
            principal: Some(principal),
            credential: Credential::ClientCert(Arc::from(certificate.subject.as_str())),
            scopes: None,
            expires_at_ms: None,
        }))
    }

    fn find<'h>(&self, headers: &'h http::HeaderMap) -> Option<Presented<'h>> {
        let header = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        for source in &self.sources {
            match source {
                CredentialSource::Authorization => {
                    if let Some(value) = header(&http::header::AUTHORIZATION) {
                        // `Bearer <credential>`, the scheme in any case.
                        let Some((scheme, credential)) = value.split_at_checked(7) else {
                            continue;
                        };
                        if !scheme.eq_ignore_ascii_case("bearer ") {
                            continue;
                        }
                        let credential = credential.trim();
                        // JWTs are three base64url segments; keys start with `pp_`.
                        return Some(
                            if credential.starts_with("eyJ") && credential.matches('.').count() == 2 {
                                Presented::Token(credential)
                            } else {
                                Presented::Key(credential)
                            },
                        );
                    }
                }
                CredentialSource::XApiKey => {
                    if let Some(key) = header(&X_API_KEY) {
                        return Some(Presented::Key(key));
                    }
                }
                CredentialSource::DdKeys => match (header(&DD_API_KEY), header(&DD_APPLICATION_KEY)) {
                    (Some(api), app) => return Some(Presented::DdPair { api, app }),
                    (None, Some(_)) => return Some(Presented::DdAppOnly),
                    (None, None) => {}
                },
            }
        }
        None
    }

    fn key(&self, presented: &str, now: i64) -> Result<Arc<KeyEntry>, Refused> {
        let verified = self.identities.verify_key(presented, now);
        if let Ok(entry) = &verified {
            self.identities.key_used(entry, now);
        }
        verified.map_err(|refusal| {
            // Revoked and expired keys matched their secret: their owner is known.
            let entry = matches!(refusal, KeyRefusal::Expired | KeyRefusal::Revoked)
                .then(|| pinpoint_core::keys::parse(presented))
                .flatten()
                .and_then(|p| self.identities.key_by_id(p.id));
            let caller = entry.as_deref().map(crate::identity::key_owner);
            let successor = entry.as_deref().and_then(|e| e.replaced_by.as_deref());
            let (reason, detail) = match refusal {
                KeyRefusal::Malformed => (Reason::AuthnKeyMalformed, "The credential is not a Pinpoint API key."),
                KeyRefusal::Unknown => (Reason::AuthnKeyUnknown, "The API key is not valid."),
                KeyRefusal::Expired if successor.is_some() => (
                    Reason::AuthnKeyRotated,
                    "The API key was rotated and its overlap has ended; use its successor.",
                ),
                KeyRefusal::Expired => (Reason::AuthnKeyExpired, "The API key has expired."),
                KeyRefusal::Revoked => (Reason::AuthnKeyRevoked, "The API key has been revoked."),
            };
            let mut denial = Denial::new(reason, detail);
            if let Some(p) = pinpoint_core::keys::parse(presented) {
                denial = denial.rule(key_trace_label(p.id));
            }
            if let Some(successor) = successor {
                denial = denial.note(format!("rotated; its successor is {}", key_trace_label(successor)));
            }
            Refused {
                denial: Box::new(denial),
                caller,
            }
        })
    }

    fn identity_for_key(&self, entry: Arc<KeyEntry>) -> Result<Identity, Denial> {
        let principal = match &entry.principal {
            Some(slot) => Some(slot.load_full().ok_or_else(|| {
                let id = entry.principal_id.as_deref().unwrap_or("?");
                Denial::new(Reason::AuthnKeyUnknown, "The API key is not valid.")
                    .note(format!("{} belongs to deleted principal {id}", &*entry.trace_label))
            })?),
            None => None,
        };
        Ok(Identity {
            principal,
            org: entry.org.clone(),
            scopes: entry.scopes.clone(),
            expires_at_ms: entry.expires_at_ms,
            credential: Credential::Key(entry),
        })
    }

    fn authenticate(&self, presented: Presented<'_>, now: i64) -> Result<Identity, Refused> {
        match presented {
            Presented::Key(k) => {
                let entry = self.key(k, now)?;
                Ok(self.identity_for_key(entry)?)
            }
            Presented::DdAppOnly => Err(Denial::new(
                Reason::AuthnCredentialsMissing,
                "DD-APPLICATION-KEY was sent without DD-API-KEY; send both.",
            )
            .into()),
            Presented::DdPair { api, app } => {
                let org_key = self.key(api, now)?;
                if !org_key.is_org_key() {
                    return Err(
                        Denial::new(Reason::AuthnKeyUnknown, "DD-API-KEY must be an organization API key.")
                            .rule(&*org_key.trace_label)
                            .into(),
                    );
                }
                let Some(app) = app else {
                    return Ok(self.identity_for_key(org_key)?);
                };
                let app_key = self.key(app, now)?;
                if app_key.is_org_key() || app_key.org_id() != org_key.org_id() {
                    return Err(Denial::new(
                        Reason::AuthnKeyUnknown,
                        "DD-APPLICATION-KEY is not an application key of DD-API-KEY's organization.",
                    )
                    .rule(&*app_key.trace_label)
                    .into());
                }
                Ok(self.identity_for_key(app_key)?)
            }
            Presented::Token(token) => {
                let claims = self
                    .identities
                    .verify_token(&self.jwt, token)
                    .map_err(|refusal| match refusal {
                        TokenRefusal::Expired(claims) => {
                            Denial::new(Reason::AuthnTokenExpired, "The token has expired.")
                                .rule(format!("token {}", claims.jti))
                                .note(format!(
                                    "token {} of {} (org {}) expired at {}",
                                    claims.jti,
                                    claims.sub,
                                    claims.aud,
                                    pinpoint_core::time::rfc3339(claims.exp.saturating_mul(1000))
                                ))
                        }
                        TokenRefusal::Invalid(why) => {
                            Denial::new(Reason::AuthnTokenInvalid, "The token is not valid.").note(why)
                        }
                    })?;
                let principal = self.identities.principal(&claims.sub).ok_or_else(|| {
                    Denial::new(Reason::AuthnTokenInvalid, "The token is not valid.")
                        .note(format!("subject {} no longer exists", claims.sub))
                })?;
                // A token whose audience is not its subject's organization is not valid
                // anywhere. One used on another organization's route is that route's
                // business, as a key there is: authz refuses it with `tenant_mismatch`.
                if claims.aud != principal.principal.org_id {
                    return Err(
                        Denial::new(Reason::AuthnTokenAudience, "The token was issued for another audience.")
                            .rule(format!("token {}", claims.jti))
                            .note(format!(
                                "token {} of {}: aud {}, subject's org {}",
                                claims.jti, claims.sub, claims.aud, principal.principal.org_id
                            ))
                            .into(),
                    );
                }
                // A token lives only as long as the key it was issued under.
                if let Some(key_id) = &claims.key {
                    let live = self
                        .identities
                        .key_by_id(key_id)
                        .is_some_and(|k| !k.revoked && k.expires_at_ms.is_none_or(|at| at > now));
                    if !live {
                        return Err(Denial::new(Reason::AuthnTokenInvalid, "The token is not valid.")
                            .rule(format!("token {}", claims.jti))
                            .note(format!(
                                "token {}: the key it was issued under ({}) is revoked, expired or gone",
                                claims.jti,
                                key_trace_label(key_id)
                            ))
                            .into());
                    }
                }
                Ok(Identity {
                    org: principal.org.clone(),
                    principal: Some(principal),
                    credential: Credential::Token {
                        jti: claims.jti,
                        key: claims.key.map(Arc::from),
                    },
                    scopes: None,
                    expires_at_ms: Some(claims.exp.saturating_mul(1000)),
                })
            }
        }
    }

    /// An authenticated identity, admitted if its standing allows: set on the context (the
    /// trace names the credential; the decision's caller names who), or refused with its
    /// owner recorded.
    fn admit(&self, ctx: &mut RequestCtx<'_>, identity: Identity) -> Outcome {
        match self.check_standing(&identity) {
            Ok(()) => {
                let rule_id = Some(identity.credential_label());
                ctx.identity = Some(identity);
                Outcome::Allow { rule_id }
            }
            Err(denial) => {
                ctx.known_caller = Some(identity.caller_record());
                Outcome::Deny(denial)
            }
        }
    }

    /// Suspension is re-checked on every request, whatever the credential.
    fn check_standing(&self, identity: &Identity) -> Result<(), Denial> {
        if let Some(p) = &identity.principal {
            if p.principal.suspended {
                return Err(
                    Denial::new(Reason::AuthnPrincipalSuspended, "Your account is suspended.")
                        .rule(format!("principal {}", p.principal.id)),
                );
            }
        }
        match identity.org.standing() {
            OrgStanding::Suspended => Err(Denial::new(
                Reason::AuthnOrganizationSuspended,
                "Your organization is suspended.",
            )
            .rule(format!("org {}", identity.org_id()))),
            OrgStanding::Active => Ok(()),
            OrgStanding::Gone => Err(Denial::new(Reason::AuthnKeyUnknown, "The credential is not valid.")
                .note(format!("organization {} no longer exists", identity.org_id()))),
        }
    }
}

/// A route's client-certificate rule: `Ok(Some(label))` naming the certificate that met
/// it, `Ok(None)` when the route has none, or the refusal.
fn check_client_cert(ctx: &RequestCtx<'_>) -> Result<Option<Arc<str>>, Denial> {
    let Some(access) = ctx.access.as_ref().filter(|a| a.client_cert_required) else {
        return Ok(None);
    };
    let Some(certificate) = ctx.client_cert else {
        return Err(Denial::new(
            Reason::AuthnClientCertMissing,
            "This route needs a client certificate.",
        ));
    };
    if !access.client_cert_allow.is_empty() && !certificate.is_named_by(&access.client_cert_allow) {
        return Err(Denial::new(
            Reason::AuthnClientCertNotAllowed,
            "This route does not accept your client certificate.",
        )
        .rule(format!("client-cert {}", certificate.subject)));
    }
    Ok(Some(Arc::from(format!("client-cert {}", certificate.subject))))
}

impl Filter for AuthnFilter {
    fn name(&self) -> &'static str {
        "authn"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        let requirement = ctx.access.as_ref().map(|a| a.auth).unwrap_or_default();
        let certificate = match check_client_cert(ctx) {
            Err(denial) => return Check::Ready(Outcome::Deny(denial)),
            Ok(certificate) => certificate,
        };
        if requirement == AuthRequirement::None {
            return Check::Ready(match certificate {
                Some(subject) => Outcome::Allow { rule_id: Some(subject) },
                None => Outcome::NotApplicable,
            });
        }
        let Some(presented) = self.find(ctx.headers) else {
            // No credential header: a client certificate may stand for a principal.
            let certificate = ctx.client_cert;
            if let Some(found) = certificate.and_then(|c| self.certificate_identity(c)) {
                return Check::Ready(match found {
                    Err(denial) => Outcome::Deny(denial),
                    Ok(identity) => self.admit(ctx, identity),
                });
            }
            return Check::Ready(match requirement {
                AuthRequirement::Required => Outcome::Deny(Denial::new(
                    Reason::AuthnCredentialsMissing,
                    "This endpoint needs credentials.",
                )),
                _ => Outcome::NotApplicable,
            });
        };
        let outcome = match self.authenticate(presented, ctx.at_ms) {
            Ok(identity) => self.admit(ctx, identity),
            Err(Refused { denial, caller }) => {
                let denial = *denial;
                ctx.known_caller = caller;
                Outcome::Deny(denial)
            }
        };
        Check::Ready(outcome)
    }
}
