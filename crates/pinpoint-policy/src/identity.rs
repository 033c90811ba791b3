//! Who the caller is, once the authentication filter has established it ([`Identity`]),
//! and the shapes in which an identity source (`world::Identities`) hands keys, principals,
//! organizations and tokens to the engine ([`KeyEntry`], [`PrincipalEntry`], [`OrgLabels`],
//! [`Claims`]). Entries are built once by the source (at load, on change) and shared by
//! every request they authenticate.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use pinpoint_core::identity::{grants, KeyKind, Organization, Principal};
use pinpoint_core::{CallerRecord, CredentialKind};
use serde::{Deserialize, Serialize};

/// A key as an identity source holds it: only what checking it and the requests it
/// authenticates need (built once at load), not the whole stored row (names, creation
/// times and the like are the API's, read from the store). With a million keys loaded,
/// each takes about 400 bytes, index included (the gateway's `key_lookup` benchmark
/// prints it).
pub struct KeyEntry {
    /// The key's public id.
    pub id: Arc<str>,
    /// How the authn trace entry names the key: `key <id>`.
    pub trace_label: Arc<str>,
    pub kind: KeyKind,
    /// The owning principal's id (`None` for an organization key), kept for when the
    /// principal itself is gone.
    pub principal_id: Option<Box<str>>,
    pub expires_at_ms: Option<i64>,
    /// The successor, when the key was rotated (its expiry is the end of the overlap).
    pub replaced_by: Option<Box<str>>,
    pub revoked: bool,
    /// Shared with every other key and principal of the organization.
    pub org: Arc<OrgLabels>,
    /// The owner's slot (`None` for an organization key): the key reaches its principal's
    /// current entry without a map lookup.
    pub principal: Option<Arc<PrincipalSlot>>,
    pub scopes: Option<Arc<HashSet<String>>>,
    /// The secret's HMAC, for the identity source's constant-time check.
    pub hash: [u8; 32],
    /// Unix minute of the last recorded use (the identity source's, for writing last-use
    /// times behind at most once a minute).
    pub last_used_minute: AtomicI64,
}

/// A principal with its roles and effective permissions.
pub struct PrincipalEntry {
    pub principal: Principal,
    /// The principal's id, as decisions record it.
    pub id: Arc<str>,
    /// How decisions name this principal: `kind:name (id)`, built once.
    pub label: Arc<str>,
    /// The principal id as the `X-Pinpoint-Principal` header value, built once.
    pub id_header: http::HeaderValue,
    /// Shared with every other key and principal of the organization.
    pub org: Arc<OrgLabels>,
    pub roles: Vec<String>,
    pub permissions: HashSet<String>,
}

/// Where a principal's current entry lives: the source replaces the entry inside the slot
/// when the principal changes and empties it when the principal is deleted, so the keys
/// that point at the slot always see the current principal.
pub type PrincipalSlot = arc_swap::ArcSwapOption<PrincipalEntry>;

/// What requests name about an organization, built once per organization (not per key:
/// a million keys of one organization share one of these), and its current standing.
pub struct OrgLabels {
    pub id: Arc<str>,
    /// The id as the `X-Pinpoint-Org` header value.
    pub header: http::HeaderValue,
    /// How decisions name a caller using an organization key: `org-key (<org id>)`.
    pub owner_label: Arc<str>,
    /// [`OrgStanding`] as a byte, kept current by the source: requests read it here
    /// instead of looking the organization up.
    pub standing: AtomicU8,
}

/// Whether an organization may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OrgStanding {
    /// Deleted, or never known.
    Gone = 0,
    Active = 1,
    Suspended = 2,
}

impl OrgStanding {
    /// The standing of an organization as stored (`None`: not there).
    pub fn of(org: Option<&Organization>) -> OrgStanding {
        match org {
            None => OrgStanding::Gone,
            Some(o) if o.suspended => OrgStanding::Suspended,
            Some(_) => OrgStanding::Active,
        }
    }
}

/// A header value for an id. Ids are UUIDs or hex, always valid header values.
pub fn id_header(id: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(id).unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
}

impl OrgLabels {
    /// Labels for an organization id, in the given standing.
    pub fn new(org_id: &str, standing: OrgStanding) -> OrgLabels {
        OrgLabels {
            id: Arc::<str>::from(org_id),
            header: id_header(org_id),
            owner_label: Arc::<str>::from(format!("org-key ({org_id})")),
            standing: AtomicU8::new(standing as u8),
        }
    }

    pub fn standing(&self) -> OrgStanding {
        match self.standing.load(Ordering::Acquire) {
            1 => OrgStanding::Active,
            2 => OrgStanding::Suspended,
            _ => OrgStanding::Gone,
        }
    }

    /// Sets the standing (the identity source, when the organization changes).
    pub fn set_standing(&self, standing: OrgStanding) {
        self.standing.store(standing as u8, Ordering::Release);
    }
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

impl PrincipalEntry {
    pub fn grants(&self, permission: &str) -> bool {
        grants(&self.permissions, permission)
    }
}

/// How decisions name a key: `key <id>` (a loaded key's [`KeyEntry::trace_label`], and
/// refusals of ids the source does not hold).
pub fn key_trace_label(id: &str) -> String {
    format!("key {id}")
}

impl KeyEntry {
    pub fn is_org_key(&self) -> bool {
        self.kind == KeyKind::Api
    }

    /// The key's public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's organization id.
    pub fn org_id(&self) -> &str {
        &self.org.id
    }
}

/// The claims of a Pinpoint token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The organization the token is for.
    pub aud: String,
    /// The principal id.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The API key at the root of the credentials that issued the token (a key, or a
    /// token it issued, and so on): the token works only while that key does, so revoking
    /// a key ends every token issued under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A client certificate the TLS handshake verified against the listener's `client_ca`
/// (mTLS): an identity source beside keys and tokens, for routes that ask for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's distinguished name as RFC 4514 writes it (`CN=billing,O=acme`: the
    /// last RDN first, special characters escaped), so a name cannot pose as several.
    pub subject: String,
    /// The DNS names of its subjectAltName.
    pub dns_names: Vec<String>,
    /// The URIs of its subjectAltName (`spiffe://acme/billing`).
    pub uris: Vec<String>,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub sha256: String,
}

impl ClientCertificate {
    /// Whether the certificate is one `allowed` names. Each entry is compared with one
    /// kind of name only, so a name of one kind cannot pass for another: `sha256:<hex>`
    /// (the fingerprint), `subject:<DN>`, `dns:<name>`, `uri:<uri>`; without a prefix, an
    /// entry with `://` is a URI, one with `=` a subject, anything else a DNS name.
    pub fn is_named_by(&self, allowed: &[String]) -> bool {
        allowed.iter().any(|entry| self.matches(entry))
    }

    fn matches(&self, entry: &str) -> bool {
        let has = |names: &[String], name: &str| names.iter().any(|n| n == name);
        if let Some(fingerprint) = entry.strip_prefix("sha256:") {
            fingerprint.eq_ignore_ascii_case(&self.sha256)
        } else if let Some(subject) = entry.strip_prefix("subject:") {
            subject == self.subject
        } else if let Some(dns) = entry.strip_prefix("dns:") {
            has(&self.dns_names, dns)
        } else if let Some(uri) = entry.strip_prefix("uri:") {
            has(&self.uris, uri)
        } else if entry.contains("://") {
            has(&self.uris, entry)
        } else if entry.contains('=') {
            entry == self.subject
        } else {
            has(&self.dns_names, entry)
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// The signature verified, so the claims are the issuer's: the trace can name them.
    Expired(Box<Claims>),
    /// With an operator-side reason.
    Invalid(String),
}

/// How the caller authenticated.
#[derive(Clone)]
pub enum Credential {
    /// An API key: its directory entry, whose labels are built once.
    Key(Arc<KeyEntry>),
    /// A JWT, by `jti`, with the key at the root of what issued it ([`Claims::key`]).
    Token { jti: String, key: Option<Arc<str>> },
    /// A verified client certificate, by subject.
    ClientCert(Arc<str>),
}

/// Whom a key belongs to, as a decision records it: recorded for a refused key whose
/// secret matched (revoked or expired), so the owner's organization can read why its own
/// sign-in failed; never an identity anything acts as.
pub fn key_owner(entry: &KeyEntry) -> CallerRecord {
    CallerRecord {
        principal_id: entry.principal_id.as_deref().map(Arc::<str>::from),
        org_id: entry.org.id.clone(),
        credential: key_kind(entry),
        key_id: Some(entry.id.clone()),
        token_id: None,
    }
}

/// The caller a decision records: the authenticated one, else the owner of a refused
/// credential, if known.
pub fn recorded_caller(identity: Option<&Identity>, refused: Option<CallerRecord>) -> Option<CallerRecord> {
    identity.map(Identity::caller_record).or(refused)
}

fn key_kind(key: &KeyEntry) -> CredentialKind {
    if key.is_org_key() {
        CredentialKind::OrgKey
    } else {
        CredentialKind::ApiKey
    }
}

/// An authenticated caller. Built once per request from directory entries, so it shares
/// their precomputed strings and header values instead of allocating new ones.
pub struct Identity {
    /// The user or service account; `None` for an organization API key.
    pub principal: Option<Arc<PrincipalEntry>>,
    /// The caller's organization: its id, header value and labels.
    pub org: Arc<OrgLabels>,
    pub credential: Credential,
    /// A scoped key's scopes (which narrow, never widen, the principal's permissions).
    pub scopes: Option<Arc<HashSet<String>>>,
    /// When the credential stops working (Unix ms): a key's expiry, a token's `exp`. A
    /// credential it issues may not outlive it.
    pub expires_at_ms: Option<i64>,
}

/// The answer to "may this identity use this permission?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionCheck {
    Granted,
    /// No role grants it.
    Missing,
    /// A role grants it, but the key's scopes exclude it.
    OutOfScope,
}

impl Identity {
    /// The API key at the root of this credential: the key itself, or the key a token was
    /// issued under (none for a client certificate). What it issues lives only as long.
    pub fn root_key(&self) -> Option<&str> {
        match &self.credential {
            Credential::Key(entry) => Some(&entry.id),
            Credential::Token { key, .. } => key.as_deref(),
            Credential::ClientCert(_) => None,
        }
    }

    pub fn check(&self, permission: &str) -> PermissionCheck {
        let scoped = self.scopes.as_ref().map(|s| grants(s, permission));
        match (&self.principal, scoped) {
            // Organization keys act with their scopes only: what they lack is a scope (no
            // role can give it to them).
            (None, Some(true)) => PermissionCheck::Granted,
            (None, _) => PermissionCheck::OutOfScope,
            (Some(p), _) if !p.grants(permission) => PermissionCheck::Missing,
            (Some(_), Some(false)) => PermissionCheck::OutOfScope,
            (Some(_), _) => PermissionCheck::Granted,
        }
    }

    /// The caller's organization id.
    pub fn org_id(&self) -> &str {
        &self.org.id
    }

    /// The principal id, if any.
    pub fn principal_id(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.principal.id.as_str())
    }

    /// Who the caller is, for people: `kind:name (id)`, or `org-key (org)`.
    pub fn who(&self) -> Arc<str> {
        match &self.principal {
            Some(p) => p.label.clone(),
            None => self.org.owner_label.clone(),
        }
    }

    /// The caller as a decision records it: ids, no labels.
    pub fn caller_record(&self) -> CallerRecord {
        let (credential, key_id, token_id) = match &self.credential {
            Credential::Key(key) => (key_kind(key), Some(key.id.clone()), None),
            Credential::Token { jti, .. } => (CredentialKind::Token, None, Some(Arc::<str>::from(jti.as_str()))),
            Credential::ClientCert(_) => (CredentialKind::ClientCert, None, None),
        };
        CallerRecord {
            principal_id: self.principal.as_ref().map(|p| p.id.clone()),
            org_id: self.org.id.clone(),
            credential,
            key_id,
            token_id,
        }
    }

    /// The credential, as the authn trace entry names it: `key <id>` or `token <jti>`.
    pub fn credential_label(&self) -> Arc<str> {
        match &self.credential {
            Credential::Key(key) => key.trace_label.clone(),
            Credential::Token { jti, .. } => Arc::<str>::from(format!("token {jti}")),
            Credential::ClientCert(subject) => Arc::<str>::from(format!("client-cert {subject}")),
        }
    }

    /// Who, and with which credential (audit log lines).
    pub fn label(&self) -> String {
        format!("{} via {}", self.who(), self.credential_label())
    }

    /// Whether the identity may act across organizations.
    pub fn is_platform_admin(&self) -> bool {
        self.check(pinpoint_core::identity::PLATFORM_ADMIN) == PermissionCheck::Granted
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use pinpoint_core::identity::{Principal, PrincipalKind};
    use proptest::prelude::*;

    use super::*;

    fn permission() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["orders", "keys", "users", "roles"]),
            prop::sample::select(vec!["read", "write", "*"]),
        )
            .prop_map(|(r, a)| format!("{r}:{a}"))
    }

    fn identity(perms: HashSet<String>, scopes: Option<HashSet<String>>, with_principal: bool) -> Identity {
        let principal = with_principal.then(|| {
            Arc::new(PrincipalEntry {
                label: Arc::<str>::from("user:u (p)"),
                id_header: http::HeaderValue::from_static("p"),
                id: Arc::<str>::from("p"),
                org: Arc::new(OrgLabels::new("o", OrgStanding::Active)),
                principal: Principal {
                    id: "p".into(),
                    org_id: "o".into(),
                    kind: PrincipalKind::User,
                    name: "u".into(),
                    email: None,
                    suspended: false,
                    created_at_ms: 0,
                },
                roles: vec![],
                permissions: perms,
            })
        });
        Identity {
            principal,
            org: Arc::new(OrgLabels::new("o", OrgStanding::Active)),
            credential: Credential::Token {
                jti: "t".into(),
                key: None,
            },
            scopes: scopes.map(Arc::new),
            expires_at_ms: None,
        }
    }

    proptest! {
        /// A key's scopes only ever narrow: a scoped key is granted a subset of what the
        /// unscoped owner is granted, and exactly the intersection.
        #[test]
        fn scopes_only_narrow(
            perms in prop::collection::hash_set(permission(), 0..6),
            scopes in prop::collection::hash_set(permission(), 0..6),
            asked in permission(),
        ) {
            let owner = identity(perms.clone(), None, true);
            let scoped = identity(perms.clone(), Some(scopes.clone()), true);
            let owner_has = owner.check(&asked) == PermissionCheck::Granted;
            let scope_has = grants(&scopes, &asked);
            match scoped.check(&asked) {
                PermissionCheck::Granted => prop_assert!(owner_has && scope_has),
                PermissionCheck::OutOfScope => prop_assert!(owner_has && !scope_has),
                PermissionCheck::Missing => prop_assert!(!owner_has),
            }
        }

        /// Wildcards: `*` grants everything, `resource:*` every action on the resource,
        /// and nothing else grants what is not listed.
        #[test]
        fn grants_matches_its_definition(perms in prop::collection::hash_set(permission(), 0..6), asked in permission()) {
            let (resource, _) = asked.split_once(':').unwrap();
            let expected = perms.contains(&asked) || perms.contains(&format!("{resource}:*"));
            prop_assert_eq!(grants(&perms, &asked), expected);
            let mut all = perms.clone();
            all.insert("*".into());
            prop_assert!(grants(&all, &asked));
        }

        /// Organization keys act with their scopes only.
        #[test]
        fn org_keys_use_scopes_only(scopes in prop::option::of(prop::collection::hash_set(permission(), 0..6)), asked in permission()) {
            let key = identity(HashSet::new(), scopes.clone(), false);
            let granted = key.check(&asked) == PermissionCheck::Granted;
            prop_assert_eq!(granted, scopes.as_ref().is_some_and(|s| grants(s, &asked)));
        }
    }
}
