//! Capturing an invocation's frame timeline (`scfsim_record::Timeline`) on the data path.
//!
//! Lifecycle: the invocation makes a [`Capture`] when it begins (if `[timeline] enabled`) and
//! lists it in the live registry by request id, where the admin API reads it while the
//! connection is open (`GET /api/invocations/{id}/frames`, and its event stream). The proxy
//! reaches it through the connection's `Traffic` ([`Recorder`], a cheap handle that does
//! nothing when the timeline is off). When the invocation is recorded, the teardown hands the
//! events to the record store, marks the capture ended (which ends the live streams) and
//! removes it from the registry.
//!
//! Cost on the data path: one short mutex hold and one push per message, plus the payload up
//! to `[timeline] payload_bytes`. A short payload is copied, so that keeping it never pins
//! tungstenite's read buffer (a few bytes holding kilobytes); a payload of at least
//! [`SHARE_FROM`] bytes is shared instead, since it owns nearly all of its allocation anyway
//! and copying it would cost as much CPU as forwarding it. Conversion to JSON (base64 and all)
//! happens only when someone reads the timeline, or once when the invocation ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use scfsim_config::TimelineConfig;
use scfsim_record::{
    Classification, CloseStep, ClosedBy, Direction, EndReason, EventKind, FrameEvent, Opcode,
    Party, Side, Timeline,
};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// One invocation's events so far. Read by the admin API; written by the invocation and its
/// proxy.
pub struct Capture {
    request_id: Uuid,
    function: String,
    started: Instant,
    started_at: OffsetDateTime,
    payload_bytes: usize,
    max_events: usize,
    state: Mutex<State>,
    /// Bumped at every event kept and at the end, for the live streams.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    events: Vec<Captured>,
    dropped: u64,
    ended: bool,
}

/// Kept payloads at least this long (and most of their message) are shared with the message
/// rather than copied: eight times the proxy's read buffer (`invocation::READ_BUFFER`, 1 KiB),
/// so the codec had to grow its buffer for the message and a shared payload pins little
/// besides itself.
const SHARE_FROM: usize = 8 * 1024;

/// An event as captured: the raw payload, no JSON yet. Kept small (104 bytes; the rare parts
/// boxed): every open connection holds its events until it is recorded.
struct Captured {
    /// Nanoseconds after the capture began.
    after_ns: u64,
    kind: EventKind,
    direction: Option<Direction>,
    opcode: Option<Opcode>,
    size: u64,
    injected: bool,
    payload: Option<Bytes>,
    truncated: bool,
    close: Option<Box<(u16, String)>>,
    sent_by: Option<Party>,
    /// Empty for a message: its detail is made from its fields when read, so that the data
    /// path allocates nothing but the payload's copy.
    detail: Box<str>,
    /// A message's addition to its detail.
    note: &'static str,
    handshake: Option<Box<HandshakeFacts>>,
}

/// What a handshake event knows beyond its detail.
#[derive(Debug, Default)]
pub(crate) struct HandshakeFacts {
    pub path: Option<String>,
    pub headers: Option<PackedHeaders>,
    pub status: Option<u16>,
}

/// A request's headers in one allocation (`name\0value\0` each), unpacked only when the
/// timeline is read: as name and value strings each, the two upgrade requests' headers were
/// about 1.4 KiB of every open connection.
#[derive(Debug, Default)]
pub(crate) struct PackedHeaders {
    packed: Box<str>,
    count: usize,
}

impl PackedHeaders {
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn unpack(&self) -> Vec<(String, String)> {
        // Neither a header name nor a value (as `http` checks them) holds a NUL.
        let mut parts = self.packed.split_terminator('\0');
        let mut out = Vec::with_capacity(self.count);
        while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            out.push((name.to_owned(), value.to_owned()));
        }
        out
    }
}

impl Captured {
    fn new(kind: EventKind, detail: String) -> Captured {
        Captured {
            after_ns: 0,
            kind,
            direction: None,
            opcode: None,
            size: 0,
            injected: false,
            payload: None,
            truncated: false,
            close: None,
            sent_by: None,
            detail: detail.into_boxed_str(),
            note: "",
            handshake: None,
        }
    }
}

impl Capture {
    pub(crate) fn new(
        config: &TimelineConfig,
        request_id: Uuid,
        function: &str,
        started_at: OffsetDateTime,
    ) -> Capture {
        Capture {
            request_id,
            function: function.to_owned(),
            started: Instant::now(),
            started_at,
            payload_bytes: config.payload_bytes as usize,
            max_events: config.max_events as usize,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    pub fn request_id(&self) -> Uuid {
        self.request_id
    }

    /// Keeps the event `make` builds, if there is room: once `max_events` are kept, later
    /// events are only counted, and their payloads are never copied.
    fn push(&self, make: impl FnOnce() -> Captured) {
        let after = self.started.elapsed();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.ended {
            return;
        }
        if state.events.len() >= self.max_events {
            state.dropped += 1;
            return;
        }
        let mut event = make();
        event.after_ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        if state.events.len() == state.events.capacity() {
            // Four events at a time while the timeline is short (a quiet connection has about
            // ten), doubling once it is long.
            let len = state.events.len();
            let more = if len < 32 { 4 } else { len };
            state.events.reserve_exact(more);
        }
        state.events.push(event);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// No more events: the invocation is recorded. Ends the live streams.
    pub(crate) fn end(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Wakes when an event was kept or the capture ended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Events from index `from` on, and whether the capture has ended.
    pub fn events_from(&self, from: usize) -> (Vec<FrameEvent>, bool) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let events = state
            .events
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, e)| self.render(i, e))
            .collect();
        (events, state.ended)
    }

    /// The whole timeline so far.
    pub fn timeline(&self) -> Timeline {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Timeline {
            request_id: self.request_id,
            function: self.function.clone(),
            live: !state.ended,
            dropped: state.dropped,
            events: state
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| self.render(i, e))
                .collect(),
        }
    }

    fn render(&self, seq: usize, e: &Captured) -> FrameEvent {
        let after = Duration::from_nanos(e.after_ns);
        let at = self.started_at + after;
        let detail = match (e.kind, e.opcode) {
            (EventKind::Message, Some(opcode)) => {
                let by = match e.sent_by {
                    _ if e.injected => "the admin API",
                    Some(Party::Client) => "client",
                    Some(Party::Function) => "function",
                    _ => "scfsim",
                };
                format!("{by} sent {} ({} bytes){}", opcode.as_str(), e.size, e.note)
            }
            _ => e.detail.to_string(),
        };
        let mut out = FrameEvent::new(e.kind, at, after.as_secs_f64() * 1000.0, detail);
        out.seq = seq as u64;
        out.direction = e.direction;
        out.opcode = e.opcode;
        out.size = e.size;
        out.injected = e.injected;
        out.truncated = e.truncated;
        out.sent_by = e.sent_by;
        if let (Some(opcode), Some(payload)) = (e.opcode, &e.payload) {
            out.set_payload(opcode, payload);
        }
        if let Some(close) = &e.close {
            let (code, reason) = &**close;
            out.close_code = Some(*code);
            out.close_reason = Some(reason.clone());
        }
        if let Some(h) = &e.handshake {
            out.path = h.path.clone();
            out.headers = h.headers.as_ref().map(PackedHeaders::unpack);
            out.status = h.status;
        }
        out
    }
}

/// The proxy's and the invocation's handle on a capture; does nothing when the timeline is
/// off.
#[derive(Clone, Default)]
pub(crate) struct Recorder(Option<Arc<Capture>>);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Recorder").field(&self.0.is_some()).finish()
    }
}

fn direction_from(from: Side) -> Direction {
    match from {
        Side::Client => Direction::ToFunction,
        Side::Function => Direction::ToClient,
    }
}

fn party(side: Side) -> Party {
    match side {
        Side::Client => Party::Client,
        Side::Function => Party::Function,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Function => "function",
    }
}

impl Recorder {
    pub(crate) fn new(capture: Option<Arc<Capture>>) -> Recorder {
        Recorder(capture)
    }

    pub(crate) fn capture(&self) -> Option<&Arc<Capture>> {
        self.0.as_ref()
    }

    fn push(&self, event: impl FnOnce() -> Captured) {
        if let Some(capture) = &self.0 {
            capture.push(event);
        }
    }

    /// An event that is a line of text (and maybe a direction): a phase, a limit, or a fault
    /// injected on purpose (`EventKind::Fault`). `detail` runs only when the timeline is on.
    pub(crate) fn note(
        &self,
        kind: EventKind,
        direction: Option<Direction>,
        detail: impl FnOnce() -> String,
    ) {
        self.push(|| {
            let mut e = Captured::new(kind, detail());
            e.direction = direction;
            e
        });
    }

    /// A start phase, or the end.
    pub(crate) fn phase(&self, detail: impl FnOnce() -> String) {
        self.note(EventKind::Phase, None, detail);
    }

    /// A limit that acted.
    pub(crate) fn limit(&self, direction: Option<Direction>, detail: impl FnOnce() -> String) {
        self.note(EventKind::Limit, direction, detail);
    }

    /// A handshake step; `sent_by` is who sent it.
    pub(crate) fn handshake(
        &self,
        direction: Direction,
        sent_by: Party,
        facts: impl FnOnce() -> (String, HandshakeFacts),
    ) {
        self.push(|| {
            let (detail, facts) = facts();
            let mut e = Captured::new(EventKind::Handshake, detail);
            e.direction = Some(direction);
            e.sent_by = Some(sent_by);
            e.handshake = Some(Box::new(facts));
            e
        });
    }

    /// A message read from `from` (or injected toward the other side); `note` adds to the
    /// detail (a pong that is not passed on, say).
    pub(crate) fn message(&self, from: Side, msg: &Message, injected: bool, note: &'static str) {
        let Some(capture) = &self.0 else {
            return;
        };
        let (opcode, data): (Opcode, &[u8]) = match msg {
            Message::Text(t) => (Opcode::Text, t.as_bytes()),
            Message::Binary(b) => (Opcode::Binary, b),
            Message::Ping(p) => (Opcode::Ping, p),
            Message::Pong(p) => (Opcode::Pong, p),
            Message::Close(_) | Message::Frame(_) => return,
        };
        capture.push(|| {
            let kept = data.len().min(capture.payload_bytes);
            // Shared only when what is kept is most of the message: a cut payload must not
            // pin the rest of a large one.
            let share = kept >= SHARE_FROM && kept * 2 >= data.len();
            let payload = match msg {
                Message::Binary(b) if share => b.slice(..kept),
                Message::Text(t) if share => Bytes::from(t.clone()).slice(..kept),
                _ => Bytes::copy_from_slice(&data[..kept]),
            };
            let mut e = Captured::new(EventKind::Message, String::new());
            e.note = note;
            e.direction = Some(direction_from(from));
            e.opcode = Some(opcode);
            e.size = data.len() as u64;
            e.injected = injected;
            e.sent_by = Some(if injected {
                Party::Gateway
            } else {
                party(from)
            });
            e.payload = Some(payload);
            e.truncated = kept < data.len();
            e
        });
    }

    /// A close frame: sent by `sent_by`, toward `direction`.
    pub(crate) fn close(
        &self,
        direction: Direction,
        sent_by: Party,
        frame: Option<(u16, String)>,
        detail: impl FnOnce() -> String,
    ) {
        self.push(|| {
            let mut e = Captured::new(EventKind::Close, detail());
            e.direction = Some(direction);
            e.opcode = Some(Opcode::Close);
            e.sent_by = Some(sent_by);
            e.size = frame.as_ref().map_or(0, |(_, r)| 2 + r.len() as u64);
            e.close = frame.map(Box::new);
            e
        });
    }

    /// A close frame read from `from`, passed toward the other side by the closing steps.
    pub(crate) fn close_from(&self, from: Side, frame: Option<(u16, String)>) {
        let who = side_name(from);
        let detail = || match &frame {
            Some((code, reason)) if reason.is_empty() => format!("{who} sent close {code}"),
            Some((code, reason)) => format!("{who} sent close {code} {reason:?}"),
            None => format!("{who} sent a close frame without a code"),
        };
        let detail = detail();
        self.close(direction_from(from), party(from), frame, || detail);
    }

    /// A close frame scfsim sends to `to` (its own, or the answer to `to`'s).
    pub(crate) fn close_to(&self, to: Side, frame: Option<(u16, String)>, answer: bool) {
        let direction = match to {
            Side::Client => Direction::ToClient,
            Side::Function => Direction::ToFunction,
        };
        let who = side_name(to);
        let detail = match (&frame, answer) {
            (_, true) => format!("scfsim answered the {who}'s close frame"),
            (Some((code, reason)), false) if reason.is_empty() => {
                format!("scfsim sent close {code} to the {who}")
            }
            (Some((code, reason)), false) => {
                format!("scfsim sent close {code} {reason:?} to the {who}")
            }
            (None, false) => format!("scfsim sent a close frame without a code to the {who}"),
        };
        self.close(direction, Party::Gateway, frame, || detail);
    }
}

/// How the connection ended, as the proxy decided it: a limit event for a limit, else a
/// phase.
pub(crate) fn note_end(recorder: &Recorder, reason: &EndReason, classified: &Classification) {
    let detail = || {
        format!(
            "ended: {} {} ({}){}",
            classified.status_code.as_u16(),
            classified.end_reason,
            match classified.closed_by {
                Some(ClosedBy::Client) => "closed by the client",
                Some(ClosedBy::Function) => "closed by the function",
                Some(ClosedBy::Gateway) => "closed by scfsim",
                None => "nobody closed",
            },
            if classified.close_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", classified.close_reason)
            }
        )
    };
    match reason {
        EndReason::MessageTooLarge { from, .. } => {
            recorder.limit(Some(direction_from(*from)), detail)
        }
        EndReason::RateLimited { .. } => recorder.limit(Some(Direction::ToFunction), detail),
        EndReason::IdleTimeout { .. }
        | EndReason::ExecutionTimeout { .. }
        | EndReason::MemoryLimit { .. } => recorder.limit(None, detail),
        _ => recorder.phase(detail),
    }
}

/// What scfsim sends `to` as the connection closes.
pub(crate) fn note_close_step(recorder: &Recorder, to: Side, step: &CloseStep, reason: &EndReason) {
    match step {
        CloseStep::Send(frame) => recorder.close_to(
            to,
            frame.as_ref().map(|f| (f.code, f.reason.clone())),
            false,
        ),
        // The answer repeats the side's own close frame.
        CloseStep::Answer => {
            let echoed = match (to, reason) {
                (Side::Client, EndReason::ClientClosed { code, reason })
                | (Side::Function, EndReason::FunctionClosed { code, reason }) => {
                    code.map(|c| (c, reason.clone()))
                }
                _ => None,
            };
            recorder.close_to(to, echoed, true)
        }
        CloseStep::Nothing => {}
    }
}

/// An upgrade request's headers as they went over the wire, the WebSocket mechanics (`Host`,
/// `Sec-WebSocket-Key`, `-Extensions`, ...) included: a person debugging a handshake needs
/// them, and `scfsim record` leaves out what a replaying client sets by itself.
pub(crate) fn sent_headers(headers: &http::HeaderMap) -> PackedHeaders {
    let mut packed = String::with_capacity(
        headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 2)
            .sum(),
    );
    for (name, value) in headers {
        packed.push_str(name.as_str());
        packed.push('\0');
        packed.push_str(&String::from_utf8_lossy(value.as_bytes()));
        packed.push('\0');
    }
    PackedHeaders {
        packed: packed.into_boxed_str(),
        count: headers.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(max_events: u32, payload_bytes: u32) -> Arc<Capture> {
        let config = TimelineConfig {
            max_events,
            payload_bytes,
            ..TimelineConfig::default()
        };
        Arc::new(Capture::new(
            &config,
            Uuid::new_v4(),
            "echo",
            OffsetDateTime::now_utc(),
        ))
    }

    #[test]
    fn events_over_max_events_are_counted_not_kept() {
        let c = capture(2, 1024);
        let r = Recorder::new(Some(c.clone()));
        for _ in 0..5 {
            r.message(Side::Client, &Message::text("hi"), false, "");
        }
        let t = c.timeline();
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.dropped, 3);
        assert!(!t.is_complete());
        assert_eq!(
            t.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn payloads_over_the_cap_are_cut_and_marked() {
        let c = capture(10, 4);
        let r = Recorder::new(Some(c.clone()));
        r.message(
            Side::Function,
            &Message::binary(vec![1u8, 2, 3, 4, 5, 6]),
            false,
            "",
        );
        r.message(Side::Client, &Message::text("abc"), true, "");
        let t = c.timeline();
        let (bin, text) = (&t.events[0], &t.events[1]);
        assert_eq!(bin.size, 6);
        assert!(bin.truncated);
        assert_eq!(bin.payload(), Some(vec![1, 2, 3, 4]));
        assert_eq!(bin.direction, Some(Direction::ToClient));
        assert_eq!(text.text.as_deref(), Some("abc"));
        assert!(!text.truncated);
        assert!(text.injected);
        assert_eq!(text.sent_by, Some(Party::Gateway));
        // Made when read, not on the data path.
        assert_eq!(bin.detail, "function sent binary (6 bytes)");
        assert_eq!(text.detail, "the admin API sent text (3 bytes)");
    }

    /// The kept payload's address: equal to the message's when it is shared, not copied.
    fn kept_at(c: &Capture, seq: usize) -> *const u8 {
        let state = c.state.lock().unwrap();
        state.events[seq].payload.as_ref().unwrap().as_ptr()
    }

    #[test]
    fn large_payloads_are_shared_and_small_or_mostly_cut_ones_copied() {
        let large = Bytes::from(vec![7u8; SHARE_FROM]);
        let small = Bytes::from(vec![7u8; 100]);
        let c = capture(10, SHARE_FROM as u32);
        let r = Recorder::new(Some(c.clone()));
        r.message(Side::Client, &Message::Binary(large.clone()), false, "");
        r.message(Side::Client, &Message::Binary(small.clone()), false, "");
        assert_eq!(kept_at(&c, 0), large.as_ptr());
        assert_ne!(kept_at(&c, 1), small.as_ptr());

        // Keeping a quarter of a message must not pin the other three quarters.
        let huge = Bytes::from(vec![7u8; 4 * SHARE_FROM]);
        r.message(Side::Function, &Message::Binary(huge.clone()), false, "");
        assert_ne!(kept_at(&c, 2), huge.as_ptr());
        let t = c.timeline();
        assert_eq!(t.events[0].payload(), Some(large.to_vec()));
        assert_eq!(t.events[2].payload().map(|p| p.len()), Some(SHARE_FROM));
        assert!(t.events[2].truncated);
    }

    #[test]
    fn packed_headers_unpack_in_order_with_repeats_and_empty_values() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", http::HeaderValue::from_static("1"));
        headers.append("x-empty", http::HeaderValue::from_static(""));
        headers.append("x-a", http::HeaderValue::from_static("2"));
        headers.append("host", http::HeaderValue::from_static("h:1"));
        let packed = sent_headers(&headers);
        assert_eq!(packed.len(), 4);
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            packed.unpack(),
            vec![
                pair("x-a", "1"),
                pair("x-a", "2"),
                pair("x-empty", ""),
                pair("host", "h:1")
            ]
        );
        assert!(sent_headers(&http::HeaderMap::new()).unpack().is_empty());
    }

    #[test]
    fn nothing_is_kept_after_the_end_and_a_disabled_recorder_keeps_nothing() {
        let c = capture(10, 10);
        let r = Recorder::new(Some(c.clone()));
        r.phase(|| "instance requested".into());
        c.end();
        r.phase(|| "too late".into());
        let t = c.timeline();
        assert_eq!(t.events.len(), 1);
        assert!(!t.live);
        Recorder::default().phase(|| unreachable!("a disabled recorder builds no event"));
    }
}
