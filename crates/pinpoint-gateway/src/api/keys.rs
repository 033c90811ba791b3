//! API handlers for API keys (create returns the secret once; list shows id, prefix,
//! owner, scopes, expiry, last use; revoke; rotate with an overlap window), bearer tokens
//! and signing-key rotation.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pinpoint_core::identity::{ApiKey, KeyKind, ALL_PERMISSIONS, PLATFORM_ADMIN};
use pinpoint_core::Reason;
use pinpoint_store::prelude::*;
use pinpoint_store::{IssuedKey, NewKey};
use serde::Deserialize;

use super::{attributes, deny, envelope, principal_permissions, resource, ApiResult, Caller};
use crate::runtime::Shared;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v2/api_keys", post(create_key).get(list_keys))
        .route("/api/v2/api_keys/{id}", get(get_key).delete(revoke_key))
        .route("/api/v2/api_keys/{id}/rotate", post(rotate_key))
        .route("/api/v2/tokens", post(create_token))
        .route("/api/v2/signing_keys/rotate", post(rotate_signing_key))
}

type Created = ApiResult<(StatusCode, Json<serde_json::Value>)>;

fn key_attributes(k: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "name": k.name,
        "prefix": k.prefix(),
        "kind": k.kind.as_str(),
        "org_id": k.org_id,
        "principal_id": k.principal_id,
        "scopes": k.scopes,
        "expires_at": k.expires_at_ms.map(|ms| ms / 1000),
        "revoked": k.revoked,
        "created_at": k.created_at_ms / 1000,
        "last_used_at": k.last_used_at_ms.map(|ms| ms / 1000),
    })
}

/// The only response that ever carries a key's secret.
fn issued_resource(issued: &IssuedKey) -> serde_json::Value {
    let mut attrs = key_attributes(&issued.info);
    attrs["key"] = serde_json::Value::String(issued.key.clone());
    resource("api_keys", &issued.info.id, attrs)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAttrs {
    name: String,
    #[serde(default)]
    kind: Option<KeyKind>,
    principal_id: Option<String>,
    org_id: Option<String>,
    scopes: Option<Vec<String>>,
    /// Unix seconds.
    expires_at: Option<i64>,
}

async fn create_key(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>, body: Bytes) -> Created {
    let attrs: KeyAttrs = attributes(&body)?;
    if attrs.name.trim().is_empty() || attrs.name.len() > 200 {
        return Err(deny(Reason::ApiBadRequest, "`name` must be 1 to 200 characters."));
    }
    for s in attrs.scopes.iter().flatten() {
        if !pinpoint_core::config::is_permission(s) {
            return Err(deny(
                Reason::ApiBadRequest,
                format!("scope `{s}` is not a permission name."),
            ));
        }
    }
    let now = pinpoint_store::now_ms();
    let expires_at_ms = match attrs.expires_at {
        Some(s) if s.saturating_mul(1000) <= now => {
            return Err(deny(Reason::ApiBadRequest, "`expires_at` must be in the future."))
        }
        Some(s) => Some(s.saturating_mul(1000)),
        None => None,
    };
    // A credential issues none that outlives it: without `expires_at`, the new key
    // expires with the caller's; a later one is refused.
    let expires_at_ms = match (expires_at_ms, caller.0.expires_at_ms) {
        (None, Some(limit)) => Some(limit),
        (Some(asked), Some(limit)) if asked > limit => {
            return Err(deny(
                Reason::ApiBadRequest,
                "`expires_at` is later than the credential you are using expires; a key cannot outlive the credential that issues it.",
            ))
        }
        (asked, _) => asked,
    };
    let kind = attrs.kind.unwrap_or(KeyKind::Application);
    let (org_id, principal_id) = match kind {
        KeyKind::Application => {
            let owner = match attrs.principal_id.as_deref().or(caller.0.principal_id()) {
                Some(id) => id.to_owned(),
                None => return Err(deny(Reason::ApiBadRequest, "An application key needs `principal_id`.")),
            };
            let p = shared
                .store
                .principal_in(&owner, caller.list_scope())
                .await?
                .ok_or_else(|| deny(Reason::ApiBadRequest, "`principal_id` names no principal."))?;
            let held = principal_permissions(&shared, &p.id).await?;
            if caller.0.principal_id() != Some(p.id.as_str()) {
                // A key speaks as its owner (upstreams read `X-Pinpoint-Principal`), so a key
                // for someone else, however scoped, needs all they hold.
                caller.require_may_act_for(&shared, &p.org_id, &held, "issue a key for a principal")?;
            }
            caller.require_can_issue(Some(&held), attrs.scopes.as_deref(), "issue a key that can use")?;
            (p.org_id, Some(p.id))
        }
        KeyKind::Api => {
            if attrs.principal_id.is_some() {
                return Err(deny(
                    Reason::ApiBadRequest,
                    "An organization (api) key has no `principal_id`.",
                ));
            }
            // An organization key acts with its scopes only; a caller cannot mint scopes it
            // lacks, nor, when a deny names it, a key no deny on it would cover.
            let org_id = caller.target_org(attrs.org_id.as_deref())?;
            caller.require_not_denied(&shared, &org_id, "issue an organization key")?;
            caller.require_can_issue(None, attrs.scopes.as_deref(), "grant scope")?;
            (org_id, None)
        }
    };
    let issued = shared
        .store
        .create_key(NewKey {
            name: attrs.name.trim().to_owned(),
            kind,
            org_id,
            principal_id,
            scopes: attrs.scopes,
            expires_at_ms,
        })
        .await?;
    shared.services.catch_up_after_write(&shared.store).await;
    tracing::info!(
        key = %issued.info.id,
        owner = issued.info.principal_id.as_deref().unwrap_or(issued.info.org_id.as_str()),
        by = %caller.0.label(),
        "api key created"
    );
    Ok((StatusCode::CREATED, envelope(issued_resource(&issued))))
}

async fn list_keys(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<_> = shared
        .store
        .keys(caller.list_scope(), None)
        .await?
        .iter()
        .map(|k| resource("api_keys", &k.id, key_attributes(k)))
        .collect();
    Ok(envelope(keys.into()))
}

async fn load_key(shared: &Shared, caller: &Caller, id: &str) -> ApiResult<ApiKey> {
    let key = shared.store.stored_key_in(id, caller.list_scope()).await?;
    key.map(|stored| stored.info)
        .ok_or_else(|| deny(Reason::ApiNotFound, "No such key."))
}

async fn get_key(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let key = load_key(&shared, &caller, &id).await?;
    Ok(envelope(resource("api_keys", &key.id, key_attributes(&key))))
}

/// `?force=true` on a revocation.
#[derive(Deserialize, Default)]
struct RevokeQuery {
    #[serde(default)]
    force: bool,
}

async fn revoke_key(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<RevokeQuery>,
) -> ApiResult<StatusCode> {
    let key = load_key(&shared, &caller, &id).await?;
    // Revoking another's key locks them out of what it could do: only a caller who holds
    // that may (the owner's permissions, or an organization key's scopes).
    if key.principal_id.as_deref() != caller.0.principal_id() {
        match &key.principal_id {
            Some(owner) => {
                // (An owner who is gone holds nothing.)
                let held = principal_permissions(&shared, owner).await.unwrap_or_default();
                caller.require_holds(&held, "revoke a key of a principal who holds")?;
            }
            None => caller.require_holds(key.scopes.iter().flatten(), "revoke an organization key that can use")?,
        }
    }
    if !query.force && is_last_platform_admin_key(&shared, &key).await? {
        return Err(deny(
            Reason::ApiConflict,
            "This is the last usable key of a platform administrator: revoking it would leave nobody able to administer the gateway. Create another first, or revoke with force (`pinpoint keys revoke --force`); `pinpoint admin recover` issues a new one on the host.",
        ));
    }
    shared.store.revoke_key(&id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    tracing::info!(key = %id, by = %caller.0.label(), "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `key` is usable, belongs to a platform administrator, and is the only such key.
async fn is_last_platform_admin_key(shared: &Shared, key: &ApiKey) -> ApiResult<bool> {
    let now = pinpoint_store::now_ms();
    let directory = &shared.services.directory;
    let is_admin_key = |k: &ApiKey| {
        !k.revoked
            && k.expires_at_ms.is_none_or(|exp| exp > now)
            && k.scopes.is_none()
            && k.principal_id
                .as_deref()
                .and_then(|p| directory.principal(p))
                .is_some_and(|p| {
                    !p.principal.suspended
                        && (p.permissions.contains(PLATFORM_ADMIN) || p.permissions.contains(ALL_PERMISSIONS))
                })
    };
    if !is_admin_key(key) {
        return Ok(false);
    }
    let others = shared.store.keys(None, None).await?;
    Ok(!others.iter().any(|k| k.id != key.id && is_admin_key(k)))
}

async fn rotate_key(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Created {
    let key = load_key(&shared, &caller, &id).await?;
    // The successor acts as the key did: only a caller who holds that may have it, and
    // for another principal's key (or an organization key) only one who could have
    // issued it.
    let held = match &key.principal_id {
        Some(owner) => Some(principal_permissions(&shared, owner).await?),
        None => None,
    };
    if key.principal_id.is_none() || key.principal_id.as_deref() != caller.0.principal_id() {
        match &held {
            Some(held) => caller.require_may_act_for(&shared, &key.org_id, held, "rotate a key of a principal")?,
            None => caller.require_not_denied(&shared, &key.org_id, "rotate an organization key")?,
        }
    }
    caller.require_can_issue(held.as_ref(), key.scopes.as_deref(), "rotate a key that can use")?;
    // The successor keeps the key's expiry: it may not outlive the credential rotating it.
    if let Some(limit) = caller.0.expires_at_ms {
        if key.expires_at_ms.is_none_or(|exp| exp > limit) {
            return Err(deny(
                Reason::ApiBadRequest,
                "This key would outlive the credential rotating it; rotate it with a credential that expires no sooner than the key.",
            ));
        }
    }
    let overlap = shared.runtime.load().config.keys.rotation_overlap_seconds;
    let issued = shared
        .store
        .rotate_key(&id, (overlap as i64).saturating_mul(1000))
        .await?;
    shared.services.catch_up_after_write(&shared.store).await;
    // Rotating the bootstrap key moves its file on to the successor.
    if shared.store.bootstrap_key_id().as_deref() == Some(id.as_str()) {
        shared.store.replace_bootstrap_key_file(&issued.key)?;
    }
    tracing::info!(old = %id, new = %issued.info.id, by = %caller.0.label(), "api key rotated");
    let mut body = issued_resource(&issued);
    body["attributes"]["replaces"] = serde_json::Value::String(id);
    Ok((StatusCode::CREATED, envelope(body)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenAttrs {
    ttl_seconds: Option<u64>,
}

async fn create_token(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>, body: Bytes) -> Created {
    let attrs: TokenAttrs = if body.is_empty() {
        TokenAttrs::default()
    } else {
        attributes(&body)?
    };
    let Some(principal) = caller.0.principal_id() else {
        return Err(deny(
            Reason::ApiBadRequest,
            "Tokens are issued to users and service accounts, not organization keys.",
        ));
    };
    // A token carries no scopes: it acts with all its principal holds, so a scoped
    // credential that lacks some of that cannot issue one.
    let held = principal_permissions(&shared, principal).await?;
    caller.require_can_issue(Some(&held), None, "issue a token that can use")?;
    let config = shared.runtime.load().config.jwt.clone();
    // A token does not outlive the credential that asks for it: one that has (nearly)
    // run out (a token in its leeway window) issues none.
    let remaining = caller
        .0
        .expires_at_ms
        .map(|exp| u64::try_from((exp - pinpoint_store::now_ms()) / 1000).unwrap_or(0));
    if remaining == Some(0) {
        return Err(deny(
            Reason::ApiBadRequest,
            "The credential you are using expires within a second; a token cannot outlive it.",
        ));
    }
    let ttl = attrs
        .ttl_seconds
        .unwrap_or(config.ttl_seconds)
        .clamp(1, config.ttl_seconds)
        .min(remaining.unwrap_or(u64::MAX));
    let (token, claims) = shared
        .services
        .tokens
        .issue(&config, principal, caller.0.org_id(), ttl, caller.0.root_key())
        .ok_or_else(|| deny(Reason::ApiStoreUnavailable, "No signing key is available."))?;
    Ok((
        StatusCode::CREATED,
        envelope(resource(
            "tokens",
            &claims.jti,
            serde_json::json!({ "access_token": token, "expires": claims.exp }),
        )),
    ))
}

async fn rotate_signing_key(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Created {
    if !caller.0.is_platform_admin() {
        return Err(deny(
            Reason::AuthzPermissionMissing,
            "Rotating signing keys needs the permission `platform:admin`.",
        ));
    }
    let config = shared.runtime.load().config.jwt.clone();
    let kid = shared.services.tokens.rotate(&shared.store, &config).await?;
    Ok((
        StatusCode::CREATED,
        envelope(resource("signing_keys", &kid, serde_json::json!({ "kid": kid }))),
    ))
}
