//! The two handshakes: the client's upgrade request checked and passed on to the instance, and
//! the instance's answer passed back to the client.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use uuid::Uuid;

/// What the client's request lacks, if it is not a usable WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadUpgrade {
    /// Not an upgrade request at all (or not a GET): 426.
    NotUpgrade,
    /// An upgrade without `Sec-WebSocket-Key` or `Sec-WebSocket-Version`: 403, as the platform.
    MissingHeader(&'static str),
    /// A version other than 13: 426 with the version we speak.
    Version(String),
}

impl BadUpgrade {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BadUpgrade::NotUpgrade | BadUpgrade::Version(_) => StatusCode::UPGRADE_REQUIRED,
            BadUpgrade::MissingHeader(_) => StatusCode::FORBIDDEN,
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            BadUpgrade::NotUpgrade => {
                "this path serves WebSocket only: send a GET with `Upgrade: websocket`".into()
            }
            BadUpgrade::MissingHeader(name) => format!("missing header {name}"),
            BadUpgrade::Version(v) => {
                format!("unsupported Sec-WebSocket-Version {v:?}: only 13 is supported")
            }
        }
    }
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

pub(crate) fn check_upgrade<B>(req: &Request<B>) -> Result<(), BadUpgrade> {
    let headers = req.headers();
    if req.method() != http::Method::GET || !has_token(headers, header::UPGRADE, "websocket") {
        return Err(BadUpgrade::NotUpgrade);
    }
    if !headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err(BadUpgrade::MissingHeader("Sec-WebSocket-Key"));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => Err(BadUpgrade::MissingHeader("Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() == b"13" => Ok(()),
        Some(v) => Err(BadUpgrade::Version(
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )),
    }
}

/// Facts the gateway adds to the request, as the platform's gateway does.
pub(crate) struct GatewayHeaders<'a> {
    pub request_id: Uuid,
    pub peer: SocketAddr,
    pub proto: &'static str,
    pub function: &'a str,
    pub memory_mb: u32,
    pub timeout_ms: u128,
    pub identity: &'a crate::PlatformIdentity,
}

/// Hop-by-hop headers, and what the gateway must not pass on: compression it cannot decode on
/// both legs (design-notes: tungstenite does not implement permessage-deflate).
fn dropped_upstream(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "content-length"
            | "sec-websocket-extensions"
            | "x-api-requestid"
            | "x-real-ip"
            | "x-client-proto"
    ) || name.as_str().starts_with("x-scf-")
        // scfsim's own controls (`crate::faults`): for the gateway, never for the function.
        || name.as_str().starts_with("x-scfsim-")
}

/// The request scfsim sends to the instance: the client's path, query and headers, minus what
/// clients may not set, plus the platform's headers.
pub(crate) fn upstream_request<B>(client: &Request<B>, gw: &GatewayHeaders<'_>) -> Request<()> {
    let path = client
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut req = Request::builder()
        .method(http::Method::GET)
        .uri(format!("ws://127.0.0.1:9000{path}"))
        .body(())
        .expect("a path from a parsed URI is a valid URI");
    let headers = req.headers_mut();
    let mut forwarded_for = None;
    for (name, value) in client.headers() {
        if name.as_str() == "x-forwarded-for" {
            forwarded_for = value.to_str().ok().map(str::to_owned);
            continue;
        }
        if !dropped_upstream(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9000"));
    }
    let ip = gw.peer.ip().to_string();
    let xff = match forwarded_for {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    let id = gw.request_id.to_string();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-scf-request-id", id.clone());
    set("x-scf-memory", gw.memory_mb.to_string());
    set("x-scf-timeout", gw.timeout_ms.to_string());
    set("x-scf-version", "$LATEST".into());
    set("x-scf-name", gw.function.to_string());
    set("x-scf-namespace", gw.identity.namespace.clone());
    set("x-scf-region", gw.identity.region.clone());
    set("x-scf-appid", gw.identity.appid.clone());
    set("x-scf-uin", gw.identity.uin.clone());
    set("x-api-requestid", id);
    set("x-forwarded-for", xff);
    set("x-real-ip", ip);
    set("x-client-proto", gw.proto.to_string());
    req
}

/// Headers of the instance's 101 that must not be copied to the client's 101.
fn dropped_downstream(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "upgrade"
            | "sec-websocket-accept"
            | "sec-websocket-extensions"
            | "content-length"
            | "transfer-encoding"
            | "keep-alive"
    )
}

/// The client's 101: accept key for the client's own key, the instance's subprotocol and other
/// headers, and the request id.
pub(crate) fn switching_protocols<B, C>(
    client: &Request<B>,
    instance: &Response<C>,
    request_id: Uuid,
) -> Response<()> {
    let key = client
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .unwrap_or_default();
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .body(())
        .expect("static response parts are valid");
    let headers = resp.headers_mut();
    for (name, value) in instance.headers() {
        if !dropped_downstream(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key)).expect("base64 is a valid header value"),
    );
    let id = HeaderValue::from_str(&request_id.to_string()).expect("a UUID is a valid header");
    headers.insert(HeaderName::from_static("x-scf-request-id"), id.clone());
    headers.insert(HeaderName::from_static("x-api-requestid"), id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade() -> http::request::Builder {
        Request::builder()
            .uri("/echo/x?a=1")
            .header("Host", "localhost:8080")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13")
    }

    #[test]
    fn checks_the_upgrade() {
        assert_eq!(check_upgrade(&upgrade().body(()).unwrap()), Ok(()));
        let plain = Request::builder().uri("/echo").body(()).unwrap();
        assert_eq!(check_upgrade(&plain), Err(BadUpgrade::NotUpgrade));
        let mut no_key = upgrade().body(()).unwrap();
        no_key.headers_mut().remove("sec-websocket-key");
        assert_eq!(
            check_upgrade(&no_key),
            Err(BadUpgrade::MissingHeader("Sec-WebSocket-Key"))
        );
        assert_eq!(BadUpgrade::MissingHeader("x").status(), 403);
        let v8 = upgrade()
            .header("Sec-WebSocket-Version", "8")
            .body(())
            .unwrap();
        let mut v8 = v8;
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert!(matches!(check_upgrade(&v8), Err(BadUpgrade::Version(_))));
    }

    #[test]
    fn upstream_drops_spoofed_headers_and_adds_the_platforms() {
        let client = upgrade()
            .header("X-Scf-Request-Id", "spoofed")
            .header("X-Api-RequestId", "spoofed")
            .header("X-Forwarded-For", "10.0.0.1")
            .header("Sec-WebSocket-Extensions", "permessage-deflate")
            .header("Cookie", "a=b")
            .header("Sec-WebSocket-Protocol", "chat")
            .body(())
            .unwrap();
        let id = Uuid::new_v4();
        let identity = crate::PlatformIdentity::default();
        let gw = GatewayHeaders {
            request_id: id,
            peer: "192.0.2.7:5000".parse().unwrap(),
            proto: "ws",
            function: "echo",
            memory_mb: 128,
            timeout_ms: 900_000,
            identity: &identity,
        };
        let req = upstream_request(&client, &gw);
        let h = req.headers();
        assert_eq!(req.uri().path_and_query().unwrap(), "/echo/x?a=1");
        assert_eq!(h["x-scf-request-id"], id.to_string().as_str());
        assert_eq!(h.get_all("x-scf-request-id").iter().count(), 1);
        assert_eq!(h["x-api-requestid"], id.to_string().as_str());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-client-proto"], "ws");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["cookie"], "a=b");
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert_eq!(h["host"], "localhost:8080");
        assert!(!h.contains_key("sec-websocket-extensions"));
    }

    #[test]
    fn downstream_answers_the_clients_key() {
        let client = upgrade().body(()).unwrap();
        let instance = Response::builder()
            .status(101)
            .header("Sec-WebSocket-Accept", "whatever")
            .header("Sec-WebSocket-Protocol", "chat")
            .header("Sec-WebSocket-Extensions", "permessage-deflate")
            .header("Set-Cookie", "s=1")
            .body(())
            .unwrap();
        let id = Uuid::new_v4();
        let resp = switching_protocols(&client, &instance, id);
        let h = resp.headers();
        assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert_eq!(h["set-cookie"], "s=1");
        assert_eq!(h["x-scf-request-id"], id.to_string().as_str());
        assert!(!h.contains_key("sec-websocket-extensions"));
    }
}
