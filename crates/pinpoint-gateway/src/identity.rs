//! Who the caller is, once the authentication layer has established it.

use std::collections::HashSet;
use std::sync::Arc;

use pinpoint_core::identity::grants;
use pinpoint_core::RecordedText;

use crate::directory::{KeyEntry, OrgLabels, PrincipalEntry};

/// How the caller authenticated.
#[derive(Clone)]
pub enum Credential {
    /// An API key: its directory entry, whose labels are built once.
    Key(Arc<KeyEntry>),
    /// A JWT, by `jti`.
    Token(String),
}

/// Whom a refused credential belongs to, when Pinpoint knows it (a key whose secret
/// matched but which is revoked or expired; a principal or organization that is
/// suspended). Recorded with the decision, so the caller's organization can read why its
/// own sign-in failed; never an identity anything acts as.
#[derive(Clone)]
pub struct KnownCaller {
    /// As a decision names a caller (`kind:name (id)`).
    pub who: RecordedText,
    pub org_id: RecordedText,
}

impl KnownCaller {
    /// The owner of a key: its principal, or its organization for an organization key.
    pub fn of_key(entry: &KeyEntry) -> KnownCaller {
        let who = match entry.principal.as_ref().and_then(|slot| slot.load_full()) {
            Some(principal) => principal.label.clone(),
            None => entry.org.owner_label.clone(),
        };
        KnownCaller {
            who,
            org_id: entry.org.id.clone(),
        }
    }

    /// Whom a decision names: the authenticated caller, else the owner of a refused
    /// credential, if known.
    pub fn recorded(identity: Option<&Identity>, refused: Option<KnownCaller>) -> Option<KnownCaller> {
        identity.map(KnownCaller::of).or(refused)
    }

    /// An authenticated caller whose standing refused it.
    pub fn of(identity: &Identity) -> KnownCaller {
        KnownCaller {
            who: identity.who(),
            org_id: identity.org.id.clone(),
        }
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

    /// Who the caller is, as decisions name it: `kind:name (id)`, or `org-key (org)`.
    pub fn who(&self) -> RecordedText {
        match &self.principal {
            Some(p) => p.label.clone(),
            None => self.org.owner_label.clone(),
        }
    }

    /// The credential, as the authn trace entry names it: `key <id>` or `token <jti>`.
    pub fn credential_label(&self) -> RecordedText {
        match &self.credential {
            Credential::Key(key) => key.trace_label.clone(),
            Credential::Token(jti) => RecordedText::new(&format!("token {jti}")),
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
    use crate::directory::OrgStanding;

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
                label: RecordedText::new("user:u (p)"),
                id_header: http::HeaderValue::from_static("p"),
                rate_key: 0,
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
            credential: Credential::Token("t".into()),
            scopes: scopes.map(Arc::new),
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
