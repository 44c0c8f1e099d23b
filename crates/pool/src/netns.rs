//! Network namespaces, made and entered on one thread that scfsim owns.
//!
//! `setns`/`unshare(CLONE_NEWNET)` change only the calling thread, and a socket keeps the
//! namespace it was created in. So one dedicated thread creates namespaces and sockets inside
//! them, and always switches back to the host namespace before it takes the next job: no tokio
//! worker ever leaves the host's namespace. The thread brings each namespace's `lo` up over
//! netlink, with a socket it made inside that namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use tokio::sync::oneshot;

use crate::error::PoolError;
use crate::network::{loopback_up, Netlink};

/// A network namespace with `lo` up. It lives while this handle or any process inside it lives.
#[derive(Debug)]
pub(crate) struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// A namespace someone else made (a container's, from `/proc/PID/ns/net`), held open by
    /// `fd`: while this handle lives it stays this namespace, even after every process in it
    /// ended, so a socket made in it can only reach what listens there.
    pub(crate) fn adopt(fd: OwnedFd) -> Netns {
        Netns { fd }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

enum Job {
    Create(oneshot::Sender<io::Result<Netns>>),
    Socket(Arc<Netns>, oneshot::Sender<io::Result<OwnedFd>>),
}

/// Handle to the namespace thread. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct NetnsWorker {
    jobs: mpsc::Sender<Job>,
}

impl NetnsWorker {
    /// Starts the thread and proves that a namespace can be made here.
    pub(crate) fn start() -> Result<NetnsWorker, PoolError> {
        let host = File::open("/proc/thread-self/ns/net")
            .map_err(|source| PoolError::Namespace { source })?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (probe_tx, probe_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        std::thread::Builder::new()
            .name("scfsim-netns".into())
            .spawn(move || {
                let netlink = match Netlink::new() {
                    Ok(netlink) => netlink,
                    Err(err) => {
                        let _ = probe_tx.send(Err(err));
                        return;
                    }
                };
                // A probe, so that "no namespaces here" is known at startup rather than per
                // connection.
                let probe = match create(&netlink, &host) {
                    Ok(made) => made.map(drop),
                    Err(Stuck(err)) => Err(err),
                };
                let usable = probe.is_ok();
                let _ = probe_tx.send(probe);
                if !usable {
                    return;
                }
                for job in rx {
                    let stuck = match job {
                        Job::Create(reply) => create(&netlink, &host).map(|made| {
                            let _ = reply.send(made);
                        }),
                        Job::Socket(ns, reply) => socket_in(&host, &ns).map(|made| {
                            let _ = reply.send(made);
                        }),
                    };
                    if let Err(Stuck(err)) = stuck {
                        tracing::error!(%err, "the namespace thread cannot return to the host's namespace; it stops");
                        return;
                    }
                }
            })
            .map_err(|source| PoolError::Namespace { source })?;
        probe_rx
            .recv()
            .map_err(|_| PoolError::WorkerGone)?
            .map_err(|source| PoolError::Namespace { source })?;
        let worker = NetnsWorker { jobs };
        Ok(worker)
    }

    pub(crate) async fn create(&self) -> io::Result<Netns> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Job::Create(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A non-blocking, close-on-exec TCP socket that belongs to `ns`.
    pub(crate) async fn socket(&self, ns: &Arc<Netns>) -> io::Result<OwnedFd> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Socket(ns.clone(), tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn gone() -> io::Error {
    io::Error::other("namespace worker thread is gone")
}

/// Switching back failed: the thread would make the next namespace's things in the wrong
/// one, so it stops (later jobs fail with "gone").
struct Stuck(io::Error);

fn create(netlink: &Netlink, host: &File) -> Result<io::Result<Netns>, Stuck> {
    if let Err(errno) = unshare(CloneFlags::CLONE_NEWNET) {
        return Ok(Err(errno.into()));
    }
    let made =
        File::open("/proc/thread-self/ns/net").and_then(|ns| Ok((ns, netlink.connect_here()?)));
    enter(host).map_err(Stuck)?;
    Ok(made.and_then(|(ns, inside)| {
        netlink.run(loopback_up(&inside))?;
        Ok(Netns { fd: ns.into() })
    }))
}

fn socket_in(host: &File, ns: &Netns) -> Result<io::Result<OwnedFd>, Stuck> {
    if let Err(err) = enter(&ns.fd) {
        return Ok(Err(err));
    }
    let made = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from);
    enter(host).map_err(Stuck)?;
    Ok(made)
}

fn enter(ns: impl AsFd) -> io::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}
