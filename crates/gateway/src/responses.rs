//! HTTP answers scfsim gives instead of an upgrade: before routing (400, 404, 426 …), and for an
//! invocation that ends before its 101 (429, 502, 503, or the function's own refusal).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use uuid::Uuid;

pub(crate) type Body = Bytes;

pub(crate) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An error before the upgrade, as JSON that tells the user what happened and what to fix;
/// `status_code` is the platform's status when the attempt was recorded as an invocation.
pub(crate) fn json_error(
    status: StatusCode,
    request_id: Option<Uuid>,
    message: &str,
    status_code: Option<u16>,
) -> Response<Body> {
    let mut body = serde_json::json!({ "error": message, "request_id": request_id });
    if let Some(code) = status_code {
        body["status_code"] = code.into();
    }
    json_response(status, body)
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The instance refused the upgrade: the client gets its answer as it is.
pub(crate) fn passthrough(resp: Response<Option<Vec<u8>>>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::CONNECTION);
    Response::from_parts(parts, Bytes::from(body.unwrap_or_default()))
}
