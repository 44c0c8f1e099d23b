//! Debug mode (`[[functions]] debug = true`, `scfsim serve --debug NAME`): each instance's
//! runtime waits for a debugger, which a person reaches at a host port of the instance's own.
//!
//! Inside the instance the debugger listens on `127.0.0.1:`[`INNER_PORT`] (its own network
//! namespace; without isolation, a free host port chosen per instance): Node.js through
//! `NODE_OPTIONS=--inspect-brk=…`, Python through the debug `/var/lang` tree (debugpy), anything
//! else through `SCFSIM_DEBUG_HOST`/`SCFSIM_DEBUG_PORT`. scfsim listens on `127.0.0.1:0` for
//! each instance and forwards every connection to that port, the way it reaches port 9000, so
//! the same works in every isolation.
//!
//! Lifecycle: the invocation opens a [`DebugSession`] before it starts the instance and holds
//! it until its teardown; dropping the session stops the forwarder and every forwarded
//! connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use scfsim_config::FunctionConfig;
use scfsim_pool::{Connector, DebugTap};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Where the debugger listens inside an instance that has a network namespace of its own.
pub(crate) const INNER_PORT: u16 = 9229;

/// What "suspended" means for the init, idle and execution timers of a debug-mode instance:
/// long enough that a person stepping through the function never meets them.
pub(crate) const SUSPENDED: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a forwarded connection waits for the debugger inside to listen (debugpy takes a
/// moment to start; Node.js listens before its first line).
const DEBUGGER_START: Duration = Duration::from_secs(30);

/// What the admin API shows of a debug-mode instance: where to attach.
#[derive(Debug, Clone, Serialize)]
pub struct DebugView {
    /// The host port forwarded to the instance's debugger.
    pub port: u16,
    pub host: IpAddr,
    /// `host:port`.
    pub address: String,
    /// Guessed from the bootstrap: `node`, `python` or `other`.
    pub runtime: &'static str,
    /// Ready to paste: Node.js, the DevTools URL (once the inspector answered) else
    /// `ws://host:port`; Python, `tcp://host:port` (the debug adapter protocol).
    pub url: String,
    /// A VS Code `launch.json` configuration that attaches to it.
    pub vscode: serde_json::Value,
    /// The init, idle and execution timers do not fire for this instance.
    pub timers_suspended: bool,
}

/// One debug-mode instance's forwarder.
pub(crate) struct DebugSession {
    pub view: DebugView,
    /// For the instance's spec: the launcher hands the forwarder its connector through it.
    pub tap: DebugTap,
    /// The port the debugger listens on inside the instance.
    pub inner_port: u16,
    _stop: DropGuard,
}

impl DebugSession {
    /// Binds the host port and starts forwarding; connections wait until the instance started.
    /// `on_url` gets the Node.js DevTools URL once the inspector answers.
    pub(crate) async fn open(
        function: &FunctionConfig,
        inner_port: u16,
        on_url: impl FnOnce(String) + Send + 'static,
    ) -> io::Result<DebugSession> {
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listener = TcpListener::bind(SocketAddr::new(host, 0)).await?;
        let port = listener.local_addr()?.port();
        let runtime = guess_runtime(&function.bootstrap);
        let (tap, connector) = DebugTap::new();
        let stop = CancellationToken::new();
        tokio::spawn(forward(
            listener,
            connector.clone(),
            inner_port,
            stop.clone(),
        ));
        if runtime == "node" {
            tokio::spawn(discover_devtools_url(
                connector,
                inner_port,
                port,
                stop.clone(),
                on_url,
            ));
        }
        let address = format!("{host}:{port}");
        let url = match runtime {
            "python" => format!("tcp://{address}"),
            _ => format!("ws://{address}"),
        };
        Ok(DebugSession {
            view: DebugView {
                port,
                host,
                address,
                runtime,
                url,
                vscode: vscode_configuration(function, runtime, host, port),
                timers_suspended: true,
            },
            tap,
            inner_port,
            _stop: stop.drop_guard(),
        })
    }

    /// What the instance's environment gets: where its debugger listens, and Node.js's option.
    pub(crate) fn env(&self, env: &mut Vec<(String, String)>) {
        let inspect = format!("--inspect-brk=127.0.0.1:{}", self.inner_port);
        let node_options = match env.iter().position(|(k, _)| k == "NODE_OPTIONS") {
            Some(i) => format!("{inspect} {}", env.remove(i).1),
            None => inspect,
        };
        env.push(("NODE_OPTIONS".into(), node_options));
        env.push(("SCFSIM_DEBUG_HOST".into(), "127.0.0.1".into()));
        env.push(("SCFSIM_DEBUG_PORT".into(), self.inner_port.to_string()));
    }
}

/// A free port of the host's loopback, for a debugger without a network namespace of its own.
pub(crate) fn free_host_port() -> io::Result<u16> {
    let socket = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(socket.local_addr()?.port())
}

/// `node`, `python` or `other`, from the bootstrap's text (platform bootstraps name their
/// interpreter: `/var/lang/node16/bin/node app.js`).
fn guess_runtime(bootstrap: &Path) -> &'static str {
    let mut head = Vec::new();
    if let Ok(file) = std::fs::File::open(bootstrap) {
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(file, 64 * 1024), &mut head);
    }
    let text = String::from_utf8_lossy(&head);
    if text.contains("node") {
        "node"
    } else if text.contains("python") {
        "python"
    } else {
        "other"
    }
}

/// A VS Code `launch.json` configuration attaching to `host:port`; the instance runs the code
/// from the same directory as the host, so local and remote roots are the same.
pub(crate) fn vscode_configuration(
    function: &FunctionConfig,
    runtime: &str,
    host: IpAddr,
    port: u16,
) -> serde_json::Value {
    let root = function.code_dir.display().to_string();
    let name = format!("scfsim: attach to {}", function.name);
    match runtime {
        "python" => serde_json::json!({
            "name": name,
            "type": "debugpy",
            "request": "attach",
            "connect": { "host": host.to_string(), "port": port },
            "pathMappings": [{ "localRoot": root, "remoteRoot": root }],
            "justMyCode": true,
        }),
        _ => serde_json::json!({
            "name": name,
            "type": "node",
            "request": "attach",
            "address": host.to_string(),
            "port": port,
            "localRoot": root,
            "remoteRoot": root,
            "continueOnAttach": false,
        }),
    }
}

async fn forward(
    listener: TcpListener,
    connector: watch::Receiver<Option<Connector>>,
    inner_port: u16,
    stop: CancellationToken,
) {
    // Dropped with the session's end: every forwarded connection ends with it.
    let mut pipes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while pipes.try_join_next().is_some() {}
        match accepted {
            Ok((outside, _)) => {
                pipes.spawn(pipe(outside, connector.clone(), inner_port));
            }
            Err(err) => tracing::debug!(%err, "debug port: accept failed"),
        }
    }
}

/// The instance's connector once it started; `None` if it never will.
async fn started(mut connector: watch::Receiver<Option<Connector>>) -> Option<Connector> {
    let ready = connector.wait_for(Option::is_some).await.ok()?;
    ready.clone()
}

/// A connection to the debugger inside, waiting (bounded) for it to listen.
async fn reach(connector: &Connector, port: u16, patience: Duration) -> io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(10);
    loop {
        match connector.connect(port).await {
            Err(err)
                if err.kind() == io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() + delay < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

async fn pipe(
    mut outside: TcpStream,
    connector: watch::Receiver<Option<Connector>>,
    inner_port: u16,
) {
    let Some(connector) = started(connector).await else {
        return;
    };
    match reach(&connector, inner_port, DEBUGGER_START).await {
        Ok(mut inside) => {
            let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
        }
        Err(err) => tracing::warn!(%err, "debug port: cannot reach the instance's debugger"),
    }
}

/// Asks the Node.js inspector for its target (`GET /json/list`, with our host port in `Host`
/// so that the URLs it answers point at the forwarder) until it answers or the session ends.
async fn discover_devtools_url(
    connector: watch::Receiver<Option<Connector>>,
    inner_port: u16,
    host_port: u16,
    stop: CancellationToken,
    on_url: impl FnOnce(String) + Send + 'static,
) {
    let ask = async {
        let connector = started(connector).await?;
        let mut delay = Duration::from_millis(20);
        loop {
            if let Ok(Some(url)) = tokio::time::timeout(
                Duration::from_secs(2),
                json_list(&connector, inner_port, host_port),
            )
            .await
            {
                return Some(url);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        url = ask => if let Some(url) = url { on_url(url) },
    }
}

async fn json_list(connector: &Connector, inner_port: u16, host_port: u16) -> Option<String> {
    let mut stream = connector.connect(inner_port).await.ok()?;
    let request = format!(
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{host_port}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The whole answer, or as much as arrived when the body parses (the inspector may keep the
    // connection open).
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        answer.extend_from_slice(&buf[..n]);
        if let Some(url) = devtools_url(&answer) {
            return Some(url);
        }
        if n == 0 || answer.len() > 1 << 20 {
            return None;
        }
    }
}

fn devtools_url(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    let targets: serde_json::Value = serde_json::from_str(body).ok()?;
    let url = targets.get(0)?.get("devtoolsFrontendUrl")?.as_str()?;
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::devtools_url;

    #[test]
    fn the_devtools_url_comes_from_the_inspectors_answer() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[ {\n  \"devtoolsFrontendUrl\": \"devtools://devtools/bundled/js_app.html?experiments=true&v8only=true&ws=127.0.0.1:4000/abc\",\n  \"id\": \"abc\" } ]";
        assert_eq!(
            devtools_url(answer).as_deref(),
            Some("devtools://devtools/bundled/js_app.html?experiments=true&v8only=true&ws=127.0.0.1:4000/abc")
        );
        assert_eq!(devtools_url(b"HTTP/1.1 200 OK\r\n\r\n[ {\"dev"), None);
    }
}
