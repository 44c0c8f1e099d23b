//! Accepting TCP connections and answering their HTTP requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use scfsim_config::FunctionConfig;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::client::{self, ClientConn, ClientStream, HEAD_DEADLINE};
use crate::handshake::{check_upgrade, BadUpgrade};
use crate::invocation::Invocation;
use crate::provisioned::Handed;
use crate::responses::{json_error, text, Body};
use crate::Gateway;
use tokio_rustls::TlsAcceptor;

/// A request for a function, and the faults its header asks for.
type Routed<'a> = (&'a FunctionConfig, Option<scfsim_config::Faults>);

impl Gateway {
    /// Accepts connections on `listener` until the shutdown token is cancelled, and keeps the
    /// functions' provisioned instances ready meanwhile.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        crate::provisioned::Provisioned::start(&self);
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
            Some(tls) => {
                match tokio::time::timeout(HEAD_DEADLINE, Box::pin(tls.accept(stream))).await {
                    Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            }
        };
        // Boxed: a step before the proxy, not held in the task for the whole connection (see
        // `Invocation::serve`).
        let read = tokio::time::timeout(HEAD_DEADLINE, Box::pin(ClientConn::read(stream)));
        let (client, req) = tokio::select! {
            read = read => match read {
                Ok(Ok(read)) => read,
                Ok(Err((stream, error))) => return Box::pin(client::refuse(stream, error)).await,
                // A slow client (slowloris) costs one bounded wait and no instance.
                Err(_) => return,
            },
            _ = self.shutdown.cancelled() => return,
        };
        match self.route(&req) {
            Err(resp) => {
                let mut client = client;
                let _ = Box::pin(client.respond(*resp)).await;
            }
            Ok((function, faults)) => {
                // Boxed: an invocation (its function's config, its record) is about 2 KiB, and
                // held inline it would be kept in this task once per future it moved into.
                let mut invocation =
                    Box::new(Invocation::new(self.clone(), function.clone(), req, peer));
                invocation.inject(faults);
                let span = tracing::info_span!(
                    "invocation",
                    request_id = %invocation.request_id(),
                    function = %function.name,
                    %peer,
                    pid = tracing::field::Empty
                );
                let gateway = &self;
                let run = async move {
                    // A provisioned instance brings its own quota slot. An injected start
                    // failure or slow start is about starting an instance: such a connection
                    // starts its own.
                    if !invocation.injects_start_fault() {
                        if let Some(handed) =
                            Box::pin(gateway.provisioned.take(&function.name)).await
                        {
                            let Handed { ready, permit } = handed;
                            return invocation.provisioned(ready).run(client, permit).await;
                        }
                    }
                    match gateway.quotas.acquire(&function.name) {
                        Ok(permit) => invocation.run(client, permit).await,
                        Err(refusal) => invocation.refuse(client, refusal).await,
                    }
                };
                run.instrument(span).await
            }
        }
    }

    /// Which function serves `req` and the faults its header asks for; or the answer that ends
    /// the request here, before it is an invocation. Its quota is checked once no provisioned
    /// instance takes it.
    fn route(&self, req: &Request<()>) -> Result<Routed<'_>, Box<Response<Body>>> {
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
            let mut resp = json_error(bad.status(), None, &bad.message(), None);
            if matches!(bad, BadUpgrade::Version(_) | BadUpgrade::NotUpgrade) {
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return Err(Box::new(resp));
        }
        let faults = crate::faults::from_headers(req.headers(), &self.config.gateway)?;
        Ok((function, faults))
    }
}
