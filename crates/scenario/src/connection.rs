//! One client connection of a scenario: the upgrade, a reader task that passes every frame the
//! client gets to the steps (and to the timeline), and the frame timeline for failure reports.
//!
//! Lifecycle: [`Connection::open`] connects and spawns the reader; the reader ends when the
//! stream ends (after the close handshake, or when the connection breaks) and is aborted when
//! the [`Connection`] is dropped, so no task outlives its scenario.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Something the client got.
#[derive(Debug, Clone)]
pub(crate) enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code and reason (`None`: a close frame without a code).
    Close(Option<(u16, String)>),
    /// The stream ended; `Some` if it broke (no close handshake).
    Ended(Option<String>),
}

impl Incoming {
    /// How reports show it: `text "hello"`, `binary 32 bytes 0a1b…`, `close 4000 "bye"`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Incoming::Text(t) => format!("text {}", quote(t)),
            Incoming::Binary(b) => format!("binary {}", hex_preview(b)),
            Incoming::Pong(p) => format!("pong {}", quote(&String::from_utf8_lossy(p))),
            Incoming::Close(Some((code, reason))) => format!("close {code} {}", quote(reason)),
            Incoming::Close(None) => "close (no code)".to_owned(),
            Incoming::Ended(None) => "the connection ended".to_owned(),
            Incoming::Ended(Some(why)) => format!("the connection broke: {why}"),
        }
    }
}

/// One line of the frame timeline: when (since the upgrade), which way, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Since the 101.
    pub at: Duration,
    /// true: the client sent it; false: the client got it.
    pub sent: bool,
    pub frame: String,
}

impl std::fmt::Display for TimelineEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let arrow = if self.sent { ">" } else { "<" };
        write!(f, "+{:.3}s {arrow} {}", self.at.as_secs_f64(), self.frame)
    }
}

#[derive(Clone)]
pub(crate) struct Timeline {
    start: Instant,
    entries: Arc<Mutex<Vec<TimelineEntry>>>,
}

impl Timeline {
    fn push(&self, sent: bool, frame: String) {
        let entry = TimelineEntry {
            at: self.start.elapsed(),
            sent,
            frame,
        };
        self.entries.lock().expect("timeline poisoned").push(entry);
    }

    pub(crate) fn entries(&self) -> Vec<TimelineEntry> {
        self.entries.lock().expect("timeline poisoned").clone()
    }
}

/// An open client connection.
pub(crate) struct Connection {
    tx: SplitSink<Ws, Message>,
    rx: mpsc::UnboundedReceiver<Incoming>,
    /// Taken from `rx` by a wait that was looking for something else (a ping's pong).
    pending: VecDeque<Incoming>,
    reader: JoinHandle<()>,
    pub(crate) timeline: Timeline,
    pub(crate) request_id: Option<String>,
    /// The client got a close frame.
    pub(crate) close_received: bool,
    /// The stream ended.
    pub(crate) ended: bool,
    /// The client sent a close frame.
    pub(crate) close_sent: bool,
}

/// The upgrade did not succeed.
#[derive(Debug)]
pub(crate) struct ConnectFailure {
    pub(crate) message: String,
    /// The invocation that a refusal with scfsim's JSON body (a failed start, a quota) names.
    pub(crate) request_id: Option<String>,
}

impl ConnectFailure {
    fn new(message: String) -> ConnectFailure {
        ConnectFailure {
            message,
            request_id: None,
        }
    }
}

impl Connection {
    pub(crate) async fn open(
        request: http::Request<()>,
        within: Duration,
    ) -> Result<Connection, ConnectFailure> {
        let url = request.uri().to_string();
        let connected = tokio::time::timeout(within, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| {
                ConnectFailure::new(format!(
                    "no answer to the upgrade request to {url} within {}",
                    crate::model::show(within)
                ))
            })?;
        let (ws, response) = connected.map_err(|err| match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let request_id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|b| b["request_id"].as_str().map(str::to_owned));
                ConnectFailure {
                    message: format!(
                        "the upgrade to {url} was refused: HTTP {} {}",
                        resp.status().as_u16(),
                        body.trim()
                    ),
                    request_id,
                }
            }
            other => ConnectFailure::new(format!("cannot connect to {url}: {other}")),
        })?;
        let request_id = response
            .headers()
            .get("x-scf-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let timeline = Timeline {
            start: Instant::now(),
            entries: Arc::default(),
        };
        let (tx, mut stream) = ws.split();
        let (events, rx) = mpsc::unbounded_channel();
        let reader_timeline = timeline.clone();
        let reader = tokio::spawn(async move {
            loop {
                let incoming = match stream.next().await {
                    None => Incoming::Ended(None),
                    Some(Err(err)) => Incoming::Ended(Some(err.to_string())),
                    Some(Ok(Message::Text(t))) => Incoming::Text(t.to_string()),
                    Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                    // tungstenite answers pings by itself.
                    Some(Ok(Message::Ping(p))) => {
                        reader_timeline.push(
                            false,
                            format!("ping {}", quote(&String::from_utf8_lossy(&p))),
                        );
                        continue;
                    }
                    Some(Ok(Message::Pong(p))) => Incoming::Pong(p.to_vec()),
                    Some(Ok(Message::Close(frame))) => {
                        Incoming::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                    }
                    Some(Ok(Message::Frame(_))) => continue,
                };
                let done = matches!(incoming, Incoming::Ended(_));
                // A clean end after a close frame is not news in the timeline.
                if !matches!(incoming, Incoming::Ended(None)) {
                    reader_timeline.push(false, incoming.describe());
                }
                if events.send(incoming.clone()).is_err() || done {
                    break;
                }
            }
        });
        Ok(Connection {
            tx,
            rx,
            pending: VecDeque::new(),
            reader,
            timeline,
            request_id,
            close_received: false,
            ended: false,
            close_sent: false,
        })
    }

    /// Sends `msg`, noting it in the timeline; the error says why it could not go.
    pub(crate) async fn send(&mut self, msg: Message) -> Result<(), String> {
        let what = match &msg {
            Message::Text(t) => format!("text {}", quote(t)),
            Message::Binary(b) => format!("binary {}", hex_preview(b)),
            Message::Ping(p) => format!("ping {}", quote(&String::from_utf8_lossy(p))),
            Message::Close(Some(f)) => format!("close {} {}", u16::from(f.code), quote(&f.reason)),
            Message::Close(None) => "close".into(),
            _ => "frame".into(),
        };
        self.timeline.push(true, what);
        if msg.is_close() {
            self.close_sent = true;
        }
        // Bounded: a peer that stops reading must not hold the scenario forever.
        match tokio::time::timeout(Duration::from_secs(10), self.tx.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("the write did not complete within 10s (the peer does not read)".into()),
        }
    }

    pub(crate) async fn close(&mut self, code: u16, reason: &str) -> Result<(), String> {
        self.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        })))
        .await
    }

    /// The next thing the client got, or `None` if nothing came by `deadline`. After the
    /// stream ended, always `Ended`.
    pub(crate) async fn next(&mut self, deadline: Instant) -> Option<Incoming> {
        let got = match self.pending.pop_front() {
            Some(got) => got,
            None if self.ended => return Some(Incoming::Ended(None)),
            None => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(Some(got)) => got,
                Ok(None) => Incoming::Ended(None),
            },
        };
        match &got {
            Incoming::Close(_) => self.close_received = true,
            Incoming::Ended(_) => self.ended = true,
            _ => {}
        }
        Some(got)
    }

    /// Puts back what a wait took but did not want, for the next step.
    pub(crate) fn keep(&mut self, got: Incoming) {
        self.pending.push_back(got);
    }

    /// After the steps: close if nobody did, and wait (bounded) for the close handshake and
    /// the end of the stream, so that the invocation's record is complete.
    pub(crate) async fn finish(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        if !self.close_sent && !self.close_received && !self.ended {
            let _ = self.close(1000, "scenario done").await;
        }
        while !self.ended {
            if self.next(deadline).await.is_none() {
                break;
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.tx.close()).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A text in quotes, shortened past 200 characters.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head:?}… ({} characters)", text.chars().count())
    }
}

/// "3 bytes 00ff10", shortened past 32 bytes.
pub(crate) fn hex_preview(bytes: &[u8]) -> String {
    const MAX: usize = 32;
    let shown: String = bytes.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > MAX { "…" } else { "" };
    format!("{} bytes {shown}{more}", bytes.len())
}
