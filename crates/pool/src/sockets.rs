//! Sockets inside an instance's network namespace, made by its keeper (see
//! [`crate::supervisor`]) for a scfsim that cannot enter that namespace itself (no root).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// scfsim's end of the control socket: one byte asks, a descriptor comes back.
pub(crate) struct SocketFactory(UnixStream);

impl SocketFactory {
    /// scfsim's end, and the keeper's (inherited across its exec).
    pub(crate) fn pair() -> io::Result<(SocketFactory, OwnedFd)> {
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        Ok((SocketFactory(UnixStream::from_std(ours)?), theirs.into()))
    }

    /// A new, unconnected TCP socket of the instance's network namespace.
    pub(crate) async fn socket(&self) -> io::Result<OwnedFd> {
        loop {
            self.0.writable().await?;
            match self.0.try_write(b"s") {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        loop {
            self.0.readable().await?;
            match self
                .0
                .try_io(Interest::READABLE, || receive(self.0.as_raw_fd()))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

fn receive(fd: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    if msg.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the instance's keeper is gone",
        ));
    }
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&received) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(received) });
            }
        }
    }
    Err(io::Error::other(
        "the instance's keeper could not make a socket",
    ))
}
