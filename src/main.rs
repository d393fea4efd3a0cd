//! The `gateway` binary: configuration, logging, limits, then the runtime.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use uring_gateway::auth;
use uring_gateway::config::{AuthMode, Config};
use uring_gateway::runtime;

/// Descriptors the process keeps for itself (rings, eventfds, listeners,
/// logs) below the open-files limit when it computes its connection ceiling.
const RESERVED_FDS: u64 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "IoT communication gateway: TCP and WebSocket clients routed by address"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see config/gateway.toml); every key optional.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// TCP listen address (repeatable); replaces [listen] tcp.
    #[arg(long = "tcp")]
    tcp: Vec<SocketAddr>,
    /// WebSocket listen address (repeatable); replaces [listen] ws.
    #[arg(long = "ws")]
    ws: Vec<SocketAddr>,
    /// TLS listen address for binary frames (repeatable); replaces
    /// [listen] tls.
    #[arg(long = "tls")]
    tls: Vec<SocketAddr>,
    /// WSS (WebSocket over TLS) listen address (repeatable); replaces
    /// [listen] wss.
    #[arg(long = "wss")]
    wss: Vec<SocketAddr>,
    /// PEM certificate chain of the TLS listeners; replaces [tls] cert_path.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listeners; replaces [tls] key_path.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Connection shards (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Log filter (info, debug, ...); RUST_LOG wins when set.
    #[arg(long)]
    log_level: Option<String>,
    /// Heartbeat timeout in milliseconds.
    #[arg(long)]
    heartbeat_timeout_ms: Option<u32>,
    /// Handshake (HELLO) timeout in milliseconds.
    #[arg(long)]
    handshake_timeout_ms: Option<u32>,
    /// Maximum payload in bytes.
    #[arg(long)]
    max_payload_bytes: Option<u32>,
    /// NATS URL of the cluster (replaces [cluster] nats_url; also
    /// GATEWAY_NATS_URL).
    #[arg(long)]
    nats_url: Option<String>,
    /// This node's name in the cluster (replaces [cluster] node_id; also
    /// GATEWAY_NODE_ID).
    #[arg(long)]
    node_id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mint an authentication token (HS256 JWT) with a configured key and
    /// print it.
    Token(TokenArgs),
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// Configuration file holding the [[auth.keys]] to sign with.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The address the token may register as (a device); omit for a web page
    /// that picks its own random address.
    #[arg(long)]
    sub: Option<uuid::Uuid>,
    /// Addresses it may send DATA to, STATE_GET and SUBSCRIBE, comma
    /// separated, or `*` for all.
    #[arg(long, value_delimiter = ',')]
    allow: Vec<String>,
    /// Lifetime: a number with s, m, h or d (30s, 15m, 24h, 7d).
    #[arg(long, value_parser = auth::parse_ttl)]
    ttl: u64,
    /// Key to sign with; the first configured key when omitted.
    #[arg(long)]
    kid: Option<String>,
}

/// The MySQL driver keeps a process-wide pool of packet buffers, by default
/// up to 128 of up to 4 MiB each (512 MiB after a burst of large state
/// writes). The gateway bounds it to 16 buffers of at most 256 KiB; a larger
/// packet still works, its buffer is shrunk when it comes back. The driver
/// reads these variables once, at its first use; an operator's own values
/// win.
const MYSQL_BUFFER_POOL: [(&str, &str); 2] = [
    ("MYSQL_ASYNC_BUFFER_POOL_CAP", "16"),
    ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "262144"),
];

fn main() {
    // Before any thread exists: the environment is only safe to change
    // while nothing else can read it.
    for (key, value) in MYSQL_BUFFER_POOL {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    if let Err(e) = real_main() {
        eprintln!("gateway: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    })
}

fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    let cfg = load(&args.config)?;
    cfg.validate()?;
    let key = match &args.kid {
        Some(kid) => cfg.auth.keys.iter().find(|k| &k.kid == kid),
        None => cfg.auth.keys.first(),
    }
    .context("no such key in [[auth.keys]] of the configuration")?;
    let allow = args.allow.into_iter().filter(|a| !a.is_empty()).collect();
    println!("{}", auth::mint(key, args.sub, allow, args.ttl)?);
    Ok(())
}

fn real_main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(Command::Token(args)) = cli.command.take() {
        return mint_token(args);
    }
    let mut cfg = load(&cli.config)?;
    if !cli.tcp.is_empty() {
        cfg.listen.tcp = cli.tcp.clone();
    }
    if !cli.ws.is_empty() {
        cfg.listen.ws = cli.ws.clone();
    }
    if !cli.tls.is_empty() {
        cfg.listen.tls = cli.tls.clone();
    }
    if !cli.wss.is_empty() {
        cfg.listen.wss = cli.wss.clone();
    }
    if let Some(p) = &cli.tls_cert {
        cfg.tls.cert_path = p.clone();
    }
    if let Some(p) = &cli.tls_key {
        cfg.tls.key_path = p.clone();
    }
    if let Some(s) = cli.shards {
        cfg.runtime.shards = s;
    }
    if let Some(l) = &cli.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(v) = cli.heartbeat_timeout_ms {
        cfg.timeouts.heartbeat_timeout_ms = v;
    }
    if let Some(v) = cli.handshake_timeout_ms {
        cfg.timeouts.handshake_timeout_ms = v;
    }
    if let Some(v) = cli.max_payload_bytes {
        cfg.limits.max_payload_bytes = v;
    }
    if let Some(v) = cli
        .nats_url
        .clone()
        .or_else(|| std::env::var("GATEWAY_NATS_URL").ok())
    {
        cfg.cluster.nats_url = v;
    }
    if let Some(v) = cli
        .node_id
        .clone()
        .or_else(|| std::env::var("GATEWAY_NODE_ID").ok())
    {
        cfg.cluster.node_id = v;
    }
    cfg.validate()?;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            // The NATS client reports every reconnect attempt at info; the
            // cluster logs what matters of them itself.
            let mut level = cfg.log.level.clone();
            if !level.contains("async_nats") {
                level.push_str(",async_nats=warn");
            }
            tracing_subscriber::EnvFilter::try_new(&level)
        })
        .context("invalid log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match runtime::raise_nofile_limit() {
        Ok(limit) => {
            let ceiling = limit.saturating_sub(RESERVED_FDS);
            tracing::info!(
                nofile = limit,
                connection_ceiling = ceiling,
                "open-files limit raised"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }

    let exposed = cfg
        .listen
        .tcp
        .iter()
        .chain(&cfg.listen.ws)
        .chain(&cfg.listen.tls)
        .chain(&cfg.listen.wss)
        .find(|a| !a.ip().is_loopback());
    if let (AuthMode::Off, Some(addr)) = (cfg.auth.mode, exposed) {
        tracing::warn!(
            listen = %addr,
            "AUTHENTICATION IS OFF on a non-loopback listener: anyone who can reach it \
             may register any address and talk to every device; set [auth] mode = \"jwt\""
        );
    }

    let shards = cfg.shard_count();
    let gw = runtime::start(cfg)?;
    let join = |a: &[SocketAddr]| {
        a.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing::info!(
        tcp = %join(&gw.tcp),
        ws = %join(&gw.ws),
        tls = %join(&gw.tls),
        wss = %join(&gw.wss),
        shards,
        "gateway listening"
    );
    {
        // The ready line names only the kinds of listener that are set.
        let mut line = format!("gateway ready tcp={} ws={}", join(&gw.tcp), join(&gw.ws));
        for (key, addrs) in [("tls", &gw.tls), ("wss", &gw.wss)] {
            if !addrs.is_empty() {
                line.push_str(&format!(" {key}={}", join(addrs)));
            }
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line} shards={}", gw.shards)?;
        out.flush()?;
    }
    gw.wait();
    tracing::info!("gateway stopped");
    Ok(())
}
