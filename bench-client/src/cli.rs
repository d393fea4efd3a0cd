//! Command line, and the checks made before any socket is opened.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::conn::{Transport, SOURCE_ADDRS_DEFAULT, TOKEN_MAX_BYTES};
use crate::pingpong::Wire;
use crate::tls::TlsArgs;

#[derive(Parser, Debug)]
#[command(
    name = "bench-client",
    version,
    about = "Load generator for uring-gateway (protocol v1). Targets 127.0.0.0/8 only.",
    after_help = "Prints a table, then one JSON line starting with {\"scenario\": as the last line of stdout. \
                  Progress goes to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// P pairs: a keeps W DATA frames in flight to b, b echoes each back.
    Pingpong(PingpongArgs),
    /// Open C idle connections, keep them alive with heartbeats, measure RSS.
    Hold(HoldArgs),
    /// `hold` plus DATA: P pairs taken from the held connections ping-pong
    /// one message at a time at a fixed rate; round trips, errors, losses.
    Soak(SoakArgs),
    /// W writers, each with one STATE_PUT in flight: acknowledged writes per
    /// second and the time from STATE_PUT to its STATE_ACK.
    State(StateArgs),
    /// S senders, R receivers, max(S, R) one-way streams with W frames of
    /// credit each: fan-in / fan-out throughput and one-way latency.
    Fan(FanArgs),
    /// C loops of connect (and TLS handshake with --tls), HELLO with a fresh
    /// address, WELCOME, close: handshakes per second and connect-to-WELCOME
    /// latency.
    Churn(ChurnArgs),
    /// Draw SVG charts for BENCHMARKS.md from saved JSON lines (no load).
    Plot(PlotArgs),
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// File of JSON lines, one run's last stdout line each (repeatable).
    /// Lines that are not JSON objects with a "scenario" field are skipped.
    #[arg(long, required = true)]
    pub input: Vec<std::path::PathBuf>,
    /// Directory for the SVG files (created if missing).
    #[arg(long = "out-dir")]
    pub out_dir: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct StateArgs {
    /// Gateway TCP address (127.0.0.0/8 only).
    #[arg(long)]
    pub tcp: String,
    /// Writer connections, each keeping one STATE_PUT in flight.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=19_900))]
    pub writers: u32,
    /// State blob bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=65_536))]
    pub payload: u32,
    /// Measured time, after the warmup.
    #[arg(long = "duration-s", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Writes before measuring starts.
    #[arg(long = "warmup-s", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_s: u64,
    /// Writes per second per writer (0 = as fast as acks come back). With a
    /// rate, a writer sends on a fixed schedule (its next write waits for the
    /// previous ACK only when that is late), so the load is writers x rate
    /// and the latency is not just writers / throughput.
    #[arg(long = "rate-per-writer", default_value_t = 0.0)]
    pub rate_per_writer: f64,
    /// Writer i registers an address derived from (seed, i), the same in
    /// every run, so repeated runs update the same rows of the gateway's
    /// store instead of adding `writers` new ones each time. Without it,
    /// new random addresses.
    #[arg(long = "address-seed")]
    pub address_seed: Option<u64>,
    /// Longest wait for one STATE_ACK; a write still unacknowledged then is
    /// reported as timed out and its writer stops.
    #[arg(long = "ack-timeout-s", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub ack_timeout_s: u64,
    #[command(flatten)]
    pub common: Common,
}

/// How long a traffic run measures, warms up and drains.
#[derive(Args, Debug, Clone)]
pub struct Timing {
    /// Measured time, after the warmup.
    #[arg(long = "duration-s", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Traffic before measuring starts.
    #[arg(long = "warmup-s", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_s: u64,
    /// After sending stops, the longest wait for every frame sent to be
    /// answered, delivered or refused; what is missing then is reported as
    /// lost.
    #[arg(long = "drain-s", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub drain_s: u64,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// CPU to pin the client's single executor to (the gateway gets CPU 0).
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
    /// Label of the system under test, copied into the JSON line
    /// [default: gateway, or nats / mosquitto with --nats / --mqtt].
    #[arg(long = "target-name")]
    pub target_name: Option<String>,
    /// HELLO auth token (UTF-8); empty when the gateway runs without auth.
    #[arg(long, default_value = "")]
    pub token: String,
    /// Connection setups (connect, upgrade, HELLO, WELCOME) in flight at once.
    #[arg(long = "connect-concurrency", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connect_concurrency: u32,
    /// Limit for one connection's setup, in seconds.
    #[arg(long = "setup-timeout-s", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub setup_timeout_s: u64,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N, so
    /// the kernel finds a free local port at once even with 19,000 open.
    #[arg(long = "source-addrs", default_value_t = SOURCE_ADDRS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=250))]
    pub source_addrs: u32,
    /// Busy-poll this many microseconds before the executor parks. Lowers
    /// round trips and the cost of waking the client, but keeps its core busy
    /// (so `client_cpu_pct` no longer shows whether the client is the limit).
    #[arg(long = "spin-us", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub spin_us: u64,
    /// io_uring depth of the client's executor.
    #[arg(long = "ring-depth", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(64..=32768))]
    pub ring_depth: u32,
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false, args = ["tcp", "ws", "nats", "mqtt"])]
pub struct PingpongArgs {
    /// Gateway TCP address (127.0.0.0/8 only).
    #[arg(long)]
    pub tcp: Option<String>,
    /// With --tcp: the b side (the echoing side) of every pair connects to
    /// and registers at this gateway TCP address instead (127.0.0.0/8 only),
    /// such as another node of the same cluster, so every pair spans two
    /// nodes. The a side stays at --tcp.
    #[arg(long = "peer-tcp", conflicts_with_all = ["ws", "nats", "mqtt"])]
    pub peer_tcp: Option<String>,
    /// Gateway WebSocket address (127.0.0.0/8 only); the path is /ws. Each
    /// frame travels in one binary message (or JSON text with --json).
    #[arg(long)]
    pub ws: Option<String>,
    /// With --ws: speak JSON (text HELLO, then one JSON text message per
    /// frame, DATA payloads in base64) instead of binary frames.
    #[arg(long, conflicts_with_all = ["tcp", "nats", "mqtt"])]
    pub json: bool,
    /// Instead of the gateway, a NATS server (127.0.0.0/8 only, no auth):
    /// the same pairs and echoes over PUB/SUB, one subject per endpoint.
    #[arg(long)]
    pub nats: Option<String>,
    /// Instead of the gateway, an MQTT 3.1.1 broker such as Mosquitto
    /// (127.0.0.0/8 only, no auth): the same pairs and echoes as QoS 0
    /// PUBLISHes, one topic per endpoint.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Number of connection pairs.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=9000))]
    pub pairs: u32,
    /// DATA frames each pair keeps in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// DATA payload bytes (the first 8 carry the send time).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=1_048_576))]
    pub payload: u32,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false, args = ["tcp", "ws", "nats", "mqtt"])]
pub struct HoldArgs {
    /// Gateway TCP address (127.0.0.0/8 only). Repeat it or give a comma
    /// list to spread the connections round robin over several listen
    /// addresses of the gateway.
    #[arg(long, value_delimiter = ',')]
    pub tcp: Vec<String>,
    /// Gateway WebSocket address (127.0.0.0/8 only); the path is /ws.
    /// Repeatable or a comma list, like --tcp.
    #[arg(long, value_delimiter = ',')]
    pub ws: Vec<String>,
    /// Instead of the gateway, a NATS server (127.0.0.0/8 only, no auth):
    /// CONNECT + SUB + PING, up at PONG; PING as the heartbeat. `hold` only.
    #[arg(long, value_delimiter = ',')]
    pub nats: Vec<String>,
    /// Instead of the gateway, an MQTT 3.1.1 broker such as Mosquitto
    /// (127.0.0.0/8 only, no auth): CONNECT + SUBSCRIBE, up at SUBACK;
    /// PINGREQ as the heartbeat. `hold` only.
    #[arg(long, value_delimiter = ',')]
    pub mqtt: Vec<String>,
    /// Connections to open (up to a million; the open-file limit is checked
    /// before the first connect).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub conns: u32,
    /// Heartbeat interval per connection (spread over the interval).
    #[arg(long = "heartbeat-s", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_s: u64,
    /// How long to hold all connections once every setup has finished.
    #[arg(long = "hold-s", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_s: u64,
    /// New connections started per second.
    #[arg(long = "connect-rate", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connect_rate: u32,
    /// Process id of the server under test (gateway, nats-server,
    /// mosquitto) whose VmRSS is reported (omit to skip).
    #[arg(long = "server-pid", visible_alias = "gateway-pid")]
    pub server_pid: Option<u32>,
    /// Wait after the last setup before reading the loaded RSS.
    #[arg(long = "settle-s", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub settle_s: u64,
    /// TLS (gateway only): --tls with --ca or --insecure.
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false, args = ["tcp", "nats", "mqtt"])]
pub struct FanArgs {
    /// Gateway TCP address (127.0.0.0/8 only).
    #[arg(long)]
    pub tcp: Option<String>,
    /// Instead of the gateway, a NATS server (127.0.0.0/8 only, no auth);
    /// every endpoint's subject is its address in hex.
    #[arg(long)]
    pub nats: Option<String>,
    /// Instead of the gateway, an MQTT 3.1.1 broker (127.0.0.0/8 only, no
    /// auth); every endpoint's topic is its address in hex, QoS 0.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Sending connections; stream k is sent by sender k % S.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=9000))]
    pub senders: u32,
    /// Receiving connections; stream k is received by receiver k % R.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=9000))]
    pub receivers: u32,
    /// DATA frames per stream sent and not yet credited back; receivers
    /// credit every ceil(W/2) frames.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// DATA payload bytes (the first 16 carry send time, stream, sequence).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub payload: u32,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false, args = ["tcp", "ws"])]
pub struct ChurnArgs {
    /// Gateway TCP address (127.0.0.0/8 only).
    #[arg(long)]
    pub tcp: Option<String>,
    /// Gateway WebSocket address (127.0.0.0/8 only); the path is /ws.
    #[arg(long)]
    pub ws: Option<String>,
    /// Loops running at once, each one handshake after another.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// How long loops start new handshakes.
    #[arg(long = "duration-s", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// TLS: --tls with --ca or --insecure; every handshake a full one
    /// unless --resume.
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub common: Common,
}

/// Settings both scenarios share, validated.
#[derive(Debug, Clone)]
pub struct Shared {
    pub target: SocketAddrV4,
    pub source_addrs: u32,
    pub target_name: String,
    pub token: Vec<u8>,
    pub connect_concurrency: usize,
    pub setup_timeout: Duration,
}

impl Common {
    pub fn shared(&self, target: &str) -> anyhow::Result<Shared> {
        self.shared_named(target, "gateway")
    }

    /// As [`Common::shared`], with `default_name` when --target-name is not given.
    pub fn shared_named(&self, target: &str, default_name: &str) -> anyhow::Result<Shared> {
        if self.token.len() > TOKEN_MAX_BYTES {
            bail!("--token is longer than {TOKEN_MAX_BYTES} bytes");
        }
        Ok(Shared {
            target: loopback_target(target)?,
            source_addrs: self.source_addrs,
            target_name: self
                .target_name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            token: self.token.as_bytes().to_vec(),
            connect_concurrency: self.connect_concurrency as usize,
            setup_timeout: Duration::from_secs(self.setup_timeout_s),
        })
    }
}

impl HoldArgs {
    /// What the connections talk to, over which transport (NATS and MQTT:
    /// plain TCP), and its addresses (at least one).
    pub fn targets(&self) -> (Wire, Transport, &[String]) {
        let given = [
            (Wire::Gateway, Transport::Tcp, &self.tcp),
            (Wire::Gateway, Transport::Ws, &self.ws),
            (Wire::Nats, Transport::Tcp, &self.nats),
            (Wire::Mqtt, Transport::Tcp, &self.mqtt),
        ];
        given
            .into_iter()
            .find(|(_, _, addrs)| !addrs.is_empty())
            .map(|(wire, transport, addrs)| (wire, transport, addrs.as_slice()))
            .expect("clap requires one target")
    }
}

#[derive(Args, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub hold: HoldArgs,
    /// DATA pairs taken from the held connections (0: none, a plain hold
    /// with soak's report). Needs 2 x pairs <= --conns.
    #[arg(long = "data-pairs", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=9950))]
    pub data_pairs: u32,
    /// DATA messages per second per pair, one in flight at a time (64-byte
    /// payloads, echoed back by the other side).
    #[arg(long = "data-rate", default_value_t = 10.0)]
    pub data_rate: f64,
    /// Progress line interval on stderr while holding.
    #[arg(long = "progress-s", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub progress_s: u64,
}

impl PingpongArgs {
    /// Whether the target is the gateway, a NATS server or an MQTT broker,
    /// and its address.
    pub fn wire_and_target(&self) -> (Wire, &str) {
        match (&self.tcp, &self.ws, &self.nats, &self.mqtt) {
            (Some(t), ..) => (Wire::Gateway, t),
            (_, Some(w), ..) if self.json => (Wire::WsJson, w),
            (_, Some(w), ..) => (Wire::Ws, w),
            (.., Some(n), _) => (Wire::Nats, n),
            (.., Some(m)) => (Wire::Mqtt, m),
            _ => unreachable!("clap requires --tcp, --ws, --nats or --mqtt"),
        }
    }

    /// `--peer-tcp`, checked like the target: inside 127.0.0.0/8.
    pub fn peer(&self) -> anyhow::Result<Option<SocketAddrV4>> {
        self.peer_tcp
            .as_deref()
            .map(|p| loopback_target(p).context("--peer-tcp"))
            .transpose()
    }
}

impl FanArgs {
    /// The wire of whichever target was given, and its address.
    pub fn wire_and_target(&self) -> (Wire, &str) {
        let given = [
            (Wire::Gateway, &self.tcp),
            (Wire::Nats, &self.nats),
            (Wire::Mqtt, &self.mqtt),
        ];
        given
            .into_iter()
            .find_map(|(wire, t)| Some((wire, t.as_deref()?)))
            .expect("clap requires one target")
    }

    /// Sockets the run opens.
    pub fn connections(&self) -> u64 {
        u64::from(self.senders) + u64::from(self.receivers)
    }
}

impl ChurnArgs {
    /// The transport of whichever target was given, and its address.
    pub fn transport_and_target(&self) -> (Transport, &str) {
        let given = [(Transport::Tcp, &self.tcp), (Transport::Ws, &self.ws)];
        given
            .into_iter()
            .find_map(|(transport, t)| Some((transport, t.as_deref()?)))
            .expect("clap requires --tcp or --ws")
    }
}

/// Resolves `host:port` and accepts it only inside 127.0.0.0/8: this tool
/// generates load and must never point at another machine.
pub fn loopback_target(text: &str) -> anyhow::Result<SocketAddrV4> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .with_context(|| format!("cannot parse target {text:?} (expected IP:PORT)"))?
        .collect();
    let Some(addr) = addrs.iter().copied().find(is_loopback_v4) else {
        bail!("refusing target {text:?}: only 127.0.0.0/8 addresses may be targeted (resolved to {addrs:?})");
    };
    if addrs.iter().any(|a| !is_loopback(a)) {
        bail!("refusing target {text:?}: it also resolves outside loopback ({addrs:?})");
    }
    if addr.port() == 0 {
        bail!("target {text:?} has port 0");
    }
    match addr {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => unreachable!("only IPv4 loopback is selected"),
    }
}

fn is_loopback_v4(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V4(ip) if ip.octets()[0] == 127)
}

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_loopback_v4_targets() {
        assert_eq!(
            loopback_target("127.0.0.1:7000").unwrap(),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert!(loopback_target("127.9.8.7:1").is_ok());
        assert!(loopback_target("10.0.0.1:7000").is_err());
        assert!(loopback_target("192.168.1.1:7000").is_err());
        assert!(loopback_target("8.8.8.8:53").is_err());
        assert!(loopback_target("[::1]:7000").is_err());
        assert!(loopback_target("127.0.0.1:0").is_err());
        assert!(loopback_target("nonsense").is_err());
    }

    #[test]
    fn hold_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["b", "hold", "--conns", "5"]).is_err());
        assert!(
            Cli::try_parse_from(["b", "hold", "--tcp", "127.0.0.1:1", "--ws", "127.0.0.1:2"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["b", "hold", "--ws", "127.0.0.1:7001"]).unwrap();
        let Command::Hold(h) = cli.command else {
            panic!("hold")
        };
        assert_eq!(
            h.targets(),
            (
                Wire::Gateway,
                Transport::Ws,
                &["127.0.0.1:7001".to_string()][..]
            )
        );
    }

    #[test]
    fn hold_takes_a_nats_or_mqtt_target_and_a_server_pid() {
        for other in [["--tcp", "127.0.0.1:1"], ["--nats", "127.0.0.1:2"]] {
            let mut argv = vec!["b", "hold", "--mqtt", "127.0.0.1:1883"];
            argv.extend(other);
            assert!(Cli::try_parse_from(argv).is_err(), "{other:?}");
        }
        let given = [
            ("--nats", "127.0.0.1:4222", Wire::Nats),
            ("--mqtt", "127.0.0.1:1883", Wire::Mqtt),
        ];
        for (flag, addr, wire) in given {
            for pid_flag in ["--server-pid", "--gateway-pid"] {
                let argv = ["b", "hold", flag, addr, pid_flag, "42"];
                let Command::Hold(h) = Cli::try_parse_from(argv).unwrap().command else {
                    panic!("hold")
                };
                assert_eq!(h.targets(), (wire, Transport::Tcp, &[addr.to_string()][..]));
                assert_eq!(h.server_pid, Some(42));
            }
        }
        // soak takes hold's flags; it refuses the peers after parsing.
        let argv = ["b", "soak", "--nats", "127.0.0.1:4222"];
        let Command::Soak(s) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("soak")
        };
        assert_eq!(s.hold.targets().0, Wire::Nats);
    }

    #[test]
    fn soak_takes_several_gateway_ports() {
        let cli = Cli::try_parse_from([
            "b",
            "soak",
            "--tcp",
            "127.0.0.1:7000",
            "--tcp",
            "127.0.0.1:7002,127.0.0.1:7004",
            "--conns",
            "10",
        ])
        .unwrap();
        let Command::Soak(s) = cli.command else {
            panic!("soak")
        };
        let (wire, transport, targets) = s.hold.targets();
        assert_eq!((wire, transport), (Wire::Gateway, Transport::Tcp));
        assert_eq!(
            targets,
            ["127.0.0.1:7000", "127.0.0.1:7002", "127.0.0.1:7004"]
        );
        assert_eq!((s.data_pairs, s.data_rate, s.progress_s), (100, 10.0, 5));
        assert_eq!(s.hold.conns, 10);
        // Still exactly one transport.
        assert!(
            Cli::try_parse_from(["b", "soak", "--tcp", "127.0.0.1:1", "--ws", "127.0.0.1:2"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["b", "soak"]).is_err());
    }

    #[test]
    fn pingpong_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["b", "pingpong"]).is_err());
        assert!(Cli::try_parse_from([
            "b",
            "pingpong",
            "--tcp",
            "127.0.0.1:1",
            "--nats",
            "127.0.0.1:2"
        ])
        .is_err());
        let cli = Cli::try_parse_from(["b", "pingpong", "--nats", "127.0.0.1:4222"]).unwrap();
        let Command::Pingpong(p) = cli.command else {
            panic!("pingpong")
        };
        assert_eq!(p.wire_and_target(), (Wire::Nats, "127.0.0.1:4222"));
        let shared = p.common.shared_named("127.0.0.1:4222", "nats").unwrap();
        assert_eq!(shared.target_name, "nats");
        let cli = Cli::try_parse_from(["b", "pingpong", "--tcp", "127.0.0.1:7000"]).unwrap();
        let Command::Pingpong(p) = cli.command else {
            panic!("pingpong")
        };
        assert_eq!(p.wire_and_target(), (Wire::Gateway, "127.0.0.1:7000"));
        let shared = p.common.shared("127.0.0.1:7000").unwrap();
        assert_eq!(shared.target_name, "gateway");
    }

    #[test]
    fn pingpong_mqtt_target() {
        for other in [["--tcp", "127.0.0.1:1"], ["--nats", "127.0.0.1:2"]] {
            let mut argv = vec!["b", "pingpong", "--mqtt", "127.0.0.1:1883"];
            argv.extend(other);
            assert!(Cli::try_parse_from(argv).is_err());
        }
        let cli = Cli::try_parse_from(["b", "pingpong", "--mqtt", "127.0.0.1:1883"]).unwrap();
        let Command::Pingpong(p) = cli.command else {
            panic!("pingpong")
        };
        let (wire, target) = p.wire_and_target();
        assert_eq!((wire, target), (Wire::Mqtt, "127.0.0.1:1883"));
        let shared = p
            .common
            .shared_named(target, wire.default_target_name())
            .unwrap();
        assert_eq!(shared.target_name, "mosquitto");
        assert!(p.common.shared_named("10.0.0.1:1883", "mosquitto").is_err());
    }

    /// `bench-client pingpong` with `extra` arguments, parsed.
    fn parse_pingpong(extra: &[&str]) -> Result<PingpongArgs, clap::Error> {
        let mut argv = vec!["b", "pingpong"];
        argv.extend(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Pingpong(p) => p,
            _ => panic!("pingpong"),
        })
    }

    #[test]
    fn pingpong_ws_target_binary_or_json() {
        let parse = parse_pingpong;
        let p = parse(&["--ws", "127.0.0.1:7001"]).unwrap();
        assert_eq!(p.wire_and_target(), (Wire::Ws, "127.0.0.1:7001"));
        let p = parse(&["--ws", "127.0.0.1:7001", "--json"]).unwrap();
        let (wire, target) = p.wire_and_target();
        assert_eq!((wire, target), (Wire::WsJson, "127.0.0.1:7001"));
        assert_eq!(wire.default_target_name(), "gateway");
        assert!(parse(&["--tcp", "127.0.0.1:7000", "--json"]).is_err());
        assert!(parse(&["--tcp", "127.0.0.1:7000", "--ws", "127.0.0.1:7001"]).is_err());
        assert!(p.common.shared("10.0.0.1:7001").is_err());
    }

    #[test]
    fn pingpong_peer_tcp_only_with_tcp_and_only_loopback() {
        let parse = parse_pingpong;
        let p = parse(&["--tcp", "127.0.0.1:7000"]).unwrap();
        assert_eq!(p.peer().unwrap(), None);
        let p = parse(&["--tcp", "127.0.0.1:7000", "--peer-tcp", "127.0.0.2:7100"]).unwrap();
        assert_eq!(p.wire_and_target(), (Wire::Gateway, "127.0.0.1:7000"));
        assert_eq!(p.peer().unwrap(), Some("127.0.0.2:7100".parse().unwrap()));
        for outside in ["10.0.0.1:7100", "[::1]:7100", "127.0.0.1:0"] {
            let p = parse(&["--tcp", "127.0.0.1:7000", "--peer-tcp", outside]).unwrap();
            assert!(p.peer().is_err(), "{outside}");
        }
        let peer = ["--peer-tcp", "127.0.0.1:7100"];
        for other in [
            ["--ws", "127.0.0.1:7001"],
            ["--nats", "127.0.0.1:4222"],
            ["--mqtt", "127.0.0.1:1883"],
        ] {
            assert!(
                parse(&[&other[..], &peer[..]].concat()).is_err(),
                "{other:?}"
            );
        }
        assert!(parse(&peer).is_err(), "a target is still required");
    }
}
