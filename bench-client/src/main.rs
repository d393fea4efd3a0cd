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
//! - `conn.rs`: one small connection (TCP or WebSocket, either optionally
//!   inside TLS): setup, HELLO/WELCOME, cancel-safe receive; used by `hold`
//!   and `churn`, and for `pingpong` setup.
//! - `tls.rs`: `--tls` for churn, hold and soak: flags, rustls client
//!   configuration (trust roots or `--insecure`, resumption), what each
//!   handshake negotiated.
//! - `pingpong.rs`: pairs that echo DATA, throughput and round-trip times;
//!   against the gateway or, for comparison, a NATS server or an MQTT
//!   broker (Mosquitto). `pingpong/setup.rs`: its connection setup per wire;
//!   `pingpong/ws_wire.rs`: its WebSocket wire, binary and JSON text.
//! - `nats.rs`: the NATS client protocol subset pingpong, fan and hold use,
//!   sans-IO.
//! - `mqtt.rs`: the MQTT 3.1.1 client packets pingpong, fan and hold use,
//!   sans-IO.
//! - `hold.rs`: many idle connections, heartbeats, gateway memory per connection;
//!   also runs `soak`. `hold/peer.rs`: the same held against a NATS server
//!   or an MQTT broker, for comparison.
//! - `soak.rs`: the DATA pairs `soak` adds to a hold: schedule, payload
//!   checks, round trips, losses.
//! - `state.rs`: writers storing state, acknowledged writes and ack latency.
//! - `fan.rs`: one-way streams with credit-based flow control, fan-in and
//!   fan-out, one-way latency; on pingpong's setup and buffers, so against
//!   the gateway, NATS or an MQTT broker. `fan/flow.rs`: streams, windows,
//!   credits, payload layout; `fan/endpoint.rs`: the per-connection task and
//!   the wire-dependent parts.
//! - `churn.rs`: connect, HELLO, WELCOME, close in loops: handshakes per
//!   second and their latency.
//! - `report.rs`: counters, latency percentiles, table and JSON line.
//! - `sys.rs`: open-file limit and `/proc/PID/status` RSS.
//! - `plot.rs`: SVG charts from saved JSON lines (no executor).

mod churn;
mod cli;
mod conn;
mod fan;
mod hold;
mod mqtt;
mod nats;
mod pingpong;
mod plot;
mod proto;
mod report;
mod soak;
mod state;
mod sys;
mod tls;
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
    if let Command::Plot(args) = &cli.command {
        // Reads files and writes SVGs: no executor, no sockets.
        return plot::run(args);
    }
    let nofile = sys::raise_nofile_limit()?;
    let (common, job) = match cli.command {
        Command::Pingpong(args) => {
            sys::check_fd_budget(2 * u64::from(args.pairs), nofile)?;
            let (wire, target) = args.wire_and_target();
            if wire == pingpong::Wire::Nats && !args.common.token.is_empty() {
                anyhow::bail!("--token is not used with --nats (the server must run without auth)");
            }
            if wire == pingpong::Wire::Mqtt && !args.common.token.is_empty() {
                anyhow::bail!("--token is not used with --mqtt (the broker must run without auth)");
            }
            let cfg = pingpong::PingpongConfig {
                shared: args
                    .common
                    .shared_named(target, wire.default_target_name())?,
                wire,
                peer: args.peer()?,
                pairs: args.pairs,
                window: args.window,
                payload: args.payload,
                duration: Duration::from_secs(args.timing.duration_s),
                warmup: Duration::from_secs(args.timing.warmup_s),
                drain: Duration::from_secs(args.timing.drain_s),
            };
            (args.common, Job::Pingpong(cfg))
        }
        Command::Hold(args) => {
            sys::check_fd_budget(u64::from(args.conns), nofile)?;
            let cfg = hold::HoldConfig::from_args(&args)?;
            (args.common, Job::Hold(cfg))
        }
        Command::Soak(args) => {
            sys::check_fd_budget(u64::from(args.hold.conns), nofile)?;
            if args.hold.targets().0 != pingpong::Wire::Gateway {
                anyhow::bail!("soak runs against the gateway only (--tcp or --ws); use hold for --nats or --mqtt");
            }
            let mut cfg = hold::HoldConfig::from_args(&args.hold)?;
            cfg.data = Some(soak::DataConfig::new(
                args.data_pairs,
                args.data_rate,
                args.hold.conns,
            )?);
            cfg.progress_every = Duration::from_secs(args.progress_s);
            (args.hold.common, Job::Hold(cfg))
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
                address_seed: args.address_seed,
            };
            (args.common, Job::State(cfg))
        }
        Command::Fan(args) => {
            sys::check_fd_budget(args.connections(), nofile)?;
            let cfg = fan::FanConfig::from_args(&args)?;
            (args.common, Job::Fan(cfg))
        }
        Command::Churn(args) => {
            sys::check_fd_budget(u64::from(args.concurrency), nofile)?;
            let cfg = churn::ChurnConfig::from_args(&args)?;
            (args.common, Job::Churn(cfg))
        }
        Command::Plot(_) => unreachable!("plot is dispatched before the executor starts"),
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
    Fan(fan::FanConfig),
    Churn(churn::ChurnConfig),
}

impl Job {
    async fn run(self) -> anyhow::Result<()> {
        match self {
            Job::Pingpong(cfg) => {
                let r = pingpong::run(cfg).await?;
                report::emit("pingpong", &r.table, &r.json);
            }
            Job::Hold(cfg) => {
                // `soak` too: the scenario name comes from the config.
                let name = cfg.scenario();
                let r = hold::run(cfg).await?;
                report::emit(name, &r.table, &r.json);
            }
            Job::State(cfg) => {
                let r = state::run(cfg).await?;
                report::emit("state", &r.table, &r.json);
            }
            Job::Fan(cfg) => {
                let r = fan::run(cfg).await?;
                report::emit("fan", &r.table, &r.json);
            }
            Job::Churn(cfg) => {
                let r = churn::run(cfg).await?;
                report::emit("churn", &r.table, &r.json);
            }
        }
        Ok(())
    }
}
