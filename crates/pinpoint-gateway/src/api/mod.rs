//! The api listener: Pinpoint's own API under `/api/v2/...` (JSON:API-style envelopes like
//! Datadog's), `/.well-known/jwks.json`, `/metrics` and `/healthz`. Every request runs
//! through the api pipeline (the proxy's access layers) with the permission its endpoint
//! needs, from the one table [`ENDPOINTS`]; handlers add tenant checks. API decisions are
//! recorded like proxy decisions, so `pinpoint explain` works for both.

mod analytics;
mod audits;
mod cloudauth;
mod identities;
mod keys;

use pinpoint_policy::credential_text;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pinpoint_core::config::AuthRequirement;
use pinpoint_core::identity::permissions as perm;
use pinpoint_core::{Decision, Denial, LayerTrace, Mark, Mode, Reason};
use pinpoint_store::prelude::*;
use pinpoint_store::StoreError;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::respond;
use crate::runtime::Shared;
use pinpoint_policy::identity::Identity;
use pinpoint_policy::pipeline::RequestCtx;
use pinpoint_policy::routes::RouteAccess;

/// Every API endpoint: method, path (axum syntax) and the permission it needs.
/// `None` = authenticated caller, no permission; endpoints not listed are public.
pub const ENDPOINTS: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/api/v2/current_user", None),
    ("POST", "/api/v2/tokens", Some(perm::TOKENS_CREATE)),
    ("GET", "/api/v2/decisions/{request_id}", Some(perm::DECISIONS_READ)),
    ("GET", "/api/v2/decisions", Some(perm::DECISIONS_READ)),
    ("GET", "/api/v2/analytics/decisions", Some(perm::DECISIONS_READ)),
    ("GET", "/api/v2/audits", Some(perm::AUDITS_READ)),
    ("GET", "/api/v2/who-can", Some(perm::AUDITS_READ)),
    ("POST", "/api/v2/orgs", Some(perm::ORGS_WRITE)),
    ("GET", "/api/v2/orgs", Some(perm::ORGS_READ)),
    ("GET", "/api/v2/orgs/{id}", Some(perm::ORGS_READ)),
    ("PATCH", "/api/v2/orgs/{id}", Some(perm::ORGS_WRITE)),
    ("DELETE", "/api/v2/orgs/{id}", Some(perm::ORGS_WRITE)),
    ("POST", "/api/v2/users", Some(perm::USERS_WRITE)),
    ("GET", "/api/v2/users", Some(perm::USERS_READ)),
    ("GET", "/api/v2/users/{id}", Some(perm::USERS_READ)),
    ("PATCH", "/api/v2/users/{id}", Some(perm::USERS_WRITE)),
    ("DELETE", "/api/v2/users/{id}", Some(perm::USERS_WRITE)),
    ("POST", "/api/v2/service_accounts", Some(perm::SERVICE_ACCOUNTS_WRITE)),
    ("GET", "/api/v2/service_accounts", Some(perm::SERVICE_ACCOUNTS_READ)),
    (
        "GET",
        "/api/v2/service_accounts/{id}",
        Some(perm::SERVICE_ACCOUNTS_READ),
    ),
    (
        "PATCH",
        "/api/v2/service_accounts/{id}",
        Some(perm::SERVICE_ACCOUNTS_WRITE),
    ),
    (
        "DELETE",
        "/api/v2/service_accounts/{id}",
        Some(perm::SERVICE_ACCOUNTS_WRITE),
    ),
    ("POST", "/api/v2/roles", Some(perm::ROLES_WRITE)),
    ("GET", "/api/v2/roles", Some(perm::ROLES_READ)),
    ("GET", "/api/v2/roles/{id}", Some(perm::ROLES_READ)),
    ("PATCH", "/api/v2/roles/{id}", Some(perm::ROLES_WRITE)),
    ("DELETE", "/api/v2/roles/{id}", Some(perm::ROLES_WRITE)),
    ("POST", "/api/v2/roles/{id}/principals", Some(perm::ROLES_WRITE)),
    (
        "DELETE",
        "/api/v2/roles/{id}/principals/{principal_id}",
        Some(perm::ROLES_WRITE),
    ),
    ("POST", "/api/v2/api_keys", Some(perm::KEYS_WRITE)),
    ("GET", "/api/v2/api_keys", Some(perm::KEYS_READ)),
    ("GET", "/api/v2/api_keys/{id}", Some(perm::KEYS_READ)),
    ("DELETE", "/api/v2/api_keys/{id}", Some(perm::KEYS_WRITE)),
    ("POST", "/api/v2/api_keys/{id}/rotate", Some(perm::KEYS_WRITE)),
    ("POST", "/api/v2/signing_keys/rotate", Some(perm::SIGNING_KEYS_WRITE)),
    (
        "POST",
        "/api/v2/cloud_auth/aws/persona_mapping",
        Some(perm::CLOUD_AUTH_WRITE),
    ),
    (
        "GET",
        "/api/v2/cloud_auth/aws/persona_mapping",
        Some(perm::CLOUD_AUTH_READ),
    ),
    (
        "GET",
        "/api/v2/cloud_auth/aws/persona_mapping/{persona_mapping_id}",
        Some(perm::CLOUD_AUTH_READ),
    ),
    (
        "DELETE",
        "/api/v2/cloud_auth/aws/persona_mapping/{persona_mapping_id}",
        Some(perm::CLOUD_AUTH_WRITE),
    ),
    (
        "POST",
        "/api/v2/cloud_auth/aws/intake_mapping",
        Some(perm::CLOUD_AUTH_WRITE),
    ),
    (
        "GET",
        "/api/v2/cloud_auth/aws/intake_mapping",
        Some(perm::CLOUD_AUTH_READ),
    ),
    (
        "DELETE",
        "/api/v2/cloud_auth/aws/intake_mapping/{id}",
        Some(perm::CLOUD_AUTH_WRITE),
    ),
    ("POST", "/api/v2/cloud_auth/aws/accounts", Some(perm::CLOUD_AUTH_WRITE)),
    ("GET", "/api/v2/cloud_auth/aws/accounts", Some(perm::CLOUD_AUTH_READ)),
    (
        "DELETE",
        "/api/v2/cloud_auth/aws/accounts/{account_id}",
        Some(perm::CLOUD_AUTH_WRITE),
    ),
];

/// Public endpoints (no credentials).
pub const PUBLIC_ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/api/v2/openapi.json"),
    // The identity proof in the request is the credential.
    ("POST", "/api/v2/delegated-token"),
    ("POST", "/api/v2/intake-key"),
];

/// The route id API requests carry in traces, metrics and rate-limit rules.
pub const API_ROUTE: &str = "api";

/// An API error: a denial rendered as a problem body by [`request_context`].
pub struct ApiError(pub Denial);

impl From<Denial> for ApiError {
    fn from(denial: Denial) -> Self {
        ApiError(denial)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError(Denial::new(Reason::ApiNotFound, format!("No such {what}."))),
            StoreError::Conflict(why) => ApiError(Denial::new(Reason::ApiConflict, why)),
            unreachable if unreachable.is_unreachable() => {
                tracing::error!(error = %unreachable, "the store cannot be reached");
                ApiError(Denial::new(
                    Reason::StoreUnavailable,
                    "The store cannot be reached; nothing was changed.",
                ))
            }
            other => {
                tracing::error!(error = %other, "store query failed");
                ApiError(Denial::new(
                    Reason::ApiStoreUnavailable,
                    "The store could not be read or written.",
                ))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = StatusCode::from_u16(self.0.reason.status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
        response.extensions_mut().insert(self.0);
        response
    }
}

/// A handler's refusal as the caller and the trace get it. Handlers quote what they could
/// not accept (a permission name, a scope, a query value); when that text holds anything
/// credential-shaped ([`credential_text::ANY_CREDENTIAL`], in any wrapping), the detail and
/// notes say so instead of repeating it: secrets are never echoed or recorded, whatever
/// field they were sent in.
fn without_credentials(mut denial: Denial) -> Denial {
    let carries =
        |text: &str| credential_text::carries_pinpoint_credential(text.as_bytes(), credential_text::ANY_CREDENTIAL);
    if carries(&denial.detail) {
        denial.detail = "The request carried a credential where a name or value was expected; it is not repeated here. Send credentials only in the Authorization header.".into();
    }
    if denial.note.as_deref().is_some_and(carries) {
        denial.note = Some("(withheld: it quoted a credential the request carried)".into());
    }
    if denial.platform_note.as_deref().is_some_and(carries) {
        denial.platform_note = Some("(withheld: it quoted a credential the request carried)".into());
    }
    denial
}

/// Shorthand for a denial.
pub fn deny(reason: Reason, detail: impl Into<String>) -> ApiError {
    ApiError(Denial::new(reason, detail))
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The authenticated caller, set by [`request_context`] for endpoints in [`ENDPOINTS`].
#[derive(Clone)]
pub struct Caller(pub Arc<Identity>);

impl Caller {
    /// Whether the caller may see resources of `org_id`: its own organization's, or any
    /// for platform admins.
    pub fn sees_org(&self, org_id: &str) -> bool {
        self.0.org_id() == org_id || self.0.is_platform_admin()
    }

    /// The organization a new resource goes to: the caller's, or (platform admins only)
    /// the one named; another organization is answered like one that does not exist.
    pub fn target_org(&self, requested: Option<&str>) -> ApiResult<String> {
        match requested {
            Some(org) if self.sees_org(org) => Ok(org.to_owned()),
            Some(_) => Err(ApiError(
                Denial::new(Reason::ApiNotFound, "No such organization.")
                    .note("the organization named is not the caller's"),
            )),
            None => Ok(self.0.org_id().to_string()),
        }
    }

    /// Refuses (`authz.permission_missing`) unless the caller holds every permission:
    /// nobody hands out, through a role, a scope or a cloud mapping, more than they have.
    /// `what` completes "You cannot ...".
    pub fn require_holds<'p>(&self, permissions: impl IntoIterator<Item = &'p String>, what: &str) -> ApiResult<()> {
        for p in permissions {
            if self.0.check(p) != pinpoint_policy::identity::PermissionCheck::Granted {
                return Err(deny(
                    Reason::AuthzPermissionMissing,
                    format!("You cannot {what} `{p}`: you do not hold it."),
                ));
            }
        }
        Ok(())
    }

    /// Refuses (`authz.permission_missing`) unless a new credential would act with no more
    /// than the caller holds: the one rule for every way to issue one (a key for oneself or
    /// for another principal, a rotated key's successor, a token). `owner`: the
    /// permissions of the principal the credential acts as (`None` for an organization
    /// key, which acts with its scopes only); `scopes`: the credential's scopes. A scoped
    /// credential can use only its scopes, so those are what the caller must hold; an
    /// unscoped one can use everything its owner holds. The caller's own scopes count:
    /// a scoped key cannot issue a wider one.
    pub fn require_can_issue(
        &self,
        owner: Option<&std::collections::HashSet<String>>,
        scopes: Option<&[String]>,
        what: &str,
    ) -> ApiResult<()> {
        match (scopes, owner) {
            (Some(scopes), _) => self.require_holds(scopes, what),
            (None, Some(owner)) => {
                let mut held: Vec<&String> = owner.iter().collect();
                held.sort();
                self.require_holds(held, what)
            }
            (None, None) => Ok(()),
        }
    }

    /// Whether an explicit deny (`[[authz.deny]]`) holds this caller back in a way that
    /// what it would hand out in `target_org` might escape: a rule naming its principal or
    /// one of its roles (an organization key has no principal or roles, and a key for
    /// another principal has theirs, so either would walk out of the deny), or a rule
    /// naming its organization alone when `target_org` is not among the rule's (a
    /// platform administrator's grant into another organization would walk out of it).
    /// Such a caller may issue credentials only for itself, which the same deny covers.
    pub fn named_by_deny(&self, rules: &[pinpoint_core::config::DenyRule], target_org: &str) -> bool {
        let principal = self.0.principal.as_ref();
        let org = self.0.org_id();
        rules.iter().any(|rule| {
            let by_principal = principal.is_some_and(|p| rule.principals.iter().flatten().any(|id| **id == *p.id));
            let by_role = principal.is_some_and(|p| rule.roles.iter().flatten().any(|name| p.roles.contains(name)));
            let by_org_alone = rule.principals.is_none()
                && rule.roles.is_none()
                && rule
                    .orgs
                    .as_ref()
                    .is_some_and(|orgs| orgs.iter().any(|o| o == org) && !orgs.iter().any(|o| o == target_org));
            by_principal || by_role || by_org_alone
        })
    }

    /// Refuses a caller an explicit deny of the current config holds back from handing
    /// out power in `target_org` (see [`Caller::named_by_deny`]).
    pub fn require_not_denied(&self, shared: &Shared, target_org: &str, what: &str) -> ApiResult<()> {
        match self.named_by_deny(&shared.runtime.load().config.authz.deny, target_org) {
            true => Err(deny(
                Reason::AuthzPermissionMissing,
                format!("You cannot {what}: an explicit deny names you, and it would not cover what you ask for."),
            )),
            false => Ok(()),
        }
    }

    /// Refuses unless the caller may act for another principal who holds `held` (issue or
    /// rotate a key that speaks as them, lift their suspension or a deny on them): no
    /// explicit deny names the caller, and it holds everything they hold.
    pub fn require_may_act_for(
        &self,
        shared: &Shared,
        target_org: &str,
        held: &std::collections::HashSet<String>,
        what: &str,
    ) -> ApiResult<()> {
        self.require_not_denied(shared, target_org, what)?;
        self.require_can_issue(Some(held), None, &format!("{what} who holds"))
    }

    /// The organization listings and lookups by id are limited to: `None` (all) for
    /// platform admins. A lookup by id passes it to the store (`principal_in`, `role_in`,
    /// ...), so another organization's resource is never read: it gets exactly the answer
    /// an absent one gets, in the same time.
    pub fn list_scope(&self) -> Option<&str> {
        if self.0.is_platform_admin() {
            None
        } else {
            Some(self.0.org_id())
        }
    }
}

/// What a principal holds now, from the directory (which follows the store; asked to
/// catch up once when the principal is not in it yet). Unknown: refused, not guessed.
pub async fn principal_permissions(
    shared: &Shared,
    principal_id: &str,
) -> ApiResult<std::collections::HashSet<String>> {
    let directory = &shared.services.directory;
    if directory.principal(principal_id).is_none() {
        shared.services.catch_up_after_write(&shared.store).await;
    }
    match directory.principal(principal_id) {
        Some(entry) => Ok(entry.permissions.clone()),
        None => Err(deny(
            Reason::ApiConflict,
            "The principal's permissions are not known to this gateway yet; try again.",
        )),
    }
}

/// A JSON:API resource object.
pub fn resource(kind: &str, id: &str, attributes: impl serde::Serialize) -> serde_json::Value {
    serde_json::json!({ "type": kind, "id": id, "attributes": attributes })
}

/// `{"data": ...}`.
pub fn envelope(data: serde_json::Value) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "data": data }))
}

/// Reads a PATCH of the resource `id`: as [`attributes`], and a `data.id` in the body, when
/// there is one, must be `id` (JSON:API: 409 otherwise), so a body written for one
/// resource never changes another.
pub fn patch_attributes<T: DeserializeOwned>(body: &[u8], id: &str) -> ApiResult<T> {
    let (value, attributes) = read_attributes(body)?;
    if let Some(named) = value.get("data").and_then(|d| d.get("id")) {
        if named.as_str() != Some(id) {
            return Err(deny(
                Reason::ApiConflict,
                "The body's `data.id` names another resource than the path.",
            ));
        }
    }
    Ok(attributes)
}

/// Reads `{"data": {"attributes": {...}}}` into `T`, with a clear 400 on mistakes.
pub fn attributes<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    read_attributes(body).map(|(_, attributes)| attributes)
}

fn read_attributes<T: DeserializeOwned>(body: &[u8]) -> ApiResult<(serde_json::Value, T)> {
    let StrictJson(value) =
        serde_json::from_slice(body).map_err(|e| deny(Reason::ApiBadRequest, format!("The body is not JSON: {e}.")))?;
    // No field takes a credential, and fields are stored and shown: a key or token pasted
    // into a permission list or a name would be kept in clear. Anything credential-shaped
    // counts, in any wrapping, as sent and as the handler reads it (JSON `\u` escapes
    // decoded, every string and object key).
    let mut decoded = String::new();
    json_text(&value, &mut decoded);
    let carries = |text: &[u8]| credential_text::carries_pinpoint_credential(text, credential_text::ANY_CREDENTIAL);
    if carries(body) || carries(decoded.as_bytes()) {
        return Err(deny(
            Reason::ApiCredentialInBody,
            "A field of the body holds a Pinpoint credential; it was not stored.",
        ));
    }
    let attributes = value
        .get("data")
        .and_then(|d| d.get("attributes"))
        .cloned()
        .ok_or_else(|| {
            deny(
                Reason::ApiBadRequest,
                "The body must be {\"data\": {\"type\": ..., \"attributes\": {...}}}.",
            )
        })?;
    let attributes = serde_json::from_value(attributes)
        .map_err(|e| deny(Reason::ApiBadRequest, format!("Invalid attributes: {e}.")))?;
    Ok((value, attributes))
}

/// A JSON document in which no object names a field twice. serde_json keeps the last of
/// two silently; other readers keep the first or refuse, so such a body is refused rather
/// than read one of those ways.
struct StrictJson(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if fields.contains_key(&name) {
                return Err(serde::de::Error::custom(format_args!(
                    "the field `{}` appears twice in one object",
                    pinpoint_core::problem::visible_ascii(&name)
                )));
            }
            let StrictJson(value) = map.next_value()?;
            fields.insert(name, value);
        }
        Ok(serde_json::Value::Object(fields))
    }
}

/// Every string and object key of `value`, decoded, one per line. (serde_json refuses
/// nesting deeper than 128, which bounds the recursion.)
fn json_text(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(text) => {
            out.push_str(text);
            out.push('\n');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| json_text(item, out)),
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                out.push_str(name);
                out.push('\n');
                json_text(field, out);
            }
        }
        _ => {}
    }
}

/// Builds the API router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/api/v2/openapi.json", get(openapi))
        .route("/api/v2/current_user", get(identities::current_user))
        .route("/api/v2/decisions/{request_id}", get(decision))
        .route("/api/v2/analytics/decisions", get(analytics::decisions))
        .route("/api/v2/decisions", get(decisions_list))
        .route("/api/v2/audits", get(audits::audits))
        .route("/api/v2/who-can", get(audits::who_can))
        .merge(identities::routes())
        .merge(keys::routes())
        .merge(cloudauth::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), request_context))
        .with_state(shared)
}

/// Serves the API until `shutdown` resolves, then drains for at most the drain timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let drain = Duration::from_millis(shared.runtime.load().config.server.drain_timeout_ms);
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let tls = shared.api_tls.clone();
    let for_refusals = shared.clone();
    let router = router(shared);
    let make = move |conn: crate::listener::Connection| {
        let router = router.clone();
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(conn.peer));
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, req).await }
        })
    };
    crate::listener::serve(
        "api",
        listener,
        tls,
        false,
        builder,
        Some(crate::parse_errors::refusals_for(for_refusals, API_ROUTE)),
        make,
        shutdown,
        drain,
    )
    .await;
}

/// Serves `/metrics` alone on its own listener (`[server] metrics_listen`): plain HTTP,
/// every other path 404.
pub async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let make = move |_: crate::listener::Connection| {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move {
                let response = if req.uri().path() == "/metrics" {
                    metrics_response(&shared).into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let tls = Arc::new(crate::tls::TlsState::default());
    crate::listener::serve(
        "metrics",
        listener,
        tls,
        false,
        builder,
        None,
        make,
        shutdown,
        Duration::from_secs(1),
    )
    .await;
}

/// Endpoint access rules, built once.
fn endpoint_access() -> &'static HashMap<(Method, &'static str), Arc<RouteAccess>> {
    static TABLE: std::sync::OnceLock<HashMap<(Method, &'static str), Arc<RouteAccess>>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        ENDPOINTS
            .iter()
            .filter_map(|(method, path, permission)| {
                let method = Method::from_bytes(method.as_bytes()).ok()?;
                let access = RouteAccess {
                    auth: AuthRequirement::Required,
                    permissions: permission
                        .map(|p| vec![(None, Arc::<str>::from(p))])
                        .unwrap_or_default(),
                    prefix: String::from("/"),
                    ..RouteAccess::default()
                };
                Some(((method, *path), Arc::new(access)))
            })
            .collect()
    })
}

/// The API decides on the path it serves: a path that is not canonical is refused, with
/// the proxy's reasons when it is malformed, and `api.path_not_canonical` when it only
/// spells a canonical one another way (`%62`, `/./`, `//`): the router decodes an id
/// while the explicit-deny rules would compare the path as sent.
fn canonical_api_path(raw: &str) -> Result<(), Denial> {
    let canonical = pinpoint_core::canonical::canonical_path(raw)?;
    match canonical == raw {
        true => Ok(()),
        false => Err(Denial::new(
            Reason::ApiPathNotCanonical,
            "The API path is not in its canonical form; send it without needless escapes, dot-segments or doubled slashes.",
        )
        .note(format!(
            "canonical form: {}",
            pinpoint_core::problem::visible_ascii(&canonical)
        ))),
    }
}

/// What the endpoint `method` + `matched` (the router's path pattern) demands: its access
/// rule, or nothing for a public endpoint. The API denies by default: a route the router
/// serves that neither table declares is refused (405 with the declared methods, or 404),
/// so an endpoint without a declared requirement cannot be reached. HEAD follows GET.
fn declared(
    method: &Method,
    matched: Option<&str>,
    metrics_need_key: bool,
) -> Result<Option<Arc<RouteAccess>>, Denial> {
    let Some(matched) = matched else {
        // No route matched: the fallback answers 404 itself.
        return Ok(None);
    };
    if metrics_need_key && matched == "/healthz" {
        // Credentials read when sent: a platform administrator sees the details.
        static OPTIONAL: std::sync::OnceLock<Arc<RouteAccess>> = std::sync::OnceLock::new();
        let access = OPTIONAL.get_or_init(|| {
            Arc::new(RouteAccess {
                auth: AuthRequirement::Optional,
                prefix: String::from("/"),
                ..RouteAccess::default()
            })
        });
        return Ok(Some(access.clone()));
    }
    if metrics_need_key && matched == "/metrics" {
        // Authenticated like any endpoint; the handler admits platform administrators only.
        static AUTHENTICATED: std::sync::OnceLock<Arc<RouteAccess>> = std::sync::OnceLock::new();
        let access = AUTHENTICATED.get_or_init(|| {
            Arc::new(RouteAccess {
                auth: AuthRequirement::Required,
                prefix: String::from("/"),
                ..RouteAccess::default()
            })
        });
        return Ok(Some(access.clone()));
    }
    let as_declared = if *method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    if let Some(access) = endpoint_access().get(&(as_declared.clone(), matched)) {
        return Ok(Some(access.clone()));
    }
    if PUBLIC_ENDPOINTS
        .iter()
        .any(|(m, p)| *p == matched && *m == as_declared.as_str())
    {
        return Ok(None);
    }
    let allow: Vec<&str> = ENDPOINTS
        .iter()
        .map(|(m, p, _)| (*m, *p))
        .chain(PUBLIC_ENDPOINTS.iter().copied())
        .filter(|(_, p)| *p == matched)
        .map(|(m, _)| m)
        .collect();
    if allow.is_empty() {
        Err(Denial::new(Reason::ApiNotFound, "No API endpoint at this path.")
            .note(format!("`{matched}` is routed but declared in no endpoint table")))
    } else {
        Err(Denial::new(
            Reason::RouteMethodNotAllowed,
            format!("{method} is not allowed here; allowed: {}.", allow.join(", ")),
        )
        .header("allow", allow.join(", ")))
    }
}

/// Runs the api pipeline, renders denials as problem bodies in the client's format, sets
/// `X-Request-Id`, and records the decision of every `/api/` request.
async fn request_context(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let runtime = shared.runtime.load_full();
    let request_id = respond::new_request_id();
    let client_request_id = respond::client_request_id(req.headers());
    let format = respond::format_of(req.headers());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_ip =
        pinpoint_policy::forwarded::client_ip(peer.ip(), req.headers(), &runtime.config.net.trusted_proxies);
    let method = req.method().clone();
    // First, like the proxy's edge: a refusal for any other reason must not write the
    // credential down either.
    let credential_in_url =
        crate::edge::refuse_credential_in_url(req.method(), req.uri(), req.headers(), credential_text::ANY_CREDENTIAL);
    let is_api = req.uri().path().starts_with("/api/");
    let path = match credential_in_url {
        Ok(()) => req.uri().path().to_owned(),
        Err(_) => String::from(crate::edge::WITHHELD_PATH),
    };
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let route_id: Arc<str> = Arc::from(API_ROUTE);

    let (verdict, identity, known_caller, answered, extra_headers, at_ms) = match credential_in_url
        .and_then(|()| canonical_api_path(&path))
        .and_then(|()| {
            declared(
                &method,
                matched.as_deref(),
                runtime.config.server.metrics == pinpoint_core::config::MetricsAccess::Key,
            )
        }) {
        Err(denial) => {
            crate::telemetry::count_denial(denial.reason, &route_id, Mode::Enforce);
            let entry = LayerTrace {
                layer: denial.reason.layer().into(),
                mark: Mark::Deny,
                mode: Mode::Enforce,
                reason: Some(denial.reason),
                rule_id: None,
                detail: Some(denial.detail.clone()),
                note: denial.note.clone(),
                platform_note: denial.platform_note.as_deref().map(String::from),
                micros: 0,
            };
            let verdict = pinpoint_policy::pipeline::Verdict {
                trace: vec![entry],
                denial: Some(denial),
            };
            let now = pinpoint_store::now_ms();
            (verdict, None, None, false, Vec::new(), now)
        }
        Ok(access) => {
            let mut ctx = RequestCtx::new(
                &method,
                &path,
                None,
                req.headers(),
                peer,
                client_ip,
                &request_id,
                pinpoint_store::now_ms(),
            );
            ctx.route_id = Some(route_id.clone());
            ctx.access = access;
            let verdict = runtime.api_pipeline.run(&mut ctx).await;
            crate::telemetry::count_trace_denials(&verdict.trace, &route_id);
            (
                verdict,
                ctx.identity.take().map(Arc::new),
                ctx.known_caller.take(),
                ctx.answered,
                std::mem::take(&mut ctx.response_headers),
                ctx.at_ms,
            )
        }
    };
    let mut trace = verdict.trace;
    let mut response = if let Some(denial) = verdict.denial {
        respond::problem(&denial, &request_id, format, &runtime.config.server.reasons_url).map(Body::new)
    } else if answered {
        StatusCode::NO_CONTENT.into_response()
    } else {
        if let Some(identity) = &identity {
            req.extensions_mut().insert(Caller(identity.clone()));
        }
        let handler_started = Instant::now();
        let mut response = next.run(req).await;
        let handler_denial = response.extensions_mut().remove::<Denial>().map(without_credentials);
        let mut entry = LayerTrace {
            layer: "api".into(),
            mark: Mark::Pass,
            mode: Mode::Enforce,
            reason: None,
            rule_id: matched.as_deref().map(Arc::<str>::from),
            detail: None,
            note: None,
            platform_note: None,
            micros: handler_started.elapsed().as_micros() as u64,
        };
        if let Some(denial) = handler_denial {
            // Named after the layer of the reason (e.g. `cloudauth`), so traces read naturally.
            entry.layer = denial.reason.layer().into();
            entry.mark = Mark::Deny;
            entry.reason = Some(denial.reason);
            entry.detail = Some(denial.detail.clone());
            entry.note = denial.note.clone();
            entry.platform_note = denial.platform_note.as_deref().map(String::from);
            crate::telemetry::count_denial(denial.reason, &route_id, Mode::Enforce);
            response =
                respond::problem(&denial, &request_id, format, &runtime.config.server.reasons_url).map(Body::new);
        }
        trace.push(entry);
        response
    };
    respond::set_request_ids(response.headers_mut(), &request_id, client_request_id.as_deref());
    respond::append_headers(response.headers_mut(), extra_headers);
    let status = response.status();
    let elapsed = started.elapsed();
    if is_api {
        let reason = trace.iter().find(|t| t.mark == Mark::Deny).and_then(|t| t.reason);
        let caller = pinpoint_policy::identity::recorded_caller(identity.as_deref(), known_caller);
        crate::telemetry::finish_request(
            shared.decisions.as_ref(),
            &route_id,
            Decision {
                request_id,
                client_request_id,
                at_ms,
                trace_id: None,
                client_cert: None,
                method: method.to_string(),
                path,
                raw_path: None,
                host: None,
                client_addr: peer.to_string(),
                route: Some(API_ROUTE.to_owned()),
                principal: None,
                caller,
                status: status.as_u16(),
                reason,
                upstream_target: None,
                config_revision: runtime.config.revision.clone(),
                duration_micros: elapsed.as_micros() as u64,
                trace,
            },
            // Operators' calls: few, and each worth its record.
            pinpoint_core::config::SampleRate::ALL,
            None,
        );
    }
    response
}

async fn healthz(State(shared): State<Arc<Shared>>, caller: Option<Extension<Caller>>) -> Json<serde_json::Value> {
    let runtime = shared.runtime.load();
    // With `metrics = "key"` what operators read (targets, a refused config's text) is for
    // platform administrators, like the metrics; everyone else learns only whether it
    // serves, and which revision.
    let details = runtime.config.server.metrics == pinpoint_core::config::MetricsAccess::Public
        || caller.is_some_and(|Extension(c)| c.0.is_platform_admin());
    let (store_reachable, spooled_bytes) = shared.store.health().await;
    // Decisions waiting in the spool: the store is not taking them (yet).
    let degraded = shared.config_rejected.load().is_some()
        || shared.restart_required.load().is_some()
        || !store_reachable
        || spooled_bytes > 0;
    if !details {
        return Json(serde_json::json!({
            "status": if degraded { "degraded" } else { "ok" },
            "config_revision": runtime.config.revision,
        }));
    }
    // A file on disk that was refused: still serving the last good revision, but the
    // operator's change has not taken effect.
    let rejected = shared.config_rejected.load_full();
    let cluster = match &shared.services.cluster {
        None => serde_json::json!({ "redis": "not configured" }),
        Some(cluster) => {
            let mut health = cluster.health();
            health["replicas"] = match cluster.replicas().await {
                Ok(replicas) => serde_json::Value::Array(replicas),
                Err(why) => serde_json::json!({ "error": why }),
            };
            health
        }
    };
    Json(serde_json::json!({
        "cluster": cluster,
        "store": {
            "backend": shared.store.backend().as_str(),
            "reachable": store_reachable,
            "spooled_decision_bytes": spooled_bytes,
        },
        "status": if degraded { "degraded" } else { "ok" },
        "config_error": rejected.as_deref(),
        "restart_required": shared.restart_required.load_full().as_deref(),
        "config_revision": runtime.config.revision,
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "keys_loaded": shared.services.directory.key_count(),
        "decision_log": {
            "dropped": shared
                .decision_drops
                .by_reason()
                .iter()
                .map(|(reason, count)| (reason.to_string(), serde_json::Value::from(*count)))
                .collect::<serde_json::Map<_, _>>(),
        },
        "upstreams": runtime
            .upstreams
            .iter()
            .map(|(name, pool)| (name.to_string(), serde_json::Value::Array(pool.report())))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

async fn metrics(State(shared): State<Arc<Shared>>, caller: Option<Extension<Caller>>) -> Response {
    // Metrics span every organization's routes: with `metrics = "key"`, only platform
    // administrators read them.
    match shared.runtime.load().config.server.metrics {
        pinpoint_core::config::MetricsAccess::Public => {}
        pinpoint_core::config::MetricsAccess::Off => {
            return deny(Reason::ApiNotFound, "Metrics are not served on this listener.").into_response()
        }
        pinpoint_core::config::MetricsAccess::Key => match caller {
            Some(Extension(caller)) if caller.0.is_platform_admin() => {}
            Some(_) => {
                return deny(
                    Reason::AuthzPermissionMissing,
                    "Reading metrics needs a platform administrator's key (they span every organization).",
                )
                .into_response()
            }
            None => return deny(Reason::AuthnCredentialsMissing, "Reading metrics needs an API key.").into_response(),
        },
    }
    metrics_response(&shared).into_response()
}

/// The Prometheus text exposition of every metric, with the targets' states as of now.
pub fn metrics_response(shared: &Shared) -> impl IntoResponse {
    for pool in shared.runtime.load().upstreams.values() {
        pool.report_to_metrics();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.prometheus.render(),
    )
}

async fn jwks(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(shared.services.tokens.jwks()),
    )
}

async fn openapi() -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(openapi_document).clone())
}

async fn not_found(req: Request) -> ApiError {
    deny(Reason::ApiNotFound, format!("No API endpoint at {}.", req.uri().path()))
}

async fn decision(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(request_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    // Found by Pinpoint's id or by the client's own; decisions of other organizations'
    // requests (and of anonymous ones) are visible to platform admins only, and look the
    // same as missing ones to everyone else. A request answered a moment ago may still
    // be in the decision log's queue: wait for its batch (bounded) before saying no.
    let flush = Duration::from_millis(shared.runtime.load().config.decision_log.flush_interval_ms);
    let deadline = tokio::time::Instant::now() + (flush * 3).min(Duration::from_secs(2));
    let mut found = loop {
        let mut found = shared
            .store
            .decisions_by_id(
                &request_id,
                (!caller.0.is_platform_admin()).then(|| caller.0.org_id()),
                DECISION_MATCHES_LISTED,
            )
            .await?;
        found.retain(|d| caller.0.is_platform_admin() || d.org_id() == Some(caller.0.org_id()));
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if found.is_empty() && pinpoint_core::request_id::made_within(&request_id, pinpoint_store::now_ms(), 30_000) {
        // One of Pinpoint's own ids, from the last half minute. If no route's sample would
        // have kept it, an allowed request's record was never kept: say so now rather than
        // "not yet" (refusals, always kept, were waited for above). Either answer depends
        // on the id alone, whether or not it is another organization's.
        let config = &shared.runtime.load().config;
        let widest = config
            .routes
            .iter()
            .filter_map(|r| r.decision_sample)
            .chain([config.decision_log.sample_allowed])
            .max()
            .unwrap_or(pinpoint_core::config::SampleRate::ALL);
        if !widest.keeps(pinpoint_store::decisions::draw(&request_id)) {
            return Err(deny(
                Reason::ApiNotFound,
                "No decision is recorded under this request id: if the request was allowed, it was not in the sample of allowed requests whose records are kept (`[decision_log] sample_allowed`). Refusals are always recorded.",
            ));
        }
        return Err(ApiError(
            Denial::new(
                Reason::ApiDecisionPending,
                "No decision is recorded under this request id yet. Refusals are always recorded; of allowed requests only a sample is (`[decision_log] sample_allowed`).",
            )
            .header("retry-after", "1"),
        ));
    }
    present(&shared, &caller, &mut found);
    // Pinpoint's ids are unique: a client that sends one as its own id cannot crowd it.
    if let Some(exact) = found.iter().position(|d| d.request_id == request_id) {
        found = vec![found.swap_remove(exact)];
    }
    match found.as_slice() {
        [] => Err(deny(
            Reason::ApiNotFound,
            "No decision is recorded under this request id. Refusals are always recorded; of allowed requests only a sample is (`[decision_log] sample_allowed`).",
        )),
        [decision] => Ok(envelope(resource("decision", &decision.request_id, decision))),
        several => Ok(envelope(serde_json::Value::Array(
            several.iter().map(|d| resource("decision", &d.request_id, d)).collect(),
        ))),
    }
}

/// Decisions as a caller reads them: callers named (records name them by id), and what
/// names another tenant (`platform_note`) only for platform admins.
fn present(shared: &Shared, caller: &Caller, decisions: &mut [Decision]) {
    let directory = &shared.services.directory;
    for decision in decisions.iter_mut() {
        if let Some(recorded) = &decision.caller {
            decision.principal = Some(directory.caller_label(recorded));
        }
        if !caller.0.is_platform_admin() {
            for entry in &mut decision.trace {
                entry.platform_note = None;
            }
        }
    }
}

/// `GET /api/v2/decisions`: the most recent stored decisions, newest first, filtered by
/// `route`, `reason` (`-`: allowed), `layer`, `status`, `org` (platform admins; everyone
/// else sees their own organization's only), `since` (Unix ms) and `limit` (default 50,
/// at most 500). Allowed requests are there as far as the decision log's sample kept them.
async fn decisions_list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    const KNOWN: [&str; 7] = ["route", "reason", "layer", "status", "org", "since", "limit"];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(deny(
            Reason::ApiBadRequest,
            format!("Unknown query parameter `{unknown}`; it takes {}.", KNOWN.join(", ")),
        ));
    }
    let number = |name: &str| -> ApiResult<Option<i64>> {
        query
            .get(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    deny(
                        Reason::ApiBadRequest,
                        format!("`{name}` must be a whole number, not `{v}`."),
                    )
                })
            })
            .transpose()
    };
    let status = number("status")?
        .map(|s| u16::try_from(s).map_err(|_| deny(Reason::ApiBadRequest, "`status` is an HTTP status.")))
        .transpose()?;
    // Every parameter is read before the organization is looked at, so a bad one is
    // refused alike whichever organization is named.
    let since_ms = number("since")?;
    let limit = number("limit")?.unwrap_or(50).clamp(1, 500) as u32;
    let org = if caller.0.is_platform_admin() {
        query.get("org").cloned()
    } else {
        // Another organization's decisions look like none at all.
        match query.get("org") {
            Some(org) if org != caller.0.org_id() => return Ok(envelope(serde_json::Value::Array(Vec::new()))),
            _ => Some(caller.0.org_id().to_owned()),
        }
    };
    let filter = pinpoint_store::DecisionFilter {
        org,
        route: query.get("route").cloned(),
        reason: query.get("reason").cloned(),
        layer: query.get("layer").cloned(),
        status,
        since_ms,
        limit,
    };
    let mut found = shared.store.recent_decisions(&filter).await?;
    present(&shared, &caller, &mut found);
    Ok(envelope(serde_json::Value::Array(
        found.iter().map(|d| resource("decision", &d.request_id, d)).collect(),
    )))
}

/// At most this many decisions are listed for one id (a client's id can repeat).
const DECISION_MATCHES_LISTED: u32 = 20;

/// The OpenAPI 3.1 document, generated from [`ENDPOINTS`] and [`PUBLIC_ENDPOINTS`] so
/// it cannot drift from the router's access table.
pub fn openapi_document() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let problem = serde_json::json!({ "$ref": "#/components/responses/Problem" });
    let all = ENDPOINTS
        .iter()
        .map(|(m, p, perm)| (*m, *p, Some(*perm)))
        .chain(PUBLIC_ENDPOINTS.iter().map(|(m, p)| (*m, *p, None)));
    for (method, path, access) in all {
        let parameters: Vec<_> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = serde_json::json!({
            "operationId": format!("{} {}", method, path),
            "parameters": parameters,
            "responses": { "2XX": { "description": "Success; JSON:API envelope {\"data\": ...}" }, "4XX": problem, "5XX": problem },
        });
        match access {
            Some(permission) => {
                op["security"] =
                    serde_json::json!([{ "bearer": [] }, { "apiKey": [] }, { "ddApiKey": [], "ddApplicationKey": [] }]);
                op["x-required-permission"] = serde_json::json!(permission);
            }
            None => op["security"] = serde_json::json!([]),
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| serde_json::json!({}));
        entry[method.to_ascii_lowercase()] = op;
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "Pinpoint API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An API key (pp_...) or a JWT from /api/v2/tokens" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
                "ddApiKey": { "type": "apiKey", "in": "header", "name": "DD-API-KEY" },
                "ddApplicationKey": { "type": "apiKey", "in": "header", "name": "DD-APPLICATION-KEY" },
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem details with Pinpoint's reason code",
                    "content": { "application/problem+json": { "schema": {
                        "type": "object",
                        "required": ["type", "title", "status", "detail", "reason", "layer", "request_id", "hint"],
                        "properties": {
                            "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                            "detail": { "type": "string" }, "reason": { "type": "string" }, "layer": { "type": "string" },
                            "request_id": { "type": "string" }, "hint": { "type": "string" },
                        },
                    } } },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_denies_what_no_table_declares() {
        let refused = |m: Method, p: &str| declared(&m, Some(p), false).err().map(|d| (d.reason, d.headers));
        assert!(matches!(
            declared(&Method::GET, Some("/api/v2/users"), false),
            Ok(Some(_))
        ));
        assert!(
            matches!(declared(&Method::HEAD, Some("/api/v2/users"), false), Ok(Some(_))),
            "HEAD follows GET"
        );
        assert!(
            matches!(declared(&Method::GET, Some("/healthz"), false), Ok(None)),
            "public"
        );
        assert_eq!(
            refused(Method::GET, "/api/v2/undeclared"),
            Some((Reason::ApiNotFound, vec![]))
        );
        assert_eq!(
            refused(Method::PUT, "/api/v2/users"),
            Some((
                Reason::RouteMethodNotAllowed,
                vec![("allow", String::from("POST, GET"))]
            ))
        );
    }
}
