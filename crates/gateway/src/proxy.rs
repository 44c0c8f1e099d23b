//! Frames one to one between the client and its instance, until one side or a limit ends it.
//!
//! Two forwarding directions run concurrently in one task, each owning one read half and the
//! opposite write half, so each direction stays in order and neither waits for the other: a
//! function that writes while it never reads cannot stall the client's messages behind its own.
//! Back-pressure is natural: a direction reads its next message only after the previous one was
//! written, so memory per connection is bounded by tungstenite's buffers.
//!
//! Written over `Sink + Stream` so it can be tested without sockets.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use scfsim_record::{EndReason, Side};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::limits::RequestRate;
use crate::live::Traffic;
use scfsim_config::{Limits, RateLimitAction};

/// How long scfsim waits for the far side's close frame (and the forwarding of the end) before
/// it drops the TCP connection anyway.
pub(crate) const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// The limits of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub idle: Duration,
    pub execution: Duration,
    /// Message size and client → function rates.
    pub request: Limits,
    /// The function's memory size, for the 434 message.
    pub memory_mb: u32,
}

/// How often the instance's memory cgroup is asked whether it OOM-killed a process: the
/// kernel has already enforced the limit, this only notices it (an OOM kill of the process
/// holding the socket is noticed at once, as the socket drops). Slow enough that thousands of
/// open connections do not keep scfsim reading cgroup files.
const MEMORY_POLL: Duration = Duration::from_millis(500);

/// Why a connection is being ended by someone other than its two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// scfsim is stopping.
    Shutdown,
    /// `DELETE /api/instances/{id}`.
    Admin,
}

/// How one forwarding direction ended.
#[derive(Debug)]
enum DirectionEnd {
    /// The source sent a close frame (tungstenite has queued the reply to it).
    Closed(Option<CloseFrame>),
    /// The source's stream ended, or broke, without a close frame.
    Dropped(String),
    /// The source broke the protocol; the code to send it.
    Protocol { code: CloseCode, detail: String },
    /// The source sent a message over the size limit.
    TooLarge { size: Option<u64>, limit: u64 },
    /// The source went over its rate with `rate_limit_action = "close"`.
    RateLimited(String),
    /// Writing to the destination failed: the other direction knows why.
    DestinationFailed,
}

/// Pings forwarded in one direction, so that the answering pong (already given to the pinger by
/// its own leg) is not passed on a second time.
#[derive(Default)]
struct OutstandingPings(Mutex<VecDeque<Bytes>>);

impl OutstandingPings {
    /// Enough for any burst a client sends before the far side answers; each entry is a
    /// control-frame payload (at most 125 bytes), so the bound is also a memory bound.
    const MAX: usize = 1024;

    fn sent(&self, payload: &Bytes) {
        let mut q = self.0.lock().expect("pings poisoned");
        if q.len() == Self::MAX {
            q.pop_front();
        }
        q.push_back(payload.clone());
    }

    /// True if this pong answers a ping we forwarded (and forgets that ping).
    fn answered(&self, payload: &Bytes) -> bool {
        let mut q = self.0.lock().expect("pings poisoned");
        match q.iter().position(|p| p == payload) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }
}

/// A direction's rate limit and what to do when it is reached.
struct Rate {
    limiter: RequestRate,
    action: RateLimitAction,
    limits: Limits,
    warned: bool,
}

impl Rate {
    /// `None` when the action is `off`: no limit to keep.
    fn new(limits: Limits) -> Option<Rate> {
        (limits.rate_limit_action != RateLimitAction::Off).then(|| Rate {
            limiter: RequestRate::new(&limits),
            action: limits.rate_limit_action,
            limits,
            warned: false,
        })
    }

    fn describe(&self) -> String {
        format!(
            "over {} messages/s or {} bytes/s",
            self.limits.max_messages_per_second, self.limits.max_bytes_per_second
        )
    }

    /// Waits until a message of `len` bytes may be forwarded (`throttle`), or says it may not
    /// (`close`). Waiting here, before the next read, is what pushes back on the client's TCP
    /// window instead of buffering its messages.
    async fn admit(&mut self, len: usize, traffic: &Traffic) -> Result<(), String> {
        let now = std::time::Instant::now();
        let delay = self.limiter.delay(now, len);
        if !delay.is_zero() {
            if self.action == RateLimitAction::Close {
                return Err(format!("client sent {}", self.describe()));
            }
            traffic.throttled_messages.fetch_add(1, Ordering::Relaxed);
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    "client is sending {}: delaying its messages (rate_limit_action = \"throttle\")",
                    self.describe()
                );
            }
            tokio::time::sleep(delay).await;
        }
        self.limiter.take(now + delay, len);
        Ok(())
    }
}

struct Direction<'a> {
    from: Side,
    traffic: &'a Traffic,
    /// Client → function only: the platform limits requests, not responses.
    rate: Option<Rate>,
    /// Pings this direction forwarded.
    forwarded: &'a OutstandingPings,
    /// Pings the opposite direction forwarded; pongs here may answer them.
    opposite: &'a OutstandingPings,
}

impl Direction<'_> {
    fn count(&self, len: usize) {
        let (messages, bytes) = match self.from {
            Side::Client => (&self.traffic.messages_in, &self.traffic.bytes_in),
            Side::Function => (&self.traffic.messages_out, &self.traffic.bytes_out),
        };
        messages.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.traffic.touch();
    }

    async fn run<R, W>(&mut self, source: &mut R, destination: &mut W) -> DirectionEnd
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
        W: Sink<Message, Error = WsError> + Unpin,
    {
        loop {
            let msg = match source.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(err)) => return read_error(err),
                None => return DirectionEnd::Dropped("connection ended".into()),
            };
            let data_len = match &msg {
                Message::Text(t) => Some(t.len()),
                Message::Binary(b) => Some(b.len()),
                _ => None,
            };
            if let (Some(len), Some(rate)) = (data_len, self.rate.as_mut()) {
                if let Err(detail) = rate.admit(len, self.traffic).await {
                    return DirectionEnd::RateLimited(detail);
                }
            }
            match &msg {
                Message::Text(t) => self.count(t.len()),
                Message::Binary(b) => self.count(b.len()),
                Message::Ping(p) => self.forwarded.sent(p),
                Message::Pong(p) => {
                    if self.opposite.answered(p) {
                        continue;
                    }
                }
                // tungstenite answers a close frame whose code may not be sent (1005, 1006,
                // 1015, 999, 5000 …) by itself with this 1002, and hands it to us as if the peer
                // had sent it: that is the peer breaking the protocol.
                Message::Close(Some(frame))
                    if frame.code == CloseCode::Protocol
                        && frame.reason.as_str() == "Protocol violation" =>
                {
                    return DirectionEnd::Protocol {
                        code: CloseCode::Protocol,
                        detail: "close frame with a code that must not be sent".into(),
                    }
                }
                Message::Close(frame) => return DirectionEnd::Closed(frame.clone()),
                Message::Frame(_) => continue,
            }
            if destination.send(msg).await.is_err() {
                return DirectionEnd::DestinationFailed;
            }
        }
    }
}

fn read_error(err: WsError) -> DirectionEnd {
    match err {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            DirectionEnd::TooLarge {
                size: Some(size as u64),
                limit: max_size as u64,
            }
        }
        WsError::Utf8(detail) => DirectionEnd::Protocol {
            code: CloseCode::Invalid,
            detail: format!("invalid UTF-8 in a text message: {detail}"),
        },
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            DirectionEnd::Dropped("connection reset without a close frame".into())
        }
        WsError::Protocol(p) => DirectionEnd::Protocol {
            code: CloseCode::Protocol,
            detail: p.to_string(),
        },
        WsError::Capacity(c) => DirectionEnd::Protocol {
            code: CloseCode::Protocol,
            detail: c.to_string(),
        },
        other => DirectionEnd::Dropped(other.to_string()),
    }
}

enum Event {
    Client(DirectionEnd),
    Function(DirectionEnd),
    Idle,
    Execution,
    MemoryLimit,
    Interrupted(Interrupt),
}

/// Forwards until the connection ends, performs the closing handshakes, and says why it ended.
pub(crate) async fn run<CR, CW, FR, FW>(
    client: (&mut CW, &mut CR),
    function: (&mut FW, &mut FR),
    timers: ConnectionLimits,
    traffic: &Traffic,
    shutdown: &CancellationToken,
    interrupt: &CancellationToken,
    memory_exceeded: &(dyn Fn() -> bool + Sync),
) -> EndReason
where
    CR: Stream<Item = Result<Message, WsError>> + Unpin,
    CW: Sink<Message, Error = WsError> + Unpin,
    FR: Stream<Item = Result<Message, WsError>> + Unpin,
    FW: Sink<Message, Error = WsError> + Unpin,
{
    let (client_tx, client_rx) = client;
    let (function_tx, function_rx) = function;
    let to_function = OutstandingPings::default();
    let to_client = OutstandingPings::default();
    let mut upstream = Direction {
        from: Side::Client,
        traffic,
        rate: Rate::new(timers.request),
        forwarded: &to_function,
        opposite: &to_client,
    };
    let mut downstream = Direction {
        from: Side::Function,
        traffic,
        rate: None,
        forwarded: &to_client,
        opposite: &to_function,
    };
    traffic.touch();
    let execution_deadline = Instant::now() + timers.execution;

    let event = {
        let mut up = pin!(upstream.run(client_rx, function_tx));
        let mut down = pin!(downstream.run(function_rx, client_tx));
        let idle = async {
            loop {
                let deadline = Instant::from_std(traffic.last_activity()) + timers.idle;
                if Instant::now() >= deadline {
                    break;
                }
                sleep_until(deadline).await;
            }
        };
        let memory = async {
            loop {
                tokio::time::sleep(MEMORY_POLL).await;
                if memory_exceeded() {
                    break;
                }
            }
        };
        let first = tokio::select! {
            end = &mut up => Event::Client(end),
            end = &mut down => Event::Function(end),
            _ = idle => Event::Idle,
            _ = sleep_until(execution_deadline) => Event::Execution,
            _ = memory => Event::MemoryLimit,
            _ = interrupt.cancelled() => Event::Interrupted(if shutdown.is_cancelled() {
                Interrupt::Shutdown
            } else {
                Interrupt::Admin
            }),
        };
        // A failed write means the destination broke; let its own direction say how.
        match first {
            Event::Client(DirectionEnd::DestinationFailed) => Event::Function(
                timeout(CLOSE_HANDSHAKE, &mut down)
                    .await
                    .unwrap_or(DirectionEnd::Dropped("write failed".into())),
            ),
            Event::Function(DirectionEnd::DestinationFailed) => Event::Client(
                timeout(CLOSE_HANDSHAKE, &mut up)
                    .await
                    .unwrap_or(DirectionEnd::Dropped("write failed".into())),
            ),
            // An OOM kill usually shows first as the instance's socket dropping.
            Event::Function(DirectionEnd::Dropped(_)) if memory_exceeded() => Event::MemoryLimit,
            other => other,
        }
    };

    let client_leg = Leg {
        tx: client_tx,
        rx: client_rx,
    };
    let function_leg = Leg {
        tx: function_tx,
        rx: function_rx,
    };
    end(event, client_leg, function_leg, timers).await
}

struct Leg<'a, W, R> {
    tx: &'a mut W,
    rx: &'a mut R,
}

impl<W, R> Leg<'_, W, R>
where
    W: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// Sends our close frame and waits, bounded, for the peer's.
    async fn close(self, frame: Option<CloseFrame>) {
        let _ = timeout(CLOSE_HANDSHAKE, async {
            if self.tx.send(Message::Close(frame)).await.is_err() {
                // The leg is already closing (tungstenite queued its own answer to the peer's
                // close): make sure that answer is written.
                let _ = self.tx.close().await;
                return;
            }
            while let Some(Ok(msg)) = self.rx.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }

    /// The peer closed first: tungstenite queued the reply; make sure it is written.
    async fn reply_to_close(self) {
        let _ = timeout(CLOSE_HANDSHAKE, self.tx.close()).await;
    }

    /// The peer is gone: nothing to say to it.
    fn abandon(self) {}
}

fn frame(code: CloseCode, reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: truncate_reason(reason).into(),
    })
}

/// A close reason must fit in a control frame: 123 bytes after the code.
fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn code_of(frame: &Option<CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(f.code.into()), f.reason.to_string()),
        None => (None, String::new()),
    }
}

async fn end<CW, CR, FW, FR>(
    event: Event,
    client: Leg<'_, CW, CR>,
    function: Leg<'_, FW, FR>,
    timers: ConnectionLimits,
) -> EndReason
where
    CR: Stream<Item = Result<Message, WsError>> + Unpin,
    CW: Sink<Message, Error = WsError> + Unpin,
    FR: Stream<Item = Result<Message, WsError>> + Unpin,
    FW: Sink<Message, Error = WsError> + Unpin,
{
    match event {
        Event::Client(DirectionEnd::Closed(close)) => {
            let (code, reason) = code_of(&close);
            tokio::join!(client.reply_to_close(), function.close(close));
            EndReason::ClientClosed { code, reason }
        }
        Event::Function(DirectionEnd::Closed(close)) => {
            let (code, reason) = code_of(&close);
            tokio::join!(function.reply_to_close(), client.close(close));
            EndReason::FunctionClosed { code, reason }
        }
        // A direction whose destination failed reports the destination's side as broken.
        Event::Client(DirectionEnd::Dropped(_))
        | Event::Function(DirectionEnd::DestinationFailed) => {
            client.abandon();
            function
                .close(frame(CloseCode::Away, "client went away"))
                .await;
            EndReason::ClientDropped
        }
        Event::Function(DirectionEnd::Dropped(detail)) => {
            function.abandon();
            let detail = format!(
                "the function instance's connection ended without a close frame ({detail})"
            );
            client
                .close(frame(CloseCode::Error, "function instance exited"))
                .await;
            EndReason::InstanceExited { detail }
        }
        Event::Client(DirectionEnd::DestinationFailed) => {
            function.abandon();
            client
                .close(frame(CloseCode::Error, "function instance exited"))
                .await;
            EndReason::InstanceExited {
                detail: "writing to the function instance failed".into(),
            }
        }
        Event::Client(DirectionEnd::Protocol { code, detail }) => {
            tokio::join!(
                client.close(frame(code, &detail)),
                function.close(frame(
                    CloseCode::Away,
                    "client broke the WebSocket protocol"
                ))
            );
            EndReason::ClientProtocolError {
                code: code.into(),
                detail,
            }
        }
        Event::Function(DirectionEnd::Protocol { code, detail }) => {
            tokio::join!(
                function.close(frame(code, &detail)),
                client.close(frame(
                    CloseCode::Error,
                    "function broke the WebSocket protocol"
                ))
            );
            EndReason::FunctionProtocolError { detail }
        }
        Event::Client(DirectionEnd::TooLarge { size, limit }) => {
            tokio::join!(
                client.close(frame(
                    CloseCode::Size,
                    &format!("message over {limit} bytes")
                )),
                function.close(frame(
                    CloseCode::Away,
                    "client sent a message over the size limit"
                ))
            );
            EndReason::MessageTooLarge {
                from: Side::Client,
                size,
                limit,
            }
        }
        Event::Function(DirectionEnd::TooLarge { size, limit }) => {
            tokio::join!(
                function.close(frame(
                    CloseCode::Size,
                    &format!("message over {limit} bytes")
                )),
                client.close(frame(
                    CloseCode::Away,
                    "function sent a message over the size limit"
                ))
            );
            EndReason::MessageTooLarge {
                from: Side::Function,
                size,
                limit,
            }
        }
        Event::Client(DirectionEnd::RateLimited(detail)) => {
            tokio::join!(
                client.close(frame(CloseCode::Policy, &detail)),
                function.close(frame(CloseCode::Away, "client went over its rate limit"))
            );
            EndReason::RateLimited { detail }
        }
        // Responses are not rate limited; a function direction never reports this.
        Event::Function(DirectionEnd::RateLimited(detail)) => {
            both_away(client, function, &detail).await;
            EndReason::RateLimited { detail }
        }
        Event::MemoryLimit => {
            function.abandon();
            let reason = format!("memory limit of {} MB exceeded", timers.memory_mb);
            client.close(frame(CloseCode::Error, &reason)).await;
            EndReason::MemoryLimit {
                limit_mb: timers.memory_mb,
            }
        }
        Event::Idle => {
            let reason = format!(
                "idle timeout: no message for {}",
                scfsim_config::format_duration(timers.idle)
            );
            both_away(client, function, &reason).await;
            EndReason::IdleTimeout { after: timers.idle }
        }
        Event::Execution => {
            let reason = format!(
                "execution timeout of {} reached",
                scfsim_config::format_duration(timers.execution)
            );
            both_away(client, function, &reason).await;
            EndReason::ExecutionTimeout {
                after: timers.execution,
            }
        }
        Event::Interrupted(Interrupt::Shutdown) => {
            both_away(client, function, "scfsim is shutting down").await;
            EndReason::GatewayShutdown
        }
        Event::Interrupted(Interrupt::Admin) => {
            both_away(client, function, "ended through the scfsim admin API").await;
            EndReason::EndedByAdmin
        }
    }
}

async fn both_away<CW, CR, FW, FR>(client: Leg<'_, CW, CR>, function: Leg<'_, FW, FR>, reason: &str)
where
    CR: Stream<Item = Result<Message, WsError>> + Unpin,
    CW: Sink<Message, Error = WsError> + Unpin,
    FR: Stream<Item = Result<Message, WsError>> + Unpin,
    FW: Sink<Message, Error = WsError> + Unpin,
{
    tokio::join!(
        client.close(frame(CloseCode::Away, reason)),
        function.close(frame(CloseCode::Away, reason))
    );
}
