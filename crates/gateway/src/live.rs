//! Connections that are open right now, for the admin API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counters of one connection, shared by its two forwarding directions and the admin API.
/// "in" is client → function, as in the record.
#[derive(Debug)]
pub struct Traffic {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub throttled_messages: AtomicU64,
    /// Nanoseconds after `base` of the last text or binary message either way: the idle timer.
    /// On tokio's clock, so that the proxy's tests can pause it.
    last_activity: AtomicU64,
    base: Instant,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            throttled_messages: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

impl Traffic {
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
}

/// One open connection with its instance. Registered once the instance listens, removed when
/// the invocation is recorded.
#[derive(Debug, Clone)]
pub struct LiveInstance {
    pub id: Uuid,
    pub function: String,
    pub request_id: Uuid,
    pub pid: u32,
    pub started_at: OffsetDateTime,
    pub traffic: Arc<Traffic>,
    /// Ends this connection (close 1001 both ways), e.g. for `DELETE /api/instances/{id}`.
    pub cancel: CancellationToken,
}

/// What the admin API shows of a live instance.
#[derive(Debug, Clone, Serialize)]
pub struct LiveInstanceView {
    pub id: Uuid,
    pub function: String,
    pub request_id: Uuid,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(flatten)]
    pub traffic: TrafficSnapshot,
}

/// The registry of open connections, keyed by instance id.
#[derive(Debug, Default)]
pub struct LiveInstances {
    map: DashMap<Uuid, LiveInstance>,
}

impl LiveInstances {
    pub(crate) fn insert(&self, live: LiveInstance) {
        self.map.insert(live.id, live);
    }

    pub(crate) fn remove(&self, id: Uuid) {
        self.map.remove(&id);
    }

    /// Oldest first.
    pub fn list(&self) -> Vec<LiveInstanceView> {
        let mut all: Vec<_> = self
            .map
            .iter()
            .map(|e| LiveInstanceView {
                id: e.id,
                function: e.function.clone(),
                request_id: e.request_id,
                pid: e.pid,
                started_at: e.started_at,
                traffic: e.traffic.snapshot(),
            })
            .collect();
        all.sort_by_key(|v| v.started_at);
        all
    }

    pub fn count(&self, function: &str) -> usize {
        self.map.iter().filter(|e| e.function == function).count()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends one connection; false if no such instance is live.
    pub fn end(&self, id: Uuid) -> bool {
        match self.map.get(&id) {
            Some(live) => {
                live.cancel.cancel();
                true
            }
            None => false,
        }
    }
}
