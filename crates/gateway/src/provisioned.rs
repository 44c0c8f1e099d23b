//! Provisioned instances: the platform's provisioned concurrency (`provisioned_instances = N`).
//!
//! For each function that has them, a refill task keeps N instances started ahead of demand:
//! bootstrap run and listening on port 9000 (the launcher's readiness probe connected), each in
//! its own isolation like any instance, each holding a slot of its function's quota. Each one
//! waits in a task of its own that either hands it to exactly one connection, or sees it die
//! (logged with its exit and its last output, then replaced), or stops it when scfsim stops.
//! A taken or dead instance is replaced at once.
//!
//! Not for debug-mode functions: their runtime waits for a person to attach before it listens
//! (the config refuses `debug = true` with provisioned instances; `serve --debug NAME` turns
//! them off with a warning). Works with every isolation backend, containers included, since
//! it starts instances through the same `Launcher::start` as a connection does.

use std::collections::{HashMap, VecDeque};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scfsim_config::FunctionConfig;
use scfsim_pool::{InstanceSpec, Ready};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Notify};
use tracing::Instrument;
use uuid::Uuid;

use crate::limits::Permit;
use crate::live::WaitingInstance;
use crate::Gateway;

/// After a failed start, the wait before the next try: doubling up to [`MAX_BACKOFF`], so a
/// broken bootstrap costs a log line now and then, not a busy loop.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a replacement waits after its predecessor was taken (see `refill`).
const REPLACEMENT_DELAY: Duration = Duration::from_millis(20);
/// Lines of a dead provisioned instance's output shown in the log.
const TAIL_LINES: usize = 8;

/// The provisioned instances of every function that has some.
#[derive(Default)]
pub(crate) struct Provisioned {
    stocks: HashMap<String, Arc<Stock>>,
}

/// One function's waiting instances.
struct Stock {
    wanted: usize,
    waiting: Mutex<VecDeque<Waiting>>,
    /// Woken when an instance was taken or ended: the refill task starts a replacement.
    changed: Notify,
}

/// The handle of an instance waiting in its task.
struct Waiting {
    id: Uuid,
    /// Asks the task to hand the instance over; it answers on the channel sent along.
    take: oneshot::Sender<oneshot::Sender<Handed>>,
}

/// An instance handed to a connection, with the quota slot it has held since it started.
pub(crate) struct Handed {
    pub ready: Ready,
    pub permit: Permit,
}

impl Provisioned {
    /// The stocks of `functions` that ask for provisioned instances; debug-mode ones are left
    /// out with a warning.
    pub(crate) fn new(functions: &[FunctionConfig]) -> Provisioned {
        let mut stocks = HashMap::new();
        for f in functions.iter().filter(|f| f.provisioned_instances > 0) {
            if f.debug {
                tracing::warn!(
                    function = %f.name,
                    "provisioned_instances = {} is ignored in debug mode: a debug-mode instance \
                     waits for a person to attach before it listens, so each connection starts \
                     its own",
                    f.provisioned_instances
                );
                continue;
            }
            stocks.insert(
                f.name.clone(),
                Arc::new(Stock {
                    wanted: f.provisioned_instances as usize,
                    waiting: Mutex::new(VecDeque::new()),
                    changed: Notify::new(),
                }),
            );
        }
        Provisioned { stocks }
    }

    /// Starts keeping every stock full, until scfsim shuts down.
    pub(crate) fn start(gateway: &Arc<Gateway>) {
        for function in &gateway.config.functions {
            if let Some(stock) = gateway.provisioned.stocks.get(&function.name) {
                let span = tracing::info_span!("provisioned", function = %function.name);
                gateway.tasks.spawn(
                    refill(gateway.clone(), function.clone(), stock.clone()).instrument(span),
                );
            }
        }
    }

    /// A waiting instance of `function`, the oldest first; `None` if none waits (the
    /// connection then starts its own).
    pub(crate) async fn take(&self, function: &str) -> Option<Handed> {
        let stock = self.stocks.get(function)?;
        loop {
            let waiting = stock.waiting.lock().expect("stock poisoned").pop_front()?;
            stock.changed.notify_one();
            let (reply, handed) = oneshot::channel();
            if waiting.take.send(reply).is_err() {
                continue; // It ended meanwhile.
            }
            // Bounded: the waiting task answers at once, or after at most one reconnect
            // (bounded by the init timeout), or drops `reply`.
            if let Ok(handed) = handed.await {
                return Some(handed);
            }
        }
    }
}

async fn refill(gateway: Arc<Gateway>, function: FunctionConfig, stock: Arc<Stock>) {
    let shutdown = gateway.shutdown.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut woken = false;
        while stock.waiting.lock().expect("stock poisoned").len() >= stock.wanted {
            tokio::select! {
                _ = stock.changed.notified() => woken = true,
                _ = shutdown.cancelled() => return,
            }
        }
        if woken {
            // The instance just taken is passing its connection's handshake: starting the
            // replacement (a fork of scfsim, namespaces, cgroups) at that very moment takes
            // the CPU and scfsim's memory map from it. A moment later costs nobody anything.
            tokio::select! {
                _ = tokio::time::sleep(REPLACEMENT_DELAY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let permit = tokio::select! {
            permit = gateway.quotas.acquire_waiting(&function.name) => permit,
            _ = shutdown.cancelled() => return,
        };
        let id = Uuid::new_v4();
        let spec = spec(&gateway, &function, id);
        let started = tokio::select! {
            started = gateway.launcher.start(&spec) => started,
            _ = shutdown.cancelled() => return,
        };
        match started {
            Ok(ready) => {
                backoff = FIRST_BACKOFF;
                let (take, asked) = oneshot::channel();
                stock
                    .waiting
                    .lock()
                    .expect("stock poisoned")
                    .push_back(Waiting { id, take });
                let pid = ready.instance.pid();
                tracing::info!(pid, "provisioned instance ready");
                let span = tracing::info_span!("provisioned", function = %function.name, pid);
                gateway.tasks.spawn(
                    wait(
                        gateway.clone(),
                        function.clone(),
                        stock.clone(),
                        id,
                        ready,
                        permit,
                        asked,
                    )
                    .instrument(span),
                );
            }
            Err(failure) => {
                drop(permit);
                tracing::warn!(
                    "a provisioned instance failed to start (next try in {}): {}",
                    scfsim_config::format_duration(backoff),
                    failure.message()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

enum Outcome {
    Taken(oneshot::Sender<Handed>),
    Died(scfsim_pool::ExitInfo),
    Shutdown,
}

/// Holds one provisioned instance until a connection takes it, it dies, or scfsim stops.
async fn wait(
    gateway: Arc<Gateway>,
    function: FunctionConfig,
    stock: Arc<Stock>,
    id: Uuid,
    mut ready: Ready,
    permit: Permit,
    mut asked: oneshot::Receiver<oneshot::Sender<Handed>>,
) {
    gateway.live.insert_waiting(WaitingInstance {
        id,
        function: function.name.clone(),
        pid: ready.instance.pid(),
        started_at: OffsetDateTime::now_utc(),
    });
    let outcome = tokio::select! {
        // A dead instance is never handed over, even when a connection asks at that moment.
        biased;
        _ = gateway.shutdown.cancelled() => Outcome::Shutdown,
        exit = ready.instance.exited() => Outcome::Died(exit),
        asked = &mut asked => match asked {
            Ok(reply) => Outcome::Taken(reply),
            Err(_) => Outcome::Shutdown,
        },
    };
    gateway.live.remove_waiting(id);
    stock
        .waiting
        .lock()
        .expect("stock poisoned")
        .retain(|w| w.id != id);
    match outcome {
        Outcome::Taken(reply) => {
            let waited = Instant::now();
            match refresh_stream(&mut ready, function.init_timeout).await {
                Ok(()) => {
                    // What the client waits for: the handover, not the start long ago.
                    ready.startup = waited.elapsed();
                    if let Err(handed) = reply.send(Handed { ready, permit }) {
                        // The connection gave up meanwhile: nobody will use this instance.
                        handed.ready.instance.stop(gateway.stop_grace).await;
                        drop(handed.permit);
                    }
                }
                Err(err) => {
                    let stopped = ready.instance.stop(Duration::ZERO).await;
                    drop(permit);
                    tracing::warn!(
                        pid = stopped.pid,
                        "a provisioned instance no longer accepts connections on port 9000 \
                         ({err}); replacing it; its last output: {:?}",
                        stopped.output.tail(TAIL_LINES)
                    );
                }
            }
        }
        Outcome::Died(exit) => {
            let stopped = ready.instance.stop(Duration::ZERO).await;
            drop(permit);
            tracing::warn!(
                pid = stopped.pid,
                exit_code = exit.code,
                signal = exit.signal,
                "a provisioned instance {exit} while it waited for a connection; replacing it; \
                 its last output: {:?}",
                stopped.output.tail(TAIL_LINES)
            );
        }
        Outcome::Shutdown => {
            ready.instance.stop(gateway.stop_grace).await;
            drop(permit);
        }
    }
    stock.changed.notify_one();
}

/// Keeps the connection the readiness probe made if the instance's server still holds it open
/// and has sent nothing on it; else makes a new one (a server may close a connection that
/// sends no request for a while, as Python's `websockets` does after 10 s).
async fn refresh_stream(ready: &mut Ready, bound: Duration) -> std::io::Result<()> {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    // A non-blocking peek: "would block" is an open connection with nothing to read.
    match socket2::SockRef::from(&ready.stream).peek(&mut byte) {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
        _ => {}
    }
    ready.stream = tokio::time::timeout(bound, ready.instance.connect())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no connection within the init timeout",
            )
        })??;
    Ok(())
}

/// An instance's spec as a connection's start builds it, without the request: a provisioned
/// instance starts before there is one. `id` names its container, where it has one.
fn spec(gateway: &Gateway, function: &FunctionConfig, id: Uuid) -> InstanceSpec {
    let env = crate::env::instance_env(function, &gateway.identity, &gateway.host_env);
    crate::invocation::instance_spec(function, env, function.init_timeout, id)
}
