//! A real headless Chromium driven over the DevTools protocol (a WebSocket of JSON commands),
//! for the dashboard's tests: open a page, evaluate JavaScript in it, wait for it to show
//! something, take and inspect a screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{eventually, stop_child, PATIENCE};

/// The first Chromium on `PATH`; the test fails without one.
pub fn find_chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find_map(|dir| {
            [
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
        })
        .expect(
            "no Chromium on PATH: install it with `apt-get install chromium` \
             (scripts/test-setup.sh installs everything the tests need)",
        )
}

/// Chromium writes "PORT\n/devtools/browser/<uuid>" to `DevToolsActivePort` in its profile
/// once it listens: polls (bounded) until both lines are there.
async fn poll_devtools_url(profile: &Path) -> String {
    let active_port = profile.join("DevToolsActivePort");
    eventually("Chromium to open its DevTools port", PATIENCE, || async {
        let text = std::fs::read_to_string(&active_port).unwrap_or_default();
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(port), Some(path)) if path.len() >= "/devtools/browser/".len() + 36 => {
                Ok(format!("ws://127.0.0.1:{port}{path}"))
            }
            _ => Err(format!(
                "DevToolsActivePort holds {text:?}; Chromium's log:\n{}",
                std::fs::read_to_string(profile.join("chromium.log")).unwrap_or_default()
            )),
        }
    })
    .await
}

/// A headless Chromium driven over the DevTools protocol (a WebSocket of JSON commands), with
/// one page attached. Killed when dropped.
pub struct Browser {
    child: Option<Child>,
    /// The DevTools connection, once Chromium has opened its port.
    cdp: Option<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    next_id: u64,
    session: Option<String>,
    /// Chromium's profile and log; removed after `drop` has stopped Chromium.
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1280,900",
                // Port 0: Chromium picks a free port and writes it to DevToolsActivePort.
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn chromium");
        // Owned by the Browser from here on, so that a failure below still stops Chromium.
        let mut browser = Browser {
            child: Some(child),
            cdp: None,
            next_id: 0,
            session: None,
            _profile: profile,
        };
        let profile = browser._profile.path().to_path_buf();
        let url = poll_devtools_url(&profile).await;
        let (cdp, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(&url))
            .await
            .expect("DevTools handshake within patience")
            .expect("connect to DevTools");
        browser.cdp = Some(cdp);
        browser
    }

    /// Sends one command (to the page once attached) and returns its result; events that
    /// arrive meanwhile are ignored.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// As [`Browser::call`], but a command DevTools refuses is an `Err` with its error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        let cdp = self.cdp.as_mut().expect("connected to DevTools");
        cdp.send(Message::text(command.to_string()))
            .await
            .expect("send DevTools command");
        loop {
            let msg = tokio::time::timeout(PATIENCE, cdp.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within patience"))
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Message::Text(text) = msg else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if reply["id"] == id {
                if !reply["error"].is_null() {
                    return Err(reply["error"].clone());
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    /// Opens `url` in a new page and attaches to it.
    pub async fn open(&mut self, url: &str) {
        let target = self
            .call("Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        self.session = Some(attached["sessionId"].as_str().expect("session").to_owned());
    }

    /// The value of a JavaScript expression in the page (JSON-serializable values only); a
    /// promise is awaited.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if !result["exceptionDetails"].is_null() {
            panic!("{expression} threw: {:#}", result["exceptionDetails"]);
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until `check` accepts its value (the page updates itself
    /// asynchronously); returns that value.
    pub async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let value = self.eval(expression).await;
                if check(&value) {
                    return value;
                }
                last = value;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match waited {
            Ok(value) => value,
            Err(_) => {
                let page = self.eval("document.body.innerText").await;
                panic!("the dashboard never showed {what}; last value {last}\npage:\n{page}");
            }
        }
    }

    /// Reloads the page, as a person pressing F5, and waits until the new document has loaded
    /// (while it replaces the old one, an evaluation may fail: those are retried).
    pub async fn reload(&mut self) {
        const DOCUMENT: &str = "[performance.timeOrigin, document.readyState]";
        let before = self.eval(DOCUMENT).await[0].clone();
        self.call("Page.reload", json!({})).await;
        let loaded = tokio::time::timeout(PATIENCE, async {
            loop {
                let now = self
                    .try_call(
                        "Runtime.evaluate",
                        json!({ "expression": DOCUMENT, "returnByValue": true }),
                    )
                    .await
                    .map(|r| r["result"]["value"].clone());
                if let Ok(now) = now {
                    if now[0] != before && now[1] == "complete" {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            loaded.is_ok(),
            "the page did not reload within {PATIENCE:?}"
        );
    }

    /// Makes the (opened) page's viewport `width` x `height` CSS pixels at one device pixel each, so
    /// that screenshots have a known size.
    pub async fn set_viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// A PNG of the page's viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("the screenshot is base64")
    }

    /// What a PNG shows, as the browser decodes it: `{width, height, colors, inked}`, where
    /// `colors` counts the distinct colours of a sample of pixels and `inked` is the share of
    /// those pixels that are not near-white. The page is left as it is (the image is drawn on
    /// a canvas that is never attached).
    pub async fn inspect_png(&mut self, png: &[u8]) -> Value {
        let expression = format!(
            r#"(async () => {{
                const img = new Image();
                img.src = "data:image/png;base64,{}";
                await img.decode();
                const c = document.createElement("canvas");
                c.width = img.naturalWidth;
                c.height = img.naturalHeight;
                const g = c.getContext("2d");
                g.drawImage(img, 0, 0);
                const d = g.getImageData(0, 0, c.width, c.height).data;
                const colors = new Set();
                let sampled = 0, inked = 0;
                for (let i = 0; i < d.length; i += 4 * 5) {{
                    sampled++;
                    colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                    if (d[i] + d[i + 1] + d[i + 2] < 3 * 235) inked++;
                }}
                return {{ width: c.width, height: c.height, colors: colors.size, inked: inked / sampled }};
            }})()"#,
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        self.eval(&expression).await
    }

    /// Saves `<name>.png` of the page into the directory `SCFSIM_DASHBOARD_SCREENSHOTS`
    /// names, if set: a way for a person to look at the dashboard, not an assertion.
    pub async fn screenshot_if_asked(&mut self, name: &str) {
        if std::env::var_os("SCFSIM_DASHBOARD_SCREENSHOTS").is_some() {
            let png = self.screenshot().await;
            save_if_asked(name, &png);
        }
    }
}

/// Writes `<name>.png` into the directory `SCFSIM_DASHBOARD_SCREENSHOTS` names, if set.
pub fn save_if_asked(name: &str, png: &[u8]) {
    if let Some(dir) = std::env::var_os("SCFSIM_DASHBOARD_SCREENSHOTS") {
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// The width and height a PNG's header gives (its IHDR chunk comes first, by the format).
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets Chromium take its helper processes down with it.
            stop_child(&mut child, PATIENCE);
        }
    }
}
