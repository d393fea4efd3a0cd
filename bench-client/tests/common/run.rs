//! Running the real `bench-client` binary: bounded in time, output kept
//! and echoed, the last stdout line parsed as the run's JSON result.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A bench run that takes longer than this is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(90);

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or("");
        assert!(
            last.starts_with("{\"scenario\""),
            "no JSON line:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(last).expect("valid JSON line")
    }
}

pub fn bench(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench-client");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench-client {args:?} ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    print!("{stdout}");
    eprint!("{stderr}");
    Run {
        ok: status.success(),
        stdout,
        stderr,
    }
}

pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

/// A short pingpong (2 s, client on CPU 1) against `target` over `wire`
/// (`--tcp`, `--nats`, ...).
#[allow(dead_code)] // not every test file runs pingpong
pub fn pingpong(
    wire: &str,
    target: &str,
    pairs: u32,
    window: u32,
    payload: u32,
    warmup_s: u32,
) -> Run {
    let (pairs, window, payload, warmup) = (
        pairs.to_string(),
        window.to_string(),
        payload.to_string(),
        warmup_s.to_string(),
    );
    bench(&[
        "pingpong",
        wire,
        target,
        "--pairs",
        &pairs,
        "--window",
        &window,
        "--payload",
        &payload,
        "--duration-s",
        "2",
        "--warmup-s",
        &warmup,
        "--cpu",
        "1",
    ])
}

/// Arguments of a short `hold` or `soak` (`scenario`): 1 s heartbeats, held
/// 2 s with the RSS read after 1 s, client on CPU 1; `targets` and `extra`
/// go before and after those.
#[allow(dead_code)] // not every test file holds connections
pub fn short_hold<'a>(scenario: &'a str, targets: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![scenario];
    args.extend(targets);
    args.extend([
        "--heartbeat-s",
        "1",
        "--hold-s",
        "2",
        "--settle-s",
        "1",
        "--cpu",
        "1",
    ]);
    args.extend(extra);
    args
}
