//! uring-gateway: an IoT communication gateway. Controllers and host software
//! connect over TCP, web pages over WebSocket; every endpoint has a 16-byte
//! address and the gateway forwards each frame to the connection that holds
//! its destination address. The wire contract is `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! The data path, from the socket inwards:
//!
//! - [`transport`]: the only code that touches sockets: listeners, plain TCP
//!   framing, the WebSocket upgrade and WebSocket framing.
//! - [`proto`]: the wire codec and its JSON mapping; sans-IO (no sockets, no
//!   clock), so it is tested on its own.
//! - [`shard`]: one glommio executor per core. Each owns its connections, the
//!   routing table of the addresses it owns (`owner = hash(address) %
//!   shards`), and talks to the other shards only through batched messages on
//!   lock-free channels.
//! - [`routing`]: the owner hash, subscriptions, presence memory.
//! - [`service`]: the dedicated service shard (its own thread): time sync,
//!   batched state writes, signals.
//! - [`store`]: where state and presence are kept: MySQL/MariaDB, or an
//!   embedded SQLite by default.
//! - [`config`]: every setting and bound, from a TOML file.
//! - [`metrics`]: what `/metrics` and `/healthz` report.
//! - [`admission`]: connection limits in total and per source address.
//! - [`auth`]: HELLO tokens (HS256 JWTs) and what they allow.

pub mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod proto;
pub mod routing;
pub mod runtime;
pub mod service;
pub mod shard;
pub mod store;
pub mod transport;
