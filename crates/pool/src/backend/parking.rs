//! Supervisors parked ahead of demand, for `isolation = "namespaces"`.
//!
//! Starting an instance's supervision (a fork of scfsim, joining the instance's cgroups, which
//! on cgroup v1 can wait for an RCU grace period, entering its network namespace, the
//! supervisor's exec, its mount and PID namespaces and its init) is most of what an instance
//! costs before its bootstrap runs, and none of it depends on the function. A small stock of
//! supervisors is kept that did all of it with a warm network namespace each (see
//! [`crate::backend::process::Parked`]); a start takes one and hands over only the function's
//! part. A parked supervisor that ends is replaced (and logged). The stock is refilled by a
//! background task holding a weak reference, so it ends with the backend; what is still parked
//! then is killed and its cgroups removed. Each parked supervisor dies with scfsim as any
//! instance's does (parent-death signals, set before its exec).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::process::{Parked, Placement, Process, SupervisorLaunch};
use crate::cgroup::Cgroups;
use crate::error::with_sources;
use crate::netns::Netns;
use crate::network::Lease;
use crate::spawn::MAX_PROCESSES;
use crate::warm::WarmPool;

/// How many supervisors to keep parked: one serves a connection while the next is parked
/// behind it; more would hold more warm namespaces than the warm pool keeps for bursts.
const STOCK: usize = 2;

/// How long one supervisor may take to park (a loaded machine; normally a few ms).
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often parked supervisors are checked for having ended, when nothing else wakes the
/// refill task.
const SWEEP: Duration = Duration::from_secs(1);

/// The longest wait before parking is tried again after it failed (doubling from a second).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a drop waits for its parked supervisors to end before it leaves their cgroups to
/// the next start.
const DROP_BOUND: Duration = Duration::from_secs(1);

/// A parked supervisor and the network namespace it is in.
pub(crate) struct Stocked {
    pub parked: Parked,
    pub netns: Arc<Netns>,
    pub lease: Option<Lease>,
}

pub(crate) struct Parking {
    stock: Mutex<Vec<Stocked>>,
    wanted: Arc<Notify>,
    warm: Arc<WarmPool>,
    cgroups: Option<Arc<Cgroups>>,
    supervisor: PathBuf,
    next_id: AtomicU64,
}

impl Parking {
    /// Starts keeping the stock full (inside a tokio runtime, on one of its worker threads:
    /// the supervisors' parent-death signal is tied to the thread that forks them).
    pub(crate) fn start(
        warm: Arc<WarmPool>,
        cgroups: Option<Arc<Cgroups>>,
        supervisor: PathBuf,
    ) -> Arc<Parking> {
        let parking = Arc::new(Parking {
            stock: Mutex::new(Vec::with_capacity(STOCK)),
            wanted: Arc::new(Notify::new()),
            warm,
            cgroups,
            supervisor,
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(refill(Arc::downgrade(&parking), parking.wanted.clone()));
        parking
    }

    /// A parked supervisor that is still alive, if there is one.
    pub(crate) fn take(&self) -> Option<Stocked> {
        let mut stock = self.stock.lock().expect("parking poisoned");
        let found = loop {
            match stock.pop() {
                None => break None,
                Some(mut stocked) => match stocked.parked.ended() {
                    None => break Some(stocked),
                    Some(exit) => retire(stocked, exit),
                },
            }
        };
        drop(stock);
        self.wanted.notify_one();
        found
    }

    /// Drops parked supervisors that ended; true if the stock is short.
    fn sweep(&self) -> bool {
        let mut stock = self.stock.lock().expect("parking poisoned");
        let mut kept = Vec::with_capacity(STOCK);
        for mut stocked in stock.drain(..) {
            match stocked.parked.ended() {
                None => kept.push(stocked),
                Some(exit) => retire(stocked, exit),
            }
        }
        *stock = kept;
        stock.len() < STOCK
    }

    async fn park(&self) -> Result<Stocked, String> {
        let namespace = self
            .warm
            .take()
            .await
            .map_err(|e| format!("preparing a network namespace: {e}"))?;
        let cgroup = match &self.cgroups {
            Some(cgroups) => {
                let id = format!("parked-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                // The memory limit is the function's: written at the hand-over.
                Some(
                    cgroups
                        .create(&id, None, MAX_PROCESSES)
                        .map_err(|e| format!("creating a cgroup: {e}"))?,
                )
            }
            None => None,
        };
        let launch = SupervisorLaunch {
            program: self.supervisor.clone(),
            var_lang: None,
            user_maps: None,
        };
        let placement = Placement {
            netns: Some(namespace.netns.raw_fd()),
            cgroup,
        };
        let deadline = tokio::time::Instant::now() + PARK_TIMEOUT;
        let parked = Process::park(launch, placement, deadline)
            .await
            .map_err(|failure| with_sources(&failure.kind))?;
        tracing::debug!(pid = parked.pid(), "supervisor parked");
        Ok(Stocked {
            parked,
            netns: namespace.netns,
            lease: namespace.lease,
        })
    }
}

/// Logs a parked supervisor that ended and reaps it in the background.
fn retire(stocked: Stocked, exit: crate::instance::ExitInfo) {
    tracing::warn!(
        pid = stocked.parked.pid(),
        "a parked supervisor ended ({exit}) before serving a connection; replacing it"
    );
    tokio::spawn(stocked.parked.discard());
}

impl Drop for Parking {
    fn drop(&mut self) {
        let stock = std::mem::take(self.stock.get_mut().expect("parking poisoned"));
        for stocked in stock {
            stocked.parked.discard_now(DROP_BOUND);
        }
        // Wakes the refill task so it sees the stock is gone.
        self.wanted.notify_one();
    }
}

async fn refill(parking: Weak<Parking>, wanted: Arc<Notify>) {
    let mut backoff = None::<Duration>;
    loop {
        let Some(strong) = parking.upgrade() else {
            return;
        };
        // Once the backend let go of the stock, only this task holds it: nothing more to park.
        while Arc::strong_count(&strong) > 1 && strong.sweep() {
            match strong.park().await {
                Ok(stocked) => {
                    backoff = None;
                    let mut stock = strong.stock.lock().expect("parking poisoned");
                    stock.push(stocked);
                }
                Err(why) => {
                    let wait = backoff.map_or(Duration::from_secs(1), |b| (b * 2).min(MAX_BACKOFF));
                    tracing::warn!(
                        "could not park an instance supervisor ahead of demand ({why}); \
                         instances start unparked meanwhile, next try in {wait:?}"
                    );
                    backoff = Some(wait);
                    break;
                }
            }
        }
        drop(strong);
        match backoff {
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                tokio::select! {
                    _ = wanted.notified() => {}
                    _ = tokio::time::sleep(SWEEP) => {}
                }
            }
        }
    }
}
