//! `scfsim` as a library: bind the configured listeners and run the gateway and the admin API
//! until shutdown. The binary (`main.rs`) adds the command line, logging and signals, and is its
//! own instance supervisor; a program that runs [`Server::start`] in-process names a supervisor
//! program (see `scfsim_pool::run_supervisor_if_requested`).

#![forbid(unsafe_code)]

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

/// How long shutdown waits for the record store to write what it was given.
const STORE_FLUSH_BOUND: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the record store in {dir}")]
    Store {
        dir: PathBuf,
        #[source]
        source: scfsim_record::RecordError,
    },
    #[error(transparent)]
    Isolation(#[from] scfsim_pool::PoolError),
    #[error(transparent)]
    Tls(#[from] scfsim_gateway::TlsError),
}

/// A running scfsim: its bound addresses and the handle to stop it.
pub struct Server {
    pub ws_addr: SocketAddr,
    /// The wss:// listener, if configured.
    pub wss_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// What isolation, limits and TLS are in force, for the startup log.
    pub isolation: Vec<String>,
    pub store: Arc<RecordStore>,
    pub gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener, opens the record store and starts serving.
    pub async fn start(
        config: Config,
        isolation: IsolationRequest,
        supervisor: PathBuf,
    ) -> Result<Server, ServeError> {
        let data_dir = config.gateway.data_dir.clone();
        let retention = scfsim_record::Retention {
            max_records: config.gateway.max_records as usize,
            max_logged_invocations: config.gateway.max_logged_invocations as usize,
            max_age: config.gateway.max_record_age,
            max_timelines: config.timeline.keep_invocations as usize,
        };
        let (store, report) =
            RecordStore::open_with(&data_dir, retention).map_err(|source| ServeError::Store {
                dir: data_dir.clone(),
                source,
            })?;
        if report.crashed_completed > 0 || report.skipped_lines > 0 {
            tracing::warn!(
                crashed_completed = report.crashed_completed,
                skipped_lines = report.skipped_lines,
                "record store: {} invocation(s) were running when scfsim last stopped and are \
                 now recorded as 500 gateway_crashed; {} unreadable journal line(s) skipped",
                report.crashed_completed,
                report.skipped_lines
            );
        }
        tracing::info!(
            path = %store.path().display(),
            records = report.loaded,
            imported = report.imported,
            "record store open"
        );
        let store = Arc::new(store);
        let mut isolation_notes = Vec::new();
        let mut launcher = Launcher::new(LauncherOptions {
            isolation,
            image_functions: config.functions.iter().any(|f| f.image.is_some()),
            runtimes: config.runtimes.clone(),
            work_dir: data_dir.clone(),
            supervisor,
        })?;
        launcher.setup().await?;
        let launcher = Arc::new(launcher);
        let mut isolation = vec![launcher.describe()];
        isolation.extend(launcher.details());

        let tls = match config.gateway.tls_listen {
            Some(addr) => {
                let tls = scfsim_gateway::Tls::load(
                    config.gateway.tls_cert.as_deref(),
                    config.gateway.tls_key.as_deref(),
                    &data_dir,
                )?;
                if tls.generated {
                    isolation_notes.push(format!(
                        "wss:// uses a self-signed certificate for localhost: {} (trust it in \
                         your client, or set gateway.tls_cert and gateway.tls_key)",
                        tls.cert_path.display()
                    ));
                }
                let listener = bind("wss", addr).await?;
                let local = local_addr("wss", &listener, addr)?;
                Some((listener, local, tls.acceptor))
            }
            None => None,
        };
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
        isolation.extend(isolation_notes);
        let wss_addr = tls.as_ref().map(|(_, addr, _)| *addr);
        let mut tasks = vec![
            tokio::spawn(gateway.clone().serve(ws_listener)),
            tokio::spawn(scfsim_admin::serve(admin_listener, admin, shutdown.clone())),
        ];
        if let Some((listener, _, acceptor)) = tls {
            tasks.push(tokio::spawn(gateway.clone().serve_tls(listener, acceptor)));
        }
        Ok(Server {
            ws_addr,
            wss_addr,
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
        // Every outcome recorded above is written before scfsim exits (unless the disk refuses,
        // which the store has logged).
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush(STORE_FLUSH_BOUND)).await;
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
