//! Who callers are: organizations (tenants), principals (users and service accounts),
//! roles made of permissions, and API keys. Plain data; the store persists it and the
//! gateway's directory indexes it for the hot path.

use serde::{Deserialize, Serialize};

/// Grants every permission.
pub const ALL_PERMISSIONS: &str = "*";
/// Lets a principal manage every organization, not only its own.
pub const PLATFORM_ADMIN: &str = "platform:admin";

/// The permissions Pinpoint's own API checks.
pub mod permissions {
    pub const ORGS_READ: &str = "orgs:read";
    pub const ORGS_WRITE: &str = "orgs:write";
    pub const USERS_READ: &str = "users:read";
    pub const USERS_WRITE: &str = "users:write";
    pub const SERVICE_ACCOUNTS_READ: &str = "service_accounts:read";
    pub const SERVICE_ACCOUNTS_WRITE: &str = "service_accounts:write";
    pub const ROLES_READ: &str = "roles:read";
    pub const ROLES_WRITE: &str = "roles:write";
    pub const KEYS_READ: &str = "keys:read";
    pub const KEYS_WRITE: &str = "keys:write";
    pub const DECISIONS_READ: &str = "decisions:read";
    /// Reading the audit of keys, roles, principals and (platform admins) the config.
    pub const AUDITS_READ: &str = "audits:read";
    pub const TOKENS_CREATE: &str = "tokens:create";
    pub const SIGNING_KEYS_WRITE: &str = "signing_keys:write";
    /// Datadog's names for reading and writing cloud-auth mappings.
    pub const CLOUD_AUTH_READ: &str = "cloud_auth_config_read";
    pub const CLOUD_AUTH_WRITE: &str = "cloud_auth_config_write";
    /// What a managed intake key may do (its only scope).
    pub const INTAKE_WRITE: &str = "intake:write";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub suspended: bool,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServiceAccount,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServiceAccount => "service_account",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(PrincipalKind::User),
            "service_account" => Some(PrincipalKind::ServiceAccount),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub org_id: String,
    pub kind: PrincipalKind,
    /// A user's handle or a service account's name.
    pub name: String,
    pub email: Option<String>,
    pub suspended: bool,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at_ms: i64,
}

/// What a key authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Owned by a principal; acts with the principal's permissions (narrowed by scopes).
    Application,
    /// Owned by an organization (Datadog's `DD-API-KEY`, intake keys); acts only with its scopes.
    Api,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Application => "application",
            KeyKind::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "application" => Some(KeyKind::Application),
            "api" => Some(KeyKind::Api),
            _ => None,
        }
    }
}

/// A stored key's public facts (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id; the key's prefix is `pp_<id>_`.
    pub id: String,
    pub name: String,
    pub kind: KeyKind,
    pub org_id: String,
    pub principal_id: Option<String>,
    /// `None`: the owner's full permissions. `Some`: only these (and only if the owner has them).
    pub scopes: Option<Vec<String>>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    /// The successor a rotation issued (the key works until its overlap ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
}

impl ApiKey {
    /// The prefix shown in listings.
    pub fn prefix(&self) -> String {
        format!("pp_{}_", self.id)
    }
}

/// Whether a permission set grants `permission`: exact name, `*`, or `resource:*`.
pub fn grants(set: &std::collections::HashSet<String>, permission: &str) -> bool {
    if set.contains(permission) || set.contains(ALL_PERMISSIONS) {
        return true;
    }
    match permission.split_once(':') {
        Some((resource, _)) => set.contains(&format!("{resource}:*")),
        None => false,
    }
}
