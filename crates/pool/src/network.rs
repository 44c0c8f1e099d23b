//! Outbound network for instances: a veth pair per instance, so a function reaches services on
//! the host (a local Redis, another local API) the way a container on a bridge network does.
//!
//! Each instance gets a /30 of the link-local range 169.254.0.0/16: the host end
//! (`sv<launcher><n>`, in the host namespace) is the instance's default gateway, and its
//! address is `SCFSIM_HOST` in the instance's environment. The instance end is `eth0`. Links
//! are made with iproute2's `ip` (one batch on each side) and die with the instance's network
//! namespace: the kernel removes both ends when the namespace goes, also after a crash of
//! scfsim, so nothing is left on the host. Beyond the host, see [`crate::outbound`].

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// 169.254.169.254 is the cloud metadata address: never hand out its block.
const METADATA_BLOCK: u32 = (169 * 256 + 254) / 4;
const BLOCKS: u32 = 65536 / 4;

/// Makes the veth pairs; one per launcher.
#[derive(Debug)]
pub(crate) struct HostNetwork {
    /// Distinguishes this scfsim's links from another's on the same host.
    tag: u32,
    next: AtomicU32,
}

/// One instance's addresses.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub host_link: String,
    pub host: Ipv4Addr,
    pub instance: Ipv4Addr,
}

impl HostNetwork {
    /// Available when `ip` runs here.
    pub(crate) fn probe() -> Result<HostNetwork, String> {
        let ok = std::process::Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err("iproute2's `ip` is not installed".into());
        }
        // Spread scfsims over the range so that two on one host rarely share a block.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        Ok(HostNetwork {
            tag: seed & 0xff_ffff,
            next: AtomicU32::new(seed.rotate_left(7) % BLOCKS),
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
    pub(crate) async fn connect(&self, netns: RawFd) -> io::Result<Lease> {
        let lease = self.lease();
        let Lease {
            host_link: link,
            host,
            instance,
        } = &lease;
        let ns_path = format!("/proc/{}/fd/{netns}", std::process::id());
        batch(
            &format!(
                "link add {link} type veth peer name eth0 netns {ns_path}\n\
                 addr add {host}/30 dev {link}\n\
                 link set {link} up\n"
            ),
            None,
        )
        .await?;
        batch(
            &format!(
                "addr add {instance}/30 dev eth0\n\
                 link set eth0 up\n\
                 route add default via {host}\n"
            ),
            Some(netns),
        )
        .await?;
        Ok(lease)
    }
}

/// Runs `ip -batch -` with `commands`, inside `netns` if given.
async fn batch(commands: &str, netns: Option<RawFd>) -> io::Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(fd) = netns {
        // SAFETY: setns is a single system call, safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
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
        let mut prepared = Vec::new();
        for _ in 0..50 {
            let ns = Arc::new(worker.create().await.unwrap());
            let lease = network.connect(ns.raw_fd()).await.unwrap();
            prepared.push((ns, lease));
        }
        eprintln!(
            "prepared 50 namespaces with veth pairs in {:?} ({:?} each)",
            began.elapsed(),
            began.elapsed() / 50
        );
        for (ns, lease) in prepared.iter().take(3) {
            let listener = tokio::net::TcpListener::bind((lease.host, 0)).await.unwrap();
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
