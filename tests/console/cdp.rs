//! A headless Chromium driven over the Chrome DevTools Protocol: just what
//! the console test needs (open a page, evaluate JavaScript, click, type,
//! take a screenshot), on a blocking tungstenite WebSocket to 127.0.0.1.
//!
//! Chromium comes from `$CHROMIUM` or `chromium` on the PATH (Debian's
//! package, which `.ci/run` installs); without it the test fails, it is not
//! skipped.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// How long Chromium may take to open its DevTools endpoint.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools command may take (a screenshot is the slowest).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Read timeout on the DevTools socket, so a wait can check its deadline.
const READ_POLL: Duration = Duration::from_millis(100);
/// How often `wait_for` evaluates its condition.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Lines of a child's output kept for a failure report.
const TAIL_LINES: usize = 50;
/// Console messages and exceptions kept (the oldest are dropped).
const PROBLEMS_MAX: usize = 200;

/// Flags for a quiet, self-contained headless browser: no first-run UI, no
/// background traffic to Google, no sandbox (CI runs as root).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-pings",
    "--mute-audio",
    "--hide-scrollbars",
    // The TLS test's gateway has a self-signed certificate.
    "--ignore-certificate-errors",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

pub struct Browser {
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// Page exceptions and console/log errors, as text.
    problems: VecDeque<String>,
    stderr_tail: Tail,
    /// Last, so it is dropped (and the browser killed) after the socket.
    _process: Process,
}

/// The browser's process group and profile directory; dropping it kills
/// the group (the browser and its renderers) and removes the profile.
struct Process {
    child: Child,
    profile: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the group
            // is the one this browser was started in, and the browser (its
            // leader) has not been reaped yet.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// The last lines a child process wrote to a pipe, which a thread of its
/// own reads to the end (so the child never blocks on a full pipe).
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    /// Follows `reader`; `each` sees every line as it comes.
    pub fn follow(
        reader: impl Read + Send + 'static,
        mut each: impl FnMut(&str) + Send + 'static,
    ) -> Tail {
        let tail = Tail::default();
        let lines = tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                each(&line);
                let mut lines = lines.0.lock().expect("tail lock");
                if lines.len() == TAIL_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        tail
    }

    /// The lines kept, joined.
    pub fn text(&self) -> String {
        let lines = self.0.lock().expect("tail lock");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// The Chromium executable: `$CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Chromium not found: install Debian's `chromium` package \
                 (.ci/run does) or set CHROMIUM=/path/to/chromium"
            )
        })
}

impl Browser {
    /// Starts Chromium with a fresh profile and a `width`×`height` window,
    /// and opens one blank page.
    pub fn launch(width: u32, height: u32) -> Browser {
        let exe = chromium();
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "uring-gateway-console-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&profile);
        let child = Command::new(&exe)
            .args(FLAGS)
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            // Its own process group, so Drop can end the renderers too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (install Debian's `chromium` package; .ci/run does)",
                    exe.display()
                )
            });

        let mut process = Process { child, profile };
        let (url_tx, url_rx) = mpsc::channel();
        let stderr = process.child.stderr.take().expect("piped stderr");
        let stderr_tail = Tail::follow(stderr, move |line| {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = url_tx.send(url.trim().to_string());
            }
        });
        let url = match url_rx.recv_timeout(LAUNCH_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                drop(process);
                panic!(
                    "{} opened no DevTools endpoint within {LAUNCH_TIMEOUT:?}; stderr:\n{}",
                    exe.display(),
                    stderr_tail.text()
                );
            }
        };
        let ws = devtools_socket(&url);
        let mut browser = Browser {
            ws,
            session: String::new(),
            next_id: 1,
            problems: VecDeque::new(),
            stderr_tail,
            _process: process,
        };
        let target = browser.call_on(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = browser.call_on(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        for domain in ["Page", "Runtime", "Log"] {
            browser.call(&format!("{domain}.enable"), json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends a command to the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call_on(Some(&session), method, params)
    }

    fn call_on(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "DevTools {method}: no answer within {CALL_TIMEOUT:?}"
            );
            let Some(msg) = self.read() else { continue };
            if msg["id"].as_u64() == Some(id) {
                if let Some(error) = msg.get("error") {
                    panic!("DevTools {method} failed: {error}");
                }
                return msg["result"].clone();
            }
            self.note_event(&msg);
        }
    }

    /// One message from DevTools, or `None` after the read poll.
    fn read(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(Message::Text(text)) => {
                Some(serde_json::from_str(&text).expect("DevTools sends JSON"))
            }
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("DevTools connection: {e}"),
        }
    }

    /// Keeps what went wrong in the page: exceptions, console errors and
    /// browser log entries (a CSP violation is one).
    fn note_event(&mut self, msg: &Value) {
        let params = &msg["params"];
        let problem = match msg["method"].as_str() {
            Some("Runtime.exceptionThrown") => Some(format!(
                "exception: {}",
                params["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(params["exceptionDetails"]["text"].as_str())
                    .unwrap_or("?")
            )),
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                Some(format!("console.error: {}", params["args"]))
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => Some(format!(
                "log ({}): {}",
                params["entry"]["source"].as_str().unwrap_or("?"),
                params["entry"]["text"].as_str().unwrap_or("?")
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            if self.problems.len() == PROBLEMS_MAX {
                self.problems.pop_front();
            }
            self.problems.push_back(problem);
        }
    }

    /// Exceptions and errors the page has logged since the last call.
    pub fn take_problems(&mut self) -> Vec<String> {
        // Pick up events that arrived while nobody was waiting.
        self.eval("0");
        self.problems.drain(..).collect()
    }

    /// Loads `url` and waits for the document to finish loading.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("the page to load", "document.readyState === 'complete'");
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(details) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {details}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy (for at most `WAIT_TIMEOUT`) and
    /// returns its value; on timeout, fails with what the page shows.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        const WAIT_TIMEOUT: Duration = Duration::from_secs(15);
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let shown = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "waited {WAIT_TIMEOUT:?} for {what} ({expression}); the page shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            thread::sleep(WAIT_POLL);
        }
    }

    /// Clicks the middle of the element `selector` with real mouse events.
    pub fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            sel = json!(selector)
        );
        let at = self.eval(&js);
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            panic!("no element {selector} to click");
        };
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Replaces the text of the input `selector` as a user would: click
    /// into it, select everything, type.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        self.eval(&format!(
            "document.querySelector({}).select()",
            json!(selector)
        ));
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- page problems ----\n{}\n---- chromium stderr (last lines) ----\n{}",
                self.problems.iter().cloned().collect::<Vec<_>>().join("\n"),
                self.stderr_tail.text()
            );
        }
    }
}

/// Opens the browser-level DevTools WebSocket at `url` (`ws://127.0.0.1:…`).
fn devtools_socket(url: &str) -> WebSocket<TcpStream> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("DevTools URL {url:?}"));
    assert!(
        host.starts_with("127.0.0.1:"),
        "DevTools must listen on 127.0.0.1, not {host}"
    );
    let stream =
        TcpStream::connect(host).unwrap_or_else(|e| panic!("connect DevTools {host}: {e}"));
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(CALL_TIMEOUT))
        .expect("write timeout");
    let (ws, _) = tungstenite::client::client(url, stream)
        .unwrap_or_else(|e| panic!("DevTools handshake {url}: {e}"));
    // From here on reads return every poll, so waits can check deadlines.
    ws.get_ref()
        .set_read_timeout(Some(READ_POLL))
        .expect("read timeout");
    ws
}
