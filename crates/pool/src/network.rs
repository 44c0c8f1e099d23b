//! Outbound network for instances: a veth pair per instance, so a function reaches services on
//! the host (a local Redis, another local API) the way a container on a bridge network does.
//!
//! Each instance gets a /30 of the link-local range 169.254.0.0/16: the host end
//! (`sv<launcher><n>`, in the host namespace; the nftables rules match `sv*`) is the instance's
//! default gateway, and its address is `SCFSIM_HOST` in the instance's environment. The
//! instance end is `eth0`. Links are made over netlink (rtnetlink) by a thread of their own,
//! and die with the instance's network namespace: the kernel removes both ends when the
//! namespace goes, also after a crash of scfsim, so nothing is left on the host. Beyond the
//! host, see [`crate::outbound`].
//!
//! `setns` changes only the calling thread and a netlink socket stays bound to the namespace it
//! was made in, so the thread makes one socket inside each instance's namespace to configure
//! `eth0`, then switches back. It is never a tokio worker (those must stay in the host's
//! namespace), and it drives its sockets with a small runtime of its own.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::oneshot;

/// 169.254.169.254 is the cloud metadata address: never hand out its block.
const METADATA_BLOCK: u32 = (169 * 256 + 254) / 4;
const BLOCKS: u32 = 65536 / 4;

/// The loopback device has this index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// The instance end of every veth pair.
const INSTANCE_LINK: &str = "eth0";

/// Why a namespace could not be linked to the host. Every one is the host's or scfsim's fault
/// (missing privilege, a kernel without veth, a clash of names), never the function's.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open this thread's network namespace")]
    HostNamespace(#[source] io::Error),
    #[error("cannot open the instance's network namespace")]
    InstanceNamespace(#[source] io::Error),
    #[error("cannot start the netlink thread")]
    Thread(#[source] io::Error),
    #[error("the netlink thread is gone")]
    ThreadGone,
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("cannot switch the netlink thread's network namespace")]
    Setns(#[source] nix::Error),
    #[error("netlink refused {step}")]
    Netlink {
        step: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {link} vanished right after it was made")]
    NoSuchLink { link: String },
}

impl NetworkError {
    fn netlink(step: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
        move |source| NetworkError::Netlink { step, source }
    }
}

/// For callers that report an `io::Error`; the source chain is kept.
impl From<NetworkError> for io::Error {
    fn from(err: NetworkError) -> io::Error {
        io::Error::other(err)
    }
}

/// Netlink requests run by the thread that owns this: a current-thread runtime that drives the
/// connections, and only while that thread waits in [`Netlink::run`].
pub(crate) struct Netlink {
    runtime: tokio::runtime::Runtime,
}

impl Netlink {
    pub(crate) fn new() -> io::Result<Netlink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        Ok(Netlink { runtime })
    }

    pub(crate) fn run<F: Future>(&self, work: F) -> F::Output {
        self.runtime.block_on(work)
    }

    /// A connection to the namespace the calling thread is in now; it stays bound to that
    /// namespace after the thread moves on. It ends when the handle and its clones are dropped.
    pub(crate) fn connect_here(&self) -> Result<Handle, NetworkError> {
        let _runtime = self.runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        self.runtime.spawn(connection);
        Ok(handle)
    }
}

/// A new namespace has `lo` down; `0.0.0.0:9000` is unreachable until it is up.
pub(crate) async fn loopback_up(handle: &Handle) -> Result<(), NetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build())
        .execute()
        .await
        .map_err(NetworkError::netlink("setting lo up"))
}

/// Makes the veth pairs; one per launcher.
#[derive(Debug)]
pub(crate) struct HostNetwork {
    /// Distinguishes this scfsim's links from another's on the same host.
    tag: u32,
    next: AtomicU32,
    jobs: mpsc::Sender<Job>,
}

/// One instance's addresses.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub host_link: String,
    pub host: Ipv4Addr,
    pub instance: Ipv4Addr,
}

struct Job {
    netns: File,
    lease: Lease,
    reply: oneshot::Sender<Result<(), NetworkError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("lease", &self.lease).finish()
    }
}

impl HostNetwork {
    /// Starts the netlink thread, with a netlink connection to the host's namespace (the one
    /// the calling thread is in).
    pub(crate) fn probe() -> Result<HostNetwork, NetworkError> {
        let host = File::open("/proc/thread-self/ns/net").map_err(NetworkError::HostNamespace)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("scfsim-netlink".into())
            .spawn(move || {
                let started = Netlink::new()
                    .map_err(NetworkError::Thread)
                    .and_then(|netlink| Ok((netlink.connect_here()?, netlink)));
                let (handle, netlink) = match started {
                    Ok(started) => {
                        let _ = ready_tx.send(Ok(()));
                        started
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                for job in rx {
                    let wired = wire(&netlink, &handle, &host, &job.netns, &job.lease);
                    // A thread stuck in an instance's namespace would wire the next one wrong:
                    // it stops, and later connects fail with `ThreadGone`.
                    let stuck = matches!(wired, Err(NetworkError::Setns(_)));
                    let _ = job.reply.send(wired);
                    if stuck {
                        return;
                    }
                }
            })
            .map_err(NetworkError::Thread)?;
        ready_rx.recv().map_err(|_| NetworkError::ThreadGone)??;
        // Spread scfsims over the range so that two on one host rarely share a block.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        Ok(HostNetwork {
            tag: seed & 0xff_ffff,
            next: AtomicU32::new(seed.rotate_left(7) % BLOCKS),
            jobs,
        })
    }

    fn lease(&self) -> Lease {
        let mut block = self.next.fetch_add(1, Ordering::Relaxed) % BLOCKS;
        if block == METADATA_BLOCK || block == 0 {
            block = self.next.fetch_add(1, Ordering::Relaxed) % BLOCKS;
        }
        let base = u32::from(Ipv4Addr::new(169, 254, 0, 0)) + block * 4;
        Lease {
            host_link: format!("sv{:06x}{:06x}", self.tag, block),
            host: Ipv4Addr::from(base + 1),
            instance: Ipv4Addr::from(base + 2),
        }
    }

    /// Connects the namespace behind `netns` (a descriptor of this process) to the host.
    pub(crate) async fn connect(&self, netns: RawFd) -> Result<Lease, NetworkError> {
        // A descriptor of our own before the first await: the caller's may be closed (and its
        // number reused) if this future is dropped while the thread still works on it.
        let netns = File::open(format!("/proc/self/fd/{netns}"))
            .map_err(NetworkError::InstanceNamespace)?;
        let lease = self.lease();
        let (reply, wired) = oneshot::channel();
        self.jobs
            .send(Job {
                netns,
                lease: lease.clone(),
                reply,
            })
            .map_err(|_| NetworkError::ThreadGone)?;
        wired.await.map_err(|_| NetworkError::ThreadGone)??;
        Ok(lease)
    }
}

/// Makes the veth pair, with its instance end created directly in `netns` (moving a link
/// later costs ~20 ms), sets both ends up, then addresses both ends and gives the instance its
/// default route.
fn wire(
    netlink: &Netlink,
    host: &Handle,
    host_ns: &File,
    netns: &File,
    lease: &Lease,
) -> Result<(), NetworkError> {
    use std::os::fd::AsRawFd;
    // Not created up: the kernel opens the peer before the pair is joined, which fails
    // (ENOTCONN). The host end is opened after, so it can be.
    let peer = LinkUnspec::new_with_name(INSTANCE_LINK)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&lease.host_link, INSTANCE_LINK)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    netlink
        .run(host.link().add(veth).execute())
        .map_err(NetworkError::netlink("creating the veth pair"))?;
    nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).map_err(NetworkError::Setns)?;
    let inside = netlink.connect_here();
    nix::sched::setns(host_ns, CloneFlags::CLONE_NEWNET).map_err(NetworkError::Setns)?;
    let inside = inside?;
    netlink.run(async {
        let host_end = async {
            let index = link_index(host, &lease.host_link).await?;
            host.address()
                .add(index, IpAddr::V4(lease.host), 30)
                .execute()
                .await
                .map_err(NetworkError::netlink("adding the host end's address"))
        };
        let instance_end = async {
            let index = link_index(&inside, INSTANCE_LINK).await?;
            inside
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(NetworkError::netlink("setting the instance end up"))?;
            inside
                .address()
                .add(index, IpAddr::V4(lease.instance), 30)
                .execute()
                .await
                .map_err(NetworkError::netlink("adding the instance end's address"))?;
            inside
                .route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(lease.host)
                        .build(),
                )
                .execute()
                .await
                .map_err(NetworkError::netlink("adding the instance's default route"))
        };
        tokio::try_join!(host_end, instance_end).map(drop)
    })
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(NetworkError::netlink("looking up a link"))?;
    link.map(|link| link.header.index)
        .ok_or_else(|| NetworkError::NoSuchLink { link: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetnsWorker;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Namespaces wired to the host: the instance end reaches a listener on the host end's
    /// address through its default route. Also prints how long preparing 50 took (the
    /// connection path pays this when the warm stock is empty), without asserting on it.
    #[tokio::test]
    async fn prepared_namespaces_reach_the_host() {
        let worker = NetnsWorker::start().expect("tests run as root (namespaces)");
        let network = HostNetwork::probe().expect("netlink works here");
        let began = Instant::now();
        let mut creating = Duration::ZERO;
        let mut prepared = Vec::new();
        for _ in 0..50 {
            let step = Instant::now();
            let ns = Arc::new(worker.create().await.unwrap());
            creating += step.elapsed();
            let lease = network.connect(ns.raw_fd()).await.unwrap();
            prepared.push((ns, lease));
        }
        eprintln!(
            "prepared 50 namespaces with veth pairs in {:?} ({:?} each, of which {:?} the \
             namespace and lo)",
            began.elapsed(),
            began.elapsed() / 50,
            creating / 50
        );
        for (ns, lease) in prepared.iter().take(3) {
            let listener = tokio::net::TcpListener::bind((lease.host, 0))
                .await
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(
                worker.socket(ns).await.unwrap(),
            ));
            let connect = socket.connect((lease.host, port).into());
            let (connected, accepted) = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(connect, listener.accept())
            })
            .await
            .expect("bounded");
            connected.unwrap();
            let (_, peer) = accepted.unwrap();
            assert_eq!(peer.ip(), std::net::IpAddr::V4(lease.instance));
        }
    }
}
