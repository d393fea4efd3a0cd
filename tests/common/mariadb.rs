//! MariaDB from the outside: the `mysql` command line client (to check what
//! the gateway wrote, independently of the gateway), a MariaDB server of the
//! test's own that can be killed and restarted (fault injection), and
//! temporary directories that remove themselves.
//!
//! Every command runs with a deadline; every server is on 127.0.0.1 and is
//! killed (SIGKILL) when its handle is dropped.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The shared MariaDB of this machine and of CI (user root, empty password,
/// database `test`).
pub const SHARED_PORT: u16 = 3306;

/// The store URL of the shared MariaDB.
pub const SHARED_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// Longest run of one `mysql` command.
const MYSQL_TIMEOUT: Duration = Duration::from_secs(20);

/// `mariadb-install-db` runs one at a time across the tests of a binary.
static INSTALL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Tries of `mariadb-install-db` before a test gives up.
const INSTALL_ATTEMPTS: usize = 3;

/// Longest run of `mariadb-install-db`.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a started server may take to answer `select 1`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);

/// Poll interval while waiting for a child process.
const CHILD_POLL: Duration = Duration::from_millis(5);

/// Lines of the server's error log shown when a test fails.
const LOG_TAIL_LINES: usize = 40;

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "uring-gateway-{label}-{}-{}-{}",
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed),
            Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What a bounded command produced.
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end, at most `timeout` (then kills it and panics).
/// Output is drained by threads, so a large result cannot block the child.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(CHILD_POLL);
    };
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    Output {
        success: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `sql` with the `mysql` client against database `test` on
/// 127.0.0.1:`port` as root without a password, in batch mode without
/// column names (tab-separated rows). `Err` holds the client's stderr.
pub fn try_mysql(port: u16, sql: &str) -> Result<String, String> {
    let out = run_bounded(
        Command::new("mysql")
            .arg("--no-defaults")
            .arg("--protocol=tcp")
            .arg("-h127.0.0.1")
            .arg(format!("-P{port}"))
            .arg("-uroot")
            .arg("--connect-timeout=5")
            .arg("-N")
            .arg("-B")
            .arg("test")
            .arg("-e")
            .arg(sql),
        MYSQL_TIMEOUT,
    );
    if out.success {
        Ok(out.stdout)
    } else {
        Err(out.stderr)
    }
}

/// Like `try_mysql`, panicking on failure.
pub fn mysql(port: u16, sql: &str) -> String {
    try_mysql(port, sql)
        .unwrap_or_else(|e| panic!("mysql on 127.0.0.1:{port} failed for {sql:?}: {e}"))
}

/// The 32 uppercase hex digits MariaDB's `hex()` prints for an address.
pub fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// CRC-32 (IEEE, as MariaDB's `CRC32()`), to compare large blobs without
/// printing them.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// One row of `gateway_state` as the `mysql` client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    /// `hex(state)`.
    pub state_hex: String,
    pub updated_at_us: u64,
}

/// Asserts that `gateway_state` holds, for every `(address, state,
/// updated_at_us)`, exactly that state and time: an acknowledged write that
/// is missing or stale fails the test.
pub fn assert_state_rows<'a>(port: u16, expected: impl IntoIterator<Item = (Uuid, &'a [u8], u64)>) {
    let expected: Vec<(Uuid, &[u8], u64)> = expected.into_iter().collect();
    let addrs: Vec<Uuid> = expected.iter().map(|(a, _, _)| *a).collect();
    let rows = state_rows(port, &addrs);
    for (addr, blob, at) in expected {
        let row = rows.get(&addr).unwrap_or_else(|| {
            panic!("no gateway_state row for {addr}: an acknowledged write is lost")
        });
        assert_eq!(
            row.state_hex,
            hex_upper(blob),
            "gateway_state.state of {addr}"
        );
        assert_eq!(
            row.updated_at_us, at,
            "gateway_state.updated_at_us of {addr}"
        );
    }
}

/// Reads the `gateway_state` rows of `addresses`, keyed by address; the
/// address column is compared as 16 raw bytes (`unhex`).
pub fn state_rows(port: u16, addresses: &[Uuid]) -> std::collections::HashMap<Uuid, StateRow> {
    let list = addresses
        .iter()
        .map(|a| format!("unhex('{}')", hex_upper(a.as_bytes())))
        .collect::<Vec<_>>()
        .join(",");
    let out = mysql(
        port,
        &format!(
            "select hex(address), hex(state), updated_at_us from gateway_state where address in ({list})"
        ),
    );
    let mut rows = std::collections::HashMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "gateway_state row {line:?}");
        let addr = Uuid::parse_str(fields[0])
            .unwrap_or_else(|e| panic!("address {:?} from gateway_state: {e}", fields[0]));
        let updated_at_us = fields[2]
            .parse()
            .unwrap_or_else(|e| panic!("updated_at_us {:?} from gateway_state: {e}", fields[2]));
        let previous = rows.insert(
            addr,
            StateRow {
                state_hex: fields[1].to_string(),
                updated_at_us,
            },
        );
        assert!(previous.is_none(), "two gateway_state rows for {addr}");
    }
    rows
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
    listener.local_addr().expect("local addr").port()
}

/// Panics unless the shared MariaDB answers: tests that need it fail
/// rather than skip.
pub fn require_shared() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, SHARED_PORT));
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        panic!(
            "MariaDB is not reachable at {addr} ({e}); the MariaDB store tests need it \
             (user root, empty password, database `test`)"
        );
    }
    if let Err(e) = try_mysql(SHARED_PORT, "select 1") {
        panic!("MariaDB at {addr} refuses `select 1` in database `test` as root: {e}");
    }
}

/// A MariaDB server of the test's own, in a temporary data directory, on a
/// free port of 127.0.0.1. Killed with SIGKILL and its directory removed on
/// drop.
pub struct MariaDbServer {
    dir: TempDir,
    pub port: u16,
    /// Extra `mariadbd` options for every start, such as
    /// `--max-allowed-packet=1M`.
    pub server_args: Vec<String>,
    child: Option<Child>,
}

impl MariaDbServer {
    /// Creates the data directory (with its `test` database and a root user
    /// without a password) but does not start the server.
    pub fn install() -> MariaDbServer {
        let dir = TempDir::new("mariadb");
        let server = MariaDbServer {
            port: free_port(),
            dir,
            server_args: Vec::new(),
            child: None,
        };
        // Installs run one at a time and are retried: several bootstraps at
        // once on a small machine now and then fail for lack of resources,
        // which says nothing about the gateway.
        let _serial = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = None;
        for _ in 0..INSTALL_ATTEMPTS {
            let _ = std::fs::remove_dir_all(server.datadir());
            let mut command = Command::new("mariadb-install-db");
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", server.datadir().display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-name-resolve")
                .arg("--innodb-log-file-size=4M");
            if is_root() {
                command.arg("--user=root");
            }
            let out = run_bounded(&mut command, INSTALL_TIMEOUT);
            if out.success {
                last = None;
                break;
            }
            last = Some(out);
        }
        if let Some(out) = last {
            panic!(
                "mariadb-install-db failed {INSTALL_ATTEMPTS} times:\n{}\n{}",
                out.stdout, out.stderr
            );
        }
        server
    }

    /// `install`, then `start`, then checks that database `test` exists.
    pub fn install_and_start() -> MariaDbServer {
        let mut server = MariaDbServer::install();
        server.start();
        server.query("select 1");
        server
    }

    fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// The gateway's store URL for this server.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// Starts the server on its data directory and port and waits until it
    /// answers `select 1`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "MariaDB server already running");
        let mut command = Command::new("mariadbd");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", self.error_log().display()))
            .arg("--innodb-log-file-size=4M")
            .arg("--innodb-buffer-pool-size=16M")
            .arg("--skip-log-bin")
            .arg("--skip-name-resolve")
            .args(&self.server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            command.arg("--user=root");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn mariadbd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("try_wait on mariadbd")
            {
                self.child = None;
                panic!(
                    "mariadbd exited during start with {status}; error log:\n{}",
                    self.log_tail()
                );
            }
            if try_mysql(self.port, "select 1").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd on port {} not ready within {SERVER_READY_TIMEOUT:?}; error log:\n{}",
                self.port,
                self.log_tail()
            );
            thread::sleep(READY_POLL);
        }
    }

    /// Kills the server with SIGKILL, as a crash or a pulled plug would,
    /// and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the running server: SIGSTOP makes it hang (it
    /// keeps its connections but answers nothing), SIGCONT resumes it.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("MariaDB server not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs `sql` in database `test` of this server.
    pub fn query(&self, sql: &str) -> String {
        mysql(self.port, sql)
    }

    /// The last lines of the server's error log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.error_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "---- test MariaDB on port {} error log (tail) ----\n{}",
                self.port,
                self.log_tail()
            );
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
