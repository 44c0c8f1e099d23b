//! `scfsim` as a library: bind the configured listeners and run the gateway and the admin API
//! until shutdown. The binary (`main.rs`) adds the command line, logging and signals; tests use
//! [`Server::start`] directly to run a real server on port 0 in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scfsim_admin::AdminState;
use scfsim_config::Config;
use scfsim_gateway::Gateway;
use scfsim_pool::{IsolationRequest, Launcher, LauncherOptions};
use scfsim_record::RecordStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod client;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the record store in {dir}: {source}")]
    Store {
        dir: PathBuf,
        #[source]
        source: scfsim_record::RecordError,
    },
    #[error(transparent)]
    Isolation(#[from] scfsim_pool::PoolError),
    #[error("wss:// (tls_listen) is not supported yet; remove tls_listen from the config or the --tls-listen flag")]
    TlsUnsupported,
}

/// A running scfsim: its bound addresses and the handle to stop it.
pub struct Server {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// What isolation and limits are in force, for the startup log.
    pub isolation: Vec<String>,
    pub store: Arc<RecordStore>,
    pub gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener, opens the record store and starts serving.
    pub async fn start(config: Config, isolation: IsolationRequest) -> Result<Server, ServeError> {
        if config.gateway.tls_listen.is_some() {
            return Err(ServeError::TlsUnsupported);
        }
        let data_dir = config.gateway.data_dir.clone();
        let (store, report) = RecordStore::open(&data_dir).map_err(|source| ServeError::Store {
            dir: data_dir.clone(),
            source,
        })?;
        if report.crashed_completed > 0 || report.skipped_lines > 0 {
            tracing::warn!(
                crashed_completed = report.crashed_completed,
                skipped_lines = report.skipped_lines,
                "record store: {} invocation(s) were running when scfsim last stopped and are \
                 now recorded as 500 gateway_crashed; {} unreadable line(s) skipped",
                report.crashed_completed,
                report.skipped_lines
            );
        }
        let store = Arc::new(store);
        let launcher = Arc::new(Launcher::new(LauncherOptions {
            isolation,
            runtimes: config.runtimes.clone(),
            work_dir: data_dir.clone(),
        })?);
        let mut isolation = vec![launcher.describe()];
        isolation.extend(launcher.details());

        let ws_listener = bind("ws", config.gateway.listen).await?;
        let admin_listener = bind("admin", config.gateway.admin_listen).await?;
        let ws_addr = local_addr("ws", &ws_listener, config.gateway.listen)?;
        let admin_addr = local_addr("admin", &admin_listener, config.gateway.admin_listen)?;

        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let gateway = Gateway::new(config.clone(), launcher, store.clone(), shutdown.clone());
        let admin = AdminState {
            config,
            store: store.clone(),
            live: gateway.live(),
        };
        let tasks = vec![
            tokio::spawn(gateway.clone().serve(ws_listener)),
            tokio::spawn(scfsim_admin::serve(admin_listener, admin, shutdown.clone())),
        ];
        Ok(Server {
            ws_addr,
            admin_addr,
            isolation,
            store,
            gateway,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, closes every connection (1001), records every outcome, stops every
    /// instance. Returns false if some connection did not finish within `bound`.
    pub async fn shutdown(self, bound: Duration) -> bool {
        self.shutdown.cancel();
        let drained = self.gateway.drain(bound).await;
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        drained
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::Bind { what, addr, source })
}
