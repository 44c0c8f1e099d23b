//! The proxy over in-memory streams (`tokio::io::duplex`) with real tungstenite on both legs and
//! tokio's clock paused: timeouts and throttling are reached by the runtime advancing its clock
//! when every task waits, so none of these tests sleeps. Each peer is driven by the test itself,
//! either as a WebSocket endpoint or as raw bytes for protocol violations.
//!
//! What each side got is compared with what `classify` prescribes for the reason the proxy
//! reported, so these tests check that the proxy carries the policy out; the policy's texts are
//! pinned in `scfsim_record::outcome`'s table (a few are repeated here for readability).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scfsim_config::{Limits, RateLimitAction};
use scfsim_record::{classify, CloseStep, EndReason, Side};
use tokio::io::{duplex, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::{run, ConnectionLimits};
use crate::live::{Traffic, TrafficSnapshot};
use crate::steer::{AdminClose, Payload, SteerRefusal, Steering, To};

type Ws = WebSocketStream<DuplexStream>;

/// Bound of every wait, on the paused clock: a hang fails after no wall time at all.
const PATIENCE: Duration = Duration::from_secs(3600);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?} of tokio's clock"))
}

const LIMIT: u64 = 1024;

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        idle: Duration::from_secs(15),
        execution: Duration::from_secs(900),
        time_scale: 1.0,
        request: Limits {
            max_message_bytes: LIMIT,
            max_bytes_per_second: 1 << 20,
            max_messages_per_second: 10,
            rate_limit_action: RateLimitAction::Off,
        },
        memory_mb: 128,
    }
}

/// A proxy running in its own task between two in-memory connections whose far ends the test
/// holds.
struct Proxy {
    client: Option<DuplexStream>,
    function: Option<DuplexStream>,
    shutdown: CancellationToken,
    interrupt: CancellationToken,
    memory_exceeded: Arc<AtomicBool>,
    traffic: Arc<Traffic>,
    /// The admin API's handle: injected messages, a chosen close code.
    steering: Steering,
    task: JoinHandle<EndReason>,
}

impl Proxy {
    fn start(limits: ConnectionLimits) -> Proxy {
        let (client, client_end) = duplex(1 << 16);
        let (function, function_end) = duplex(1 << 16);
        let shutdown = CancellationToken::new();
        // As in the gateway: a connection's token is a child of the shutdown token.
        let interrupt = shutdown.child_token();
        let memory_exceeded = Arc::new(AtomicBool::new(false));
        let traffic = Arc::new(Traffic::default());
        let (steering, ends) = Steering::new(LIMIT);
        steering.connected();
        let size = Some(LIMIT as usize);
        let config = WebSocketConfig::default()
            .max_message_size(size)
            .max_frame_size(size);
        let task = tokio::spawn({
            let (shutdown, interrupt) = (shutdown.clone(), interrupt.clone());
            let (memory_exceeded, traffic) = (memory_exceeded.clone(), traffic.clone());
            async move {
                let client =
                    WebSocketStream::from_raw_socket(client_end, Role::Server, Some(config)).await;
                let function =
                    WebSocketStream::from_raw_socket(function_end, Role::Client, Some(config))
                        .await;
                let (mut client_tx, mut client_rx) = client.split();
                let (mut function_tx, mut function_rx) = function.split();
                let exceeded = || memory_exceeded.load(Ordering::Relaxed);
                run(
                    (&mut client_tx, &mut client_rx),
                    (&mut function_tx, &mut function_rx),
                    limits,
                    &traffic,
                    &shutdown,
                    &interrupt,
                    ends,
                    &exceeded,
                    None,
                )
                .await
            }
        });
        Proxy {
            client: Some(client),
            function: Some(function),
            shutdown,
            interrupt,
            memory_exceeded,
            traffic,
            steering,
            task,
        }
    }

    /// The client's end as a WebSocket client.
    async fn client(&mut self) -> Ws {
        let raw = self.client.take().expect("client end taken once");
        WebSocketStream::from_raw_socket(raw, Role::Client, None).await
    }

    /// The function's end as a WebSocket server.
    async fn function(&mut self) -> Ws {
        let raw = self.function.take().expect("function end taken once");
        WebSocketStream::from_raw_socket(raw, Role::Server, None).await
    }

    /// Writes `bytes` to the client's end in one write, then hands it over as a client.
    async fn client_sending(&mut self, bytes: &[u8]) -> Ws {
        let raw = self.client.as_mut().expect("client end");
        raw.write_all(bytes).await.expect("in-memory write");
        self.client().await
    }

    /// Writes `bytes` to the function's end in one write, then hands it over as a server.
    async fn function_sending(&mut self, bytes: &[u8]) -> Ws {
        let raw = self.function.as_mut().expect("function end");
        raw.write_all(bytes).await.expect("in-memory write");
        self.function().await
    }

    async fn ended(self) -> (EndReason, TrafficSnapshot) {
        let reason = within("the proxy ends", self.task)
            .await
            .expect("the proxy task does not panic");
        (reason, self.traffic.snapshot())
    }
}

/// A frame as a client sends it (masked; `rsv` sets the reserved bits).
fn client_frame(rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, rsv, opcode, Some([1, 2, 3, 4]), payload)
}

/// A frame as a server sends it (unmasked) unless `mask` is given.
fn frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    out.push(if mask.is_some() { 0x80 } else { 0 } | payload.len() as u8);
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The next message; `None` at the end of the stream or on an error.
async fn next(ws: &mut Ws) -> Option<Message> {
    within("a message", ws.next()).await.and_then(Result::ok)
}

/// Messages up to and including the close frame, then the rest of the stream read (which
/// writes tungstenite's close reply). Panics if the stream ends without a close frame.
async fn until_close(ws: &mut Ws) -> (Vec<Message>, Option<CloseFrame>) {
    let mut before = Vec::new();
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Close(frame))) => {
                while within("the end after a close", ws.next()).await.is_some() {}
                return (before, frame);
            }
            Some(Ok(msg)) => before.push(msg),
            end => panic!("{end:?} without a close frame, after {before:?}"),
        }
    }
}

fn close(code: u16, reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    })
}

/// What `classify` says this side gets for `reason`, as a received close frame.
fn prescribed(reason: &EndReason, side: Side) -> Option<CloseFrame> {
    let closing = classify(reason).closing;
    let step = match side {
        Side::Client => closing.to_client,
        Side::Function => closing.to_function,
    };
    match step {
        CloseStep::Send(frame) => frame.map(|f| CloseFrame {
            code: CloseCode::from(f.code),
            reason: f.reason.into(),
        }),
        other => panic!("{reason:?}: {side:?} is not sent a close frame but {other:?}"),
    }
}

fn text(t: &str) -> Message {
    Message::text(t)
}

// ---------------------------------------------------------------------------------------------
// The peers end it.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn messages_pass_both_ways_and_the_clients_close_reaches_the_function() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    client.send(text("hello")).await.unwrap();
    assert_eq!(next(&mut function).await, Some(text("hello")));
    function.send(text("world")).await.unwrap();
    assert_eq!(next(&mut client).await, Some(text("world")));

    client
        .send(Message::Close(close(1000, "bye")))
        .await
        .unwrap();
    let (before, got) = until_close(&mut function).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(got, close(1000, "bye"), "the client's frame as it came");
    let (before, echo) = until_close(&mut client).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(echo, close(1000, "bye"), "the client's close is answered");

    let (reason, traffic) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::ClientClosed {
            code: Some(1000),
            reason: "bye".into()
        }
    );
    assert_eq!((traffic.messages_in, traffic.messages_out), (1, 1));
    assert_eq!((traffic.bytes_in, traffic.bytes_out), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn the_functions_close_reaches_the_client() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    function
        .send(Message::Close(close(4000, "app done")))
        .await
        .unwrap();
    assert_eq!(until_close(&mut client).await.1, close(4000, "app done"));
    assert_eq!(until_close(&mut function).await.1, close(4000, "app done"));
    let (reason, _) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::FunctionClosed {
            code: Some(4000),
            reason: "app done".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_close_without_a_code_is_passed_on_without_one() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    client.send(Message::Close(None)).await.unwrap();
    assert_eq!(until_close(&mut function).await.1, None);
    assert_eq!(until_close(&mut client).await.1, None);
    let (reason, _) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::ClientClosed {
            code: None,
            reason: String::new()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_drops_is_456_and_the_function_is_told() {
    let mut proxy = Proxy::start(limits());
    let client = proxy.client().await;
    let mut function = proxy.function().await;
    drop(client);
    let (_, got) = until_close(&mut function).await;
    let (reason, _) = proxy.ended().await;
    assert_eq!(reason, EndReason::ClientDropped);
    assert_eq!(
        got,
        close(1001, "client connection dropped without a close frame")
    );
    assert_eq!(classify(&reason).status_code.as_u16(), 456);
}

#[tokio::test(start_paused = true)]
async fn a_function_that_drops_is_439_and_the_client_gets_1011() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let function = proxy.function().await;
    drop(function);
    let (_, got) = until_close(&mut client).await;
    let (reason, _) = proxy.ended().await;
    assert!(
        matches!(reason, EndReason::InstanceExited { .. }),
        "{reason:?}"
    );
    assert_eq!(got, prescribed(&reason, Side::Client));
    let got = got.expect("a close code");
    assert_eq!(got.code, CloseCode::Error);
    assert!(
        got.reason.starts_with("function instance exited: "),
        "{got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_exceeded_memory_limit_is_1011_to_the_client() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let _function = proxy.function().await;
    proxy.memory_exceeded.store(true, Ordering::Relaxed);
    let (_, got) = until_close(&mut client).await;
    let (reason, _) = proxy.ended().await;
    assert_eq!(reason, EndReason::MemoryLimit { limit_mb: 128 });
    assert_eq!(got, close(1011, "memory limit of 128 MB exceeded"));
}

// ---------------------------------------------------------------------------------------------
// Timers, on the paused clock.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_from_the_last_message_not_from_pings() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let t0 = Instant::now();
    sleep(Duration::from_secs(10)).await;
    client.send(text("still here")).await.unwrap();
    assert_eq!(next(&mut function).await, Some(text("still here")));
    sleep(Duration::from_secs(10)).await;
    client.send(Message::Ping("p".into())).await.unwrap();
    assert_eq!(next(&mut function).await, Some(Message::Ping("p".into())));

    // Both sides answer the close at once, so the proxy ends when it sends it.
    let ((before, got), (_, function_got)) =
        tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    let closed_at = t0.elapsed();
    assert_eq!(before, vec![Message::Pong("p".into())]);
    assert_eq!(
        reason,
        EndReason::IdleTimeout {
            after: Duration::from_secs(15)
        }
    );
    assert_eq!(
        closed_at,
        Duration::from_secs(25),
        "the message at 10 s reset the timer, the ping at 20 s did not"
    );
    assert_eq!(got, close(1001, "idle timeout: no message for 15s"));
    assert_eq!(function_got, got, "both sides get the same frame");
}

#[tokio::test(start_paused = true)]
async fn the_execution_timeout_ends_a_busy_connection() {
    let mut limits = limits();
    limits.execution = Duration::from_secs(40);
    let mut proxy = Proxy::start(limits);
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let t0 = Instant::now();
    // A message every 10 s, well inside the idle timeout.
    for _ in 0..3 {
        sleep(Duration::from_secs(10)).await;
        client.send(text("tick")).await.unwrap();
        assert_eq!(next(&mut function).await, Some(text("tick")));
    }
    let Some(Message::Close(function_got)) = next(&mut function).await else {
        panic!("a close frame");
    };
    let closed_at = t0.elapsed();
    tokio::join!(until_close(&mut client), async {
        while within("the end", function.next()).await.is_some() {}
    });
    let (reason, traffic) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::ExecutionTimeout {
            after: Duration::from_secs(40)
        }
    );
    assert_eq!(closed_at, Duration::from_secs(40));
    assert_eq!(traffic.messages_in, 3, "ticks at 10, 20 and 30 s");
    assert_eq!(
        function_got,
        close(1001, "execution timeout of 40s reached")
    );
}

// ---------------------------------------------------------------------------------------------
// scfsim ends it.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_closes_both_sides_with_1001() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    proxy.shutdown.cancel();
    let (client_got, function_got) =
        tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    assert_eq!(reason, EndReason::GatewayShutdown);
    assert_eq!(client_got.1, close(1001, "scfsim is shutting down"));
    assert_eq!(function_got.1, client_got.1);
}

#[tokio::test(start_paused = true)]
async fn an_admin_interrupt_closes_both_sides_with_1001() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    proxy.interrupt.cancel();
    let (client_got, function_got) =
        tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::EndedByAdmin {
            code: None,
            reason: String::new()
        }
    );
    assert_eq!(client_got.1, close(1001, "ended through the admin API"));
    assert_eq!(function_got.1, client_got.1);
}

#[tokio::test(start_paused = true)]
async fn an_admin_close_with_a_code_gives_the_client_that_code_and_the_function_1001() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let chosen = AdminClose::new(4321, Some("maintenance".into())).unwrap();
    proxy.steering.admin_close.set(chosen).unwrap();
    proxy.interrupt.cancel();
    let (client_got, function_got) =
        tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::EndedByAdmin {
            code: Some(4321),
            reason: "maintenance".into()
        }
    );
    assert_eq!(client_got.1, close(4321, "maintenance"));
    assert_eq!(function_got.1, close(1001, "ended through the admin API"));
}

#[test]
fn an_admin_close_needs_a_code_that_may_be_sent_and_a_reason_that_fits() {
    for code in [0, 999, 1005, 1006, 1015, 2999, 5000] {
        assert!(AdminClose::new(code, None).is_err(), "{code}");
    }
    assert!(AdminClose::new(4000, Some("x".repeat(124))).is_err());
    let ok = AdminClose::new(1000, None).unwrap();
    assert_eq!(ok.reason, "ended through the admin API");
}

#[tokio::test(start_paused = true)]
async fn injected_messages_reach_their_side_and_are_counted() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let bound = Duration::from_secs(5);
    let steering = proxy.steering.clone();
    let (to_client, got) = tokio::join!(
        steering.send(To::Client, Payload::Text("hello client".into()), bound),
        within("client reads", client.next())
    );
    to_client.unwrap();
    assert_eq!(got.unwrap().unwrap(), Message::text("hello client"));
    let (to_function, got) = tokio::join!(
        steering.send(To::Function, Payload::Binary(vec![1, 2, 3].into()), bound),
        within("function reads", function.next())
    );
    to_function.unwrap();
    assert_eq!(got.unwrap().unwrap(), Message::binary(vec![1, 2, 3]));
    // Over the message size limit: refused before it is queued.
    let big = Payload::Binary(vec![0; LIMIT as usize + 1].into());
    assert_eq!(
        steering.send(To::Function, big, bound).await,
        Err(SteerRefusal::TooLarge {
            size: LIMIT + 1,
            limit: LIMIT
        })
    );
    let counts = proxy.traffic.snapshot();
    assert_eq!(counts.injected_messages, 2);
    assert_eq!((counts.messages_in, counts.bytes_in), (1, 3));
    assert_eq!((counts.messages_out, counts.bytes_out), (1, 12));
    client.close(None).await.unwrap();
    proxy.ended().await;
    // The connection is gone: nobody to write to.
    assert_eq!(
        steering
            .send(To::Client, Payload::Text("late".into()), bound)
            .await,
        Err(SteerRefusal::Ended)
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol errors and sizes.
// ---------------------------------------------------------------------------------------------

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;

/// The client sends `bytes` (a violation, possibly behind valid messages) in one write. The
/// function echoes every message it gets before scfsim's close; returns what the client
/// received before its close frame, the client's and the function's close frames, the reason.
async fn client_sends(
    bytes: &[u8],
) -> (
    Vec<Message>,
    Option<CloseFrame>,
    Option<CloseFrame>,
    EndReason,
) {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client_sending(bytes).await;
    let mut function = proxy.function().await;
    let function_got = loop {
        match next(&mut function).await {
            Some(Message::Close(frame)) => {
                while within("the end", function.next()).await.is_some() {}
                break frame;
            }
            Some(msg) if msg.is_text() || msg.is_binary() => function.send(msg).await.unwrap(),
            other => panic!("the function got {other:?}"),
        }
    };
    let (before, client_got) = until_close(&mut client).await;
    let (reason, _) = proxy.ended().await;
    (before, client_got, function_got, reason)
}

#[tokio::test(start_paused = true)]
async fn client_protocol_errors_are_1002_or_1007_and_the_function_is_told_with_1001() {
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("reserved bit", client_frame(0b100, TEXT, b"rsv"), 1002),
        ("unknown opcode", client_frame(0, 0x3, b""), 1002),
        (
            "orphan continuation",
            client_frame(0, CONTINUATION, b"x"),
            1002,
        ),
        ("unmasked frame", frame(true, 0, TEXT, None, b"bare"), 1002),
        ("invalid UTF-8", client_frame(0, TEXT, b"ok \xff"), 1007),
    ];
    for (what, bytes, code) in cases {
        let (before, client_got, function_got, reason) = client_sends(&bytes).await;
        assert!(before.is_empty(), "{what}: {before:?}");
        let EndReason::ClientProtocolError { code: got, .. } = &reason else {
            panic!("{what}: {reason:?}");
        };
        assert_eq!(*got, code, "{what}");
        assert_eq!(client_got, prescribed(&reason, Side::Client), "{what}");
        assert_eq!(function_got, prescribed(&reason, Side::Function), "{what}");
        assert_eq!(client_got.map(|f| u16::from(f.code)), Some(code), "{what}");
        assert_eq!(
            function_got.map(|f| f.code),
            Some(CloseCode::Away),
            "{what}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_valid_message_before_a_violation_in_one_write_is_answered_before_the_close() {
    let cases: [(&str, &[u8], u16); 4] = [
        ("reserved bit", &client_frame(0b010, TEXT, b"rsv"), 1002),
        ("unknown opcode", &client_frame(0, 0xB, b""), 1002),
        (
            "orphan continuation",
            &client_frame(0, CONTINUATION, b"x"),
            1002,
        ),
        ("invalid UTF-8", &client_frame(0, TEXT, b"\xc3\x28"), 1007),
    ];
    for (what, bad, code) in cases {
        let mut bytes = client_frame(0, TEXT, b"last words");
        bytes.extend_from_slice(&client_frame(0, BINARY, b"\x00\x01"));
        bytes.extend_from_slice(bad);
        let (before, client_got, _, reason) = client_sends(&bytes).await;
        assert_eq!(
            before,
            vec![text("last words"), Message::binary(&b"\x00\x01"[..])],
            "{what}: the function's echoes come before the close"
        );
        assert_eq!(client_got.map(|f| u16::from(f.code)), Some(code), "{what}");
        assert!(
            matches!(reason, EndReason::ClientProtocolError { code: c, .. } if c == code),
            "{what}: {reason:?}"
        );
    }
}

/// The function sends `bytes` (a violation) in one write; returns the client's and the
/// function's close frames and the reason.
async fn function_sends(bytes: &[u8]) -> (Option<CloseFrame>, Option<CloseFrame>, EndReason) {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function_sending(bytes).await;
    let (client_got, function_got) = tokio::join!(
        until_close(&mut client),
        within("the function's close", async {
            // A stream that broke with our violation may end without showing the close frame.
            loop {
                match function.next().await {
                    Some(Ok(Message::Close(frame))) => break frame,
                    Some(Ok(_)) => continue,
                    _ => break None,
                }
            }
        })
    );
    let (reason, _) = proxy.ended().await;
    assert!(client_got.0.is_empty(), "{:?}", client_got.0);
    (client_got.1, function_got, reason)
}

#[tokio::test(start_paused = true)]
async fn function_protocol_errors_are_1011_to_the_client_and_1002_or_1007_to_the_function() {
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "masked frame",
            frame(true, 0, TEXT, Some([9, 9, 9, 9]), b"m"),
            1002,
        ),
        ("reserved bit", frame(true, 0b001, TEXT, None, b"rsv"), 1002),
        (
            "fragmented control frame",
            frame(false, 0, 0x9, None, b"p"),
            1002,
        ),
        ("invalid UTF-8", frame(true, 0, TEXT, None, b"\xff"), 1007),
    ];
    for (what, bytes, code) in cases {
        let (client_got, function_got, reason) = function_sends(&bytes).await;
        assert_eq!(
            reason,
            EndReason::FunctionProtocolError {
                code,
                detail: match &reason {
                    EndReason::FunctionProtocolError { detail, .. } => detail.clone(),
                    other => panic!("{what}: {other:?}"),
                }
            },
            "{what}"
        );
        assert_eq!(client_got, prescribed(&reason, Side::Client), "{what}");
        assert_eq!(client_got.map(|f| f.code), Some(CloseCode::Error), "{what}");
        assert_eq!(function_got, prescribed(&reason, Side::Function), "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_message_over_the_limit_is_1009_to_its_sender_and_1001_to_the_other_side() {
    let big = vec![7u8; LIMIT as usize + 1];

    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    client.send(Message::binary(big.clone())).await.unwrap();
    let (client_got, function_got) =
        tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, traffic) = proxy.ended().await;
    assert_eq!(
        reason,
        EndReason::MessageTooLarge {
            from: Side::Client,
            size: Some(LIMIT + 1),
            limit: LIMIT
        }
    );
    assert_eq!(
        client_got.1,
        close(1009, "message from client too large: 1025 > 1024 bytes")
    );
    assert_eq!(
        function_got.1,
        close(1001, "message from client too large: 1025 > 1024 bytes")
    );
    assert_eq!(traffic.messages_in, 0);

    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    function.send(Message::binary(big)).await.unwrap();
    let (client_got, function_got) =
        tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    assert!(
        matches!(
            reason,
            EndReason::MessageTooLarge {
                from: Side::Function,
                ..
            }
        ),
        "{reason:?}"
    );
    assert_eq!(client_got.1.as_ref().map(|f| f.code), Some(CloseCode::Away));
    assert_eq!(
        function_got.1.as_ref().map(|f| f.code),
        Some(CloseCode::Size)
    );
    assert_eq!(client_got.1, prescribed(&reason, Side::Client));
    assert_eq!(function_got.1, prescribed(&reason, Side::Function));
}

// ---------------------------------------------------------------------------------------------
// Rates and pings.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn over_the_rate_with_throttle_messages_are_delayed_in_order_and_counted() {
    let mut limits = limits();
    limits.request.rate_limit_action = RateLimitAction::Throttle;
    let mut proxy = Proxy::start(limits);
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let t0 = Instant::now();
    for i in 0..15 {
        client.send(text(&i.to_string())).await.unwrap();
    }
    let mut arrived = Vec::new();
    for i in 0..15 {
        assert_eq!(next(&mut function).await, Some(text(&i.to_string())));
        arrived.push(t0.elapsed());
    }
    // 10 messages/s with a second's burst: ten at once, then one every 100 ms.
    assert_eq!(arrived[9], Duration::ZERO);
    assert_eq!(arrived[14], Duration::from_millis(500));
    client.send(Message::Close(close(1000, ""))).await.unwrap();
    until_close(&mut function).await;
    until_close(&mut client).await;
    let (reason, traffic) = proxy.ended().await;
    assert!(
        matches!(
            reason,
            EndReason::ClientClosed {
                code: Some(1000),
                ..
            }
        ),
        "{reason:?}"
    );
    assert_eq!(traffic.throttled_messages, 5);
    assert_eq!(traffic.messages_in, 15);
}

#[tokio::test(start_paused = true)]
async fn over_the_rate_with_close_is_1008_after_the_functions_answers() {
    let mut limits = limits();
    limits.request.rate_limit_action = RateLimitAction::Close;
    let mut proxy = Proxy::start(limits);
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    for i in 0..11 {
        client.send(text(&i.to_string())).await.unwrap();
    }
    let mut function_got = Vec::new();
    let function_close = loop {
        match next(&mut function).await {
            Some(Message::Close(frame)) => {
                while within("the end", function.next()).await.is_some() {}
                break frame;
            }
            Some(msg) => {
                function.send(msg.clone()).await.unwrap();
                function_got.push(msg);
            }
            None => panic!("no close frame"),
        }
    };
    let (before, client_close) = until_close(&mut client).await;
    let (reason, traffic) = proxy.ended().await;
    let ten: Vec<Message> = (0..10).map(|i| text(&i.to_string())).collect();
    assert_eq!(function_got, ten, "the burst passes, the eleventh does not");
    assert_eq!(
        before, ten,
        "the function's answers reach the client before its close"
    );
    assert!(
        matches!(reason, EndReason::RateLimited { .. }),
        "{reason:?}"
    );
    assert_eq!(
        client_close.as_ref().map(|f| f.code),
        Some(CloseCode::Policy)
    );
    assert_eq!(client_close, prescribed(&reason, Side::Client));
    assert_eq!(function_close, prescribed(&reason, Side::Function));
    assert_eq!(traffic.messages_in, 10);
}

#[tokio::test(start_paused = true)]
async fn pings_are_answered_once_each_way() {
    let mut proxy = Proxy::start(limits());
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;

    // Client → function: the proxy answers the client, the function answers the proxy; the
    // function's pong must not reach the client a second time.
    client.send(Message::Ping("c".into())).await.unwrap();
    client.send(text("after the ping")).await.unwrap();
    assert_eq!(next(&mut function).await, Some(Message::Ping("c".into())));
    assert_eq!(next(&mut function).await, Some(text("after the ping")));
    function.send(text("echo")).await.unwrap();
    assert_eq!(next(&mut client).await, Some(Message::Pong("c".into())));
    assert_eq!(next(&mut client).await, Some(text("echo")), "one pong only");

    // Function → client, the same the other way.
    function.send(Message::Ping("f".into())).await.unwrap();
    function.send(text("after the ping")).await.unwrap();
    assert_eq!(next(&mut client).await, Some(Message::Ping("f".into())));
    assert_eq!(next(&mut client).await, Some(text("after the ping")));
    client.send(text("echo")).await.unwrap();
    assert_eq!(next(&mut function).await, Some(Message::Pong("f".into())));
    assert_eq!(
        next(&mut function).await,
        Some(text("echo")),
        "one pong only"
    );

    client.send(Message::Close(close(1000, ""))).await.unwrap();
    until_close(&mut function).await;
    until_close(&mut client).await;
    let (_, traffic) = proxy.ended().await;
    assert_eq!((traffic.messages_in, traffic.messages_out), (2, 2));
}

// ---------------------------------------------------------------------------------------------
// time_scale: the timers run N times faster; reasons name platform time.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn at_time_scale_100_the_idle_timeout_fires_after_a_hundredth_and_names_platform_time() {
    let mut limits = limits();
    limits.time_scale = 100.0;
    let mut proxy = Proxy::start(limits);
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let t0 = Instant::now();
    let ((_, got), _) = tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    assert_eq!(t0.elapsed(), Duration::from_millis(150), "15 s / 100");
    assert_eq!(
        reason,
        EndReason::IdleTimeout {
            after: Duration::from_secs(15)
        }
    );
    assert_eq!(got, close(1001, "idle timeout: no message for 15s"));
}

#[tokio::test(start_paused = true)]
async fn at_time_scale_100_a_two_hour_execution_timeout_fires_after_72_seconds() {
    let mut limits = limits();
    limits.time_scale = 100.0;
    limits.idle = Duration::from_secs(7200);
    limits.execution = Duration::from_secs(7200);
    let mut proxy = Proxy::start(limits);
    let mut client = proxy.client().await;
    let mut function = proxy.function().await;
    let t0 = Instant::now();
    // Traffic at 30 s moves the idle deadline (also 72 s real) past the execution deadline.
    sleep(Duration::from_secs(30)).await;
    client.send(text("tick")).await.unwrap();
    assert_eq!(next(&mut function).await, Some(text("tick")));
    let ((_, got), _) = tokio::join!(until_close(&mut client), until_close(&mut function));
    let (reason, _) = proxy.ended().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(72));
    assert_eq!(
        reason,
        EndReason::ExecutionTimeout {
            after: Duration::from_secs(7200)
        }
    );
    assert_eq!(got, close(1001, "execution timeout of 7200s reached"));
}
