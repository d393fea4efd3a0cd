//! Gateway configuration: a TOML file (every key optional), overridden by the
//! command line. Every bound the gateway enforces is named here.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use thiserror::Error;

/// Errors while loading or checking the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    pub runtime: Runtime,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub service: Service,
    pub store: Store,
    pub log: Log,
    pub auth: Auth,
    pub tls: Tls,
    pub http: Http,
    pub cluster: Cluster,
}

/// Where the gateway listens. Every shard binds every address with
/// SO_REUSEPORT; a port of 0 is resolved once at start and shared by all.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub tcp: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    /// Binary frames inside TLS (needs `[tls]`).
    pub tls: Vec<SocketAddr>,
    /// WebSocket inside TLS, `wss://HOST:PORT/ws` (needs `[tls]`).
    pub wss: Vec<SocketAddr>,
    /// listen(2) backlog of every listening socket.
    pub backlog: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// Connection shards; 0 means one per available core.
    pub shards: usize,
    /// Pin shard i to CPU i (modulo the CPUs available) where the host allows.
    pub pin: bool,
    /// io_uring depth of each executor's rings.
    pub ring_depth: usize,
    /// Registered I/O memory of each executor (the gateway does no file I/O).
    pub io_memory_bytes: usize,
    /// Busy-poll this long before an idle shard parks (0 = park at once).
    pub spin_before_park_us: u64,
    /// Per-shard read buffer that every connection of the shard reads into.
    pub read_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame payload accepted (`too_large` above it).
    pub max_payload_bytes: u32,
    /// Bytes queued towards one connection before DATA to it is refused
    /// with `slow_consumer`.
    pub outbound_queue_bytes: usize,
    /// Connections one shard holds; further accepts are closed at once.
    pub max_connections_per_shard: usize,
    /// Connections the whole gateway holds (all shards); further accepts
    /// are closed at once.
    pub max_connections: usize,
    /// Connections open at once from one source IP address (0 = no limit);
    /// further accepts from it are closed at once.
    pub max_connections_per_ip: u32,
    /// New connections per second from one source IP address (0 = no
    /// limit), with bursts up to `new_connections_per_ip_burst`; further
    /// accepts from it are closed at once.
    pub new_connections_per_ip_per_s: u32,
    pub new_connections_per_ip_burst: u32,
    /// Source networks the per-IP limits do not apply to (`"10.0.0.0/8"`,
    /// `"::1/128"`). Loopback by default, so local tools and benchmarks are
    /// not limited.
    pub limit_exempt: Vec<ipnet::IpNet>,
    /// DATA frames one connection may send per second (0 = no limit, at
    /// most 65535); each one beyond it in the same second is dropped and
    /// answered `ERROR slow_consumer`, the connection is kept.
    pub max_data_frames_per_s: u32,
    /// Addresses one connection may watch at once.
    pub max_subscriptions_per_connection: usize,
    /// Batches in flight on one cross-shard channel (one channel per ordered
    /// pair of shards).
    pub channel_capacity_batches: usize,
    /// Bytes of DATA waiting for one destination shard while its channel is
    /// full; DATA beyond it is refused with `slow_consumer`.
    pub channel_pending_bytes: usize,
    /// Largest HTTP upgrade request on the WebSocket port.
    pub max_http_request_bytes: usize,
    /// Offline addresses whose last-seen time a shard remembers for
    /// PRESENCE `at_us`.
    pub presence_memory_entries: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub heartbeat_timeout_ms: u32,
    pub handshake_timeout_ms: u32,
    /// After the gateway closes a connection with an ERROR, how long it keeps
    /// draining the peer's input so the ERROR is not destroyed by a reset.
    pub close_linger_ms: u32,
    /// On SIGTERM/SIGINT, how long the gateway waits for connections to
    /// take their `shutting_down` before it exits anyway.
    pub shutdown_deadline_ms: u32,
    /// Resolution of the per-shard timeout wheel.
    pub timer_tick_ms: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    /// Requests one shard gathers for the service shard in one tick; a
    /// TIME_REQ beyond it is answered by the connection's own shard, a state
    /// request with `store_unavailable`.
    pub queue_capacity: usize,
    /// Batches of requests (one per shard per tick) in flight to the service
    /// shard.
    pub queue_batches: usize,
    /// Replies queued from the service shard to one connection shard.
    pub reply_capacity: usize,
}

/// Where client state is kept and how writes are batched.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    /// MySQL/MariaDB URL (`mysql://user:pass@host:3306/db`); empty means the
    /// embedded SQLite store in `data_dir`. `GATEWAY_MYSQL_URL` overrides it.
    pub mysql_url: String,
    /// Directory of the embedded store (`gateway.sqlite3`).
    pub data_dir: std::path::PathBuf,
    /// Page cache of the embedded store, in KiB (a fixed cost, not per
    /// connection).
    pub sqlite_cache_kib: u32,
    /// A batch is committed once it has this many rows...
    pub batch_rows: usize,
    /// ...and carries at most this many (a backlog that built up during the
    /// previous commit goes out in one transaction).
    pub batch_rows_max: usize,
    /// ...or once its oldest write has waited this long.
    pub batch_interval_ms: u64,
    /// Batches committed at once, each on its own database connection; an
    /// address is never in two of them.
    pub commits_in_flight: usize,
    /// State writes waiting to be committed; a write beyond this is answered
    /// `store_unavailable` at once.
    pub queue_capacity: usize,
    /// Committed states kept in memory for STATE_GET.
    pub cache_entries: usize,
    /// Backoff between retries while the database fails: first delay, cap.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// On SIGTERM/SIGINT, how long queued writes may take to commit.
    pub shutdown_flush_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter (`info`, `debug`, `uring_gateway=trace`); `RUST_LOG`
    /// wins when set.
    pub level: String,
}

/// The HTTP pages of the WebSocket ports.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Source networks that may read `/metrics` and `/healthz`; others get
    /// 403. Loopback by default: list the scraper's network to expose them.
    pub ops_allow: Vec<ipnet::IpNet>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            ops_allow: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
        }
    }
}

/// Several gateway nodes routing through NATS (off when `nats_url` is
/// empty). See docs/cluster.md.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222` (several separated by
    /// commas); empty means a single node.
    pub nats_url: String,
    /// This node's name, unique in the cluster: 1 to 64 of `A-Z a-z 0-9 - _`.
    pub node_id: String,
    /// First token of every subject the nodes use (`<prefix>.node.<id>`, ...).
    pub subject_prefix: String,
    /// The JetStream key-value bucket holding `address -> node`.
    pub directory_bucket: String,
    /// Directory entries expire after this unless refreshed (every quarter
    /// of it, by a sweep of the node's own addresses).
    pub directory_ttl_s: u64,
    /// Each node says it is alive this often.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is down: its addresses are
    /// offline everywhere.
    pub node_timeout_ms: u64,
    /// Bound of the `address -> node` cache each node keeps of lookups.
    pub cache_entries: usize,
    /// Bound of the DATA bytes waiting for a lookup; beyond it a frame is
    /// answered `slow_consumer`.
    pub pending_bytes: usize,
    /// Directory writes and lookups in flight at once.
    pub directory_ops_in_flight: usize,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            nats_url: String::new(),
            node_id: String::new(),
            subject_prefix: "gw".into(),
            directory_bucket: "gw_directory".into(),
            directory_ttl_s: 3600,
            heartbeat_ms: 500,
            node_timeout_ms: 3000,
            cache_entries: 65_536,
            pending_bytes: 16 << 20,
            directory_ops_in_flight: 256,
        }
    }
}

impl Cluster {
    pub fn enabled(&self) -> bool {
        !self.nats_url.is_empty()
    }
}

/// The certificate of the TLS and WSS listeners.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, the server's own certificate first.
    pub cert_path: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: std::path::PathBuf,
}

/// Token authentication and per-address authorization (see `auth`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// `off`: HELLO's token is ignored and every address may reach every
    /// other; `jwt`: HELLO needs a valid token.
    pub mode: AuthMode,
    /// HS256 signing keys, chosen by the token header's `kid`; several at
    /// once let keys rotate without downtime.
    pub keys: Vec<AuthKey>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Off,
    Jwt,
}

/// Shortest HS256 secret accepted (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthKey {
    pub kid: String,
    pub secret: String,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 7000))],
            ws: vec![SocketAddr::from(([127, 0, 0, 1], 7001))],
            tls: Vec::new(),
            wss: Vec::new(),
            backlog: 4096,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            shards: 0,
            pin: true,
            ring_depth: 2048,
            io_memory_bytes: 512 * 1024,
            spin_before_park_us: 0,
            read_buffer_bytes: 256 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            max_connections_per_shard: 1_000_000,
            max_connections: 1_000_000,
            max_connections_per_ip: 1024,
            new_connections_per_ip_per_s: 100,
            new_connections_per_ip_burst: 200,
            limit_exempt: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            max_data_frames_per_s: 50_000,
            max_subscriptions_per_connection: 1024,
            channel_capacity_batches: 1024,
            channel_pending_bytes: 64 * 1024 * 1024,
            max_http_request_bytes: 8192,
            presence_memory_entries: 1_000_000,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            heartbeat_timeout_ms: 90_000,
            handshake_timeout_ms: 10_000,
            close_linger_ms: 2_000,
            shutdown_deadline_ms: 5_000,
            timer_tick_ms: 100,
        }
    }
}

impl Default for Service {
    fn default() -> Self {
        Service {
            queue_capacity: 65_536,
            queue_batches: 1024,
            reply_capacity: 65_536,
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store {
            mysql_url: String::new(),
            data_dir: std::path::PathBuf::from("gateway-data"),
            sqlite_cache_kib: 512,
            batch_rows: 512,
            batch_rows_max: 8192,
            commits_in_flight: 2,
            batch_interval_ms: 5,
            queue_capacity: 262_144,
            cache_entries: 100_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            shutdown_flush_ms: 5_000,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_string(),
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: String::new(),
            source: Box::new(source),
        })
    }

    /// Checks the relations between settings that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let l = &self.listen;
        if l.tcp.is_empty() && l.ws.is_empty() && l.tls.is_empty() && l.wss.is_empty() {
            return bad("listen: at least one tcp, ws, tls or wss address is needed");
        }
        let tls_files =
            !self.tls.cert_path.as_os_str().is_empty() && !self.tls.key_path.as_os_str().is_empty();
        if (!l.tls.is_empty() || !l.wss.is_empty()) && !tls_files {
            return bad("listen.tls and listen.wss need [tls] cert_path and key_path");
        }
        if self.limits.max_payload_bytes == 0 || self.limits.max_payload_bytes > (1 << 30) {
            return bad("limits.max_payload_bytes must be in 1..=1073741824");
        }
        if self.limits.outbound_queue_bytes < 1024 {
            return bad("limits.outbound_queue_bytes must be at least 1024");
        }
        if self.limits.channel_capacity_batches == 0 {
            return bad("limits.channel_capacity_batches must be at least 1");
        }
        if self.limits.max_connections_per_shard == 0 {
            return bad("limits.max_connections_per_shard must be at least 1");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections must be at least 1");
        }
        if self.limits.max_data_frames_per_s > u32::from(u16::MAX) {
            return bad("limits.max_data_frames_per_s must be at most 65535 (0 = no limit)");
        }
        if self.limits.new_connections_per_ip_per_s > 1_000_000 {
            return bad(
                "limits.new_connections_per_ip_per_s must be at most 1000000 (0 = no limit)",
            );
        }
        if self.timeouts.timer_tick_ms == 0 {
            return bad("timeouts.timer_tick_ms must be at least 1");
        }
        if self.timeouts.heartbeat_timeout_ms == 0 || self.timeouts.handshake_timeout_ms == 0 {
            return bad("timeouts must be at least 1 ms");
        }
        if self.runtime.read_buffer_bytes < 4096 {
            return bad("runtime.read_buffer_bytes must be at least 4096");
        }
        if self.service.queue_capacity == 0
            || self.service.queue_batches == 0
            || self.service.reply_capacity == 0
        {
            return bad("service queue capacities must be at least 1");
        }
        if self.store.batch_rows == 0 || self.store.queue_capacity == 0 {
            return bad("store.batch_rows and store.queue_capacity must be at least 1");
        }
        if self.store.commits_in_flight == 0 {
            return bad("store.commits_in_flight must be at least 1");
        }
        if self.store.batch_rows_max < self.store.batch_rows {
            return bad("store.batch_rows_max must be at least store.batch_rows");
        }
        if self.store.retry_initial_ms == 0 || self.store.retry_max_ms < self.store.retry_initial_ms
        {
            return bad("store.retry_initial_ms must be at least 1 and at most store.retry_max_ms");
        }
        self.validate_cluster()?;
        self.validate_auth()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if !c.enabled() {
            return Ok(());
        }
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !crate::cluster::wire::valid_name(&c.node_id) {
            return bad(
                "cluster.node_id must be 1 to 64 of A-Z a-z 0-9 - _ when cluster.nats_url is set",
            );
        }
        if !crate::cluster::wire::valid_name(&c.subject_prefix)
            || !crate::cluster::wire::valid_name(&c.directory_bucket)
        {
            return bad("cluster.subject_prefix and cluster.directory_bucket must be 1 to 64 of A-Z a-z 0-9 - _");
        }
        if c.heartbeat_ms == 0 || c.node_timeout_ms < 2 * c.heartbeat_ms {
            return bad("cluster.heartbeat_ms must be at least 1 and cluster.node_timeout_ms at least twice it");
        }
        if c.directory_ttl_s < 4 {
            return bad("cluster.directory_ttl_s must be at least 4");
        }
        if c.cache_entries == 0 || c.pending_bytes < 65_536 || c.directory_ops_in_flight == 0 {
            return bad("cluster.cache_entries and cluster.directory_ops_in_flight must be at least 1, cluster.pending_bytes at least 65536");
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let keys = &self.auth.keys;
        if self.auth.mode == AuthMode::Jwt && keys.is_empty() {
            return bad("auth.mode = \"jwt\" needs at least one [[auth.keys]]".into());
        }
        for (i, k) in keys.iter().enumerate() {
            if k.kid.is_empty() {
                return bad("auth.keys: kid must not be empty".into());
            }
            if k.secret.len() < MIN_SECRET_BYTES {
                return bad(format!(
                    "auth.keys {:?}: secret must be at least {MIN_SECRET_BYTES} bytes",
                    k.kid
                ));
            }
            if keys[..i].iter().any(|o| o.kid == k.kid) {
                return bad(format!("auth.keys: kid {:?} appears twice", k.kid));
            }
        }
        Ok(())
    }

    /// Number of connection shards after resolving `shards = 0`.
    pub fn shard_count(&self) -> usize {
        if self.runtime.shards > 0 {
            self.runtime.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Largest WebSocket message accepted: a binary frame of the maximum
    /// payload, or its JSON form with the payload in base64 plus the named
    /// fields.
    pub fn max_ws_message_bytes(&self) -> usize {
        let payload = self.limits.max_payload_bytes as usize;
        let binary = crate::proto::HEADER_LEN + payload;
        let json = payload.div_ceil(3) * 4 + 1024;
        binary.max(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.tcp[0].port(), 7000);
        assert_eq!(c.listen.ws[0].port(), 7001);
        assert_eq!(c.timeouts.heartbeat_timeout_ms, 90_000);
        assert_eq!(c.timeouts.handshake_timeout_ms, 10_000);
        assert_eq!(c.limits.max_payload_bytes, 1 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn sample_file_parses_and_matches_defaults() {
        let text = include_str!("../config/gateway.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_toml("[limits]\nmax_payload = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_payload"), "{e}");
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::from_toml("[timeouts]\nheartbeat_timeout_ms = 500\n").unwrap();
        assert_eq!(c.timeouts.heartbeat_timeout_ms, 500);
        assert_eq!(c.timeouts.handshake_timeout_ms, 10_000);
    }

    #[test]
    fn validation_catches_bad_relations() {
        let mut c = Config::default();
        c.limits.max_payload_bytes = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.listen.tcp.clear();
        c.listen.ws.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn auth_section_parses_and_validates() {
        let secret = "s".repeat(MIN_SECRET_BYTES);
        let text = format!(
            "[auth]\nmode = \"jwt\"\n[[auth.keys]]\nkid = \"a\"\nsecret = \"{secret}\"\n\
             [[auth.keys]]\nkid = \"b\"\nsecret = \"{secret}\"\n"
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Jwt);
        assert_eq!(c.auth.keys.len(), 2);
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains(&secret), "secret in Debug");

        let mut c2 = c.clone();
        c2.auth.keys.clear();
        assert!(c2.validate().is_err(), "jwt without keys");
        let mut c2 = c.clone();
        c2.auth.keys[1].kid = "a".into();
        assert!(c2.validate().is_err(), "duplicate kid");
        let mut c2 = c.clone();
        c2.auth.keys[0].secret = "short".into();
        assert!(c2.validate().is_err(), "short secret");
        assert!(Config::from_toml("[auth]\nmode = \"basic\"\n").is_err());
    }

    #[test]
    fn tls_listeners_need_a_certificate() {
        let c = Config::from_toml("[listen]\ntls = [\"127.0.0.1:7443\"]\n").unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_toml(
            "[listen]\nwss = [\"127.0.0.1:7444\"]\n[tls]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.wss.len(), 1);
        assert_eq!(c.listen.tcp.len(), 1, "plain listeners keep their defaults");
    }

    #[test]
    fn ws_message_limit_covers_base64_json() {
        let mut c = Config::default();
        c.limits.max_payload_bytes = 3000;
        assert_eq!(c.max_ws_message_bytes(), 4000 + 1024);
    }
}
