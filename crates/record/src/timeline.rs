//! The frame timeline of one invocation: what went over its connection, each way, in order,
//! with the handshakes, the instance's start phases, the limits that acted and the close frames
//! and who sent them. The JSON of `GET /api/invocations/{request_id}/frames`.
//!
//! The gateway captures events cheaply on the data path and turns them into these only when
//! someone reads them or the invocation ends; the store keeps the newest timelines
//! (`[timeline] keep_invocations`). A payload is kept up to `[timeline] payload_bytes`, so that
//! a session can be replayed exactly (`scfsim record`): `truncated` says when it was cut.

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One invocation's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub request_id: Uuid,
    pub function: String,
    /// True while the connection is open: more events may follow.
    pub live: bool,
    /// Events not kept because the invocation had `[timeline] max_events` already.
    pub dropped: u64,
    pub events: Vec<FrameEvent>,
}

impl Timeline {
    /// True when every event of the connection is here with its whole payload: what
    /// `scfsim record` needs to rebuild the session.
    pub fn is_complete(&self) -> bool {
        self.dropped == 0 && !self.events.iter().any(|e| e.truncated)
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The instance's start: requested, listening (with `startup_ms`), failed; the end.
    Phase,
    /// An upgrade request or its answer, between the client, scfsim and the instance.
    Handshake,
    /// A text, binary, ping or pong message.
    Message,
    /// A limit acted: rate (throttled or closed), size, idle or execution timer, memory.
    Limit,
    /// A close frame, with who sent it (`sent_by`).
    Close,
    /// A fault injected on purpose (the fault-injection configuration).
    Fault,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Phase => "phase",
            EventKind::Handshake => "handshake",
            EventKind::Message => "message",
            EventKind::Limit => "limit",
            EventKind::Close => "close",
            EventKind::Fault => "fault",
        }
    }
}

/// Which way a message or frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToFunction,
    ToClient,
}

/// A message's opcode. Fragments are reassembled before scfsim sees them: a fragmented
/// message is one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Opcode {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

impl Opcode {
    pub fn as_str(self) -> &'static str {
        match self {
            Opcode::Text => "text",
            Opcode::Binary => "binary",
            Opcode::Ping => "ping",
            Opcode::Pong => "pong",
            Opcode::Close => "close",
        }
    }
}

/// Who sent a close frame (or a message): the two peers, or scfsim itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Client,
    Function,
    Gateway,
}

/// One event. Fields that do not apply are `null` (`false` for the flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameEvent {
    /// 0, 1, 2 … in the order scfsim saw the events.
    pub seq: u64,
    #[serde(with = "rfc3339_micros")]
    pub at: OffsetDateTime,
    /// Milliseconds since the invocation started.
    pub t_ms: f64,
    pub kind: EventKind,
    pub direction: Option<Direction>,
    pub opcode: Option<Opcode>,
    /// Payload bytes (the whole message, also when `truncated`).
    pub size: u64,
    /// Sent through the admin API (`POST /api/instances/{id}/send`), not by a peer.
    pub injected: bool,
    /// The payload kept is shorter than `size` (`[timeline] payload_bytes`).
    pub truncated: bool,
    /// A text message's payload (up to the cap).
    pub text: Option<String>,
    /// A binary, ping or pong payload (up to the cap), base64.
    pub binary_base64: Option<String>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    /// Who sent a close frame or a message: client, function or gateway (scfsim).
    #[serde(default)]
    pub sent_by: Option<Party>,
    /// An upgrade request's path and query (handshake events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An upgrade request's headers, as `[name, value]` pairs (handshake events); the
    /// WebSocket mechanics (key, version, upgrade, connection) are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
    /// An HTTP answer's status (handshake events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// One line for people.
    pub detail: String,
}

impl FrameEvent {
    /// An event with nothing but its kind and detail; callers fill in the rest.
    pub fn new(kind: EventKind, at: OffsetDateTime, t_ms: f64, detail: String) -> FrameEvent {
        FrameEvent {
            seq: 0,
            at,
            t_ms,
            kind,
            direction: None,
            opcode: None,
            size: 0,
            injected: false,
            truncated: false,
            text: None,
            binary_base64: None,
            close_code: None,
            close_reason: None,
            sent_by: None,
            path: None,
            headers: None,
            status: None,
            detail,
        }
    }

    /// Sets the payload kept: as `text` for a text message (cut at a character boundary at
    /// most 3 bytes before the cap), else base64.
    pub fn set_payload(&mut self, opcode: Opcode, kept: &[u8]) {
        match opcode {
            Opcode::Text => {
                let text = match std::str::from_utf8(kept) {
                    Ok(t) => t,
                    // A cap in the middle of a character: up to the last whole one.
                    Err(e) => std::str::from_utf8(&kept[..e.valid_up_to()]).unwrap_or_default(),
                };
                self.text = Some(text.to_owned());
            }
            Opcode::Close => {}
            _ => self.binary_base64 = Some(base64::engine::general_purpose::STANDARD.encode(kept)),
        }
    }

    /// The payload kept, as bytes: the text's, or the decoded base64. `None` if none is kept
    /// (or the base64 is damaged).
    pub fn payload(&self) -> Option<Vec<u8>> {
        if let Some(text) = &self.text {
            return Some(text.as_bytes().to_vec());
        }
        self.binary_base64
            .as_ref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    }
}

/// RFC 3339 with microseconds, always in UTC with a `Z`: the timeline's events are
/// microseconds apart, and a reader sorts them as text.
mod rfc3339_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let format = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        let utc = t.to_offset(time::UtcOffset::UTC);
        s.serialize_str(&utc.format(&format).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_has_the_fixed_json_shape() {
        let at = time::macros::datetime!(2026-12-03 16:00:00.123456 UTC);
        let mut e = FrameEvent::new(EventKind::Message, at, 1.5, "client sent text".into());
        e.direction = Some(Direction::ToFunction);
        e.opcode = Some(Opcode::Text);
        e.size = 5;
        e.set_payload(Opcode::Text, b"hello");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["at"], "2026-12-03T16:00:00.123456Z");
        assert_eq!(json["kind"], "message");
        assert_eq!(json["direction"], "to_function");
        assert_eq!(json["opcode"], "text");
        assert_eq!(json["text"], "hello");
        assert_eq!(json["binary_base64"], serde_json::Value::Null);
        assert_eq!(json["close_code"], serde_json::Value::Null);
        assert!(json.get("path").is_none());
        let back: FrameEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn binary_payloads_go_as_base64_and_come_back() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let mut e = FrameEvent::new(EventKind::Message, at, 0.0, String::new());
        e.set_payload(Opcode::Binary, &[0, 255, 1]);
        assert_eq!(e.binary_base64.as_deref(), Some("AP8B"));
        assert_eq!(e.payload(), Some(vec![0, 255, 1]));
    }

    #[test]
    fn a_text_cut_inside_a_character_keeps_the_whole_ones() {
        let mut e = FrameEvent::new(
            EventKind::Message,
            OffsetDateTime::UNIX_EPOCH,
            0.0,
            "".into(),
        );
        let bytes = "aé".as_bytes(); // 'é' is 2 bytes
        e.set_payload(Opcode::Text, &bytes[..2]);
        assert_eq!(e.text.as_deref(), Some("a"));
    }
}
