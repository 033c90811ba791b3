//! Who the caller is, once the authentication layer has established it.

use std::collections::HashSet;
use std::sync::Arc;

use pinpoint_core::identity::grants;

use crate::directory::PrincipalEntry;

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API key, by public id.
    Key(String),
    /// A JWT, by `jti`.
    Token(String),
}

/// An authenticated caller.
pub struct Identity {
    /// The user or service account; `None` for an organization API key.
    pub principal: Option<Arc<PrincipalEntry>>,
    pub org_id: String,
    pub credential: Credential,
    /// A scoped key's scopes (which narrow, never widen, the principal's permissions).
    pub scopes: Option<HashSet<String>>,
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
            // Organization keys act with their scopes only.
            (None, Some(true)) => PermissionCheck::Granted,
            (None, _) => PermissionCheck::Missing,
            (Some(p), _) if !p.grants(permission) => PermissionCheck::Missing,
            (Some(_), Some(false)) => PermissionCheck::OutOfScope,
            (Some(_), _) => PermissionCheck::Granted,
        }
    }

    /// The principal id, if any.
    pub fn principal_id(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.principal.id.as_str())
    }

    /// How the trace names this caller (operator side).
    pub fn label(&self) -> String {
        let who = match &self.principal {
            Some(p) => format!(
                "{}:{} ({})",
                p.principal.kind.as_str(),
                p.principal.name,
                p.principal.id
            ),
            None => format!("org-key ({})", self.org_id),
        };
        match &self.credential {
            Credential::Key(id) => format!("{who} via key {id}"),
            Credential::Token(jti) => format!("{who} via token {jti}"),
        }
    }

    /// Whether the identity may act across organizations.
    pub fn is_platform_admin(&self) -> bool {
        self.check(pinpoint_core::identity::PLATFORM_ADMIN) == PermissionCheck::Granted
    }
}
