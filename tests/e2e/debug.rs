//! Debug mode with real runtimes and real debugger clients: the Node.js inspector (the Chrome
//! DevTools protocol over its WebSocket) and debugpy (the debug adapter protocol over TCP). In
//! both, a breakpoint in the function's message handler stops the client's message; the test
//! holds it there past every one of the function's timers (init, idle and execution set to a
//! second or two), resumes, and gets the echo; the invocation is recorded as a success.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scfsim_e2e::{repo_root, require, Function, Scfsim, PATIENCE};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Longer than every timer of the functions below: a breakpoint held this long would have
/// been a 446, 455 or 433 without debug mode.
const HELD: Duration = Duration::from_secs(3);

/// Timers short enough that holding a breakpoint for [`HELD`] passes them all.
fn short_timers(f: Function) -> Function {
    f.set("debug", "true")
        .set("init_timeout", "\"1s\"")
        .set("idle_timeout", "\"1s\"")
        .set("execution_timeout", "\"2s\"")
}

/// The debug view of the function's live instance, once it is listed.
async fn debug_view(scfsim: &Scfsim) -> Value {
    scfsim
        .eventually("the debug-mode instance to be listed", || async {
            let live = scfsim.get("/api/instances").await;
            match live.get(0).map(|i| i["debug"].clone()) {
                Some(debug) if debug.is_object() => Ok(debug),
                _ => Err(format!("not yet: {live}")),
            }
        })
        .await
}

/// A Chrome DevTools protocol client over the inspector's WebSocket.
struct Inspector {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Inspector {
    async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the inspector answers within patience")
                .expect("the inspector's connection is open")
                .expect("a WebSocket message");
            if let Message::Text(text) = msg {
                return serde_json::from_str(&text).expect("CDP messages are JSON");
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to the inspector");
        loop {
            let msg = self.read().await;
            if msg["id"] == id {
                assert!(msg.get("error").is_none(), "{method}: {msg}");
                return msg["result"].clone();
            }
            self.events.push_back(msg);
        }
    }

    async fn event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i).expect("found").clone();
        }
        loop {
            let msg = self.read().await;
            if msg["method"] == method {
                return msg;
            }
        }
    }
}

/// Attaches to the Node.js inspector behind `port`, sets a breakpoint on the echo function's
/// message handler, and lets the program run past its break on start.
async fn attach_node(port: u64) -> Inspector {
    let list = scfsim_client::get(&format!("http://127.0.0.1:{port}/json/list"))
        .await
        .expect("the inspector answers /json/list through scfsim's port");
    let targets: Value = serde_json::from_slice(&list).expect("JSON");
    let url = targets[0]["webSocketDebuggerUrl"]
        .as_str()
        .expect("a target with a WebSocket URL")
        .to_string();
    assert!(
        url.starts_with(&format!("ws://127.0.0.1:{port}/")),
        "the URL points at scfsim's port: {url}"
    );
    let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(&url))
        .await
        .expect("inspector handshake within patience")
        .expect("inspector handshake");
    let mut inspector = Inspector {
        ws,
        next_id: 0,
        events: VecDeque::new(),
    };
    inspector.call("Runtime.enable", json!({})).await;
    inspector.call("Debugger.enable", json!({})).await;
    // examples/node-echo/app.js line 17 (0-based 16): the message handler's first line.
    let bp = inspector
        .call(
            "Debugger.setBreakpointByUrl",
            json!({ "urlRegex": "node-echo/app\\.js$", "lineNumber": 16 }),
        )
        .await;
    assert!(bp["breakpointId"].is_string(), "{bp}");
    inspector
        .call("Runtime.runIfWaitingForDebugger", json!({}))
        .await;
    // --inspect-brk stops before the first line.
    let paused = inspector.event("Debugger.paused").await;
    assert_eq!(paused["params"]["reason"], "Break on start", "{paused}");
    inspector.call("Debugger.resume", json!({})).await;
    inspector
}

#[tokio::test]
async fn a_node_breakpoint_holds_the_message_past_every_timer_and_the_echo_follows() {
    require("Node.js", "node", &["--version"], "apt-get install nodejs");
    let dir = repo_root().join("examples/node-echo");
    require(
        "the node-echo example's dependencies",
        "node",
        &[
            "-e",
            "require.resolve('ws', {paths: [process.argv[1]]})",
            &dir.display().to_string(),
        ],
        "npm ci --prefix examples/node-echo",
    );
    let scfsim = Scfsim::start(vec![short_timers(Function::code_dir("node", dir))]).await;
    // The upgrade completes only once the debugger let the program run: both at once.
    let (mut client, (mut inspector, view)) = tokio::join!(scfsim.connect("/node"), async {
        let view = debug_view(&scfsim).await;
        let port = view["port"].as_u64().expect("a port");
        (attach_node(port).await, view)
    });
    assert_eq!(view["runtime"], "node", "{view}");
    assert_eq!(view["vscode"]["type"], "node", "{view}");
    assert_eq!(view["timers_suspended"], true, "{view}");

    client.send_text("hello debugger").await;
    let paused = inspector.event("Debugger.paused").await;
    let hit = &paused["params"]["hitBreakpoints"];
    assert!(
        hit.as_array().is_some_and(|h| !h.is_empty()),
        "stopped at our breakpoint: {paused}"
    );
    tokio::time::sleep(HELD).await;
    // Still live: no timer ended it while the debugger held it.
    let live = scfsim.get("/api/instances").await;
    assert_eq!(live.as_array().map(Vec::len), Some(1), "{live}");
    let url = live[0]["debug"]["url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("devtools://"),
        "the DevTools URL is shown: {url}"
    );
    inspector.call("Debugger.resume", json!({})).await;
    client.expect_text("hello debugger").await;
    client.close(1000, "done").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["end_reason"], "client_closed", "{record:#}");
}

/// A debug adapter protocol client over TCP.
struct Dap {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    seq: u64,
    pending: VecDeque<Value>,
}

impl Dap {
    async fn send(&mut self, command: &str, arguments: Value) -> u64 {
        self.seq += 1;
        let msg = json!({ "seq": self.seq, "type": "request", "command": command, "arguments": arguments })
            .to_string();
        let framed = format!("Content-Length: {}\r\n\r\n{msg}", msg.len());
        self.writer
            .write_all(framed.as_bytes())
            .await
            .expect("write to debugpy");
        self.seq
    }

    async fn read(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, async {
            let mut length = None;
            loop {
                let mut line = String::new();
                let n = self.reader.read_line(&mut line).await.expect("read header");
                assert!(n > 0, "debugpy closed the connection");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    length = Some(v.parse::<usize>().expect("a length"));
                }
            }
            let mut body = vec![0; length.expect("Content-Length")];
            self.reader.read_exact(&mut body).await.expect("read body");
            serde_json::from_slice::<Value>(&body).expect("DAP messages are JSON")
        })
        .await
        .expect("debugpy says something within patience")
    }

    /// The next message that `wanted` accepts; others are kept for later.
    async fn expect(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i).expect("found");
        }
        for _ in 0..1000 {
            let msg = self.read().await;
            if wanted(&msg) {
                return msg;
            }
            self.pending.push_back(msg);
        }
        panic!("no {what} among 1000 messages: {:?}", self.pending);
    }

    async fn response(&mut self, seq: u64) -> Value {
        let msg = self
            .expect("response", |m| {
                m["type"] == "response" && m["request_seq"] == seq
            })
            .await;
        assert_eq!(msg["success"], true, "{msg}");
        msg
    }

    async fn event(&mut self, name: &str) -> Value {
        self.expect(name, |m| m["type"] == "event" && m["event"] == name)
            .await
    }
}

/// Attaches to debugpy behind `port` and sets a breakpoint on the echo's message handler; the
/// program runs once the configuration is done.
async fn attach_python(port: u64, app: &str) -> Dap {
    let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(("127.0.0.1", port as u16)))
        .await
        .expect("connect within patience")
        .expect("connect to scfsim's debug port");
    let (read, writer) = stream.into_split();
    let mut dap = Dap {
        reader: BufReader::new(read),
        writer,
        seq: 0,
        pending: VecDeque::new(),
    };
    let init = dap
        .send(
            "initialize",
            json!({ "clientID": "scfsim-e2e", "adapterID": "debugpy", "pathFormat": "path",
                    "linesStartAt1": true, "columnsStartAt1": true }),
        )
        .await;
    dap.response(init).await;
    let attach = dap.send("attach", json!({ "justMyCode": false })).await;
    dap.event("initialized").await;
    // examples/python-echo/app.py line 25: the message loop's first line.
    let bps = dap
        .send(
            "setBreakpoints",
            json!({ "source": { "path": app }, "breakpoints": [{ "line": 25 }] }),
        )
        .await;
    dap.response(bps).await;
    let done = dap.send("configurationDone", json!({})).await;
    dap.response(done).await;
    dap.response(attach).await;
    dap
}

#[tokio::test]
async fn a_python_breakpoint_holds_the_message_past_every_timer_and_the_echo_follows() {
    require(
        "debugpy",
        "python3",
        &["-c", "import debugpy"],
        "python3 -m pip install debugpy",
    );
    require(
        "websockets",
        "python3",
        &["-c", "import websockets"],
        "python3 -m pip install -r examples/python-echo/requirements.txt",
    );
    let dir = repo_root().join("examples/python-echo");
    let app = dir.join("app.py").display().to_string();
    let scfsim = Scfsim::start(vec![short_timers(Function::code_dir("py", dir))]).await;
    let (mut client, (mut dap, view)) = tokio::join!(scfsim.connect("/py"), async {
        let view = debug_view(&scfsim).await;
        let port = view["port"].as_u64().expect("a port");
        (attach_python(port, &app).await, view)
    });
    assert_eq!(view["runtime"], "python", "{view}");
    assert_eq!(view["vscode"]["type"], "debugpy", "{view}");

    client.send_text("hello debugpy").await;
    let stopped = dap.event("stopped").await;
    assert_eq!(stopped["body"]["reason"], "breakpoint", "{stopped}");
    let thread = stopped["body"]["threadId"].clone();
    tokio::time::sleep(HELD).await;
    let live = scfsim.get("/api/instances").await;
    assert_eq!(live.as_array().map(Vec::len), Some(1), "{live}");
    let cont = dap.send("continue", json!({ "threadId": thread })).await;
    dap.response(cont).await;
    client.expect_text("hello debugpy").await;
    client.close(1000, "done").await;
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 200, "{record:#}");
    assert_eq!(record["end_reason"], "client_closed", "{record:#}");
}

#[tokio::test]
async fn two_connections_get_two_debug_ports_and_debug_config_prints_a_launch_json() {
    require("Node.js", "node", &["--version"], "apt-get install nodejs");
    let dir = repo_root().join("examples/node-echo");
    let scfsim = Scfsim::start(vec![short_timers(Function::code_dir("node", dir))]).await;
    // Two upgrade requests whose instances wait for their debuggers.
    let url = scfsim.url("/node");
    let pending: Vec<_> = (0..2)
        .map(|_| tokio::spawn(tokio_tungstenite::connect_async(url.clone())))
        .collect();
    let ports = scfsim
        .eventually("two debug-mode instances", || async {
            let live = scfsim.get("/api/instances").await;
            let ports: Vec<u64> = live
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["debug"]["port"].as_u64())
                .collect();
            match ports.len() {
                2 => Ok(ports),
                _ => Err(format!("not yet: {live}")),
            }
        })
        .await;
    assert_ne!(ports[0], ports[1]);
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(scfsim_e2e::scfsim_bin())
            .args(["debug-config", "node", "--admin", &scfsim.admin])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("debug-config within patience")
    .expect("run scfsim debug-config");
    assert!(out.status.success(), "{}", scfsim_e2e::output_text(&out));
    let launch: Value = serde_json::from_slice(&out.stdout).expect("launch.json is JSON");
    let config = &launch["configurations"][0];
    assert_eq!(config["request"], "attach", "{launch:#}");
    assert!(
        ports.contains(&config["port"].as_u64().unwrap()),
        "{launch:#}"
    );
    for task in pending {
        task.abort();
    }
}
