//! The WebSocket gateway: takes a client's upgrade, starts its instance, passes the handshake
//! and the frames through, and records how the invocation ended.
//!
//! Data flows one way: [`Gateway::serve`] accepts a connection, the pool's `Launcher` starts an
//! instance, [`proxy`] forwards frames under the function's limits, `scfsim_record::classify`
//! turns the [`EndReason`](scfsim_record::EndReason) into a platform status code, and the
//! record store keeps it. This crate never binds a socket: it is handed a bound listener and a
//! shutdown token.
//!
//! # Layout
//! - `handshake`: checking the client's upgrade, the request to the instance, the client's 101.
//! - `invocation`: one connection's life, from request to record.
//! - `proxy`: frames one to one, timers, the closing handshakes.
//! - `live`: the registry of open connections that the admin API shows.
//! - `timeline`: each invocation's frame timeline, captured on the data path.
//! - `provisioned`: instances started ahead of demand (`provisioned_instances`).
//! - `responses`: the HTTP answers given instead of an upgrade.
//! - `faults`: faults injected on purpose, one `FaultPlan` per connection.

pub mod client;
mod debug;
mod env;
mod faults;
mod handshake;
mod invocation;
mod limits;
pub mod live;
mod provisioned;
mod proxy;
mod responses;
mod server;
mod steer;
mod timeline;
mod tls;

/// Entry points for `fuzz/` (cargo-fuzz): the parsers of untrusted bytes that are otherwise only
/// reachable through a socket. Not part of scfsim's API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use http::{Request, Response};
    use uuid::Uuid;

    use crate::client::{parse, HeadError};
    use crate::handshake::{check_upgrade, switching_protocols, upstream_request, GatewayHeaders};

    /// The outcome of one head, for the fuzz target's invariants.
    pub enum Head {
        Partial,
        TooLarge,
        Malformed,
        Complete { used: usize, request: Request<()> },
    }

    /// `client::parse` as `ClientConn::read` calls it.
    pub fn parse_head(buf: &[u8]) -> Head {
        match parse(buf) {
            Ok(None) => Head::Partial,
            Ok(Some((request, used))) => Head::Complete { used, request },
            Err(HeadError::TooLarge) => Head::TooLarge,
            Err(HeadError::Malformed(_)) => Head::Malformed,
            Err(HeadError::Gone) => unreachable!("parse never reports Gone"),
        }
    }

    /// What a parsed head goes through before and after the instance's handshake, as for a
    /// function on path "/" (which every path routes to): the upgrade check, the request to
    /// the instance, and the client's 101.
    pub fn handshake(request: &Request<()>) {
        if check_upgrade(request).is_err() {
            return;
        }
        let identity = crate::PlatformIdentity::default();
        let gw = GatewayHeaders {
            request_id: Uuid::nil(),
            peer: "192.0.2.1:5000".parse().expect("literal address"),
            proto: "ws",
            function: "root",
            memory_mb: 128,
            timeout_ms: 900_000,
            identity: &identity,
        };
        let upstream = upstream_request(request, &gw);
        assert_eq!(
            upstream
                .headers()
                .get_all("x-scf-request-id")
                .iter()
                .count(),
            1
        );
        let instance = Response::builder()
            .status(101)
            .body(())
            .expect("static response");
        let _ = switching_protocols(request, &instance, Uuid::nil());
    }
}

use std::sync::Arc;
use std::time::Duration;

use scfsim_config::Config;
use scfsim_pool::Launcher;
use scfsim_record::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::ClientStream;
pub use live::{
    AdminClose, Capture, DebugView, InstanceState, LiveInstance, LiveInstanceView, LiveInstances,
    Payload, SteerRefusal, To, TrafficSnapshot,
};
pub use tls::{Tls, TlsError};

/// Shows an error with every source in its chain, `outer: inner: root`, for log lines: our
/// errors' messages never repeat their source, so a log that showed only the outer message
/// would lose the cause (a full disk's "No space left on device", say).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&scfsim_pool::with_sources(self.0))
    }
}

/// The account an instance believes it runs in (its `TENCENTCLOUD_*` variables and `X-Scf-*`
/// headers).
#[derive(Debug, Clone)]
pub struct PlatformIdentity {
    pub region: String,
    pub appid: String,
    pub uin: String,
    pub namespace: String,
}

impl From<&scfsim_config::Platform> for PlatformIdentity {
    fn from(platform: &scfsim_config::Platform) -> Self {
        PlatformIdentity {
            region: platform.region.clone(),
            appid: platform.appid.clone(),
            uin: platform.uin.clone(),
            namespace: "default".into(),
        }
    }
}

impl Default for PlatformIdentity {
    fn default() -> Self {
        PlatformIdentity::from(&scfsim_config::Platform::default())
    }
}

/// Everything one gateway shares between its connections.
pub struct Gateway {
    config: Arc<Config>,
    launcher: Arc<Launcher>,
    store: Arc<dyn Store>,
    live: Arc<LiveInstances>,
    quotas: limits::Quotas,
    /// Instances started ahead of demand, for functions with `provisioned_instances`.
    provisioned: provisioned::Provisioned,
    identity: PlatformIdentity,
    /// PATH, HOME, LANG and `pass_env` from scfsim's environment, for every instance.
    host_env: Vec<(String, String)>,
    /// Root of the cancellation tree: every invocation holds a child token.
    shutdown: CancellationToken,
    /// Every connection and invocation task, so shutdown can wait for their records.
    tasks: TaskTracker,
    /// How long a stopped instance gets between SIGTERM and SIGKILL.
    stop_grace: Duration,
    /// Seeded connections per function, so injected faults draw reproducibly.
    fault_seeds: faults::SeedCounters,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        launcher: Arc<Launcher>,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            quotas: limits::Quotas::new(&config),
            provisioned: provisioned::Provisioned::new(&config.functions),
            identity: PlatformIdentity::from(&config.platform),
            host_env: env::from_host(&config.gateway.pass_env),
            config,
            launcher,
            store,
            live: Arc::new(LiveInstances::default()),
            shutdown,
            tasks: TaskTracker::new(),
            stop_grace: Duration::from_secs(2),
            fault_seeds: faults::SeedCounters::default(),
        })
    }

    pub fn live(&self) -> Arc<LiveInstances> {
        self.live.clone()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Waits until every connection has ended and been recorded, or `bound` has passed.
    /// Returns false if some were still running.
    pub async fn drain(&self, bound: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[test]
    fn an_error_chain_shows_the_root_cause_once() {
        // What the gateway logs when the record store cannot write: the path from the store's
        // error, the cause from its source, each once.
        let err = scfsim_record::RecordError::Io {
            path: "/data/invocations.jsonl".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let shown = ErrorChain(&err).to_string();
        assert!(
            shown.starts_with("I/O error on /data/invocations.jsonl: No space left on device"),
            "{shown}"
        );
        assert_eq!(
            shown.matches("No space left on device").count(),
            1,
            "{shown}"
        );
    }
}
