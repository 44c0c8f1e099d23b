//! Frames one to one between the client and its instance, until one side or a limit ends it.
//!
//! Two forwarding directions run concurrently in one task, each owning one read half and the
//! opposite write half, so each direction stays in order and neither waits for the other: a
//! function that writes while it never reads cannot stall the client's messages behind its own.
//! Back-pressure is natural: a direction reads its next message only after the previous one was
//! written, so memory per connection is bounded by tungstenite's buffers and the read-ahead
//! below them ([`ReadAhead`]).
//!
//! How a connection ends is not decided here: the proxy reports what happened as an
//! [`EndReason`], and `scfsim_record::classify` says which close frame each side gets and in
//! which order the two closing handshakes run; this module carries that out. When the client is
//! at fault (a protocol violation, a message over the limit, a rate over the limit with action
//! `close`), the function's handshake runs first and the function's direction keeps forwarding
//! until the function's close reply: its answers to what the client sent before its fault reach
//! the client before the client's close frame, with no timer guessing how long that takes.
//!
//! Written over `Sink + Stream` so it can be tested without sockets (`proxy/tests.rs`, on
//! in-memory streams with tokio's clock paused).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use scfsim_record::Direction as Toward;
use scfsim_record::{classify, CloseOrder, CloseStep, EndReason, Side};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::faults::{AfterForward, FaultPlan};
use crate::limits::RequestRate;
use crate::live::Traffic;
use crate::steer::{AdminClose, Injection, Payload, SteeringEnds};
use scfsim_config::{scaled, Limits, RateLimitAction};

/// How long scfsim waits for the far side's close frame (and the forwarding of the end) before
/// it drops the TCP connection anyway.
pub(crate) const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// The limits of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub idle: Duration,
    pub execution: Duration,
    /// Platform time runs this many times faster (config `time_scale`): the two timers above
    /// fire after `1 / time_scale` of their value; end reasons still name the platform value.
    pub time_scale: f64,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// scfsim is stopping.
    Shutdown,
    /// `DELETE /api/instances/{id}`, with the client's close code if one was chosen.
    Admin(Option<AdminClose>),
}

/// How one forwarding direction ended.
#[derive(Debug)]
enum DirectionEnd {
    /// The source sent a close frame (tungstenite has queued the reply to it).
    Closed(Option<WsCloseFrame>),
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
    /// An injected fault resets the client's TCP connection.
    ClientReset,
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
    async fn admit(&mut self, len: usize, traffic: &Traffic) -> Admission {
        let now = Instant::now();
        let delay = self.limiter.delay(now, len);
        if !delay.is_zero() {
            if self.action == RateLimitAction::Close {
                let detail = format!("client sent {}", self.describe());
                traffic.timeline.limit(Some(Toward::ToFunction), || {
                    format!("rate limited: {detail}; closing (rate_limit_action = \"close\")")
                });
                return Admission::Refused { detail };
            }
            traffic.throttled_messages.fetch_add(1, Ordering::Relaxed);
            traffic.timeline.limit(Some(Toward::ToFunction), || {
                format!(
                    "rate limited: the next message is delayed {:.1} ms ({}; \
                     rate_limit_action = \"throttle\")",
                    delay.as_secs_f64() * 1000.0,
                    self.describe()
                )
            });
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
        Admission::Forward
    }
}

/// Whether a message may go on under the rate limit.
enum Admission {
    Forward,
    /// Over the limit with `rate_limit_action = "close"`: what the client did.
    Refused {
        detail: String,
    },
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
    /// Messages injected through the admin API toward this direction's destination.
    injected: Option<tokio::sync::mpsc::Receiver<Injection>>,
    /// Faults injected on purpose (`crate::faults`), if any.
    faults: Option<&'a FaultPlan>,
}

/// The next message a direction forwards, and who waits for it if it was injected.
type Next = (Message, Option<tokio::sync::oneshot::Sender<()>>);

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

    /// The source's next message, or an injected one (the source first when both are ready).
    async fn next<R>(&mut self, source: &mut R) -> Result<Next, DirectionEnd>
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let injected = async {
            match self.injected.as_mut() {
                Some(queue) => queue.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            read = source.next() => match read {
                Some(Ok(msg)) => Ok((msg, None)),
                Some(Err(err)) => Err(read_error(err)),
                None => Err(DirectionEnd::Dropped("connection ended without a close frame".into())),
            },
            Some(Injection { payload, written }) = injected => {
                let msg = match payload {
                    Payload::Text(t) => Message::text(t),
                    Payload::Binary(b) => Message::binary(b),
                };
                Ok((msg, Some(written)))
            }
        }
    }

    async fn run<R, W>(&mut self, source: &mut R, destination: &mut W) -> DirectionEnd
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
        W: Sink<Message, Error = WsError> + Unpin,
    {
        loop {
            let (msg, written) = match self.next(source).await {
                Ok(next) => next,
                Err(end) => return end,
            };
            let data_len = match &msg {
                Message::Text(t) => Some(t.len()),
                Message::Binary(b) => Some(b.len()),
                _ => None,
            };
            if let (Some(len), Some(rate)) = (data_len, self.rate.as_mut()) {
                if let Admission::Refused { detail } = rate.admit(len, self.traffic).await {
                    return DirectionEnd::RateLimited(detail);
                }
            }
            let timeline = &self.traffic.timeline;
            match &msg {
                Message::Text(t) => self.count(t.len()),
                Message::Binary(b) => self.count(b.len()),
                Message::Ping(p) => self.forwarded.sent(p),
                Message::Pong(p) => {
                    if self.opposite.answered(p) {
                        timeline.message(
                            self.from,
                            &msg,
                            false,
                            ": the answer to a forwarded ping, not passed on (scfsim answered \
                             that ping itself)",
                        );
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
                    timeline.limit(None, || {
                        "protocol violation: a close frame with a code that must not be sent".into()
                    });
                    return DirectionEnd::Protocol {
                        code: CloseCode::Protocol,
                        detail: "close frame with a code that must not be sent".into(),
                    };
                }
                Message::Close(frame) => {
                    timeline.close_from(self.from, close_parts(frame.as_ref()));
                    return DirectionEnd::Closed(frame.clone());
                }
                Message::Frame(_) => continue,
            }
            timeline.message(self.from, &msg, written.is_some(), "");
            if written.is_some() {
                self.traffic
                    .injected_messages
                    .fetch_add(1, Ordering::Relaxed);
            }
            let faults = self.faults.filter(|_| data_len.is_some());
            let copies = match faults.map(|f| f.before_forward(self.from)) {
                Some(forward) => {
                    if let Some(delay) = forward.delay {
                        tokio::time::sleep(delay).await;
                    }
                    forward.copies
                }
                None => 1,
            };
            for _ in 1..copies {
                if destination.send(msg.clone()).await.is_err() {
                    return DirectionEnd::DestinationFailed;
                }
            }
            if copies > 0 && destination.send(msg).await.is_err() {
                return DirectionEnd::DestinationFailed;
            }
            if let Some(written) = written {
                let _ = written.send(());
            }
            if faults.is_some_and(|f| f.after_forward() == AfterForward::ResetClient) {
                return DirectionEnd::ClientReset;
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

impl Event {
    /// The facts, as the record and the close policy (`scfsim_record::classify`) want them.
    fn into_reason(self, limits: &ConnectionLimits) -> EndReason {
        use DirectionEnd as D;
        match self {
            Event::Client(D::Closed(frame)) => {
                let (code, reason) = code_of(frame);
                EndReason::ClientClosed { code, reason }
            }
            Event::Function(D::Closed(frame)) => {
                let (code, reason) = code_of(frame);
                EndReason::FunctionClosed { code, reason }
            }
            // A direction whose destination failed reports the destination's side as broken.
            Event::Client(D::Dropped(_) | D::ClientReset)
            | Event::Function(D::DestinationFailed | D::ClientReset) => EndReason::ClientDropped,
            Event::Function(D::Dropped(detail)) => EndReason::InstanceExited { detail },
            Event::Client(D::DestinationFailed) => EndReason::InstanceExited {
                detail: "writing to it failed".into(),
            },
            Event::Client(D::Protocol { code, detail }) => EndReason::ClientProtocolError {
                code: code.into(),
                detail,
            },
            Event::Function(D::Protocol { code, detail }) => EndReason::FunctionProtocolError {
                code: code.into(),
                detail,
            },
            Event::Client(D::TooLarge { size, limit }) => EndReason::MessageTooLarge {
                from: Side::Client,
                size,
                limit,
            },
            Event::Function(D::TooLarge { size, limit }) => EndReason::MessageTooLarge {
                from: Side::Function,
                size,
                limit,
            },
            // Responses are not rate limited: only the client's direction reports this.
            Event::Client(D::RateLimited(detail)) | Event::Function(D::RateLimited(detail)) => {
                EndReason::RateLimited { detail }
            }
            Event::MemoryLimit => EndReason::MemoryLimit {
                limit_mb: limits.memory_mb,
            },
            Event::Idle => EndReason::IdleTimeout { after: limits.idle },
            Event::Execution => EndReason::ExecutionTimeout {
                after: limits.execution,
            },
            Event::Interrupted(Interrupt::Shutdown) => EndReason::GatewayShutdown,
            Event::Interrupted(Interrupt::Admin(close)) => match close {
                Some(AdminClose { code, reason }) => EndReason::EndedByAdmin {
                    code: Some(code),
                    reason,
                },
                None => EndReason::EndedByAdmin {
                    code: None,
                    reason: String::new(),
                },
            },
        }
    }
}

fn close_parts(frame: Option<&WsCloseFrame>) -> Option<(u16, String)> {
    frame.map(|f| (f.code.into(), f.reason.to_string()))
}

fn code_of(frame: Option<WsCloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(f.code.into()), f.reason.to_string()),
        None => (None, String::new()),
    }
}

/// Forwards until the connection ends, performs the closing handshakes that
/// `scfsim_record::classify` prescribes, and says why it ended. `steering` brings messages
/// injected through the admin API into either direction, and the close code chosen there.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<CR, CW, FR, FW>(
    client: (&mut CW, &mut CR),
    function: (&mut FW, &mut FR),
    timers: ConnectionLimits,
    traffic: &Traffic,
    shutdown: &CancellationToken,
    interrupt: &CancellationToken,
    steering: SteeringEnds,
    memory_exceeded: &(dyn Fn() -> bool + Sync),
    faults: Option<&FaultPlan>,
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
        injected: Some(steering.to_function),
        faults,
    };
    let mut downstream = Direction {
        from: Side::Function,
        traffic,
        rate: None,
        forwarded: &to_client,
        opposite: &to_function,
        injected: Some(steering.to_client),
        faults,
    };
    traffic.touch();
    let execution_deadline = Instant::now() + scaled(timers.execution, timers.time_scale);
    let idle_after = scaled(timers.idle, timers.time_scale);

    // Boxed so that each can be dropped on its own: dropping one releases its two halves for
    // the closing handshake while the other may still be forwarding.
    let mut up = Box::pin(upstream.run(&mut *client_rx, &mut *function_tx));
    let mut down = Box::pin(downstream.run(&mut *function_rx, &mut *client_tx));
    let idle = async {
        loop {
            let deadline = traffic.last_activity() + idle_after;
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
            Interrupt::Admin(steering.admin_close.get().cloned())
        }),
    };
    // A failed write means the destination broke; let its own direction say how.
    let event = match first {
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
    };
    let reason = event.into_reason(&timers);
    let classified = classify(&reason);
    crate::timeline::note_end(&traffic.timeline, &reason, &classified);
    let closing = classified.closing;
    let noted = |to: Side, step: &CloseStep| {
        crate::timeline::note_close_step(&traffic.timeline, to, step, &reason)
    };

    drop(up);
    match (closing.order, closing.to_function) {
        (CloseOrder::FunctionFirst, CloseStep::Send(frame)) => {
            // The client is at fault, and everything it sent before reached the function:
            // `down` goes on passing the function's answers to the client until the
            // function's close reply, and only then does the client get its close frame.
            let deadline = Instant::now() + CLOSE_HANDSHAKE;
            noted(Side::Function, &CloseStep::Send(frame.clone()));
            // A function that does not read cannot hold the close back past the deadline.
            let sent = timeout_at(deadline, function_tx.send(Message::Close(ws_frame(frame))))
                .await
                .unwrap_or(Ok(()));
            let drained = match sent {
                Ok(()) => timeout_at(deadline, &mut down).await.ok(),
                Err(_) => None,
            };
            drop(down);
            let function = Leg {
                tx: function_tx,
                rx: function_rx,
            };
            match (sent, drained) {
                // The client's leg failed first: the function's reply is still to come.
                (Ok(()), Some(DirectionEnd::DestinationFailed)) => {
                    function.await_close(deadline).await
                }
                (Ok(()), _) => {}
                // The function was closing already: make sure tungstenite's reply goes out.
                (Err(_), _) => function.reply_to_close().await,
            }
            let client = Leg {
                tx: client_tx,
                rx: client_rx,
            };
            noted(Side::Client, &closing.to_client);
            client.perform(closing.to_client).await;
        }
        (_, to_function) => {
            drop(down);
            let client = Leg {
                tx: client_tx,
                rx: client_rx,
            };
            let function = Leg {
                tx: function_tx,
                rx: function_rx,
            };
            noted(Side::Client, &closing.to_client);
            noted(Side::Function, &to_function);
            tokio::join!(
                client.perform(closing.to_client),
                function.perform(to_function)
            );
        }
    }
    reason
}

/// One side's halves, for its closing handshake.
struct Leg<'a, W, R> {
    tx: &'a mut W,
    rx: &'a mut R,
}

impl<W, R> Leg<'_, W, R>
where
    W: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    async fn perform(self, step: CloseStep) {
        match step {
            CloseStep::Send(frame) => self.close(ws_frame(frame)).await,
            CloseStep::Answer => self.reply_to_close().await,
            // The side is gone: nothing to say to it.
            CloseStep::Nothing => {}
        }
    }

    /// Sends our close frame and waits, bounded, for the peer's.
    async fn close(self, frame: Option<WsCloseFrame>) {
        let deadline = Instant::now() + CLOSE_HANDSHAKE;
        match timeout_at(deadline, self.tx.send(Message::Close(frame))).await {
            Ok(Ok(())) => self.await_close(deadline).await,
            // The leg is already closing (tungstenite queued its own answer to the peer's
            // close): make sure that answer is written.
            Ok(Err(_)) => {
                let _ = timeout_at(deadline, self.tx.close()).await;
            }
            // The peer does not read: it will not read our close frame either.
            Err(_) => {}
        }
    }

    /// Reads, discarding, until the peer's close frame or `deadline`.
    async fn await_close(self, deadline: Instant) {
        let _ = timeout_at(deadline, async {
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
}

fn ws_frame(frame: Option<scfsim_record::CloseFrame>) -> Option<WsCloseFrame> {
    frame.map(|f| WsCloseFrame {
        code: CloseCode::from(f.code),
        reason: f.reason.into(),
    })
}

mod read_ahead;
pub(crate) use read_ahead::ReadAhead;

#[cfg(test)]
mod tests;
