//! Network namespaces prepared ahead of demand.
//!
//! Making a namespace and wiring its veth pair takes one to three milliseconds (netlink calls
//! on both sides), which would otherwise sit between a client's upgrade request and its instance's start. A small
//! stock is kept ready by a background task; a start takes one, or prepares its own when the
//! stock is empty (a burst). The task holds only a weak reference, so it ends with the
//! launcher; namespaces still in stock are released with it (the kernel then removes them and
//! their veth pairs).
//!
//! The refill keeps two preparations in flight: a namespace is made on the namespace thread
//! while the netlink thread wires the one before, so the two threads overlap instead of taking
//! turns (BENCHMARKS.md, "Rate": under load each waits milliseconds for a CPU, and a
//! sequential refill paid both waits per namespace).

use std::io;
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::netns::{Netns, NetnsWorker};
use crate::network::{HostNetwork, Lease};

/// How many prepared namespaces to keep: enough for a few connections arriving together,
/// few enough to cost nothing while idle.
const STOCK: usize = 8;

/// Preparations the refill runs at once: one per thread that works on a namespace (the
/// namespace thread, then the netlink thread). More would only queue behind them.
const IN_FLIGHT: usize = 2;

/// A namespace ready for an instance, and its address if it has a network.
pub(crate) struct Prepared {
    pub netns: Arc<Netns>,
    pub lease: Option<Lease>,
}

pub(crate) struct WarmPool {
    worker: NetnsWorker,
    network: Option<HostNetwork>,
    stock: Mutex<Vec<Prepared>>,
    wanted: Arc<Notify>,
    refilling: std::sync::Once,
}

impl WarmPool {
    pub(crate) fn new(worker: NetnsWorker, network: Option<HostNetwork>) -> Arc<WarmPool> {
        Arc::new(WarmPool {
            worker,
            network,
            stock: Mutex::new(Vec::with_capacity(STOCK)),
            wanted: Arc::new(Notify::new()),
            refilling: std::sync::Once::new(),
        })
    }

    async fn prepare(&self) -> io::Result<Prepared> {
        let netns = Arc::new(self.worker.create().await?);
        let lease = match &self.network {
            Some(network) => Some(network.connect(netns.raw_fd()).await?),
            None => None,
        };
        Ok(Prepared { netns, lease })
    }

    /// Starts keeping the stock full, from now on (inside a tokio runtime).
    pub(crate) fn fill(self: &Arc<Self>) {
        self.refilling.call_once(|| {
            let pool = Arc::downgrade(self);
            tokio::spawn(refill(pool, self.wanted.clone()));
        });
    }

    /// A prepared namespace: from the stock if there is one, else made now.
    pub(crate) async fn take(self: &Arc<Self>) -> io::Result<Prepared> {
        self.fill();
        let stocked = self.stock.lock().expect("warm pool poisoned").pop();
        self.wanted.notify_one();
        match stocked {
            Some(prepared) => Ok(prepared),
            None => self.prepare().await,
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // Wakes the refill task so it sees the pool is gone.
        self.wanted.notify_one();
    }
}

async fn refill(pool: Weak<WarmPool>, wanted: Arc<Notify>) {
    loop {
        let Some(strong) = pool.upgrade() else {
            return;
        };
        let missing = STOCK.saturating_sub(strong.stock.lock().expect("warm pool poisoned").len());
        let mut preparing = futures_util::stream::iter(0..missing)
            .map(|_| strong.prepare())
            .buffer_unordered(IN_FLIGHT);
        while let Some(prepared) = preparing.next().await {
            match prepared {
                Ok(prepared) => strong
                    .stock
                    .lock()
                    .expect("warm pool poisoned")
                    .push(prepared),
                Err(err) => {
                    tracing::debug!(%err, "could not prepare a namespace ahead of demand");
                    break;
                }
            }
        }
        drop(preparing);
        drop(strong);
        wanted.notified().await;
    }
}
