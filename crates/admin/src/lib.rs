//! The admin HTTP API: recorded invocations, their logs, live instances and the functions;
//! plus what lets a person or a monitor watch them: an event stream (`/api/events`),
//! Prometheus metrics (`/metrics`) and a dashboard page (`/`).
//!
//! Read-only over the record store and the gateway's live registry, except `DELETE
//! /api/instances/{id}`, which asks the gateway to end one connection. It never starts or stops
//! instances itself. Like the gateway it is handed a bound listener and a shutdown token.

mod events;
mod metrics;
mod steer;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use scfsim_config::{Config, FunctionConfig};
use scfsim_gateway::LiveInstances;
use scfsim_record::RecordStore;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub store: Arc<RecordStore>,
    pub live: Arc<LiveInstances>,
}

/// What the handlers share: the state plus the server's shutdown token, which ends the
/// never-ending event streams so that a graceful shutdown does not wait for browsers.
#[derive(Clone)]
struct Ctx {
    state: AdminState,
    shutdown: CancellationToken,
}

impl FromRef<Ctx> for AdminState {
    fn from_ref(ctx: &Ctx) -> AdminState {
        ctx.state.clone()
    }
}

/// The page served at `/`: one self-contained file (no build step, no CDN), so it works on a
/// machine without network access.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin API. Its event streams end only when their client goes away; use
/// [`router_with_shutdown`] to end them on shutdown.
pub fn router(state: AdminState) -> Router {
    router_with_shutdown(state, CancellationToken::new())
}

/// The admin API, whose event streams end when `shutdown` is cancelled.
pub fn router_with_shutdown(state: AdminState, shutdown: CancellationToken) -> Router {
    let token = state
        .config
        .gateway
        .admin_token
        .clone()
        .map(Arc::<str>::from);
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/metrics", get(metrics::metrics))
        .route("/api/events", get(events::events))
        .route("/api/functions", get(functions))
        .route("/api/instances", get(instances))
        .route("/api/instances/{id}", axum::routing::delete(steer::close))
        .route("/api/instances/{id}/send", axum::routing::post(steer::send))
        .route("/api/invocations", get(invocations))
        .route("/api/invocations/{request_id}", get(invocation))
        .route("/api/invocations/{request_id}/logs", get(logs))
        // Every route above needs the token when one is configured; /healthz (below) never.
        .route_layer(axum::middleware::from_fn(move |req, next| {
            require_token(token.clone(), req, next)
        }))
        .route("/healthz", get(|| async { "ok\n" }))
        // After the routes: it applies to the routes added so far.
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(Ctx { state, shutdown })
}

/// Serves the admin API until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = router_with_shutdown(state, shutdown.clone());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = result {
        tracing::error!(%err, "admin API stopped");
    }
}

/// `Authorization: Bearer <admin_token>`, or `?token=<admin_token>` for a browser opening the
/// dashboard (a page load and an EventSource cannot set headers).
async fn require_token(
    token: Option<Arc<str>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
    if bearer == Some(&*token) || query == Some(&*token) {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "this admin API requires gateway.admin_token: send `Authorization: Bearer <token>` \
             (or ?token=<token> in a browser)",
        )
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    ApiError(status, message.to_string()).into_response()
}

/// Every error of the API is JSON with a message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not a request id (a UUID)"),
        )
    })
}

#[derive(Serialize)]
struct FunctionView<'a> {
    #[serde(flatten)]
    config: &'a FunctionConfig,
    live_instances: usize,
}

async fn functions(State(state): State<AdminState>) -> Response {
    let views: Vec<_> = state
        .config
        .functions
        .iter()
        .map(|f| FunctionView {
            config: f,
            live_instances: state.live.count(&f.name),
        })
        .collect();
    Json(views).into_response()
}

async fn instances(State(state): State<AdminState>) -> Response {
    Json(state.live.list()).into_response()
}

async fn invocations(
    State(state): State<AdminState>,
    query: Result<Query<scfsim_record::Query>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match query {
        Ok(Query(q)) => Json(state.store.query(&q)).into_response(),
        Err(rejection) => error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    }
}

async fn invocation(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    match state.store.get(id) {
        Some(record) => Json(record).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no invocation {id}")),
    }
}

async fn logs(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    match state.store.logs(id) {
        Ok(Some(logs)) => Json(logs).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no invocation {id}")),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}
