//! The admin HTTP API: recorded invocations, their logs, live instances and the functions.
//!
//! Read-only over the record store and the gateway's live registry, except `DELETE
//! /api/instances/{id}`, which asks the gateway to end one connection. It never starts or stops
//! instances itself. Like the gateway it is handed a bound listener and a shutdown token.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/functions", get(functions))
        .route("/api/instances", get(instances))
        .route("/api/instances/{id}", axum::routing::delete(end_instance))
        .route("/api/invocations", get(invocations))
        .route("/api/invocations/{request_id}", get(invocation))
        .route("/api/invocations/{request_id}/logs", get(logs))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(state)
}

/// Serves the admin API until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = result {
        tracing::error!(%err, "admin API stopped");
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

async fn end_instance(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    if state.live.end(id) {
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "ending": id })),
        )
            .into_response()
    } else {
        error(StatusCode::NOT_FOUND, &format!("no live instance {id}"))
    }
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
