//! Steering a live connection by hand, for the admin API: a message injected toward the client
//! or the function (`POST /api/instances/{id}/send`), and a close with a chosen code toward the
//! client (`DELETE /api/instances/{id}?code=N&reason=TEXT`).
//!
//! Lifecycle: the invocation makes a [`Steering`] (kept in the connection's registry entry,
//! where the admin API finds it) and its [`SteeringEnds`] (handed to the proxy) when it
//! registers the connection. An injected message waits in a small bounded channel until the
//! proxy's direction toward its destination writes it like any other message of that direction
//! (the size limit checked here, the client → function rate limit there), and its sender
//! learns over a oneshot that it was written. When the connection ends, the receivers go and
//! every waiting sender learns that it ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// Injected messages waiting per direction; more are refused (the destination is not reading).
const QUEUE: usize = 16;

/// Which side an injected message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum To {
    Client,
    Function,
}

/// An injected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Bytes),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }
}

/// The close a person chose for the client: a code that may be sent, and a reason that fits
/// a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminClose {
    pub code: u16,
    pub reason: String,
}

/// The largest close reason a close frame carries (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

impl AdminClose {
    /// Checks what `DELETE /api/instances/{id}?code=N&reason=TEXT` asked for; without a
    /// reason, the client reads "ended through the admin API".
    pub fn new(code: u16, reason: Option<String>) -> Result<AdminClose, SteerRefusal> {
        if !scfsim_record::may_be_sent(code) {
            return Err(SteerRefusal::BadClose(format!(
                "code={code} is not a close code an endpoint may send: use 1000-1003, \
                 1007-1013 or 3000-4999"
            )));
        }
        let reason = reason.unwrap_or_else(|| scfsim_record::ADMIN_CLOSE.to_string());
        if reason.len() > MAX_CLOSE_REASON {
            return Err(SteerRefusal::BadClose(format!(
                "reason is {} bytes long: a close frame carries at most {MAX_CLOSE_REASON}",
                reason.len()
            )));
        }
        Ok(AdminClose { code, reason })
    }
}

/// A message on its way to the proxy, and who waits for it to be written.
pub(crate) struct Injection {
    pub payload: Payload,
    /// Told once the message was written; dropped unsent if the connection ended first.
    pub written: oneshot::Sender<()>,
}

/// The admin API's handle on one connection; cloned out of the registry for each request.
#[derive(Debug, Clone)]
pub struct Steering {
    to_client: mpsc::Sender<Injection>,
    to_function: mpsc::Sender<Injection>,
    /// Set once by the first close with a code, read by the proxy when it is interrupted.
    pub(crate) admin_close: Arc<OnceLock<AdminClose>>,
    /// False while a debug-mode instance starts: nothing to write to yet.
    connected: Arc<AtomicBool>,
    max_message_bytes: u64,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("payload", &self.payload)
            .finish()
    }
}

/// The proxy's ends of one connection's [`Steering`].
pub(crate) struct SteeringEnds {
    pub to_client: mpsc::Receiver<Injection>,
    pub to_function: mpsc::Receiver<Injection>,
    pub admin_close: Arc<OnceLock<AdminClose>>,
}

impl Steering {
    pub(crate) fn new(max_message_bytes: u64) -> (Steering, SteeringEnds) {
        let (to_client, client_rx) = mpsc::channel(QUEUE);
        let (to_function, function_rx) = mpsc::channel(QUEUE);
        let admin_close = Arc::new(OnceLock::new());
        (
            Steering {
                to_client,
                to_function,
                admin_close: admin_close.clone(),
                connected: Arc::new(AtomicBool::new(false)),
                max_message_bytes,
            },
            SteeringEnds {
                to_client: client_rx,
                to_function: function_rx,
                admin_close,
            },
        )
    }

    /// The client got its 101: messages can be written both ways.
    pub(crate) fn connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    /// Queues `payload` toward `to` and waits, at most `bound`, until it was written.
    pub(crate) async fn send(
        &self,
        to: To,
        payload: Payload,
        bound: Duration,
    ) -> Result<(), SteerRefusal> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(SteerRefusal::NotConnected);
        }
        let size = payload.len() as u64;
        if size > self.max_message_bytes {
            return Err(SteerRefusal::TooLarge {
                size,
                limit: self.max_message_bytes,
            });
        }
        let queue = match to {
            To::Client => &self.to_client,
            To::Function => &self.to_function,
        };
        let (written, done) = oneshot::channel();
        queue
            .try_send(Injection { payload, written })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => SteerRefusal::Busy,
                mpsc::error::TrySendError::Closed(_) => SteerRefusal::Ended,
            })?;
        match tokio::time::timeout(bound, done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SteerRefusal::Ended),
            Err(_) => Err(SteerRefusal::NotWritten { waited: bound }),
        }
    }
}

/// Why a steering request was not carried out. Each is the caller's to act on, so each has
/// its own answer in the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteerRefusal {
    /// No live instance has this id.
    NoSuchInstance,
    /// The instance is still starting (debug mode): no connection to write to yet.
    NotConnected,
    /// Over the function's `max_message_bytes`, as a client's message would be.
    TooLarge { size: u64, limit: u64 },
    /// Earlier injected messages still wait: the destination is not reading.
    Busy,
    /// The connection ended before the message was written.
    Ended,
    /// The destination did not take the message within `waited`; it stays queued and may
    /// still be written.
    NotWritten { waited: Duration },
    /// The close code or reason cannot be sent.
    BadClose(String),
}

impl SteerRefusal {
    /// What the admin API answers.
    pub fn message(&self) -> String {
        match self {
            SteerRefusal::NoSuchInstance => "no live instance with this id".into(),
            SteerRefusal::NotConnected => {
                "the instance is still starting (waiting for its debugger?): nothing to send to \
                 yet"
                .into()
            }
            SteerRefusal::TooLarge { size, limit } => format!(
                "the message is {size} bytes, over the function's max_message_bytes of {limit}"
            ),
            SteerRefusal::Busy => format!(
                "{QUEUE} injected messages already wait for this destination: it is not reading"
            ),
            SteerRefusal::Ended => "the connection ended before the message was written".into(),
            SteerRefusal::NotWritten { waited } => format!(
                "the destination did not take the message within {}; it stays queued and may \
                 still be written",
                scfsim_config::format_duration(*waited)
            ),
            SteerRefusal::BadClose(message) => message.clone(),
        }
    }
}
