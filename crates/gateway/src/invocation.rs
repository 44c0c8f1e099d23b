//! One invocation: a client's connection and its instance, from the upgrade request to the
//! record.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use scfsim_config::FunctionConfig;
use scfsim_pool::{InstanceSpec, StartFailure, StartFailureKind, StoppedInstance};
use scfsim_record::{EndReason, Invocation as Record, LogLine, LogStream};
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use crate::client::ClientConn;
use crate::handshake::{switching_protocols, upstream_request, GatewayHeaders};
use crate::limits::Permit;
use crate::live::{LiveInstance, Traffic};
use crate::proxy::{self, ConnectionLimits};
use crate::server::{json_error, json_response, Body};
use crate::Gateway;

pub(crate) struct Invocation {
    pub gateway: Arc<Gateway>,
    pub function: FunctionConfig,
    pub request: Request<()>,
    pub peer: SocketAddr,
    pub request_id: Uuid,
    /// The instance's quota slot, freed when this invocation is dropped (after its instance is
    /// stopped and reaped).
    pub _permit: Permit,
}

/// Per leg and connection; messages larger than this are read in several reads.
const READ_BUFFER: usize = 8 * 1024;

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

impl Invocation {
    pub(crate) async fn run(self, mut client: ClientConn) {
        let mut record = Record::begin(
            self.request_id,
            &self.function.name,
            OffsetDateTime::now_utc(),
        );
        record.client_addr = Some(self.peer.to_string());
        record.path = self.request.uri().path_and_query().map(|p| p.to_string());
        if let Err(err) = self.gateway.store.begin(&record) {
            tracing::error!(%err, "could not write the invocation's start record");
        }
        let cancel = self.gateway.shutdown.child_token();

        let spec = InstanceSpec {
            bootstrap: self.function.bootstrap.clone(),
            code_dir: self.function.code_dir.clone(),
            env: crate::env::instance_env(
                &self.function,
                &self.gateway.identity,
                &self.gateway.host_env,
            ),
            init_timeout: self.function.init_timeout,
            memory_mb: Some(self.function.memory_mb),
        };
        let started = tokio::select! {
            started = self.gateway.launcher.start(&spec) => started,
            _ = cancel.cancelled() => {
                let _ = client.respond(json_error(StatusCode::SERVICE_UNAVAILABLE, Some(self.request_id), "scfsim is shutting down")).await;
                return self.finish(record, EndReason::GatewayShutdown, None);
            }
            // The client gave up while its instance started: stop at once, do not hold a
            // quota slot for a connection nobody will use.
            _ = client.gone() => return self.finish(record, EndReason::ClientDropped, None),
        };
        let ready = match started {
            Ok(ready) => ready,
            Err(failure) => return self.start_failed(record, failure, &mut client).await,
        };
        let pid = ready.instance.pid();
        tracing::Span::current().record("pid", pid);
        record.instance_pid = Some(pid);
        record.startup_ms = Some(ready.startup.as_millis() as u64);
        tracing::debug!(startup_ms = record.startup_ms, "instance listening");

        let config = ws_config(&self.function);
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
        let handshake = tokio::time::timeout(
            self.function.init_timeout,
            tokio_tungstenite::client_async_with_config(upstream, ready.stream, Some(config)),
        );
        let handshake = tokio::select! {
            done = handshake => done,
            _ = cancel.cancelled() => {
                let _ = client.respond(json_error(StatusCode::SERVICE_UNAVAILABLE, Some(self.request_id), "scfsim is shutting down")).await;
                let stopped = ready.instance.stop(self.gateway.stop_grace).await;
                return self.finish(record, EndReason::GatewayShutdown, Some(stopped));
            }
            _ = client.gone() => {
                let stopped = ready.instance.stop(self.gateway.stop_grace).await;
                return self.finish(record, EndReason::ClientDropped, Some(stopped));
            }
        };
        let (function_ws, accepted) = match handshake {
            Ok(Ok(done)) => done,
            Ok(Err(WsError::Http(resp))) => {
                let status = resp.status().as_u16();
                let _ = client.respond(passthrough(*resp)).await;
                let stopped = ready.instance.stop(self.gateway.stop_grace).await;
                return self.finish(
                    record,
                    EndReason::UpgradeRejected {
                        http_status: status,
                    },
                    Some(stopped),
                );
            }
            Ok(Err(err)) => {
                let detail = format!("the function instance failed the WebSocket handshake: {err}");
                return self
                    .failed_before_upgrade(record, &mut client, ready.instance, detail, |detail| {
                        EndReason::InstanceExited { detail }
                    })
                    .await;
            }
            Err(_) => {
                let detail = format!(
                    "the function instance accepted a TCP connection on port 9000 but did not \
                     answer the WebSocket handshake within the init timeout of {}",
                    scfsim_config::format_duration(self.function.init_timeout)
                );
                return self
                    .failed_before_upgrade(record, &mut client, ready.instance, detail, |detail| {
                        EndReason::NotListening { detail }
                    })
                    .await;
            }
        };

        // Registered before the client's 101, so that a client that got its 101 always finds
        // its instance in the admin API.
        let traffic = Arc::new(Traffic::default());
        let live_id = Uuid::new_v4();
        self.gateway.live.insert(LiveInstance {
            id: live_id,
            function: self.function.name.clone(),
            request_id: self.request_id,
            pid,
            started_at: record.started_at,
            traffic: traffic.clone(),
            cancel: cancel.clone(),
        });
        let switching = switching_protocols(&self.request, &accepted, self.request_id);
        let instance = ready.instance;
        let answered = client.respond(switching.map(|()| Bytes::new())).await;
        let upgraded = match answered {
            Ok(()) if !cancel.is_cancelled() => Some(client),
            _ => None,
        };
        let Some(client) = upgraded else {
            let stopped = instance.stop(self.gateway.stop_grace).await;
            self.gateway.live.remove(live_id);
            let reason = if self.gateway.shutdown.is_cancelled() {
                EndReason::GatewayShutdown
            } else {
                EndReason::ClientDropped
            };
            return self.finish(record, reason, Some(stopped));
        };
        client.watch_for_dead_peer(self.function.idle_timeout);
        let client_ws = client.into_websocket(config).await;

        let (mut client_tx, mut client_rx) = client_ws.split();
        let (mut function_tx, mut function_rx) = function_ws.split();
        let timers = ConnectionLimits {
            idle: self.function.idle_timeout,
            execution: self.function.execution_timeout,
            request: self.function.limits,
            memory_mb: self.function.memory_mb,
        };
        let reason = proxy::run(
            (&mut client_tx, &mut client_rx),
            (&mut function_tx, &mut function_rx),
            timers,
            &traffic,
            &self.gateway.shutdown,
            &cancel,
            &|| instance.memory_exceeded(),
        )
        .await;
        drop((client_tx, client_rx, function_tx, function_rx));
        let stopped = instance.stop(self.gateway.stop_grace).await;
        self.gateway.live.remove(live_id);
        let counts = traffic.snapshot();
        record.messages_in = counts.messages_in;
        record.messages_out = counts.messages_out;
        record.bytes_in = counts.bytes_in;
        record.bytes_out = counts.bytes_out;
        record.throttled_messages = counts.throttled_messages;
        self.finish(record, reason, Some(stopped));
    }

    async fn failed_before_upgrade(
        &self,
        mut record: Record,
        client: &mut ClientConn,
        instance: scfsim_pool::Instance,
        detail: String,
        reason: impl FnOnce(String) -> EndReason,
    ) {
        let _ = client
            .respond(error_response(
                StatusCode::BAD_GATEWAY,
                self.request_id,
                &detail,
                None,
            ))
            .await;
        record.http_status = Some(StatusCode::BAD_GATEWAY.as_u16());
        record.error = Some(detail.clone());
        let stopped = instance.stop(self.gateway.stop_grace).await;
        self.finish(record, reason(detail), Some(stopped));
    }

    async fn start_failed(
        &self,
        mut record: Record,
        failure: StartFailure,
        client: &mut ClientConn,
    ) {
        let message = failure.message();
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
        let _ = client
            .respond(error_response(
                http,
                self.request_id,
                &message,
                Some(status.as_u16()),
            ))
            .await;
        record.http_status = Some(http.as_u16());
        record.error = Some(message);
        record.instance_pid = failure.pid;
        if let Some(exit) = failure.exit {
            record.instance_exit_code = exit.code;
            record.instance_signal = exit.signal;
        }
        self.save_logs(&failure.output);
        self.finish(record, reason, None);
    }

    fn save_logs(&self, output: &scfsim_pool::CapturedOutput) {
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
            tracing::error!(%err, "could not save the instance's log");
        }
    }

    fn finish(&self, mut record: Record, reason: EndReason, stopped: Option<StoppedInstance>) {
        if let Some(stopped) = stopped {
            record.instance_pid = Some(stopped.pid);
            record.instance_exit_code = stopped.exit.code;
            record.instance_signal = stopped.exit.signal;
            self.save_logs(&stopped.output);
        }
        record.finish(&reason, OffsetDateTime::now_utc());
        tracing::info!(
            status_code = record.status_code.map(|s| s.as_u16()),
            end_reason = record.end_reason.as_deref(),
            close_code = record.close_code,
            duration_ms = record.duration_ms,
            messages_in = record.messages_in,
            messages_out = record.messages_out,
            "invocation ended"
        );
        if let Err(err) = self.gateway.store.finish(record) {
            tracing::error!(%err, "could not write the invocation's record");
        }
    }
}

/// An HTTP error for a failed start: the platform's status code and what to fix.
pub(crate) fn error_response(
    http: StatusCode,
    request_id: Uuid,
    message: &str,
    status_code: Option<u16>,
) -> Response<Body> {
    json_response(
        http,
        serde_json::json!({
            "error": message,
            "status_code": status_code,
            "request_id": request_id,
        }),
    )
}

/// The instance refused the upgrade: the client gets its answer as it is.
fn passthrough(resp: Response<Option<Vec<u8>>>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.remove(http::header::CONNECTION);
    Response::from_parts(parts, Bytes::from(body.unwrap_or_default()))
}
