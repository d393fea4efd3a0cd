//! Load generator for uring-gateway, speaking protocol v1 (see PROTOCOL.md).
//!
//! Runs on one glommio executor pinned to one CPU (default 1; the gateway
//! gets CPU 0). Every connection uses non-blocking reads and writes into
//! buffers it keeps for its whole life, so sending and receiving a message
//! allocates nothing. Targets are restricted to 127.0.0.0/8, and every loop is
//! bounded in count and time: the scenarios stop by themselves.
//!
//! # Layout
//!
//! - `cli.rs`: command line, target checks (loopback only).
//! - `proto.rs`: the binary frame codec, sans-IO.
//! - `ws.rs`: WebSocket upgrade and framing for the client side, sans-IO.
//! - `conn.rs`: one small connection (TCP or WebSocket): setup, HELLO/WELCOME,
//!   cancel-safe receive; used by `hold` and for `pingpong` setup.
//! - `pingpong.rs`: pairs that echo DATA, throughput and round-trip times;
//!   against the gateway or, for comparison, a NATS server.
//! - `nats.rs`: the NATS client protocol subset pingpong uses, sans-IO.
//! - `hold.rs`: many idle connections, heartbeats, gateway memory per connection.
//! - `state.rs`: writers storing state, acknowledged writes and ack latency.
//! - `report.rs`: counters, latency percentiles, table and JSON line.
//! - `sys.rs`: open-file limit and `/proc/PID/status` RSS.

mod cli;
mod conn;
mod hold;
mod nats;
mod pingpong;
mod proto;
mod report;
mod state;
mod sys;
mod ws;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};

use cli::{Cli, Command};

/// Pinned I/O memory for the executor. The client only does network I/O,
/// which needs none of it; the default (10 MiB) would only add RSS.
const IO_MEMORY_BYTES: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let nofile = sys::raise_nofile_limit()?;
    let (common, job) = match cli.command {
        Command::Pingpong(args) => {
            sys::check_fd_budget(2 * u64::from(args.pairs), nofile)?;
            let (wire, target) = args.wire_and_target();
            if wire == pingpong::Wire::Nats && !args.common.token.is_empty() {
                anyhow::bail!("--token is not used with --nats (the server must run without auth)");
            }
            let cfg = pingpong::PingpongConfig {
                shared: args
                    .common
                    .shared_named(target, wire.default_target_name())?,
                wire,
                pairs: args.pairs,
                window: args.window,
                payload: args.payload,
                duration: Duration::from_secs(args.duration_s),
                warmup: Duration::from_secs(args.warmup_s),
                drain: Duration::from_secs(args.drain_s),
            };
            (args.common, Job::Pingpong(cfg))
        }
        Command::Hold(args) => {
            sys::check_fd_budget(u64::from(args.conns), nofile)?;
            let (transport, target) = args.transport_and_target();
            let cfg = hold::HoldConfig {
                shared: args.common.shared(target)?,
                transport,
                conns: args.conns,
                heartbeat: Duration::from_secs(args.heartbeat_s),
                hold: Duration::from_secs(args.hold_s),
                connect_rate: args.connect_rate,
                gateway_pid: args.gateway_pid,
                settle: Duration::from_secs(args.settle_s),
            };
            if let Some(pid) = cfg.gateway_pid {
                sys::rss_bytes(Some(pid)).with_context(|| format!("--gateway-pid {pid}"))?;
            }
            (args.common, Job::Hold(cfg))
        }
        Command::State(args) => {
            sys::check_fd_budget(u64::from(args.writers), nofile)?;
            let cfg = state::StateConfig {
                shared: args.common.shared(&args.tcp)?,
                writers: args.writers,
                payload: args.payload as usize,
                duration: Duration::from_secs(args.duration_s),
                warmup: Duration::from_secs(args.warmup_s),
                ack_timeout: Duration::from_secs(args.ack_timeout_s),
                rate_per_writer: args.rate_per_writer,
            };
            (args.common, Job::State(cfg))
        }
    };
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(common.cpu))
        .name("bench-client")
        .ring_depth(common.ring_depth as usize)
        .io_memory(IO_MEMORY_BYTES);
    if common.spin_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(common.spin_us));
    }
    let executor = builder
        .make()
        .map_err(std::io::Error::from)
        .with_context(|| format!("starting the executor on CPU {}", common.cpu))?;
    executor.run(job.run())
}

enum Job {
    Pingpong(pingpong::PingpongConfig),
    Hold(hold::HoldConfig),
    State(state::StateConfig),
}

impl Job {
    async fn run(self) -> anyhow::Result<()> {
        match self {
            Job::Pingpong(cfg) => {
                let r = pingpong::run(cfg).await?;
                report::emit("pingpong", &r.table, &r.json);
            }
            Job::Hold(cfg) => {
                let r = hold::run(cfg).await?;
                report::emit("hold", &r.table, &r.json);
            }
            Job::State(cfg) => {
                let r = state::run(cfg).await?;
                report::emit("state", &r.table, &r.json);
            }
        }
        Ok(())
    }
}
