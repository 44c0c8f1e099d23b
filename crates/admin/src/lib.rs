//! The admin HTTP API: recorded invocations, their logs and frame timelines, live instances
//! and the functions;
//! plus what lets a person or a monitor watch them: an event stream (`/api/events`),
//! Prometheus metrics (`/metrics`) and a dashboard page (`/`).
//!
//! Read-only over the record store and the gateway's live registry, except `DELETE
//! /api/instances/{id}`, which asks the gateway to end one connection. It never starts or stops
//! instances itself. Like the gateway it is handed a bound listener and a shutdown token.

mod events;
mod frames;
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
use scfsim_record::Store;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    /// The record store, whatever its backend.
    pub store: Arc<dyn Store>,
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
        .route("/api/invocations/{request_id}/frames", get(frames::frames))
        .route(
            "/api/invocations/{request_id}/frames/stream",
            get(frames::frames_stream),
        )
        // Every route above needs the token when one is configured; /healthz (below) never.
        .route_layer(axum::middleware::from_fn(move |req, next| {
            require_token(token.clone(), req, next)
        }))
        .route("/healthz", get(healthz))
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

/// A page of records, newest first: a JSON array as before; the cursor of the next page is in
/// the `X-Next-Cursor` header and a `Link: <...>; rel="next"` header (absent on the last page),
/// so clients that read only the array are unaffected.
async fn invocations(
    State(state): State<AdminState>,
    uri: axum::http::Uri,
    query: Result<Query<scfsim_record::Search>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    let store = state.store.clone();
    let page = match tokio::task::spawn_blocking(move || store.search(&q)).await {
        Ok(Ok(page)) => page,
        Ok(Err(err)) => return store_error(&err),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    };
    let mut resp = Json(page.records).into_response();
    if let Some(cursor) = page.next_cursor {
        let next = next_page_uri(&uri, &cursor);
        for (name, value) in [
            ("x-next-cursor", cursor),
            ("link", format!("<{next}>; rel=\"next\"")),
        ] {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, value);
            }
        }
    }
    resp
}

/// The request's path and query with `cursor` set to `cursor`.
fn next_page_uri(uri: &axum::http::Uri, cursor: &str) -> String {
    let mut pairs: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
        .collect();
    let cursor = format!("cursor={cursor}");
    pairs.push(&cursor);
    format!("{}?{}", uri.path(), pairs.join("&"))
}

/// 400 for what the client sent, 503 while the store cannot serve, 500 otherwise.
fn store_error(err: &scfsim_record::RecordError) -> Response {
    let status = match err.fault() {
        scfsim_record::Fault::Caller => StatusCode::BAD_REQUEST,
        scfsim_record::Fault::Environment => StatusCode::SERVICE_UNAVAILABLE,
        scfsim_record::Fault::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &chain(err))
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    scfsim_gateway::ErrorChain(err).to_string()
}

/// 200 always (scfsim still serves connections); the body says `ok`, or `degraded: ...` while
/// the record store cannot write (records are then kept in memory, up to a bound).
async fn healthz(State(state): State<AdminState>) -> String {
    let health = state.store.health();
    match &health.degraded {
        None => "ok\n".to_owned(),
        Some(d) => format!(
            "degraded: the record store cannot write ({}) since {}; {} record(s) kept in memory \
             (at most {}), written when writing works again\n",
            d.cause, d.since, health.pending, health.pending_limit
        ),
    }
}

async fn invocation(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.find(id)).await {
        Ok(Ok(Some(record))) => Json(record).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, &format!("no invocation {id}")),
        Ok(Err(err)) => store_error(&err),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}

async fn logs(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.logs(id)).await {
        Ok(Ok(Some(logs))) => Json(logs).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, &format!("no invocation {id}")),
        Ok(Err(err)) => store_error(&err),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}
