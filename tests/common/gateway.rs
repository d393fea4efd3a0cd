//! Runs the `gateway` binary as a child process for one test.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// How long the gateway may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How many stderr lines are kept to show when a test fails.
const STDERR_TAIL_LINES: usize = 200;

/// Poll interval while waiting for the child to exit.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Open files wanted by the test process: a thousand client sockets plus a
/// few gateways, with room to spare.
const OPEN_FILES_WANTED: libc::rlim_t = 65_536;

/// Config every test starts from; a test's extra TOML overrides single keys.
/// One shared ephemeral port per listener keeps parallel tests apart.
const BASE_CONFIG: &[(&str, &str, &str)] = &[
    ("listen", "tcp", r#"["127.0.0.1:0"]"#),
    ("listen", "ws", r#"["127.0.0.1:0"]"#),
    ("runtime", "shards", "2"),
    ("runtime", "pin", "false"),
    ("log", "level", r#""info""#),
];

static CONFIG_COUNTER: AtomicUsize = AtomicUsize::new(0);
static RAISE_FD_LIMIT: Once = Once::new();

/// A running gateway. Dropping it kills the process with SIGKILL.
pub struct Gateway {
    child: Child,
    /// Resolved TCP listen addresses, in the order of the ready line.
    pub tcp: Vec<SocketAddr>,
    /// Resolved WebSocket listen addresses.
    pub ws: Vec<SocketAddr>,
    /// Resolved TLS and WSS listen addresses (empty unless configured).
    pub tls: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    /// Shard count from the ready line.
    pub shards: usize,
    config: String,
    config_path: PathBuf,
    /// The embedded store's directory when the harness chose it.
    data_dir: Option<PathBuf>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stdout_extra: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
}

impl Gateway {
    /// Starts a gateway with the base config overridden by `extra`, a TOML
    /// fragment such as `"[runtime]\nshards = 3"`, and waits until it is ready.
    pub fn start(extra: &str) -> Gateway {
        Gateway::start_with_env(extra, &[])
    }

    /// Like `start`, with changes to the child's environment: `Some` sets a
    /// variable, `None` removes it (for example `GATEWAY_MYSQL_URL`, which
    /// overrides the config file's store).
    pub fn start_with_env(extra: &str, env: &[(&str, Option<&str>)]) -> Gateway {
        raise_fd_limit();
        // Each gateway gets its own embedded store, removed when it is dropped,
        // unless the test names one (to restart a gateway on the same data).
        let data_dir = std::env::temp_dir().join(format!(
            "uring-gateway-test-data-{}-{}",
            std::process::id(),
            CONFIG_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let own_data_dir = !extra.contains("data_dir");
        let config = merge_config(extra, &data_dir);
        let config_path = std::env::temp_dir().join(format!(
            "uring-gateway-test-{}-{}.toml",
            std::process::id(),
            CONFIG_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&config_path, &config).expect("write gateway config");

        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway binary");

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::clone(&stderr_tail);
        thread::spawn(move || {
            // Draining stderr keeps the child from blocking on a full pipe.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut tail = tail.lock().expect("stderr tail lock");
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        let stdout_extra = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let extra_lines = Arc::clone(&stdout_extra);
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = ready_tx.send(first);
            }
            // Anything after the ready line breaks "exactly one line"; it
            // is kept so a test can check for it.
            for line in lines {
                let Ok(line) = line else { break };
                extra_lines.lock().expect("stdout lock").push(line);
            }
        });

        // From here on, Drop kills the child and prints its log if we panic.
        let mut gateway = Gateway {
            child,
            tcp: Vec::new(),
            ws: Vec::new(),
            tls: Vec::new(),
            wss: Vec::new(),
            shards: 0,
            config,
            config_path,
            data_dir: own_data_dir.then_some(data_dir),
            stderr_tail,
            stdout_extra,
            status: None,
        };
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("gateway printed no ready line within {READY_TIMEOUT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Give the process a moment to finish writing its last words.
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline && gateway.child.try_wait().ok().flatten().is_none()
                {
                    thread::sleep(EXIT_POLL);
                }
                panic!("gateway closed stdout before its ready line")
            }
        };
        gateway.parse_ready_line(&line);
        gateway
    }

    fn parse_ready_line(&mut self, line: &str) {
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("gateway"), "ready line: {line:?}");
        assert_eq!(words.next(), Some("ready"), "ready line: {line:?}");
        let mut shards = None;
        for word in words {
            let (key, value) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("ready line word {word:?} in {line:?}"));
            match key {
                "tcp" => self.tcp = parse_addrs(value, line),
                "ws" => self.ws = parse_addrs(value, line),
                "tls" => self.tls = parse_addrs(value, line),
                "wss" => self.wss = parse_addrs(value, line),
                "shards" => {
                    shards = Some(
                        value
                            .parse()
                            .unwrap_or_else(|_| panic!("shards in ready line {line:?}")),
                    )
                }
                _ => panic!("unknown key {key:?} in ready line {line:?}"),
            }
        }
        self.shards = shards.unwrap_or_else(|| panic!("no shards= in ready line {line:?}"));
        assert!(!self.tcp.is_empty(), "no tcp= in ready line {line:?}");
        assert!(!self.ws.is_empty(), "no ws= in ready line {line:?}");
        assert!(self.shards > 0, "shards=0 in ready line {line:?}");
    }

    /// The first TCP listen address.
    /// The gateway's resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the gateway's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp[0]
    }

    /// The first WebSocket listen address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws[0]
    }

    /// Sends a signal such as `libc::SIGTERM` to the gateway.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the gateway to exit and returns its status; panics after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on gateway") {
                self.status = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {timeout:?}"
            );
            thread::sleep(EXIT_POLL);
        }
    }

    /// Lines the gateway printed to stdout after its ready line.
    pub fn extra_stdout(&self) -> Vec<String> {
        self.stdout_extra.lock().expect("stdout lock").clone()
    }

    /// The last lines of the gateway's stderr.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        if thread::panicking() {
            // Give the stderr thread a moment to read what the pipe still holds.
            thread::sleep(Duration::from_millis(50));
            eprintln!(
                "---- gateway config ----\n{}\n---- gateway stderr (last {} lines) ----\n{}\n---- gateway exit: {:?} ----",
                self.config,
                STDERR_TAIL_LINES,
                self.stderr_tail(),
                self.status
            );
        }
        let _ = fs::remove_file(&self.config_path);
        if let Some(dir) = &self.data_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn parse_addrs(value: &str, line: &str) -> Vec<SocketAddr> {
    value
        .split(',')
        .map(|addr| {
            addr.parse()
                .unwrap_or_else(|_| panic!("address {addr:?} in ready line {line:?}"))
        })
        .collect()
}

/// Overrides the base config key by key with a small TOML fragment of
/// `[section]` headers and `key = value` lines. TOML forbids repeating a
/// table, so the two cannot simply be concatenated.
fn merge_config(extra: &str, data_dir: &std::path::Path) -> String {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut set = |section: &str, key: &str, value: &str| {
        let index = match sections.iter().position(|(name, _)| name == section) {
            Some(index) => index,
            None => {
                sections.push((section.to_string(), Vec::new()));
                sections.len() - 1
            }
        };
        let entries = &mut sections[index].1;
        match entries.iter_mut().find(|(name, _)| name == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => entries.push((key.to_string(), value.to_string())),
        }
    };
    for (section, key, value) in BASE_CONFIG {
        set(section, key, value);
    }
    set(
        "store",
        "data_dir",
        &format!("{:?}", data_dir.display().to_string()),
    );
    let mut section = String::new();
    for line in extra.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("config line {line:?} is not key = value"));
        assert!(!section.is_empty(), "config key {key:?} outside a section");
        set(&section, key.trim(), value.trim());
    }
    let mut out = String::new();
    for (name, entries) in &sections {
        out.push_str(&format!("[{name}]\n"));
        for (key, value) in entries {
            out.push_str(&format!("{key} = {value}\n"));
        }
        out.push('\n');
    }
    out
}

/// Raises the soft open-files limit so a thousand clients fit; the gateway
/// child inherits it.
fn raise_fd_limit() {
    RAISE_FD_LIMIT.call_once(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            let wanted = OPEN_FILES_WANTED.min(limit.rlim_max);
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    });
}
