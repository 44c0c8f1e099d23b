//! Reaching an instance's debugger: a port of the instance other than 9000, connected the way
//! the backend connects to port 9000 (a socket made inside the instance's network namespace,
//! or the host's loopback without isolation).
//!
//! Lifecycle: the gateway puts a [`DebugTap`] in the [`crate::InstanceSpec`] of a debug-mode
//! instance and keeps its receiver. The launcher hands the tap a [`Connector`] as soon as the
//! backend started the instance, before the instance listens on port 9000 (a debugger that
//! holds the runtime before its first line holds that too). The connector keeps what it needs
//! to make sockets (the namespace, the keeper's control socket) alive as long as it is held;
//! a connection to a port of an instance that is gone fails like any connection to a closed
//! port.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::watch;

/// A connection being made to a port of the instance.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// Makes connections to any port of one instance, as seen from inside it (`127.0.0.1:port`).
#[derive(Clone)]
pub struct Connector(Arc<dyn Fn(u16) -> Connecting + Send + Sync>);

impl Connector {
    pub(crate) fn new(connect: impl Fn(u16) -> Connecting + Send + Sync + 'static) -> Connector {
        Connector(Arc::new(connect))
    }

    /// A connection to `port` of the instance; `ConnectionRefused` while nothing listens there.
    pub fn connect(&self, port: u16) -> Connecting {
        (self.0)(port)
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector")
    }
}

/// Where the launcher hands over a debug-mode instance's [`Connector`] once it started.
#[derive(Debug, Clone)]
pub struct DebugTap(Arc<watch::Sender<Option<Connector>>>);

impl DebugTap {
    /// The tap for the spec, and the receiver the gateway waits on.
    pub fn new() -> (DebugTap, watch::Receiver<Option<Connector>>) {
        let (tx, rx) = watch::channel(None);
        (DebugTap(Arc::new(tx)), rx)
    }

    pub(crate) fn started(&self, connector: Connector) {
        self.0.send_replace(Some(connector));
    }
}
