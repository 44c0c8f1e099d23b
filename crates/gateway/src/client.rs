//! The client's side before the upgrade: reading its request head, answering in HTTP, noticing
//! that it left, and turning the socket into a WebSocket once the instance accepted.
//!
//! scfsim parses the head itself (with httparse) rather than through an HTTP server library
//! because it must keep the raw socket: to watch for the client leaving while its instance
//! starts (an HTTP server does not read while a request is in flight), to bound the head's
//! size and time, and to hand the bare `TcpStream` to the WebSocket layer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::proxy::ReadAhead;

/// A client has this long to send its complete upgrade request.
pub(crate) const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on the request head.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 128;

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Over `MAX_HEAD_BYTES` or `MAX_HEADERS`: 431.
    TooLarge,
    /// Not HTTP/1.1: 400 with what was wrong.
    Malformed(String),
    /// The client closed or the socket failed before a complete head.
    Gone,
}

/// The client's socket: plain (ws://) or TLS (wss://).
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Makes the coming close of this socket a TCP reset (RST) instead of an orderly FIN: the
    /// injected fault `reset_client_after_messages`.
    pub(crate) fn reset_on_close(&self) {
        if let Err(err) = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO)) {
            tracing::warn!(%err, "cannot make the client's socket close with a reset");
        }
    }

    /// What `X-Client-Proto` says.
    pub(crate) fn proto(&self) -> &'static str {
        match self {
            ClientStream::Plain(_) => "ws",
            ClientStream::Tls(_) => "wss",
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A client connection whose request has been read and not yet answered.
pub(crate) struct ClientConn {
    stream: ClientStream,
    /// Bytes the client sent after its head (frames sent before our 101).
    leftover: Vec<u8>,
}

impl ClientConn {
    /// Reads one request head. Bounded in size here and in time by the caller.
    pub(crate) async fn read(
        mut stream: ClientStream,
    ) -> Result<(ClientConn, Request<()>), (ClientStream, HeadError)> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err((stream, HeadError::Gone)),
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            match parse(&buf) {
                // A complete head can arrive in one read past the bound: check it too.
                Ok(Some((_, used))) if used > MAX_HEAD_BYTES => {
                    return Err((stream, HeadError::TooLarge))
                }
                Ok(Some((request, used))) => {
                    let leftover = buf.split_off(used);
                    return Ok((ClientConn { stream, leftover }, request));
                }
                Ok(None) if buf.len() > MAX_HEAD_BYTES => {
                    return Err((stream, HeadError::TooLarge))
                }
                Ok(None) => {}
                Err(err) => return Err((stream, err)),
            }
        }
    }

    /// Writes an HTTP response (a final one closes the connection).
    pub(crate) async fn respond(&mut self, resp: Response<Bytes>) -> std::io::Result<()> {
        write_response(&mut self.stream, resp).await
    }

    /// Resolves when the client has closed its side (or the socket failed). Data sent early by
    /// the client is left unread for the WebSocket layer.
    pub(crate) async fn gone(&self) {
        // On the TCP socket itself: with TLS, any record (even a close_notify) counts as data,
        // but the end of the connection is an EOF either way.
        let mut probe = [0u8; 1];
        match self.stream.tcp().peek(&mut probe).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }

    /// After our 101 was written: the same socket as a WebSocket.
    pub(crate) fn proto(&self) -> &'static str {
        self.stream.proto()
    }

    /// Lets the kernel find a client that vanished without a FIN (pulled cable, suspended
    /// laptop, dropped NAT mapping) before the idle timer would end the connection as idle (455
    /// instead of 456): keepalive probes while the connection is silent, and a user timeout
    /// while data we sent stays unacknowledged (the probes stop then; retransmissions alone
    /// would take a quarter of an hour). A live client never notices: its kernel answers.
    pub(crate) fn watch_for_dead_peer(&self, idle: Duration) {
        let socket = socket2::SockRef::from(self.stream.tcp());
        let (probe, unacknowledged) = dead_peer_timing(idle);
        if let Err(err) = socket
            .set_tcp_keepalive(&probe)
            .and_then(|()| socket.set_tcp_user_timeout(Some(unacknowledged)))
        {
            tracing::warn!(%err, "cannot enable dead-peer detection on the client socket");
        }
    }

    pub(crate) async fn into_websocket(
        self,
        config: WebSocketConfig,
    ) -> WebSocketStream<ReadAhead<ClientStream>> {
        let stream = ReadAhead::new(self.stream);
        WebSocketStream::from_partially_read(stream, self.leftover, Role::Server, Some(config))
            .await
    }
}

/// Dead-peer timing for a connection whose idle timeout is `idle`: the first keepalive probe
/// after a quarter of it, three more an eighth apart (whole seconds, at least one), and the
/// same five eighths for data left unacknowledged (or a receive window left closed).
fn dead_peer_timing(idle: Duration) -> (socket2::TcpKeepalive, Duration) {
    let seconds = |d: Duration| Duration::from_secs(d.as_secs().max(1));
    let probe = socket2::TcpKeepalive::new()
        .with_time(seconds(idle / 4))
        .with_interval(seconds(idle / 8))
        .with_retries(3);
    (probe, (idle * 5 / 8).max(Duration::from_secs(1)))
}

/// Answers a connection whose head could not be read, if there is anything to say.
pub(crate) async fn refuse(mut stream: ClientStream, error: HeadError) {
    let resp = match error {
        HeadError::Gone => return,
        HeadError::TooLarge => crate::responses::text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head over {MAX_HEAD_BYTES} bytes"),
        ),
        HeadError::Malformed(why) => crate::responses::text(StatusCode::BAD_REQUEST, why),
    };
    let _ = write_response(&mut stream, resp).await;
}

pub(crate) async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    resp: Response<Bytes>,
) -> std::io::Result<()> {
    let status = resp.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    let final_response = status != StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in resp.headers() {
        if final_response
            && (name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if final_response {
        out.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n",
                resp.body().len()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(resp.body());
    stream.write_all(&out).await?;
    if final_response {
        let _ = stream.shutdown().await;
    }
    Ok(())
}

/// A complete head, and how many bytes it took; `None` if more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Request<()>, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(err) => {
            return Err(HeadError::Malformed(format!(
                "malformed HTTP request: {err}"
            )))
        }
    };
    let mut request = Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"))
        .body(())
        .map_err(|err| HeadError::Malformed(format!("malformed request line: {err}")))?;
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| HeadError::Malformed(format!("bad header name {:?}", header.name)))?;
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| HeadError::Malformed(format!("bad value of header {name}")))?;
        request.headers_mut().append(name, value);
    }
    Ok(Some((request, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_head_and_keeps_what_follows() {
        let raw = b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n\x81\x00";
        let (req, used) = parse(raw).unwrap().unwrap();
        assert_eq!(req.uri(), "/echo?x=1");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(&raw[used..], b"\x81\x00");
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(matches!(
            parse(b"\x16\x03\x01 garbage\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }
}
