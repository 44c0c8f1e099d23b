//! Accepting TCP connections and answering their HTTP requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::handshake::{check_upgrade, BadUpgrade};
use crate::invocation::Invocation;
use crate::limits::Refusal;
use crate::Gateway;
use scfsim_record::{EndReason, Invocation as Record};
use time::OffsetDateTime;

/// A client has this long to send its complete upgrade request.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on the request head (hyper answers 431 past it).
const MAX_HEAD_BYTES: usize = 16 * 1024;

pub(crate) type Body = Full<Bytes>;

impl Gateway {
    /// Accepts connections on `listener` until the shutdown token is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
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
            self.tasks
                .spawn(async move { gateway.serve_connection(stream, peer).await });
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let gateway = self.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_DEADLINE)
            .max_buf_size(MAX_HEAD_BYTES.max(8192));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let Some(function) = self.config.route(&path) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("There is no api match uri[{path}]"),
            );
        };
        if let Err(bad) = check_upgrade(&req) {
            let mut resp = json_error(bad.status(), None, &bad.message());
            if matches!(bad, BadUpgrade::Version(_) | BadUpgrade::NotUpgrade) {
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return resp;
        }
        let request_id = Uuid::new_v4();
        let permit = match self.quotas.acquire(&function.name) {
            Ok(permit) => permit,
            Err(refusal) => return self.refuse(refusal, function, request_id, peer, &req),
        };
        let span = tracing::info_span!(
            "invocation",
            %request_id,
            function = %function.name,
            %peer,
            pid = tracing::field::Empty
        );
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (reply, response) = oneshot::channel();
        // The invocation runs in its own task: if the client goes away while its instance
        // starts, hyper drops this handler, but the invocation still ends and is recorded.
        let invocation = Invocation {
            gateway: self.clone(),
            function: function.clone(),
            request: req.map(|_| ()),
            peer,
            request_id,
            _permit: permit,
        };
        self.tasks
            .spawn(invocation.run(on_upgrade, reply).instrument(span));
        response.await.unwrap_or_else(|_| {
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(request_id),
                "scfsim is shutting down",
            )
        })
    }
}

impl Gateway {
    /// A connection over a quota: HTTP 429 naming the quota, and a record; no instance.
    fn refuse<B>(
        &self,
        refusal: Refusal,
        function: &scfsim_config::FunctionConfig,
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
    let mut resp = Response::new(Full::new(Bytes::from(body)));
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
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
