//! Network namespaces prepared ahead of demand.
//!
//! Making a namespace and wiring its veth pair takes one to three milliseconds (netlink calls
//! on both sides), which would otherwise sit between a client's upgrade request and its instance's start. A small
//! stock is kept ready by a background task; a start takes one, or prepares its own when the
//! stock is empty (a burst). The task holds only a weak reference, so it ends with the
//! launcher; namespaces still in stock are released with it (the kernel then removes them and
//! their veth pairs).

use std::io;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::netns::{Netns, NetnsWorker};
use crate::network::{HostNetwork, Lease};

/// How many prepared namespaces to keep: enough for a few connections arriving together,
/// few enough to cost nothing while idle.
const STOCK: usize = 4;

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
        for _ in 0..missing {
            match strong.prepare().await {
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
        drop(strong);
        wanted.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use crate::network::HostNetwork;

    /// The namespace a descriptor refers to (its nsfs inode).
    fn namespace_of(netns: &Netns) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", netns.raw_fd()))
            .expect("stat the namespace")
            .ino()
    }

    async fn stock_full(pool: &Arc<WarmPool>) {
        let full = async {
            while pool.stock.lock().expect("warm pool poisoned").len() < STOCK {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), full)
            .await
            .expect("the stock fills within a minute");
    }

    /// The refill fills the stock to its size and no further, and a burst larger than the
    /// stock (the starts beyond it prepare their own, beside the refill) gets a namespace and
    /// an address of its own for every start.
    #[tokio::test]
    async fn a_burst_gets_distinct_namespaces_and_the_stock_refills_to_its_size() {
        let worker = NetnsWorker::start().expect("tests run as root (namespaces)");
        let network = HostNetwork::probe().expect("netlink works here");
        let pool = WarmPool::new(worker, Some(network));
        pool.fill();
        stock_full(&pool).await;

        let burst = STOCK + 3;
        let taken = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::try_join_all((0..burst).map(|_| pool.take())),
        )
        .await
        .expect("bounded")
        .expect("every start gets a namespace");
        let mut namespaces: Vec<u64> = taken.iter().map(|p| namespace_of(&p.netns)).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        assert_eq!(namespaces.len(), burst, "a namespace was handed out twice");
        let mut links: Vec<&str> = taken
            .iter()
            .map(|p| p.lease.as_ref().expect("wired").host_link.as_str())
            .collect();
        links.sort_unstable();
        links.dedup();
        assert_eq!(links.len(), burst, "an address block was handed out twice");

        stock_full(&pool).await;
        // The refill has gone back to waiting; give it time to overshoot if it would.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pool.stock.lock().expect("warm pool poisoned").len(), STOCK);
        let stocked: Vec<u64> = pool
            .stock
            .lock()
            .expect("warm pool poisoned")
            .iter()
            .map(|p| namespace_of(&p.netns))
            .collect();
        assert!(
            stocked.iter().all(|ns| !namespaces.contains(ns)),
            "a namespace in use is also in stock"
        );
    }
}
