//! Accepting TCP connections and answering their HTTP requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use scfsim_config::FunctionConfig;
use scfsim_record::{EndReason, Invocation as Record};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use uuid::Uuid;

use crate::client::{self, ClientConn, ClientStream, HEAD_DEADLINE};
use crate::handshake::{check_upgrade, BadUpgrade};
use crate::invocation::Invocation;
use crate::limits::{Permit, Refusal};
use crate::Gateway;
use tokio_rustls::TlsAcceptor;

pub(crate) type Body = Bytes;

impl Gateway {
    /// Accepts connections on `listener` until the shutdown token is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, None).await
    }

    /// Accepts wss:// connections on `listener` until the shutdown token is cancelled.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, tls: TlsAcceptor) {
        self.accept_loop(listener, Some(tls)).await
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = self.shutdown.cancelled() => break,
            };
            let gateway = self.clone();
            let tls = tls.clone();
            self.tasks
                .spawn(async move { gateway.serve_connection(stream, tls, peer).await });
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        tls: Option<TlsAcceptor>,
        peer: SocketAddr,
    ) {
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            None => ClientStream::Plain(stream),
            // Plain HTTP on the TLS port, or a stalled handshake, costs one bounded wait.
            Some(tls) => match tokio::time::timeout(HEAD_DEADLINE, tls.accept(stream)).await {
                Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            },
        };
        let read = tokio::time::timeout(HEAD_DEADLINE, ClientConn::read(stream));
        let (client, req) = tokio::select! {
            read = read => match read {
                Ok(Ok(read)) => read,
                Ok(Err((stream, error))) => return client::refuse(stream, error).await,
                // A slow client (slowloris) costs one bounded wait and no instance.
                Err(_) => return,
            },
            _ = self.shutdown.cancelled() => return,
        };
        match self.route(&req, peer) {
            Err(resp) => {
                let mut client = client;
                let _ = client.respond(*resp).await;
            }
            Ok((function, request_id, permit)) => {
                let span = tracing::info_span!(
                    "invocation",
                    %request_id,
                    function = %function.name,
                    %peer,
                    pid = tracing::field::Empty
                );
                let invocation = Invocation {
                    gateway: self.clone(),
                    function: function.clone(),
                    request: req,
                    peer,
                    request_id,
                    _permit: permit,
                };
                invocation.run(client).instrument(span).await;
            }
        }
    }

    /// Which function serves `req`, with its quota slot; or the answer that ends it here.
    fn route(
        &self,
        req: &Request<()>,
        peer: SocketAddr,
    ) -> Result<(&FunctionConfig, Uuid, Permit), Box<Response<Body>>> {
        let path = req.uri().path();
        // Only origin-form targets (`/path?query`) name a function: `*` or an absolute URI
        // would otherwise match a function on "/" and reach it with a path the client never
        // sent.
        if !req.uri().to_string().starts_with('/') {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                format!("request target {:?} is not a path", req.uri().to_string()),
            )));
        }
        let Some(function) = self.config.route(path) else {
            return Err(Box::new(text(
                StatusCode::NOT_FOUND,
                format!("There is no api match uri[{path}]"),
            )));
        };
        if let Err(bad) = check_upgrade(req) {
            let mut resp = json_error(bad.status(), None, &bad.message());
            if matches!(bad, BadUpgrade::Version(_) | BadUpgrade::NotUpgrade) {
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return Err(Box::new(resp));
        }
        let request_id = Uuid::new_v4();
        match self.quotas.acquire(&function.name) {
            Ok(permit) => Ok((function, request_id, permit)),
            Err(refusal) => Err(Box::new(
                self.refuse(refusal, function, request_id, peer, req),
            )),
        }
    }
}

impl Gateway {
    /// A connection over a quota: HTTP 429 naming the quota, and a record; no instance.
    fn refuse<B>(
        &self,
        refusal: Refusal,
        function: &FunctionConfig,
        request_id: Uuid,
        peer: SocketAddr,
        req: &Request<B>,
    ) -> Response<Body> {
        let detail = refusal.message();
        let reason = match refusal {
            Refusal::FunctionQuota { .. } | Refusal::TotalQuota { .. } => {
                EndReason::QuotaExceeded {
                    detail: detail.clone(),
                }
            }
            Refusal::NewInstanceRate { .. } => EndReason::InstanceRateExceeded {
                detail: detail.clone(),
            },
        };
        let status_code = scfsim_record::classify(&reason).status_code.as_u16();
        tracing::warn!(%request_id, function = %function.name, status_code, "{detail}");
        let now = OffsetDateTime::now_utc();
        let mut record = Record::begin(request_id, &function.name, now);
        record.client_addr = Some(peer.to_string());
        record.path = req.uri().path_and_query().map(|p| p.to_string());
        record.http_status = Some(StatusCode::TOO_MANY_REQUESTS.as_u16());
        record.finish(&reason, now);
        if let Err(err) = self.store.finish(record) {
            tracing::error!(%err, "could not write the invocation's record");
        }
        crate::invocation::error_response(
            StatusCode::TOO_MANY_REQUESTS,
            request_id,
            &detail,
            Some(status_code),
        )
    }
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An error before the upgrade, as JSON that tells the user what happened and what to fix.
pub(crate) fn json_error(
    status: StatusCode,
    request_id: Option<Uuid>,
    message: &str,
) -> Response<Body> {
    json_response(
        status,
        serde_json::json!({ "error": message, "request_id": request_id }),
    )
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
