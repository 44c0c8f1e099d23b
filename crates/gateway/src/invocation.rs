//! One invocation: a routed upgrade request and its instance, from the request to the record.
//!
//! [`Invocation::run`] reads top to bottom: start the instance, pass the handshake through,
//! register the connection, answer 101, proxy. Every step that ends the invocation early
//! returns an [`Ended`] (what happened, the answer the client gets instead of a 101, the
//! instance if one runs), and one teardown ([`Invocation::teardown`]) answers the client, stops
//! the instance, and writes the record. A refused connection ([`Invocation::refuse`]) ends
//! through the same teardown.
//!
//! Lifecycle: the connection task in `server.rs` creates the invocation and awaits it. The
//! instance is owned by a [`Running`] guard from the moment it listens; dropping the guard
//! (a panic, or the task being cancelled) kills the instance and unregisters it from the
//! admin API, so nothing outlives the invocation even on paths that never reach the teardown.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use scfsim_config::FunctionConfig;
use scfsim_pool::{
    CapturedOutput, ExitInfo, Instance, InstanceSpec, StartFailure, StartFailureKind,
};
use scfsim_record::{EndReason, Invocation as Record, LogLine, LogStream};
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::ClientConn;
use crate::debug::DebugSession;
use crate::faults::FaultPlan;
use crate::handshake::{switching_protocols, upstream_request, GatewayHeaders};
use crate::limits::{Permit, Refusal};
use crate::live::{LiveInstance, LiveInstances, Traffic};
use crate::proxy::ReadAhead;
use crate::proxy::{self, ConnectionLimits};
use crate::responses::{json_error, passthrough, Body};
use crate::steer::{Steering, SteeringEnds};
use crate::timeline::{sent_headers, Capture, HandshakeFacts, Recorder};
use crate::{ErrorChain, Gateway};
use scfsim_record::{Direction, Party};

/// tungstenite's read buffer, per leg and connection. Small, because it is resident for the
/// connection's lifetime and zero-filled before each read; large messages do not pay for it
/// in system calls, as `proxy::ReadAhead` below it reads them from the socket in one read.
const READ_BUFFER: usize = 1024;

fn ws_config(function: &FunctionConfig) -> WebSocketConfig {
    let limit = usize::try_from(function.limits.max_message_bytes).unwrap_or(usize::MAX);
    // A frame is refused by the length in its header, before its payload is read, so an
    // announced 2 GB frame costs nothing.
    // A small read buffer: tungstenite zero-fills the whole buffer before each read, so its
    // 128 KiB default costs a 128 KiB memset per read and 256 KiB resident per connection.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

pub(crate) struct Invocation {
    gateway: Arc<Gateway>,
    function: FunctionConfig,
    request: Request<()>,
    peer: SocketAddr,
    request_id: Uuid,
    record: Record,
    /// Debug mode: the forwarder to the instance's debugger, until the teardown is done.
    debug: Option<DebugSession>,
    /// Faults injected into this connection, if any.
    faults: Option<FaultPlan>,
    /// The frame timeline (a no-op when `[timeline] enabled = false`).
    timeline: Recorder,
    /// Unlists the timeline from the live registry, also if the teardown never runs.
    _listed: Option<TimelineListing>,
    /// A provisioned instance handed to this connection, until `serve` takes it.
    provisioned: Option<scfsim_pool::Ready>,
}

/// A timeline's entry in the live registry; removed when dropped.
struct TimelineListing {
    live: Arc<LiveInstances>,
    request_id: Uuid,
}

impl Drop for TimelineListing {
    fn drop(&mut self) {
        self.live.remove_timeline(self.request_id);
    }
}

/// How an invocation ended, and what the teardown still has to do about it.
struct Ended {
    reason: EndReason,
    /// What the client gets instead of a 101; `None` once it was upgraded or is gone.
    answer: Option<Answer>,
    /// The instance, still running: the teardown stops it.
    instance: Option<Running>,
    /// What is left of an instance that failed to start (already stopped).
    failed_start: Option<Remains>,
    /// The client's connection while it still waits for an answer to its upgrade request.
    client: Option<ClientConn>,
}

impl Ended {
    fn new(reason: EndReason) -> Ended {
        Ended {
            reason,
            answer: None,
            instance: None,
            failed_start: None,
            client: None,
        }
    }

    fn client(mut self, client: ClientConn) -> Ended {
        self.client = Some(client);
        self
    }

    fn answer(mut self, answer: Answer) -> Ended {
        self.answer = Some(answer);
        self
    }

    fn instance(mut self, instance: Running) -> Ended {
        self.instance = Some(instance);
        self
    }
}

/// An HTTP answer instead of the upgrade.
struct Answer {
    response: Response<Body>,
    /// What went wrong, for the record's `error` (and the user's fix).
    error: Option<String>,
}

impl Answer {
    /// A JSON error that names the platform's status code the invocation is recorded with.
    fn error(http: StatusCode, request_id: Uuid, message: String, reason: &EndReason) -> Answer {
        let status = scfsim_record::classify(reason).status_code.as_u16();
        Answer {
            response: json_error(http, Some(request_id), &message, Some(status)),
            error: Some(message),
        }
    }
}

/// The pid, exit status and output of an instance that is gone.
struct Remains {
    pid: Option<u32>,
    exit: Option<ExitInfo>,
    output: CapturedOutput,
}

/// A started instance, owned by its invocation. Stopped gracefully by [`Running::stop`];
/// dropped without that, the instance is killed (the pool's `Instance` does that on drop) and
/// its admin entry removed.
struct Running {
    instance: Instance,
    registration: Option<Registration>,
}

/// The connection's entry in the admin API's registry; removed when dropped.
struct Registration {
    live: Arc<LiveInstances>,
    id: Uuid,
    traffic: Arc<Traffic>,
    steering: Steering,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.remove(self.id);
    }
}

impl Running {
    async fn stop(self, grace: std::time::Duration) -> (Remains, Option<Arc<Traffic>>) {
        let Running {
            instance,
            registration,
        } = self;
        let stopped = instance.stop(grace).await;
        // Unregistered only once the instance is gone: the admin API never lists a connection
        // that has no instance, nor misses one whose instance still runs.
        let traffic = registration.map(|r| r.traffic.clone());
        (
            Remains {
                pid: Some(stopped.pid),
                exit: Some(stopped.exit),
                output: stopped.output,
            },
            traffic,
        )
    }
}

impl Invocation {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        function: FunctionConfig,
        request: Request<()>,
        peer: SocketAddr,
    ) -> Invocation {
        let request_id = Uuid::new_v4();
        let mut record = Record::begin(request_id, &function.name, OffsetDateTime::now_utc());
        record.client_addr = Some(peer.to_string());
        record.path = request.uri().path_and_query().map(|p| p.to_string());
        let (timeline, listed) = if gateway.config.timeline.enabled {
            let capture = Arc::new(Capture::new(
                &gateway.config.timeline,
                request_id,
                &function.name,
                record.started_at,
            ));
            gateway.live.insert_timeline(capture.clone());
            let listed = TimelineListing {
                live: gateway.live.clone(),
                request_id,
            };
            (Recorder::new(Some(capture)), Some(listed))
        } else {
            (Recorder::default(), None)
        };
        timeline.handshake(Direction::ToFunction, Party::Client, || {
            let path = request.uri().path_and_query().map(|p| p.to_string());
            let headers = sent_headers(request.headers());
            (
                format!(
                    "client asked to upgrade: {} {} from {peer} ({} headers)",
                    request.method(),
                    path.as_deref().unwrap_or("/"),
                    headers.len()
                ),
                HandshakeFacts {
                    path,
                    headers: Some(headers),
                    status: None,
                },
            )
        });
        Invocation {
            gateway,
            function,
            request,
            peer,
            request_id,
            record,
            debug: None,
            faults: None,
            timeline,
            _listed: listed,
            provisioned: None,
        }
    }

    /// Served by `ready`, a provisioned instance, instead of one started for it.
    pub(crate) fn provisioned(mut self: Box<Self>, ready: scfsim_pool::Ready) -> Box<Invocation> {
        self.record.provisioned = true;
        self.provisioned = Some(ready);
        self
    }

    /// Whether an injected fault acts on the instance's start (a start failure or a slow
    /// start), which a provisioned instance, already started, would skip.
    pub(crate) fn injects_start_fault(&self) -> bool {
        self.faults.as_ref().is_some_and(FaultPlan::acts_on_start)
    }

    /// Arms the function's `[functions.faults]`, overridden key by key by `requested` (the
    /// request's `X-Scfsim-Faults` header).
    pub(crate) fn inject(&mut self, requested: Option<scfsim_config::Faults>) {
        let faults = match requested {
            Some(requested) => self.function.faults.overridden_by(&requested),
            None => self.function.faults.clone(),
        };
        self.faults = FaultPlan::new(
            faults,
            &self.function.name,
            &self.gateway.fault_seeds,
            self.timeline.clone(),
        );
    }

    /// The init timeout in force: none that fires in debug mode (a person may be stepping
    /// through the bootstrap's start).
    fn init_timeout(&self) -> std::time::Duration {
        match self.debug {
            Some(_) => crate::debug::SUSPENDED,
            None => self.function.init_timeout,
        }
    }

    pub(crate) fn request_id(&self) -> Uuid {
        self.request_id
    }

    /// Serves the connection with an instance of its own, holding `permit` (the quota slot)
    /// until the instance is stopped and the invocation recorded.
    pub(crate) async fn run(mut self: Box<Self>, client: ClientConn, permit: Permit) {
        if let Err(err) = self.gateway.store.begin(&self.record) {
            tracing::error!(error = %ErrorChain(&err), "could not write the invocation's start record");
        }
        let ended = self.serve(client).await;
        // Boxed, as every step that ends before the proxy runs (see `serve`).
        Box::pin(self.teardown(ended)).await;
        drop(permit);
    }

    /// A connection over a quota: no instance; HTTP 429 naming the quota, and a record.
    pub(crate) async fn refuse(self: Box<Self>, client: ClientConn, refusal: Refusal) {
        let detail = refusal.message();
        let reason = match refusal {
            Refusal::FunctionQuota { .. } | Refusal::TotalQuota { .. } => {
                EndReason::QuotaExceeded {
                    detail: detail.clone(),
                }
            }
            Refusal::NewInstanceRate { .. } => EndReason::InstanceRateExceeded {
                detail: detail.clone(),
            },
        };
        tracing::warn!("{detail}");
        let answer = Answer::error(
            StatusCode::TOO_MANY_REQUESTS,
            self.request_id,
            detail,
            &reason,
        );
        Box::pin(self.teardown(Ended::new(reason).answer(answer).client(client))).await;
    }

    /// The steps before the proxy (start, handshake, answers) run as boxed futures of their
    /// own: the connection's task is allocated once at the size of its largest state and kept
    /// until the connection ends, so a transient step held inline would cost every open
    /// connection its size for as long as it is open (the task was 14.5 KiB; BENCHMARKS.md).
    async fn serve(&mut self, mut client: ClientConn) -> Ended {
        let cancel = self.gateway.shutdown.child_token();
        let id = Uuid::new_v4();
        // Debug mode: listed (with its debug port) before it starts, since its runtime waits
        // for a person to attach before it listens on port 9000.
        let mut early = None;
        if self.function.debug {
            match Box::pin(self.open_debug(id)).await {
                Ok(debug) => {
                    early = Some(self.register(id, None, &cancel, Some(debug.view.clone())));
                    self.debug = Some(debug);
                }
                Err(ended) => return ended.client(client),
            }
        }
        let started = match self.provisioned.take() {
            Some(ready) => Ok(ready),
            None => Box::pin(self.start(&client, &cancel)).await,
        };
        let ready = match started {
            Ok(ready) => ready,
            Err(ended) => return ended.client(client),
        };
        let pid = ready.instance.pid();
        tracing::Span::current().record("pid", pid);
        self.record.instance_pid = Some(pid);
        self.timeline.phase(|| {
            format!(
                "instance ready: pid {pid} listening on port 9000 after {} ms",
                ready.startup.as_millis()
            )
        });
        let mut running = Running {
            instance: ready.instance,
            registration: None,
        };
        let startup = match Box::pin(self.slow_start(ready.startup, &client, &cancel)).await {
            Ok(startup) => startup,
            Err(ended) => return ended.instance(running).client(client),
        };
        self.record.startup_ms = Some(startup.as_millis() as u64);
        tracing::debug!(startup_ms = self.record.startup_ms, "instance listening");
        if let Some(plan) = &self.faults {
            let docker = self.gateway.launcher.isolation() == scfsim_pool::Isolation::Docker;
            plan.instance(pid, !docker);
        }

        let config = ws_config(&self.function);
        let (function_ws, accepted) =
            match Box::pin(self.handshake(ready.stream, &client, config, &cancel)).await {
                Ok(done) => done,
                Err(ended) => return ended.instance(running).client(client),
            };

        // Registered before the client's 101, so that a client that got its 101 always finds
        // its instance in the admin API.
        let (registration, steering) = match early {
            Some(early) => {
                self.gateway.live.set_pid(id, pid);
                early
            }
            None => self.register(id, Some(pid), &cancel, None),
        };
        let traffic = registration.traffic.clone();
        let connected = registration.steering.clone();
        running.registration = Some(registration);
        let switching = switching_protocols(&self.request, &accepted, self.request_id);
        // Neither head is read again: their headers would otherwise stay allocated for as
        // long as the connection is open.
        drop(accepted);
        self.request = Request::default();
        self.timeline
            .handshake(Direction::ToClient, Party::Gateway, || {
                let protocol = switching
                    .headers()
                    .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map_or(String::new(), |p| format!(" (subprotocol {p})"));
                (
                    format!("scfsim answered the client 101 Switching Protocols{protocol}"),
                    HandshakeFacts {
                        status: Some(switching.status().as_u16()),
                        ..HandshakeFacts::default()
                    },
                )
            });
        let answered = Box::pin(client.respond(switching.map(|()| Bytes::new()))).await;
        if answered.is_err() || cancel.is_cancelled() {
            let reason = if self.gateway.shutdown.is_cancelled() {
                EndReason::GatewayShutdown
            } else {
                EndReason::ClientDropped
            };
            return Ended::new(reason).instance(running);
        }
        connected.connected();
        client.watch_for_dead_peer(self.function.idle_timeout);
        // Boxed where it is made: moved into an await or a `select!`, an inline future is kept
        // in this task's state once per place it passed through.
        let mut proxied = Box::pin(self.proxy(
            client,
            function_ws,
            config,
            &traffic,
            &cancel,
            steering,
            &running,
        ));
        let kill_after = self
            .faults
            .as_ref()
            .and_then(|p| Some((p, p.kill_after()?)));
        let reason = match kill_after {
            None => (&mut proxied).await,
            Some((plan, after)) => {
                tokio::select! {
                    reason = &mut proxied => reason,
                    () = tokio::time::sleep(after) => {
                        // Killed, not ended: the proxy notices the instance's socket drop as
                        // it would a real exit.
                        plan.kill(format!("after {}", scfsim_config::format_duration(after)));
                        (&mut proxied).await
                    }
                }
            }
        };
        drop(proxied);
        Ended::new(reason).instance(running)
    }

    /// The injected `start_delay`: the instance listens, but the gateway connects only this much
    /// later (counted in `startup_ms`). A start that then outlasts the init timeout fails as a
    /// real one would (446) once the init timeout has passed. Returns the startup time.
    async fn slow_start(
        &self,
        startup: std::time::Duration,
        client: &ClientConn,
        cancel: &CancellationToken,
    ) -> Result<std::time::Duration, Ended> {
        let Some(delay) = self.faults.as_ref().and_then(|p| p.start_delay()) else {
            return Ok(startup);
        };
        let init_timeout = self.init_timeout();
        let too_slow = startup + delay > init_timeout;
        let wait = if too_slow {
            init_timeout.saturating_sub(startup)
        } else {
            delay
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(self.interrupted()),
            _ = client.gone() => return Err(Ended::new(EndReason::ClientDropped)),
        }
        if too_slow {
            let detail = format!(
                "nothing listened on port 9000 within the init timeout of {} (injected fault: \
                 start_delay = {})",
                scfsim_config::format_duration(self.function.init_timeout),
                scfsim_config::format_duration(delay)
            );
            let reason = EndReason::NotListening {
                detail: detail.clone(),
            };
            let answer = Answer::error(StatusCode::BAD_GATEWAY, self.request_id, detail, &reason);
            return Err(Ended::new(reason).answer(answer));
        }
        Ok(startup + delay)
    }

    /// Opens the host port forwarded to the instance's debugger.
    async fn open_debug(&self, id: Uuid) -> Result<DebugSession, Ended> {
        let failed = |err: std::io::Error| {
            let detail = format!("debug mode: cannot open a port for the debugger: {err}");
            let reason = EndReason::GatewayError {
                detail: detail.clone(),
            };
            let answer = Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                self.request_id,
                detail,
                &reason,
            );
            Ended::new(reason).answer(answer)
        };
        // Without a network namespace of its own, the debugger needs a host port of its own.
        let inner_port = match self.gateway.launcher.isolation() {
            scfsim_pool::Isolation::None => crate::debug::free_host_port().map_err(failed)?,
            _ => crate::debug::INNER_PORT,
        };
        let live = self.gateway.live.clone();
        let session = DebugSession::open(&self.function, inner_port, move |url| {
            live.set_debug_url(id, url)
        })
        .await
        .map_err(failed)?;
        tracing::info!(
            debug_port = session.view.port,
            runtime = session.view.runtime,
            "debug mode: the instance waits for a debugger at {} (VS Code: `scfsim debug-config \
             {}`); its init, idle and execution timers are suspended",
            session.view.address,
            self.function.name
        );
        Ok(session)
    }

    /// Starts the instance; gives up when scfsim shuts down or the client leaves meanwhile.
    async fn start(
        &self,
        client: &ClientConn,
        cancel: &CancellationToken,
    ) -> Result<scfsim_pool::Ready, Ended> {
        let injected = self.faults.as_ref();
        if let Some((reason, message)) =
            injected.and_then(|p| p.start_failure(self.function.memory_mb))
        {
            tracing::warn!("instance failed to start: {message}");
            let answer = Answer::error(StatusCode::BAD_GATEWAY, self.request_id, message, &reason);
            return Err(Ended::new(reason).answer(answer));
        }
        let mut env = crate::env::instance_env(
            &self.function,
            &self.gateway.identity,
            &self.gateway.host_env,
        );
        if let Some(debug) = &self.debug {
            debug.env(&mut env);
        }
        let spec = instance_spec(&self.function, env, self.init_timeout(), self.request_id);
        let spec = InstanceSpec {
            debug: self.debug.as_ref().map(|d| d.tap.clone()),
            ..spec
        };
        self.timeline.phase(|| {
            let what = match &self.function.image {
                Some(image) => format!("image {}", image.image),
                None => format!("bootstrap {}", self.function.bootstrap.display()),
            };
            format!(
                "instance requested ({what}; init timeout {})",
                scfsim_config::format_duration(self.init_timeout())
            )
        });
        tokio::select! {
            started = self.gateway.launcher.start(&spec) => {
                started.map_err(|failure| self.start_failed(failure))
            }
            _ = cancel.cancelled() => Err(self.interrupted()),
            // The client gave up while its instance started: stop at once, do not hold a
            // quota slot for a connection nobody will use.
            _ = client.gone() => Err(Ended::new(EndReason::ClientDropped)),
        }
    }

    /// Cancelled before the upgrade: scfsim is stopping, or (a debug-mode instance is listed
    /// while it starts) a person ended it through the admin API.
    fn interrupted(&self) -> Ended {
        if self.gateway.shutdown.is_cancelled() {
            return self.shutting_down();
        }
        let reason = EndReason::EndedByAdmin {
            code: None,
            reason: String::new(),
        };
        let answer = Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            self.request_id,
            scfsim_record::ADMIN_CLOSE.into(),
            &reason,
        );
        Ended::new(reason).answer(answer)
    }

    fn shutting_down(&self) -> Ended {
        let reason = EndReason::GatewayShutdown;
        let answer = Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            self.request_id,
            "scfsim is shutting down".into(),
            &reason,
        );
        Ended::new(reason).answer(answer)
    }

    fn start_failed(&self, failure: StartFailure) -> Ended {
        let message = failure.message();
        self.timeline
            .phase(|| format!("instance failed to start: {message}"));
        let reason = match &failure.kind {
            StartFailureKind::BootstrapMissing { .. }
            | StartFailureKind::BootstrapNotExecutable { .. }
            | StartFailureKind::Spawn { .. } => EndReason::BootstrapNotFound {
                detail: message.clone(),
            },
            StartFailureKind::HostPortBusy { .. } => EndReason::QuotaExceeded {
                detail: message.clone(),
            },
            StartFailureKind::Internal { .. } => EndReason::GatewayError {
                detail: message.clone(),
            },
            StartFailureKind::ExitedBeforeListening { .. } => EndReason::BootstrapExited {
                detail: message.clone(),
            },
            StartFailureKind::NotListening { .. } => EndReason::NotListening {
                detail: message.clone(),
            },
            StartFailureKind::ImagePull { .. } => EndReason::ImagePullFailed {
                detail: message.clone(),
            },
            StartFailureKind::ImagePullTimedOut { .. } => EndReason::ImagePullTimedOut {
                detail: message.clone(),
            },
            // A code function's bootstrap in a container is the native 445 of a bootstrap
            // that cannot be executed; an image function's is the platform's
            // ContainerInitError (445 too).
            StartFailureKind::ContainerInit { .. } if self.function.image.is_none() => {
                EndReason::BootstrapNotFound {
                    detail: message.clone(),
                }
            }
            StartFailureKind::ContainerInit { .. } => EndReason::ContainerInitError {
                detail: message.clone(),
            },
        };
        let status = scfsim_record::classify(&reason).status_code;
        // A quota is the client's to retry (429); anything else is the function's or scfsim's.
        let http = if status == scfsim_record::StatusCode::QUOTA_EXCEEDED {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::BAD_GATEWAY
        };
        tracing::warn!(
            status = status.as_u16(),
            "instance failed to start: {message}"
        );
        let answer = Answer::error(http, self.request_id, message, &reason);
        let mut ended = Ended::new(reason).answer(answer);
        ended.failed_start = Some(Remains {
            pid: failure.pid,
            exit: failure.exit,
            output: failure.output,
        });
        ended
    }

    /// Passes the client's upgrade request to the instance and takes its answer.
    async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        client: &ClientConn,
        config: WebSocketConfig,
        cancel: &CancellationToken,
    ) -> Result<
        (
            WebSocketStream<ReadAhead<tokio::net::TcpStream>>,
            Response<Option<Vec<u8>>>,
        ),
        Ended,
    > {
        let gw_headers = GatewayHeaders {
            request_id: self.request_id,
            peer: self.peer,
            proto: client.proto(),
            function: &self.function.name,
            memory_mb: self.function.memory_mb,
            timeout_ms: self.function.execution_timeout.as_millis(),
            identity: &self.gateway.identity,
        };
        let upstream = upstream_request(&self.request, &gw_headers);
        self.timeline
            .handshake(Direction::ToFunction, Party::Gateway, || {
                let path = upstream.uri().path_and_query().map(|p| p.to_string());
                (
                    format!(
                        "scfsim passed the upgrade request to the instance: {} {}",
                        upstream.method(),
                        path.as_deref().unwrap_or("/")
                    ),
                    HandshakeFacts {
                        path,
                        headers: Some(sent_headers(upstream.headers())),
                        status: None,
                    },
                )
            });
        let handshake = tokio::time::timeout(
            self.init_timeout(),
            tokio_tungstenite::client_async_with_config(
                upstream,
                ReadAhead::new(stream),
                Some(config),
            ),
        );
        let handshake = tokio::select! {
            done = handshake => done,
            _ = cancel.cancelled() => return Err(self.interrupted()),
            _ = client.gone() => return Err(Ended::new(EndReason::ClientDropped)),
        };
        let bad_gateway = |reason: EndReason, detail: String| {
            let answer = Answer::error(StatusCode::BAD_GATEWAY, self.request_id, detail, &reason);
            Ended::new(reason).answer(answer)
        };
        let answered = |status: u16| {
            self.timeline
                .handshake(Direction::ToClient, Party::Function, || {
                    (
                        format!("the instance answered {status}"),
                        HandshakeFacts {
                            status: Some(status),
                            ..HandshakeFacts::default()
                        },
                    )
                })
        };
        match handshake {
            Ok(Ok(done)) => {
                answered(done.1.status().as_u16());
                Ok(done)
            }
            Ok(Err(WsError::Http(resp))) => {
                answered(resp.status().as_u16());
                let reason = EndReason::UpgradeRejected {
                    http_status: resp.status().as_u16(),
                };
                Err(Ended::new(reason).answer(Answer {
                    response: passthrough(*resp),
                    error: None,
                }))
            }
            Ok(Err(err)) => {
                let detail = format!("the function instance failed the WebSocket handshake: {err}");
                Err(bad_gateway(
                    EndReason::InstanceExited {
                        detail: detail.clone(),
                    },
                    detail,
                ))
            }
            Err(_) => {
                let detail = format!(
                    "the function instance accepted a TCP connection on port 9000 but did not \
                     answer the WebSocket handshake within the init timeout of {}",
                    scfsim_config::format_duration(self.function.init_timeout)
                );
                Err(bad_gateway(
                    EndReason::NotListening {
                        detail: detail.clone(),
                    },
                    detail,
                ))
            }
        }
    }

    fn register(
        &self,
        id: Uuid,
        pid: Option<u32>,
        cancel: &CancellationToken,
        debug: Option<crate::debug::DebugView>,
    ) -> (Registration, SteeringEnds) {
        let traffic = Arc::new(Traffic::with_timeline(self.timeline.clone()));
        let (steering, ends) = Steering::new(self.function.limits.max_message_bytes);
        self.gateway.live.insert(LiveInstance {
            id,
            function: self.function.name.clone(),
            request_id: self.request_id,
            pid,
            started_at: self.record.started_at,
            traffic: traffic.clone(),
            cancel: cancel.clone(),
            steering: steering.clone(),
            debug,
        });
        let registration = Registration {
            live: self.gateway.live.clone(),
            id,
            traffic,
            steering,
        };
        (registration, ends)
    }

    /// Frames one to one until the connection ends; the client is upgraded here.
    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        client: ClientConn,
        function_ws: WebSocketStream<ReadAhead<tokio::net::TcpStream>>,
        config: WebSocketConfig,
        traffic: &Traffic,
        cancel: &CancellationToken,
        steering: SteeringEnds,
        running: &Running,
    ) -> EndReason {
        let client_ws = Box::pin(client.into_websocket(config)).await;
        let (mut client_tx, mut client_rx) = client_ws.split();
        let (mut function_tx, mut function_rx) = function_ws.split();
        // Debug mode: a paused function holds no timer of its own, so these do not fire.
        let (idle, execution) = match self.debug {
            Some(_) => (crate::debug::SUSPENDED, crate::debug::SUSPENDED),
            None => (self.function.idle_timeout, self.function.execution_timeout),
        };
        let time_scale = self.gateway.config.time_scale;
        let timers = ConnectionLimits {
            idle,
            execution,
            time_scale,
            // Rates are per platform second: N times as many per real second.
            request: scaled_rates(self.function.limits, time_scale),
            memory_mb: self.function.memory_mb,
        };
        let reason = proxy::run(
            (&mut client_tx, &mut client_rx),
            (&mut function_tx, &mut function_rx),
            timers,
            traffic,
            &self.gateway.shutdown,
            cancel,
            steering,
            &|| running.instance.memory_exceeded(),
            self.faults.as_ref(),
        )
        .await;
        if self.faults.as_ref().is_some_and(FaultPlan::reset_client) {
            // The client's socket closes when its halves are dropped, right after this.
            if let Ok(client_ws) = client_tx.reunite(client_rx) {
                client_ws.get_ref().get_ref().reset_on_close();
            }
        }
        reason
    }

    /// The one way out: answer the client if it was not upgraded, stop the instance, record.
    async fn teardown(mut self: Box<Self>, ended: Ended) {
        let Ended {
            reason,
            answer,
            instance,
            failed_start,
            client,
        } = ended;
        if let Some(answer) = answer {
            self.record.http_status = Some(answer.response.status().as_u16());
            let status = answer.response.status();
            self.timeline
                .handshake(Direction::ToClient, Party::Gateway, || {
                    (
                        format!(
                            "scfsim answered the client {status} instead of upgrading{}",
                            answer
                                .error
                                .as_deref()
                                .map_or(String::new(), |e| format!(": {e}"))
                        ),
                        HandshakeFacts {
                            status: Some(status.as_u16()),
                            ..HandshakeFacts::default()
                        },
                    )
                });
            self.record.error = answer.error;
            if let Some(mut client) = client {
                let _ = client.respond(answer.response).await;
            }
        }
        let (remains, traffic) = match instance {
            Some(running) => {
                let (remains, traffic) = running.stop(self.gateway.stop_grace).await;
                (Some(remains), traffic)
            }
            None => (failed_start, None),
        };
        if let Some(traffic) = traffic {
            let counts = traffic.snapshot();
            self.record.messages_in = counts.messages_in;
            self.record.messages_out = counts.messages_out;
            self.record.bytes_in = counts.bytes_in;
            self.record.bytes_out = counts.bytes_out;
            self.record.throttled_messages = counts.throttled_messages;
        }
        if let Some(remains) = remains {
            if remains.pid.is_some() {
                self.record.instance_pid = remains.pid;
            }
            if let Some(exit) = remains.exit {
                self.record.instance_exit_code = exit.code;
                self.record.instance_signal = exit.signal;
            }
            self.save_logs(&remains.output);
        }
        if let Some(plan) = &self.faults {
            self.record.injected_faults = plan.injected();
        }
        self.record.finish(&reason, OffsetDateTime::now_utc());
        if self.faults.as_ref().is_some_and(FaultPlan::failed_start) {
            // An injected 434 borrows the reason of a running instance's memory kill, whose
            // close frame this connection, never upgraded, did not get.
            self.record.close_code = None;
            self.record.close_reason = None;
        }
        let time_scale = self.gateway.config.time_scale;
        if time_scale != 1.0 {
            // duration_ms is real time; the platform's clock ran time_scale times faster.
            self.record.time_scale = Some(time_scale);
            self.record.platform_duration_ms = self
                .record
                .duration_ms
                .map(|ms| (ms as f64 * time_scale).round() as u64);
        }
        self.save_timeline();
        let record = &self.record;
        tracing::info!(
            status_code = record.status_code.map(|s| s.as_u16()),
            end_reason = record.end_reason.as_deref(),
            close_code = record.close_code,
            duration_ms = record.duration_ms,
            messages_in = record.messages_in,
            messages_out = record.messages_out,
            "invocation ended"
        );
        if let Err(err) = self.gateway.store.finish(self.record) {
            tracing::error!(error = %ErrorChain(&err), "could not write the invocation's record");
        }
    }

    /// Hands the timeline to the store (queryable there at once), then ends its live streams
    /// and unlists it: a reader finds it in one place or the other at every moment.
    fn save_timeline(&self) {
        let Some(capture) = self.timeline.capture() else {
            return;
        };
        let record = &self.record;
        self.timeline.phase(|| {
            format!(
                "recorded: status {} {} after {} ms",
                record.status_code.map_or(0, |s| s.as_u16()),
                record.end_reason.as_deref().unwrap_or("?"),
                record.duration_ms.unwrap_or(0)
            )
        });
        capture.end();
        if let Err(err) = self.gateway.store.save_frames(capture.timeline()) {
            tracing::error!(error = %ErrorChain(&err), "could not save the invocation's timeline");
        }
    }

    fn save_logs(&self, output: &CapturedOutput) {
        let lines: Vec<LogLine> = output
            .lines
            .iter()
            .map(|l| LogLine {
                at: l.at,
                stream: match l.stream {
                    scfsim_pool::OutputStream::Stdout => LogStream::Stdout,
                    scfsim_pool::OutputStream::Stderr => LogStream::Stderr,
                },
                line: l.line.clone(),
            })
            .collect();
        if let Err(err) = self
            .gateway
            .store
            .save_logs(self.request_id, &lines, output.dropped)
        {
            tracing::error!(error = %ErrorChain(&err), "could not save the instance's log");
        }
    }
}

/// `limits` with its rates per real second when platform time runs `time_scale` times faster.
fn scaled_rates(limits: scfsim_config::Limits, time_scale: f64) -> scfsim_config::Limits {
    if time_scale <= 1.0 {
        return limits;
    }
    let times = |v: f64| (v * time_scale).round();
    scfsim_config::Limits {
        max_bytes_per_second: times(limits.max_bytes_per_second as f64) as u64,
        max_messages_per_second: times(f64::from(limits.max_messages_per_second))
            .min(f64::from(u32::MAX)) as u32,
        ..limits
    }
}

/// What the backend needs to start an instance of `function` for request `request_id` (its
/// container's name, where it has one); no debugger attached.
pub(crate) fn instance_spec(
    function: &FunctionConfig,
    env: Vec<(String, String)>,
    init_timeout: std::time::Duration,
    request_id: Uuid,
) -> InstanceSpec {
    InstanceSpec {
        bootstrap: function.bootstrap.clone(),
        code_dir: function.code_dir.clone(),
        env,
        init_timeout,
        memory_mb: Some(function.memory_mb),
        debug: None,
        image: function.image.as_ref().map(|i| scfsim_pool::ImageSpec {
            image: i.image.clone(),
            command: i.command.clone(),
            args: i.args.clone(),
        }),
        function: function.name.clone(),
        request_id: request_id.to_string(),
        max_instances: function.max_instances,
        container_stock: function.container_stock,
    }
}

#[cfg(test)]
mod time_scale_tests {
    use super::scaled_rates;
    use scfsim_config::Limits;

    #[test]
    fn rates_are_per_platform_second() {
        let platform = Limits::default();
        let scaled = scaled_rates(platform, 100.0);
        assert_eq!(scaled.max_messages_per_second, 1000);
        assert_eq!(scaled.max_bytes_per_second, 100 * 128 * 1024);
        assert_eq!(
            scaled.max_message_bytes, platform.max_message_bytes,
            "a size, not a rate"
        );
        assert_eq!(scaled_rates(platform, 1.0), platform);
    }
}
