//! The api listener: Pinpoint's own API under `/api/v2/...` (admin key required),
//! `/metrics` (Prometheus text) and `/healthz`. Errors use the same reason catalogue and
//! problem bodies as the proxy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pinpoint_core::{Denial, Reason};
use pinpoint_store::{KeyError, KeyRecord};
use tokio::net::TcpListener;

use crate::respond;
use crate::runtime::Shared;

/// An API error: a denial rendered as a problem body.
struct ApiError {
    denial: Denial,
}

impl From<Denial> for ApiError {
    fn from(denial: Denial) -> Self {
        ApiError { denial }
    }
}

/// Builds the API router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v2/decisions/{request_id}", get(decision))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), request_context))
        .with_state(shared)
}

/// Serves the API until `shutdown` resolves, then drains for at most the drain timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let drain = Duration::from_millis(shared.runtime.load().config.server.drain_timeout_ms);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(shared)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = drained_tx.send(());
    });
    let server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    let deadline = async {
        let _ = drained_rx.await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = server => if let Err(e) = result {
            tracing::error!(error = %e, "api server failed");
        },
        _ = deadline => tracing::warn!("api drain timed out"),
    }
}

/// Gives every API request an id and turns [`ApiError`]s into problem bodies in the
/// client's format.
async fn request_context(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let request_id = respond::request_id_of(req.headers());
    let format = respond::format_of(req.headers());
    let mut response = next.run(req).await;
    if let Some(denial) = response.extensions_mut().remove::<Denial>() {
        let reasons_url = shared.runtime.load().config.server.reasons_url.clone();
        response = respond::problem(&denial, &request_id, format, &reasons_url).map(Body::new);
    }
    respond::set_request_id(response.headers_mut(), &request_id);
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Rendered by `request_context`, which knows the request id and format.
        let mut response = StatusCode::from_u16(self.denial.reason.status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
        response.extensions_mut().insert(self.denial);
        response
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let runtime = shared.runtime.load();
    Json(serde_json::json!({
        "status": "ok",
        "config_revision": runtime.config.revision,
        "uptime_seconds": shared.started.elapsed().as_secs(),
    }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.prometheus.render(),
    )
}

async fn not_found(req: Request) -> ApiError {
    Denial::new(Reason::ApiNotFound, format!("No API endpoint at {}.", req.uri().path())).into()
}

async fn decision(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&shared, &headers).await?;
    let decision = shared.store.decision(&request_id).await.map_err(|e| {
        tracing::error!(error = %e, "decision lookup failed");
        Denial::new(Reason::ApiStoreUnavailable, "The decision store could not be read.")
    })?;
    let Some(decision) = decision else {
        return Err(Denial::new(Reason::ApiNotFound, "No decision is recorded under this request id.").into());
    };
    Ok(Json(serde_json::json!({
        "data": {
            "type": "decision",
            "id": decision.request_id,
            "attributes": decision,
        }
    })))
}

/// The credential in `Authorization: Bearer` or `X-API-Key`, if any.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Checks for a valid admin key.
async fn require_admin(shared: &Shared, headers: &HeaderMap) -> Result<KeyRecord, ApiError> {
    let Some(key) = presented_key(headers) else {
        return Err(Denial::new(Reason::AuthnCredentialsMissing, "This endpoint needs an admin API key.").into());
    };
    match shared.store.verify_key(key).await {
        Ok(record) => Ok(record),
        Err(KeyError::Malformed) => Err(Denial::new(
            Reason::AuthnKeyMalformed,
            "The presented credential is not a Pinpoint API key.",
        )
        .into()),
        Err(KeyError::Unknown) => {
            Err(Denial::new(Reason::AuthnKeyUnknown, "The presented API key is not valid.").into())
        }
        Err(KeyError::Store(e)) => {
            tracing::error!(error = %e, "key lookup failed");
            Err(Denial::new(Reason::ApiStoreUnavailable, "The key store could not be read.").into())
        }
    }
}
