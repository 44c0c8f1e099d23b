//! Network namespaces, made and entered on one thread that scfsim owns.
//!
//! `setns`/`unshare(CLONE_NEWNET)` change only the calling thread, and a socket keeps the
//! namespace it was created in. So one dedicated thread creates namespaces and sockets inside
//! them, and always switches back to the host namespace before it takes the next job: no tokio
//! worker ever leaves the host's namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::PoolError;

/// A network namespace with `lo` up. It lives while this handle or any process inside it lives.
#[derive(Debug)]
pub(crate) struct Netns {
    fd: OwnedFd,
}

impl Netns {
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
                // A probe, so that "no namespaces here" is known at startup rather than per
                // connection.
                let probe = create(&host).map(drop);
                let usable = probe.is_ok();
                let _ = probe_tx.send(probe);
                if !usable {
                    return;
                }
                for job in rx {
                    match job {
                        Job::Create(reply) => {
                            let _ = reply.send(create(&host));
                        }
                        Job::Socket(ns, reply) => {
                            let _ = reply.send(socket_in(&host, &ns));
                        }
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

fn create(host: &File) -> io::Result<Netns> {
    // SAFETY: plain syscalls on this thread; the thread is switched back to `host` below on
    // every path.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let made = File::open("/proc/thread-self/ns/net").and_then(|ns| {
        loopback_up()?;
        Ok(Netns { fd: ns.into() })
    });
    enter(host.as_raw_fd())?;
    made
}

fn socket_in(host: &File, ns: &Netns) -> io::Result<OwnedFd> {
    enter(ns.raw_fd())?;
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    let made = if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    enter(host.as_raw_fd())?;
    made
}

fn enter(ns: RawFd) -> io::Result<()> {
    // SAFETY: setns on a namespace fd we hold open.
    if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new namespace has `lo` down; `0.0.0.0:9000` is unreachable until it is up.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a throwaway datagram socket for the ioctl, closed by OwnedFd.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sock is a fresh fd owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS with a valid, initialised ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
