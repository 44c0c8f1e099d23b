//! Steering a live connection by hand: `POST /api/instances/{id}/send` injects a message toward
//! the client or the function, `DELETE /api/instances/{id}?code=N&reason=TEXT` closes it with
//! that code toward the client (the function gets 1001; without `code`, both get 1001). The
//! gateway carries both out (`scfsim_gateway::LiveInstances::send`/`close`); this module only
//! reads the request and words the answer.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use scfsim_gateway::{AdminClose, Payload, SteerRefusal, To};
use serde::Deserialize;

use crate::{error, parse_id, AdminState};

/// How long a send waits for the destination to take the message.
const SEND_BOUND: Duration = Duration::from_secs(10);

/// The body of `POST /api/instances/{id}/send`: `to`, and exactly one of `text` and
/// `binary_base64`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    to: To,
    text: Option<String>,
    binary_base64: Option<String>,
}

impl SendBody {
    fn payload(self) -> Result<(To, Payload), String> {
        match (self.text, self.binary_base64) {
            (Some(text), None) => Ok((self.to, Payload::Text(text))),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(|bytes| (self.to, Payload::Binary(bytes.into())))
                .map_err(|err| format!("binary_base64 is not standard base64: {err}")),
            _ => Err("give exactly one of \"text\" and \"binary_base64\"".into()),
        }
    }
}

const SEND_USAGE: &str =
    "expected a JSON body {\"to\": \"client\" | \"function\", \"text\": \"...\"} \
                          or {\"to\": ..., \"binary_base64\": \"...\"}";

pub(crate) async fn send(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let parsed: Result<SendBody, String> =
        serde_json::from_slice(&body).map_err(|err| format!("{SEND_USAGE}: {err}"));
    let (to, payload) = match parsed.and_then(SendBody::payload) {
        Ok(done) => done,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let bytes = match &payload {
        Payload::Text(t) => t.len(),
        Payload::Binary(b) => b.len(),
    };
    match state.live.send(id, to, payload, SEND_BOUND).await {
        Ok(()) => Json(serde_json::json!({ "sent": true, "to": to_name(to), "bytes": bytes }))
            .into_response(),
        Err(refusal) => refused(id, &refusal),
    }
}

fn to_name(to: To) -> &'static str {
    match to {
        To::Client => "client",
        To::Function => "function",
    }
}

/// The query of `DELETE /api/instances/{id}`.
#[derive(Debug, Deserialize)]
pub(crate) struct CloseQuery {
    code: Option<u16>,
    reason: Option<String>,
}

pub(crate) async fn close(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    query: Result<Query<CloseQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    let close = match (query.code, query.reason) {
        (Some(code), reason) => match AdminClose::new(code, reason) {
            Ok(close) => Some(close),
            Err(refusal) => return refused(id, &refusal),
        },
        (None, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "reason needs a code: ?code=N&reason=TEXT",
            )
        }
        (None, None) => None,
    };
    let code = close.as_ref().map(|c| c.code);
    if state.live.close(id, close) {
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "ending": id, "code": code })),
        )
            .into_response()
    } else {
        refused(id, &SteerRefusal::NoSuchInstance)
    }
}

fn refused(id: uuid::Uuid, refusal: &SteerRefusal) -> Response {
    let status = match refusal {
        SteerRefusal::NoSuchInstance => StatusCode::NOT_FOUND,
        SteerRefusal::BadClose(_) => StatusCode::BAD_REQUEST,
        SteerRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SteerRefusal::NotConnected | SteerRefusal::Ended => StatusCode::CONFLICT,
        SteerRefusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
        SteerRefusal::NotWritten { .. } => StatusCode::GATEWAY_TIMEOUT,
    };
    let message = match refusal {
        SteerRefusal::NoSuchInstance => format!("no live instance {id}"),
        other => other.message(),
    };
    error(status, &message)
}
