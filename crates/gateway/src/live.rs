//! Connections that are open right now, for the admin API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::debug::DebugView;
pub use crate::steer::{AdminClose, Payload, SteerRefusal, Steering, To};
pub use crate::timeline::Capture;

/// Counters of one connection, shared by its two forwarding directions and the admin API.
/// "in" is client → function, as in the record.
#[derive(Debug)]
pub struct Traffic {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub throttled_messages: AtomicU64,
    /// Messages injected through the admin API (also counted in `messages_in`/`messages_out`
    /// by their direction).
    pub injected_messages: AtomicU64,
    /// Nanoseconds after `base` of the last text or binary message either way: the idle timer.
    /// On tokio's clock, so that the proxy's tests can pause it.
    last_activity: AtomicU64,
    base: Instant,
    /// The connection's frame timeline (a no-op when `[timeline] enabled = false`).
    pub(crate) timeline: crate::timeline::Recorder,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            throttled_messages: AtomicU64::new(0),
            injected_messages: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            base: Instant::now(),
            timeline: crate::timeline::Recorder::default(),
        }
    }
}

impl Traffic {
    /// Counters whose messages also go to `timeline`.
    pub(crate) fn with_timeline(timeline: crate::timeline::Recorder) -> Traffic {
        Traffic {
            timeline,
            ..Traffic::default()
        }
    }

    pub(crate) fn touch(&self) {
        let now = self.base.elapsed().as_nanos() as u64;
        self.last_activity.store(now, Ordering::Relaxed);
    }

    pub(crate) fn last_activity(&self) -> Instant {
        self.base + std::time::Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            throttled_messages: self.throttled_messages.load(Ordering::Relaxed),
            injected_messages: self.injected_messages.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TrafficSnapshot {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub throttled_messages: u64,
    pub injected_messages: u64,
}

/// One open connection with its instance. Registered once the instance listens (in debug
/// mode: as soon as its debugger's port is open, before it listens, so that a person can find
/// the port to attach to), removed when the invocation is recorded.
#[derive(Debug, Clone)]
pub struct LiveInstance {
    pub id: Uuid,
    pub function: String,
    pub request_id: Uuid,
    /// `None` until the instance listens (only a debug-mode instance is listed before that).
    pub pid: Option<u32>,
    pub started_at: OffsetDateTime,
    pub traffic: Arc<Traffic>,
    /// Ends this connection (close 1001 both ways, or what `steering.admin_close` says), e.g.
    /// for `DELETE /api/instances/{id}`.
    pub cancel: CancellationToken,
    /// Messages injected and the close code chosen through the admin API.
    pub steering: Steering,
    /// Where its debugger is reached, in debug mode.
    pub debug: Option<DebugView>,
}

/// A provisioned instance waiting for its connection.
#[derive(Debug, Clone)]
pub(crate) struct WaitingInstance {
    pub id: Uuid,
    pub function: String,
    pub pid: u32,
    pub started_at: OffsetDateTime,
}

/// Whether a listed instance serves a connection or waits for one.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Serving its connection (or, in debug mode, starting for it).
    Connected,
    /// A provisioned instance, started ahead of demand, waiting for a connection.
    Provisioned,
}

/// What the admin API shows of a live instance.
#[derive(Debug, Clone, Serialize)]
pub struct LiveInstanceView {
    pub id: Uuid,
    pub function: String,
    pub state: InstanceState,
    /// `null` for a provisioned instance that waits for its connection.
    pub request_id: Option<Uuid>,
    /// Always a number for an instance that listens; `null` only while a debug-mode instance
    /// starts.
    pub pid: Option<u32>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(flatten)]
    pub traffic: TrafficSnapshot,
    /// Only for an instance in debug mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugView>,
}

/// The registry of open connections, keyed by instance id, of the provisioned instances
/// waiting for one (listed, but not counted as connections), and of the live timelines.
#[derive(Default)]
pub struct LiveInstances {
    map: DashMap<Uuid, LiveInstance>,
    waiting: DashMap<Uuid, WaitingInstance>,
    /// The timelines of invocations not yet recorded, by request id: from the upgrade request
    /// on (before the instance listens), so that the start phases are seen live too.
    timelines: DashMap<Uuid, Arc<Capture>>,
}

impl std::fmt::Debug for LiveInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveInstances")
            .field("map", &self.map)
            .field("waiting", &self.waiting)
            .field("timelines", &self.timelines.len())
            .finish()
    }
}

impl LiveInstances {
    /// The timeline of an invocation not yet recorded.
    pub fn timeline(&self, request_id: Uuid) -> Option<Arc<Capture>> {
        self.timelines.get(&request_id).map(|c| c.clone())
    }

    pub(crate) fn insert_timeline(&self, capture: Arc<Capture>) {
        self.timelines.insert(capture.request_id(), capture);
    }

    pub(crate) fn remove_timeline(&self, request_id: Uuid) {
        self.timelines.remove(&request_id);
    }

    pub(crate) fn insert(&self, live: LiveInstance) {
        self.map.insert(live.id, live);
    }

    pub(crate) fn remove(&self, id: Uuid) {
        self.map.remove(&id);
    }

    pub(crate) fn insert_waiting(&self, waiting: WaitingInstance) {
        self.waiting.insert(waiting.id, waiting);
    }

    pub(crate) fn remove_waiting(&self, id: Uuid) {
        self.waiting.remove(&id);
    }

    /// Once the Node.js inspector of a debug-mode instance told its DevTools URL.
    pub(crate) fn set_debug_url(&self, id: Uuid, url: String) {
        if let Some(mut live) = self.map.get_mut(&id) {
            if let Some(debug) = live.debug.as_mut() {
                debug.url = url;
            }
        }
    }

    /// Once a debug-mode instance, listed while it started, listens.
    pub(crate) fn set_pid(&self, id: Uuid, pid: u32) {
        if let Some(mut live) = self.map.get_mut(&id) {
            live.pid = Some(pid);
        }
    }

    /// Oldest first: connections, and provisioned instances waiting for one.
    pub fn list(&self) -> Vec<LiveInstanceView> {
        let mut all: Vec<_> = self
            .map
            .iter()
            .map(|e| LiveInstanceView {
                id: e.id,
                function: e.function.clone(),
                state: InstanceState::Connected,
                request_id: Some(e.request_id),
                pid: e.pid,
                started_at: e.started_at,
                traffic: e.traffic.snapshot(),
                debug: e.debug.clone(),
            })
            .chain(self.waiting.iter().map(|e| LiveInstanceView {
                id: e.id,
                function: e.function.clone(),
                state: InstanceState::Provisioned,
                request_id: None,
                pid: Some(e.pid),
                started_at: e.started_at,
                traffic: TrafficSnapshot::default(),
                debug: None,
            }))
            .collect();
        all.sort_by_key(|v| v.started_at);
        all
    }

    /// Connections of `function` (provisioned instances waiting for one not counted).
    pub fn count(&self, function: &str) -> usize {
        self.map.iter().filter(|e| e.function == function).count()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends one connection (close 1001 both ways); false if no such instance is live.
    pub fn end(&self, id: Uuid) -> bool {
        self.close(id, None)
    }

    /// Ends one connection: with `close`, the client gets its code and reason and the function
    /// 1001; without, both get 1001. The first close asked for wins. False if no such instance
    /// is live.
    pub fn close(&self, id: Uuid, close: Option<AdminClose>) -> bool {
        match self.map.get(&id) {
            Some(live) => {
                if let Some(close) = close {
                    let _ = live.steering.admin_close.set(close);
                }
                live.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Injects a message into a live connection, toward `to`, under the function's message
    /// size limit; returns once it was written (or refused). Waits at most `bound` for the
    /// destination to take it.
    pub async fn send(
        &self,
        id: Uuid,
        to: To,
        payload: Payload,
        bound: std::time::Duration,
    ) -> Result<(), SteerRefusal> {
        // Cloned out, so that no map guard is held across the wait.
        let steering = self
            .map
            .get(&id)
            .map(|live| live.steering.clone())
            .ok_or(SteerRefusal::NoSuchInstance)?;
        steering.send(to, payload, bound).await
    }
}
