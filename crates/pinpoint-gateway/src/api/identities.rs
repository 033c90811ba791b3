//! API handlers for organizations, users, service accounts, roles and role assignments.
//! After every change the directory entry is refreshed, so the proxy sees it at once.

use pinpoint_store::prelude::*;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use pinpoint_core::identity::{Organization, Principal, PrincipalKind, Role};
use pinpoint_core::Reason;
use serde::Deserialize;

use super::{attributes, deny, envelope, patch_attributes, principal_permissions, resource, ApiResult, Caller};
use crate::runtime::Shared;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v2/orgs", post(create_org).get(list_orgs))
        .route("/api/v2/orgs/{id}", get(get_org).patch(patch_org).delete(delete_org))
        .route("/api/v2/users", post(create_user).get(list_users))
        .route(
            "/api/v2/users/{id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route(
            "/api/v2/service_accounts",
            post(create_service_account).get(list_service_accounts),
        )
        .route(
            "/api/v2/service_accounts/{id}",
            get(get_service_account)
                .patch(patch_service_account)
                .delete(delete_service_account),
        )
        .route("/api/v2/roles", post(create_role).get(list_roles))
        .route(
            "/api/v2/roles/{id}",
            get(get_role).patch(patch_role).delete(delete_role),
        )
        .route("/api/v2/roles/{id}/principals", post(assign_role))
        .route("/api/v2/roles/{id}/principals/{principal_id}", delete(unassign_role))
}

type Reply = ApiResult<Json<serde_json::Value>>;

fn org_resource(o: &Organization) -> serde_json::Value {
    resource(
        "orgs",
        &o.id,
        serde_json::json!({ "name": o.name, "suspended": o.suspended, "created_at_ms": o.created_at_ms }),
    )
}

fn principal_resource(p: &Principal) -> serde_json::Value {
    let kind = match p.kind {
        PrincipalKind::User => "users",
        PrincipalKind::ServiceAccount => "service_accounts",
    };
    resource(
        kind,
        &p.id,
        serde_json::json!({
            "name": p.name, "email": p.email, "org_id": p.org_id,
            "suspended": p.suspended, "created_at_ms": p.created_at_ms,
        }),
    )
}

fn role_resource(r: &Role) -> serde_json::Value {
    resource(
        "roles",
        &r.id,
        serde_json::json!({ "name": r.name, "org_id": r.org_id, "permissions": r.permissions, "created_at_ms": r.created_at_ms }),
    )
}

fn valid_name(name: &str, what: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(deny(
            Reason::ApiBadRequest,
            format!("`{what}` must be 1 to 200 printable characters."),
        ));
    }
    Ok(())
}

pub async fn current_user(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
    let identity = &caller.0;
    let org = shared.services.directory.org(identity.org_id());
    let (id, attrs) = match &identity.principal {
        Some(p) => {
            let mut permissions: Vec<_> = p.permissions.iter().collect();
            permissions.sort();
            (
                p.principal.id.clone(),
                serde_json::json!({
                    "kind": p.principal.kind.as_str(), "name": p.principal.name, "email": p.principal.email,
                    "org_id": p.principal.org_id, "org_name": org.as_ref().map(|o| o.name.clone()),
                    "roles": p.roles, "permissions": permissions,
                    "scopes": identity.scopes,
                }),
            )
        }
        None => (
            identity.org_id().to_string(),
            serde_json::json!({ "kind": "organization_key", "org_id": identity.org_id(), "scopes": identity.scopes }),
        ),
    };
    Ok(envelope(resource("users", &id, attrs)))
}

// ---- organizations -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgAttrs {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgPatch {
    suspended: Option<bool>,
}

fn require_platform(caller: &Caller, what: &str) -> ApiResult<()> {
    if caller.0.is_platform_admin() {
        Ok(())
    } else {
        Err(deny(
            Reason::AuthzPermissionMissing,
            format!("{what} needs the permission `platform:admin`."),
        ))
    }
}

async fn create_org(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_platform(&caller, "Creating organizations")?;
    let attrs: OrgAttrs = attributes(&body)?;
    valid_name(&attrs.name, "name")?;
    let org = shared.store.create_org(attrs.name.trim()).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok((StatusCode::CREATED, envelope(org_resource(&org))))
}

async fn list_orgs(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
    let scope = caller.list_scope();
    let orgs: Vec<_> = shared
        .store
        .orgs()
        .await?
        .iter()
        .filter(|o| scope.is_none_or(|s| s == o.id))
        .map(org_resource)
        .collect();
    Ok(envelope(orgs.into()))
}

async fn get_org(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    // Another organization is not looked up at all: answered as an absent one, as fast.
    let org = match caller.sees_org(&id) {
        true => shared.store.org(&id).await?,
        false => None,
    };
    let org = org.ok_or_else(|| deny(Reason::ApiNotFound, "No such organization."))?;
    Ok(envelope(org_resource(&org)))
}

async fn patch_org(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    require_platform(&caller, "Suspending organizations")?;
    let patch: OrgPatch = patch_attributes(&body, &id)?;
    if patch.suspended == Some(false) {
        // Lifting an organization's suspension hands all its principals back what they
        // hold: not by a caller an explicit deny names, nor for its own organization.
        caller.require_not_denied(&shared, &id, "lift an organization's suspension")?;
        if caller.0.org_id() == id {
            return Err(deny(
                Reason::AuthzPermissionMissing,
                "You cannot lift your own organization's suspension.",
            ));
        }
    }
    let org = match patch.suspended {
        Some(s) => shared.store.set_org_suspended(&id, s).await?,
        None => shared
            .store
            .org(&id)
            .await?
            .ok_or_else(|| deny(Reason::ApiNotFound, "No such organization."))?,
    };
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(envelope(org_resource(&org)))
}

async fn delete_org(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_platform(&caller, "Deleting organizations")?;
    if caller.0.org_id() == id {
        return Err(deny(Reason::ApiConflict, "You cannot delete your own organization."));
    }
    shared.store.delete_org(&id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users and service accounts ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalAttrs {
    name: String,
    email: Option<String>,
    org_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalPatch {
    suspended: Option<bool>,
}

async fn create_principal(
    shared: &Shared,
    caller: &Caller,
    kind: PrincipalKind,
    body: &[u8],
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let attrs: PrincipalAttrs = attributes(body)?;
    valid_name(&attrs.name, "name")?;
    if let Some(email) = &attrs.email {
        if !email.contains('@') || email.len() > 254 {
            return Err(deny(Reason::ApiBadRequest, "`email` is not an email address."));
        }
    }
    let org_id = caller.target_org(attrs.org_id.as_deref())?;
    if shared.store.org(&org_id).await?.is_none() {
        return Err(deny(Reason::ApiBadRequest, "`org_id` names no organization."));
    }
    let p = shared
        .store
        .create_principal(&org_id, kind, attrs.name.trim(), attrs.email.as_deref())
        .await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok((StatusCode::CREATED, envelope(principal_resource(&p))))
}

async fn list_principals(shared: &Shared, caller: &Caller, kind: PrincipalKind) -> Reply {
    let list: Vec<_> = shared
        .store
        .principals(caller.list_scope(), kind)
        .await?
        .iter()
        .map(principal_resource)
        .collect();
    Ok(envelope(list.into()))
}

async fn load_principal(shared: &Shared, caller: &Caller, kind: PrincipalKind, id: &str) -> ApiResult<Principal> {
    let p = shared.store.principal_in(id, caller.list_scope()).await?;
    p.filter(|p| p.kind == kind).ok_or_else(|| {
        deny(
            Reason::ApiNotFound,
            format!("No such {}.", kind.as_str().replace('_', " ")),
        )
    })
}

async fn patch_principal(shared: &Shared, caller: &Caller, kind: PrincipalKind, id: &str, body: &[u8]) -> Reply {
    let patch: PrincipalPatch = patch_attributes(body, id)?;
    let mut p = load_principal(shared, caller, kind, id).await?;
    if let Some(s) = patch.suspended {
        if !s && p.suspended {
            // Lifting a suspension hands the principal back all it holds: only a caller
            // who holds that (and is not itself held back by a deny) may.
            if caller.0.principal_id() == Some(id) {
                return Err(deny(
                    Reason::AuthzPermissionMissing,
                    "You cannot lift your own suspension.",
                ));
            }
            let held = principal_permissions(shared, id).await?;
            caller.require_may_act_for(shared, &p.org_id, &held, "lift the suspension of a principal")?;
        }
        if s && !p.suspended && caller.0.principal_id() != Some(id) {
            // Locking someone out takes away all they hold: only from what the caller holds.
            let held = principal_permissions(shared, id).await?;
            caller.require_holds(&held, "suspend a principal who holds")?;
        }
        p = shared.store.set_principal_suspended(id, s).await?;
    }
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(envelope(principal_resource(&p)))
}

async fn delete_principal(shared: &Shared, caller: &Caller, kind: PrincipalKind, id: &str) -> ApiResult<StatusCode> {
    load_principal(shared, caller, kind, id).await?;
    if caller.0.principal_id() == Some(id) {
        return Err(deny(Reason::ApiConflict, "You cannot delete yourself."));
    }
    let held = principal_permissions(shared, id).await?;
    caller.require_holds(&held, "delete a principal who holds")?;
    shared.store.delete_principal(id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}

macro_rules! principal_handlers {
    ($kind:expr, $create:ident, $list:ident, $get:ident, $patch:ident, $delete:ident) => {
        async fn $create(
            State(shared): State<Arc<Shared>>,
            Extension(caller): Extension<Caller>,
            body: Bytes,
        ) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
            create_principal(&shared, &caller, $kind, &body).await
        }
        async fn $list(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
            list_principals(&shared, &caller, $kind).await
        }
        async fn $get(
            State(shared): State<Arc<Shared>>,
            Extension(caller): Extension<Caller>,
            Path(id): Path<String>,
        ) -> Reply {
            Ok(envelope(principal_resource(
                &load_principal(&shared, &caller, $kind, &id).await?,
            )))
        }
        async fn $patch(
            State(shared): State<Arc<Shared>>,
            Extension(caller): Extension<Caller>,
            Path(id): Path<String>,
            body: Bytes,
        ) -> Reply {
            patch_principal(&shared, &caller, $kind, &id, &body).await
        }
        async fn $delete(
            State(shared): State<Arc<Shared>>,
            Extension(caller): Extension<Caller>,
            Path(id): Path<String>,
        ) -> ApiResult<StatusCode> {
            delete_principal(&shared, &caller, $kind, &id).await
        }
    };
}

principal_handlers!(
    PrincipalKind::User,
    create_user,
    list_users,
    get_user,
    patch_user,
    delete_user
);
principal_handlers!(
    PrincipalKind::ServiceAccount,
    create_service_account,
    list_service_accounts,
    get_service_account,
    patch_service_account,
    delete_service_account
);

// ---- roles ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleAttrs {
    name: String,
    permissions: Vec<String>,
    org_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePatch {
    permissions: Vec<String>,
}

/// Permissions must be well-formed, and a caller can grant only what it holds itself; a
/// caller an explicit deny names grants nothing (what it holds is held back by the deny,
/// and a principal it grants to is not).
fn check_grantable(shared: &Shared, caller: &Caller, org_id: &str, permissions: &[String]) -> ApiResult<()> {
    for p in permissions {
        if !pinpoint_core::config::is_permission(p) {
            return Err(deny(
                Reason::ApiBadRequest,
                format!("`{p}` is not a permission name (like `orders:write`)."),
            ));
        }
    }
    if !permissions.is_empty() {
        caller.require_not_denied(shared, org_id, "grant permissions")?;
    }
    caller.require_holds(permissions, "grant")?;
    Ok(())
}

async fn create_role(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let attrs: RoleAttrs = attributes(&body)?;
    valid_name(&attrs.name, "name")?;
    let org_id = caller.target_org(attrs.org_id.as_deref())?;
    check_grantable(&shared, &caller, &org_id, &attrs.permissions)?;
    let role = shared
        .store
        .create_role(&org_id, attrs.name.trim(), &attrs.permissions)
        .await?;
    Ok((StatusCode::CREATED, envelope(role_resource(&role))))
}

async fn list_roles(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
    let list: Vec<_> = shared
        .store
        .roles(caller.list_scope())
        .await?
        .iter()
        .map(role_resource)
        .collect();
    Ok(envelope(list.into()))
}

async fn load_role(shared: &Shared, caller: &Caller, id: &str) -> ApiResult<Role> {
    let role = shared.store.role_in(id, caller.list_scope()).await?;
    role.ok_or_else(|| deny(Reason::ApiNotFound, "No such role."))
}

async fn get_role(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    Ok(envelope(role_resource(&load_role(&shared, &caller, &id).await?)))
}

async fn patch_role(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let patch: RolePatch = patch_attributes(&body, &id)?;
    let role = load_role(&shared, &caller, &id).await?;
    check_grantable(&shared, &caller, &role.org_id, &patch.permissions)?;
    // Taking a permission away from a role's holders needs holding it too: otherwise a
    // caller could lower someone who holds more to what it holds, then act for them.
    let removed = role.permissions.iter().filter(|p| !patch.permissions.contains(p));
    caller.require_holds(removed, "take away")?;
    let role = shared.store.set_role_permissions(&id, &patch.permissions).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(envelope(role_resource(&role)))
}

async fn delete_role(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let role = load_role(&shared, &caller, &id).await?;
    let holders = shared.store.role_holders(&role.id).await?;
    require_may_lift_denies(&shared, &caller, &role, &holders).await?;
    if !holders.is_empty() {
        caller.require_holds(&role.permissions, "take away")?;
    }
    shared.store.delete_role(&id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Relationship {
    data: RelationshipData,
}

#[derive(Deserialize)]
struct RelationshipData {
    id: String,
}

async fn assign_role(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let rel: Relationship = serde_json::from_slice(&body).map_err(|_| {
        deny(
            Reason::ApiBadRequest,
            "The body must be {\"data\": {\"type\": \"principals\", \"id\": <principal id>}}.",
        )
    })?;
    let role = load_role(&shared, &caller, &id).await?;
    check_grantable(&shared, &caller, &role.org_id, &role.permissions)?;
    let principal = shared
        .store
        .principal_in(&rel.data.id, caller.list_scope())
        .await?
        .ok_or_else(|| deny(Reason::ApiNotFound, "No such principal."))?;
    if principal.org_id != role.org_id {
        return Err(deny(
            Reason::ApiConflict,
            "The principal and the role belong to different organizations.",
        ));
    }
    shared.store.assign_role(&principal.id, &role.id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Taking away a role that an explicit deny names (`[[authz.deny]] roles`) lifts that deny
/// for whoever held it, which hands them what the deny held back: only a caller who holds
/// everything those principals hold (who could have granted it all) may do it.
async fn require_may_lift_denies(shared: &Shared, caller: &Caller, role: &Role, holders: &[String]) -> ApiResult<()> {
    let named_by_deny = shared
        .runtime
        .load()
        .config
        .authz
        .deny
        .iter()
        .any(|rule| rule.roles.iter().flatten().any(|name| *name == role.name));
    if !named_by_deny {
        return Ok(());
    }
    // Nobody lifts a deny from themselves, nor while a deny names them.
    if holders.iter().any(|h| caller.0.principal_id() == Some(h.as_str())) {
        return Err(deny(
            Reason::AuthzPermissionMissing,
            "You cannot take away from yourself a role an explicit deny names.",
        ));
    }
    for holder in holders {
        let held = principal_permissions(shared, holder).await?;
        caller.require_may_act_for(
            shared,
            &role.org_id,
            &held,
            "take away a role an explicit deny names from a principal",
        )?;
    }
    Ok(())
}

async fn unassign_role(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((id, principal_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let role = load_role(&shared, &caller, &id).await?;
    let holds_it = shared.store.role_holders(&role.id).await?.contains(&principal_id);
    if holds_it {
        require_may_lift_denies(&shared, &caller, &role, std::slice::from_ref(&principal_id)).await?;
        caller.require_holds(&role.permissions, "take away")?;
    }
    shared.store.unassign_role(&principal_id, &id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}
