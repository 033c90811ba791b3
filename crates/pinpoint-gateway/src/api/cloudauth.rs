//! API handlers for cloud-based authentication, in Datadog's wire format: the identity
//! exchange (`POST /api/v2/delegated-token`), persona mappings, and the AWS accounts an
//! organization allows to map.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use pinpoint_cloudauth::arn::Pattern;
use pinpoint_core::identity::PrincipalKind;
use pinpoint_core::Reason;
use pinpoint_store::cloudauth::Mapping;
use pinpoint_store::prelude::*;
use serde::Deserialize;

use super::{attributes, deny, envelope, resource, ApiError, ApiResult, Caller};
use crate::runtime::Shared;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v2/delegated-token", post(delegated_token))
        .route("/api/v2/intake-key", post(intake_key))
        .route(
            "/api/v2/cloud_auth/aws/intake_mapping",
            post(create_intake_mapping).get(list_intake_mappings),
        )
        .route(
            "/api/v2/cloud_auth/aws/intake_mapping/{id}",
            delete(delete_intake_mapping),
        )
        .route(
            "/api/v2/cloud_auth/aws/persona_mapping",
            post(create_persona_mapping).get(list_persona_mappings),
        )
        .route(
            "/api/v2/cloud_auth/aws/persona_mapping/{persona_mapping_id}",
            axum::routing::get(get_persona_mapping).delete(delete_persona_mapping),
        )
        .route(
            "/api/v2/cloud_auth/aws/accounts",
            post(register_account).get(list_accounts),
        )
        .route("/api/v2/cloud_auth/aws/accounts/{account_id}", delete(remove_account))
}

type Reply = ApiResult<Json<serde_json::Value>>;

/// Checks the request's identity proof end to end and finds the mapping of `kind`
/// (`persona` or `intake`) it resolves to.
async fn exchange(
    shared: &Shared,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    kind: &str,
) -> ApiResult<(Arc<crate::runtime::Runtime>, crate::cloudauth::Verified, Mapping)> {
    let runtime = shared.runtime.load_full();
    let config = &runtime.config.cloudauth;
    let client_ip = pinpoint_policy::forwarded::client_ip(peer.ip(), headers, &runtime.config.net.trusted_proxies);
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cloud = &shared.services.cloudauth;
    let verified = cloud
        .verify(
            config,
            &shared.store,
            &shared.services.directory,
            authorization,
            client_ip,
        )
        .await
        .map_err(ApiError)?;
    let mapping = cloud
        .resolve(config, &shared.store, &verified, kind)
        .await
        .map_err(ApiError)?;
    Ok((runtime, verified, mapping))
}

/// Exchanges an AWS identity proof for a short-lived token acting as the mapped principal.
async fn delegated_token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Reply {
    let (runtime, verified, mapping) = exchange(&shared, peer, &headers, "persona").await?;
    let config = &runtime.config.cloudauth;
    // The mapped principal's state is checked on every exchange.
    let principal = mapping
        .principal_id
        .as_deref()
        .and_then(|id| shared.services.directory.principal(id))
        .filter(|p| !p.principal.suspended && p.principal.org_id == verified.org.id)
        .ok_or_else(|| {
            deny(
                Reason::CloudauthPrincipalSuspended,
                "The account your AWS identity maps to is suspended or gone.",
            )
        })?;
    let (token, claims) = shared
        .services
        .tokens
        .issue(
            &runtime.config.jwt,
            &principal.principal.id,
            &verified.org.id,
            config.token_ttl_seconds,
            None,
        )
        .ok_or_else(|| deny(Reason::ApiStoreUnavailable, "No signing key is available."))?;
    tracing::info!(
        target: "pinpoint::audit",
        arn = %verified.caller.identity,
        session = verified.caller.identity.session().unwrap_or("-"),
        principal = %principal.label,
        mapping = %mapping.id,
        jti = %claims.jti,
        "delegated token issued"
    );
    // Datadog's client accepts exactly 200.
    Ok(envelope(resource(
        "delegated_token",
        &claims.jti,
        serde_json::json!({ "access_token": token, "expires": claims.exp }),
    )))
}

/// Exchanges an AWS identity proof for the current managed intake key of the identity.
async fn intake_key(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Reply {
    let (runtime, verified, mapping) = exchange(&shared, peer, &headers, "intake").await?;
    let config = &runtime.config.cloudauth;
    // One key per identity (the role, whatever the session) and rotation period.
    let identity = verified.caller.identity.base();
    let period_ms = (config.intake_key_rotation_seconds.max(1) as i64) * 1000;
    let now = pinpoint_store::now_ms();
    let generation = now / period_ms;
    let rotates_at = (generation + 1) * period_ms;
    let expires_at = rotates_at + (config.intake_key_overlap_seconds as i64) * 1000;
    let (id, secret) = crate::cloudauth::intake::derive(&shared.store.pepper(), &mapping.id, &identity, generation);
    let created = shared
        .store
        .insert_derived_key(
            pinpoint_store::NewKey {
                name: format!("intake {identity}"),
                kind: pinpoint_core::identity::KeyKind::Api,
                org_id: verified.org.id.clone(),
                principal_id: None,
                scopes: Some(vec![String::from(pinpoint_core::identity::permissions::INTAKE_WRITE)]),
                expires_at_ms: Some(expires_at),
            },
            &id,
            &secret,
        )
        .await?;
    if created {
        shared.store.record_intake_key(&mapping.id, &identity, &id).await?;
        shared.services.catch_up_after_write(&shared.store).await;
    }
    let stored = shared
        .store
        .stored_key(&id)
        .await?
        .ok_or_else(|| deny(Reason::ApiStoreUnavailable, "The key could not be stored."))?;
    if stored.info.revoked {
        return Err(deny(
            Reason::CloudauthIntakeKeyRevoked,
            "The intake key of this identity was revoked; ask an administrator.",
        ));
    }
    tracing::info!(target: "pinpoint::audit", arn = %verified.caller.identity, mapping = %mapping.id, key = %id, created, "intake key issued");
    Ok(envelope(resource(
        "intake_key",
        &id,
        serde_json::json!({
            "api_key": pinpoint_core::keys::format(&id, &secret),
            "expires": expires_at / 1000,
            "rotates_at": rotates_at / 1000,
        }),
    )))
}

// ---- intake mappings -----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntakeAttrs {
    arn_pattern: String,
}

fn intake_resource(m: &Mapping) -> serde_json::Value {
    resource(
        "aws_cloud_auth_intake_mapping",
        &m.id,
        serde_json::json!({ "arn_pattern": m.arn_pattern, "created_at": m.created_at_ms / 1000 }),
    )
}

async fn create_intake_mapping(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let attrs: IntakeAttrs = attributes(&body)?;
    let org_id = caller.0.org_id().to_owned();
    caller.require_not_denied(&shared, &org_id, "map AWS identities to intake keys")?;
    // An intake mapping hands out keys scoped to intake:write: like any grant, only a
    // caller who holds that may create one.
    let scope = String::from(pinpoint_core::identity::permissions::INTAKE_WRITE);
    caller.require_holds([&scope], "map AWS identities to intake keys with")?;
    check_pattern(&shared, &org_id, "intake", &attrs.arn_pattern).await?;
    let m = shared
        .store
        .create_mapping(&org_id, "intake", attrs.arn_pattern.trim(), None)
        .await?;
    Ok(envelope(intake_resource(&m)))
}

async fn list_intake_mappings(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
    let list: Vec<_> = shared
        .store
        .mappings(caller.0.org_id(), "intake")
        .await?
        .iter()
        .map(intake_resource)
        .collect();
    Ok(envelope(list.into()))
}

async fn delete_intake_mapping(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    remove_mapping(&shared, &caller, &id, "intake").await
}

/// Deletes a mapping of `kind`; the keys issued through it are revoked with it.
async fn remove_mapping(shared: &Shared, caller: &Caller, id: &str, kind: &str) -> ApiResult<StatusCode> {
    let mapping = load_mapping(shared, caller, id).await?;
    if mapping.kind != kind {
        return Err(deny(Reason::ApiNotFound, "No such mapping."));
    }
    shared.store.delete_mapping(id).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- persona mappings ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonaAttrs {
    account_identifier: String,
    arn_pattern: String,
}

fn persona_resource(m: &Mapping, identifier: &str) -> serde_json::Value {
    resource(
        "aws_cloud_auth_config",
        &m.id,
        serde_json::json!({
            "account_identifier": identifier,
            "account_uuid": m.principal_id,
            "arn_pattern": m.arn_pattern,
            "created_at": m.created_at_ms / 1000,
        }),
    )
}

/// Checks a pattern against the rules, the organization's accounts and its other mappings.
async fn check_pattern(shared: &Shared, org_id: &str, kind: &str, pattern: &str) -> ApiResult<Pattern> {
    let parsed = Pattern::parse(pattern).map_err(|e| deny(Reason::ApiBadRequest, format!("arn_pattern: {e}.")))?;
    if !shared.store.aws_accounts(org_id).await?.contains(&parsed.account) {
        return Err(deny(
            Reason::ApiBadRequest,
            format!(
                "AWS account {} is not registered for this organization; register it first.",
                parsed.account
            ),
        ));
    }
    for other in shared.store.mappings(org_id, kind).await? {
        if Pattern::parse(&other.arn_pattern).is_ok_and(|o| o.overlaps(&parsed)) {
            return Err(deny(
                Reason::ApiConflict,
                format!(
                    "arn_pattern overlaps the existing mapping {} ({}).",
                    other.id, other.arn_pattern
                ),
            ));
        }
    }
    Ok(parsed)
}

async fn create_persona_mapping(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let attrs: PersonaAttrs = attributes(&body)?;
    let org_id = caller.0.org_id().to_owned();
    caller.require_not_denied(&shared, &org_id, "map AWS identities to a principal")?;
    check_pattern(&shared, &org_id, "persona", &attrs.arn_pattern).await?;
    // A service account's id or email, or a user's email, in the caller's organization.
    let identifier = attrs.account_identifier.trim();
    let mut principal = None;
    for kind in [PrincipalKind::ServiceAccount, PrincipalKind::User] {
        principal = shared
            .store
            .principals(Some(&org_id), kind)
            .await?
            .into_iter()
            .find(|p| p.id == identifier || p.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(identifier)));
        if principal.is_some() {
            break;
        }
    }
    let principal = principal.ok_or_else(|| {
        deny(
            Reason::ApiBadRequest,
            "account_identifier names no user or service account of your organization.",
        )
    })?;
    // Whoever can map an AWS identity to an account can act as it: the caller must hold
    // every permission of the target account (as when granting a role).
    // (An account missing from the directory was deleted meanwhile: refused, not waved on.)
    let entry = shared.services.directory.principal(&principal.id).ok_or_else(|| {
        deny(
            Reason::ApiBadRequest,
            "account_identifier names no user or service account of your organization.",
        )
    })?;
    let mut held: Vec<&String> = entry.permissions.iter().collect();
    held.sort();
    caller.require_holds(held, "map AWS identities to an account holding")?;
    let m = shared
        .store
        .create_mapping(&org_id, "persona", attrs.arn_pattern.trim(), Some(&principal.id))
        .await?;
    Ok(envelope(persona_resource(&m, identifier)))
}

async fn identifier_of(shared: &Shared, m: &Mapping) -> String {
    let principal = match &m.principal_id {
        Some(id) => shared.store.principal(id).await.ok().flatten(),
        None => None,
    };
    principal.map(|p| p.email.unwrap_or(p.id)).unwrap_or_default()
}

async fn list_persona_mappings(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
    let mut list = Vec::new();
    for m in shared.store.mappings(caller.0.org_id(), "persona").await? {
        let id = identifier_of(&shared, &m).await;
        list.push(persona_resource(&m, &id));
    }
    Ok(envelope(list.into()))
}

async fn load_mapping(shared: &Shared, caller: &Caller, id: &str) -> ApiResult<Mapping> {
    let mapping = shared.store.mapping_in(id, caller.list_scope()).await?;
    mapping.ok_or_else(|| deny(Reason::ApiNotFound, "No such mapping."))
}

async fn get_persona_mapping(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let m = load_mapping(&shared, &caller, &id).await?;
    if m.kind != "persona" {
        return Err(deny(Reason::ApiNotFound, "No such mapping."));
    }
    let identifier = identifier_of(&shared, &m).await;
    Ok(envelope(persona_resource(&m, &identifier)))
}

async fn delete_persona_mapping(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    remove_mapping(&shared, &caller, &id, "persona").await
}

// ---- AWS accounts --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountAttrs {
    account_id: String,
}

async fn register_account(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let attrs: AccountAttrs = attributes(&body)?;
    let account = attrs.account_id.trim();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(deny(
            Reason::ApiBadRequest,
            "account_id must be a 12-digit AWS account id.",
        ));
    }
    shared.store.register_aws_account(caller.0.org_id(), account).await?;
    Ok((
        StatusCode::CREATED,
        envelope(resource(
            "aws_accounts",
            account,
            serde_json::json!({ "account_id": account, "org_id": caller.0.org_id() }),
        )),
    ))
}

async fn list_accounts(State(shared): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Reply {
    let list: Vec<_> = shared
        .store
        .aws_accounts(caller.0.org_id())
        .await?
        .iter()
        .map(|a| {
            resource(
                "aws_accounts",
                a,
                serde_json::json!({ "account_id": a, "org_id": caller.0.org_id() }),
            )
        })
        .collect();
    Ok(envelope(list.into()))
}

async fn remove_account(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(account): Path<String>,
) -> ApiResult<StatusCode> {
    shared.store.remove_aws_account(caller.0.org_id(), &account).await?;
    shared.services.catch_up_after_write(&shared.store).await;
    Ok(StatusCode::NO_CONTENT)
}
