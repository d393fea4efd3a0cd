//! `churn`: C loops at once, each connecting, registering a fresh random
//! address (HELLO, WELCOME) and closing, over and over for the duration.
//! Reports completed handshakes per second, the time from starting the
//! connect to WELCOME, and failures by reason. With `--tls` every connection
//! also runs a TLS handshake (a full one unless `--resume`) before HELLO,
//! and closes with close_notify.
//!
//! Every attempt is bounded by the setup timeout, and no loop starts one
//! after the end, so the run stops by itself. The client closes first, so
//! its side of every connection ends in TIME_WAIT: connections are spread
//! over the source addresses 127.0.0.1..=127.0.0.N as everywhere else, a
//! connect refused for want of a local port (EADDRNOTAVAIL) is reported on
//! its own row, and the machine's TIME_WAIT count is read from
//! /proc/net/sockstat before and after.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::{ChurnArgs, Shared};
use crate::conn::{self, Conn, ConnError, Transport};
use crate::fan::cpu_text;
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};
use crate::sys;
use crate::tls::{TlsClient, TlsTally};

/// A loop pauses this long after a failed attempt, so that a gateway that
/// refuses at once does not turn the run into a busy loop of failures.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);
/// Reason `conn::io_reason` gives EADDRNOTAVAIL.
const NO_LOCAL_PORT: &str = "no_local_port";
/// Time given to loops beyond the end plus one attempt's timeout.
const JOIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub shared: Shared,
    pub transport: Transport,
    pub tls: Option<TlsClient>,
    pub concurrency: u32,
    pub duration: Duration,
}

impl ChurnConfig {
    pub fn from_args(args: &ChurnArgs) -> anyhow::Result<ChurnConfig> {
        let (transport, target) = args.transport_and_target();
        Ok(ChurnConfig {
            shared: args.common.shared(target)?,
            transport,
            tls: args.tls.client()?,
            concurrency: args.concurrency,
            duration: Duration::from_secs(args.duration_s),
        })
    }
}

pub struct ChurnReport {
    pub table: Table,
    pub json: JsonLine,
}

/// What every loop updates. Single-threaded: plain cells.
struct ChurnCtx {
    shared: Shared,
    transport: Transport,
    tls: Option<TlsClient>,
    /// TLS handshakes counted with `done`, full and resumed.
    tls_tally: TlsTally,
    end: Instant,
    welcome: RefCell<Histogram<u64>>,
    /// Handshakes whose WELCOME came before the end.
    done: Cell<u64>,
    /// Handshakes whose WELCOME came after the end (attempts started before).
    done_late: Cell<u64>,
    failures: RefCell<Reasons>,
    errors: RefCell<ErrorCounts>,
}

/// One attempt: connect (TLS handshake, upgrade), HELLO with a fresh
/// address, WELCOME.
async fn handshake(ctx: &ChurnCtx, source: std::net::Ipv4Addr) -> Result<Conn, ConnError> {
    let mut c = Conn::open(ctx.shared.target, source, ctx.transport, ctx.tls.as_ref()).await?;
    let addr = uuid::Uuid::new_v4().into_bytes();
    c.hello(addr, &ctx.shared.token, 1).await?;
    Ok(c)
}

/// Loop `first` of `stride`: attempts one handshake after another until the
/// end. Its n-th attempt uses source address number first + n * stride.
async fn churn_loop(ctx: Rc<ChurnCtx>, first: u64, stride: u64) {
    let mut index = first;
    // Bounded by the end: every attempt ends within the setup timeout.
    while Instant::now() < ctx.end {
        let source = conn::source_addr(index, ctx.shared.source_addrs);
        index += stride;
        let start = Instant::now();
        let attempt = futures_lite::future::or(handshake(&ctx, source), async {
            glommio::timer::sleep(ctx.shared.setup_timeout).await;
            Err(ConnError::Timeout)
        })
        .await;
        match attempt {
            Ok(mut c) => {
                let now = Instant::now();
                if now < ctx.end {
                    ctx.done.set(ctx.done.get() + 1);
                    ctx.tls_tally.record(c.tls_info());
                    let ns = now.duration_since(start).as_nanos() as u64;
                    ctx.welcome
                        .borrow_mut()
                        .saturating_record(ns.clamp(1, report::LATENCY_MAX_NS));
                } else {
                    ctx.done_late.set(ctx.done_late.get() + 1);
                }
                // The client closes first (FIN, or a WebSocket close).
                c.close().await;
            }
            Err(e) => {
                if let ConnError::Refused(code) = e {
                    ctx.errors.borrow_mut().add(code, b"");
                }
                report::bump(&mut ctx.failures.borrow_mut(), &e.reason());
                glommio::timer::sleep(FAILURE_PAUSE).await;
            }
        }
    }
}

/// Prints handshakes per second once a second until the end.
async fn progress(ctx: &ChurnCtx) {
    let (mut last, mut last_at, mut second) = (0, Instant::now(), 0u64);
    while Instant::now() < ctx.end {
        let step = Duration::from_secs(1).min(ctx.end.saturating_duration_since(Instant::now()));
        glommio::timer::sleep(step).await;
        second += 1;
        let (done, now) = (ctx.done.get(), Instant::now());
        let rate = (done - last) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-9);
        let failed = report::total(&ctx.failures.borrow());
        eprintln!("[churn {second:>4}s] handshakes {done} ({rate:.0}/s), failures {failed}");
        (last, last_at) = (done, now);
    }
}

pub async fn run(cfg: ChurnConfig) -> anyhow::Result<ChurnReport> {
    let name = cfg.shared.target_name.clone();
    let transport = cfg.transport.name(cfg.tls.is_some());
    let tw_before = time_wait_sockets();
    let start = Instant::now();
    let ctx = Rc::new(ChurnCtx {
        shared: cfg.shared.clone(),
        transport: cfg.transport,
        tls: cfg.tls.clone(),
        tls_tally: TlsTally::default(),
        end: start + cfg.duration,
        welcome: RefCell::new(report::latency_histogram()),
        done: Cell::new(0),
        done_late: Cell::new(0),
        failures: RefCell::new(Reasons::new()),
        errors: RefCell::new(ErrorCounts::default()),
    });
    eprintln!(
        "[churn] {} loops against {name} {} ({}) for {} s",
        cfg.concurrency,
        cfg.shared.target,
        transport,
        cfg.duration.as_secs()
    );
    let cpu0 = sys::cpu_time();
    let tq = glommio::executor().current_task_queue();
    let stride = u64::from(cfg.concurrency);
    let tasks: Vec<_> = (0..stride)
        .map(|i| {
            glommio::spawn_local_into(churn_loop(ctx.clone(), i, stride), tq)
                .expect("current task queue exists")
        })
        .collect();
    progress(&ctx).await;
    let cpu_pct = {
        let wall = start.elapsed().as_secs_f64().max(1e-9);
        ((sys::cpu_time() - cpu0).as_secs_f64() / wall * 1000.0).round() / 10.0
    };
    // Attempts started before the end finish within the setup timeout.
    let started = tasks.len();
    let mut finished = 0;
    futures_lite::future::or(
        async {
            for task in tasks {
                task.await;
                finished += 1;
            }
        },
        glommio::timer::sleep(cfg.shared.setup_timeout + JOIN_GRACE),
    )
    .await;
    let mut client_errors = Reasons::new();
    if finished < started {
        report::bump_by(
            &mut client_errors,
            "loop_did_not_finish",
            (started - finished) as u64,
        );
    }
    let tw_after = time_wait_sockets();
    let latency = Latency::from_histogram(&ctx.welcome.borrow());
    let failures = ctx.failures.borrow().clone();
    let errors = ctx.errors.borrow().clone();
    let secs = cfg.duration.as_secs_f64();
    let done = ctx.done.get();
    let per_s = (done as f64 / secs).round();
    let no_port = failures.get(NO_LOCAL_PORT).copied().unwrap_or(0);
    let tw_text = |tw: Option<u64>| tw.map_or("n/a".to_string(), |n| n.to_string());

    let mut table = Table::default();
    table
        .row(
            "target",
            format!("{name} {} ({transport})", cfg.shared.target),
        )
        .row(
            "loops, duration",
            format!("{} at once, {secs} s", cfg.concurrency),
        )
        .row(
            "handshakes/s",
            format!(
                "{per_s} (connect, {}HELLO, WELCOME, close)",
                if cfg.tls.is_some() { "TLS, " } else { "" }
            ),
        )
        .row(
            "handshakes",
            format!("{done} (and {} after the end)", ctx.done_late.get()),
        )
        .latency("connect to WELCOME", &latency)
        .reasons("failures", &failures)
        .row(
            "no local port (EADDRNOTAVAIL)",
            if no_port > 0 {
                format!(
                    "{no_port}: ephemeral ports are used up (TIME_WAIT); \
                     use more --source-addrs or a shorter run"
                )
            } else {
                "0".to_string()
            },
        )
        .errors(&format!("ERROR frames from {name}"), &errors)
        .reasons("client-detected errors", &client_errors)
        .row(
            "TIME_WAIT sockets (machine)",
            format!("{} before, {} after", tw_text(tw_before), tw_text(tw_after)),
        )
        .row("client CPU (one core)", cpu_text(cpu_pct, &name));
    let mut m = JsonLine::default();
    m.insert("scenario", json!("churn"));
    m.insert("target", json!(name));
    m.insert("transport", json!(transport));
    m.insert("concurrency", json!(cfg.concurrency));
    m.insert("duration_s", json!(secs));
    m.insert("handshakes_per_s", json!(per_s));
    m.insert("handshakes", json!(done));
    m.insert("handshakes_late", json!(ctx.done_late.get()));
    latency.add_to("", &mut m);
    m.insert("failures", report::reasons_json(&failures));
    m.insert("failures_total", json!(report::total(&failures)));
    m.insert("no_local_port", json!(no_port));
    m.insert("errors", errors.to_json());
    m.insert("errors_total", json!(errors.total()));
    m.insert("client_errors", report::reasons_json(&client_errors));
    m.insert("time_wait_before", json!(tw_before));
    m.insert("time_wait_after", json!(tw_after));
    m.insert("client_cpu_pct", json!(cpu_pct));
    ctx.tls_tally
        .add_report(cfg.tls.as_ref(), &mut table, &mut m);
    Ok(ChurnReport { table, json: m })
}

/// TCP sockets in TIME_WAIT on this machine (all network namespaces' worth
/// that this one sees), from /proc/net/sockstat; None if unreadable.
fn time_wait_sockets() -> Option<u64> {
    parse_sockstat_tw(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
}

/// The `tw` count of the `TCP:` line of /proc/net/sockstat.
fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_time_wait_from_sockstat() {
        let text = "sockets: used 312\n\
                    TCP: inuse 14 orphan 0 tw 2890 alloc 20 mem 3\n\
                    UDP: inuse 3 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), Some(2890));
        assert_eq!(parse_sockstat_tw("TCP: inuse 1\n"), None);
        assert_eq!(parse_sockstat_tw(""), None);
    }

    #[test]
    fn eaddrnotavail_has_its_own_reason() {
        let e = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(conn::io_reason(&e), NO_LOCAL_PORT);
    }
}
