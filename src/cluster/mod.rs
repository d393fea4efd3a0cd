//! Several gateway nodes routing through NATS (`[cluster]`; docs/cluster.md).
//!
//! The cluster lives on the service shard: `async-nats` is a tokio client,
//! and the service shard already runs a tokio runtime for the store, so the
//! connection shards never touch NATS. They hand it, once per tick and
//! inside their service batch, the DATA frames whose destination is not
//! connected to this node, the presence changes of their addresses, and the
//! `Locate` questions of SUBSCRIBE and STATE_GET; it answers with service
//! events.
//!
//! - **Directory.** A JetStream key-value bucket maps every connected
//!   address to its node (`since`, node incarnation, node name). A node
//!   writes its own entries (put on register, delete on disconnect, guarded
//!   by revision) and re-writes all of them every quarter of the bucket's
//!   TTL. Lookups go through a bounded local cache.
//! - **Subjects.** One per node (`<prefix>.node.<id>`: DATA and bounces),
//!   not one per address; `<prefix>.presence` (every node's registrations
//!   and disconnections, which keep caches, takeovers and watchers right),
//!   `<prefix>.state` (committed states, for watchers on other nodes),
//!   `<prefix>.hb` (liveness: a node not heard from for `node_timeout_ms`
//!   is down and its addresses are offline everywhere).
//! - **Order.** Frames from one sender to one destination take one path
//!   (sender shard -> owner shard -> this thread -> one NATS connection ->
//!   the other node's thread -> its owner shard), and frames waiting for a
//!   lookup wait in order behind the first.

mod directory;
mod inbound;
pub mod wire;

use crate::config;
use crate::proto::ErrorCode;
use crate::routing::owner_shard;
use crate::service::now_us;
use crate::shard::msg::{RemoteConn, RemoteDelivery, RemoteItem, ServiceEvent, Then};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_lite::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;
use wire::{PresenceRecord, Sender, WireConn};

/// Largest message the nodes send each other (NATS's default limit is
/// 1 MiB); DATA records beyond what fits in one are bounced `too_large`.
const MESSAGE_BYTES: usize = 512 * 1024;

/// Messages from NATS waiting for the service loop.
const INBOX_CAPACITY: usize = 4096;

/// What woke the cluster.
pub enum Wake {
    Inbound(Box<Inbound>),
    Looked(Result<LookupDone, tokio::task::JoinError>),
    Dir(Result<DirDone, tokio::task::JoinError>),
    Kv(Box<Result<Result<kv::Store, String>, tokio::task::JoinError>>),
    Tick,
}

/// What the subscriptions and the connection hand the service loop.
pub enum Inbound {
    Node(async_nats::Message),
    Presence(async_nats::Message),
    State(async_nats::Message),
    Heartbeat(async_nats::Message),
    Event(async_nats::Event),
}

/// Where the directory says an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    At {
        node: u16,
        since_us: u64,
    },
    /// Connected nowhere, as of the lookup; trusted until `until`.
    Nowhere {
        until: Instant,
    },
}

struct Node {
    name: String,
    incarnation: u64,
    last_seen: Instant,
    alive: bool,
}

/// An address connected to this node.
struct Local {
    since_us: u64,
    /// The directory revision of our entry, once written.
    rev: Option<u64>,
}

/// A directory write.
#[derive(Debug, Clone, Copy)]
pub enum DirOp {
    Put { since_us: u64 },
    Delete { rev: Option<u64> },
}

type DirDone = (Uuid, DirOp, Result<Option<u64>, String>);
type LookupDone = (Uuid, Result<Option<Bytes>, String>);

/// Frames and questions waiting for one lookup.
#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    items: Vec<RemoteItem>,
    thens: Vec<Then>,
}

/// Counters of the cluster link, for the log and `/metrics`.
#[derive(Default, Debug, Clone, Copy)]
pub struct ClusterStats {
    pub data_sent: u64,
    pub data_received: u64,
    pub bounced: u64,
    pub lookups: u64,
    pub lookups_refused: u64,
    pub directory_writes: u64,
    pub directory_errors: u64,
    pub nodes_down: u64,
    pub bad_messages: u64,
    pub dropped_disconnected: u64,
}

pub struct Cluster {
    cfg: config::Cluster,
    name: String,
    incarnation: u64,
    nshards: usize,
    client: async_nats::Client,
    subjects: Subjects,
    kv: Option<kv::Store>,
    kv_setup: JoinSet<Result<kv::Store, String>>,
    inbox: mpsc::Receiver<Inbound>,
    inbox_tx: mpsc::Sender<Inbound>,
    subscribed: bool,
    nodes: Vec<Node>,
    node_index: HashMap<String, u16>,
    cache: HashMap<Uuid, Loc>,
    waiting: HashMap<Uuid, Waiting>,
    waiting_bytes: usize,
    lookups: JoinSet<LookupDone>,
    local: HashMap<Uuid, Local>,
    dir_next: HashMap<Uuid, DirOp>,
    dir_ready: VecDeque<Uuid>,
    dir_busy: HashSet<Uuid>,
    dir_ops: JoinSet<DirDone>,
    /// Messages being built, by node index, and the ones full and ready.
    out_node: HashMap<u16, Vec<u8>>,
    out_presence: Vec<u8>,
    out_state: Vec<u8>,
    ready: Vec<(String, Vec<u8>)>,
    /// Events for each shard, sent once per wakeup.
    events: Vec<Vec<ServiceEvent>>,
    shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
    /// Committed states other nodes announced, for the service's cache.
    pub remote_states: Vec<(Uuid, u64, Arc<[u8]>)>,
    next_heartbeat: Instant,
    next_sweep: Instant,
    pub stats: ClusterStats,
}

struct Subjects {
    mine: String,
    presence: String,
    state: String,
    heartbeat: String,
    node_prefix: String,
}

impl Cluster {
    /// Connects in the background (a node starts even while NATS is
    /// unreachable) and subscribes; returns at once.
    pub async fn start(
        cfg: config::Cluster,
        shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
    ) -> Result<Cluster, String> {
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let events_tx = inbox_tx.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("gateway {}", cfg.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(2000))
            })
            .event_callback(move |ev| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(Inbound::Event(ev)).await;
                }
            });
        let client = options
            .connect(cfg.nats_url.as_str())
            .await
            .map_err(|e| format!("cluster: cannot use nats_url {}: {e}", cfg.nats_url))?;
        let p = &cfg.subject_prefix;
        let subjects = Subjects {
            mine: format!("{p}.node.{}", cfg.node_id),
            presence: format!("{p}.presence"),
            state: format!("{p}.state"),
            heartbeat: format!("{p}.hb"),
            node_prefix: format!("{p}.node."),
        };
        let now = Instant::now();
        let mut c = Cluster {
            name: cfg.node_id.clone(),
            incarnation: now_us(),
            nshards: shards.len(),
            client,
            subjects,
            kv: None,
            kv_setup: JoinSet::new(),
            inbox,
            inbox_tx,
            subscribed: false,
            nodes: Vec::new(),
            node_index: HashMap::new(),
            cache: HashMap::new(),
            waiting: HashMap::new(),
            waiting_bytes: 0,
            lookups: JoinSet::new(),
            local: HashMap::new(),
            dir_next: HashMap::new(),
            dir_ready: VecDeque::new(),
            dir_busy: HashSet::new(),
            dir_ops: JoinSet::new(),
            out_node: HashMap::new(),
            out_presence: Vec::new(),
            out_state: Vec::new(),
            ready: Vec::new(),
            events: shards.iter().map(|_| Vec::new()).collect(),
            shards,
            remote_states: Vec::new(),
            next_heartbeat: now,
            next_sweep: now + Duration::from_secs(cfg.directory_ttl_s / 4),
            stats: ClusterStats::default(),
            cfg,
        };
        c.subscribe().await?;
        tracing::info!(node = %c.name, nats = %c.cfg.nats_url, "cluster configured");
        Ok(c)
    }

    async fn subscribe(&mut self) -> Result<(), String> {
        if self.subscribed {
            return Ok(());
        }
        let s = &self.subjects;
        let subs = [
            (s.mine.clone(), 0u8),
            (s.presence.clone(), 1),
            (s.state.clone(), 2),
            (s.heartbeat.clone(), 3),
        ];
        for (subject, which) in subs {
            let mut sub = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("cluster: subscribe {subject}: {e}"))?;
            let tx = self.inbox_tx.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let item = match which {
                        0 => Inbound::Node(m),
                        1 => Inbound::Presence(m),
                        2 => Inbound::State(m),
                        _ => Inbound::Heartbeat(m),
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            });
        }
        self.subscribed = true;
        Ok(())
    }

    fn me(&self) -> Sender<'_> {
        Sender {
            name: &self.name,
            incarnation: self.incarnation,
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn emit(&mut self, shard: usize, ev: ServiceEvent) {
        self.events[shard].push(ev);
    }

    fn owner(&self, addr: &Uuid) -> usize {
        owner_shard(addr, self.nshards)
    }

    // ----- from the shards ------------------------------------------------

    /// An address of this node came online or went offline.
    pub fn local_presence(&mut self, addr: Uuid, online: bool, at_us: u64) {
        if online {
            self.local.insert(
                addr,
                Local {
                    since_us: at_us,
                    rev: None,
                },
            );
            self.cache.remove(&addr);
            self.schedule(addr, DirOp::Put { since_us: at_us });
        } else {
            let rev = match self.local.remove(&addr) {
                Some(l) => l.rev,
                None => return,
            };
            self.schedule(addr, DirOp::Delete { rev });
        }
        let rec = PresenceRecord {
            addr,
            online,
            at_us,
        };
        self.push_presence(rec);
    }

    fn push_presence(&mut self, rec: PresenceRecord) {
        let me = Sender {
            name: &self.name,
            incarnation: self.incarnation,
        };
        let subject = &self.subjects.presence;
        make_room(
            &mut self.out_presence,
            25,
            || subject.clone(),
            &mut self.ready,
            &me,
        );
        wire::put_presence(&mut self.out_presence, rec);
    }

    /// A committed state of `addr`, for watchers on other nodes.
    pub fn state_committed(&mut self, addr: Uuid, updated_at_us: u64, blob: &[u8]) {
        if !self.nodes.iter().any(|n| n.alive) {
            return;
        }
        let need = 28 + blob.len();
        if wire::header_len(&self.name) + need > MESSAGE_BYTES {
            return;
        }
        let me = Sender {
            name: &self.name,
            incarnation: self.incarnation,
        };
        let subject = &self.subjects.state;
        make_room(
            &mut self.out_state,
            need,
            || subject.clone(),
            &mut self.ready,
            &me,
        );
        wire::put_state(&mut self.out_state, addr, updated_at_us, blob);
    }

    /// DATA for addresses not connected here.
    pub fn remote_data(&mut self, bytes: &[u8], items: &[RemoteItem]) {
        for it in items {
            let frame = &bytes[it.start as usize..(it.start + it.len) as usize];
            let dst = frame_dst(frame);
            self.route(dst, *it, frame);
        }
    }

    fn route(&mut self, dst: Uuid, it: RemoteItem, frame: &[u8]) {
        if frame.len() + wire::DATA_OVERHEAD + wire::header_len(&self.name) > MESSAGE_BYTES {
            self.bounce_local(it, frame, ErrorCode::TooLarge);
            return;
        }
        if let Some(w) = self.waiting.get_mut(&dst) {
            if self.waiting_bytes + frame.len() > self.cfg.pending_bytes {
                self.bounce_local(it, frame, ErrorCode::SlowConsumer);
                return;
            }
            self.waiting_bytes += frame.len();
            let start = w.bytes.len() as u32;
            w.bytes.extend_from_slice(frame);
            w.items.push(RemoteItem { start, ..it });
            return;
        }
        match self.cached(&dst) {
            Some(Loc::At { node, .. }) => self.send_data(node, it, frame),
            Some(Loc::Nowhere { .. }) => self.bounce_local(it, frame, ErrorCode::DstOffline),
            None => {
                if !self.can_look_up() {
                    self.bounce_local(it, frame, ErrorCode::DstOffline);
                    return;
                }
                if self.lookups_full() || self.waiting_bytes + frame.len() > self.cfg.pending_bytes
                {
                    self.bounce_local(it, frame, ErrorCode::SlowConsumer);
                    return;
                }
                self.waiting_bytes += frame.len();
                let mut w = Waiting::default();
                w.bytes.extend_from_slice(frame);
                w.items.push(RemoteItem { start: 0, ..it });
                self.waiting.insert(dst, w);
                self.look_up(dst);
            }
        }
    }

    /// A question of an owner shard: where is `addr`?
    pub fn locate(&mut self, addr: Uuid, then: Then) {
        if let Some(w) = self.waiting.get_mut(&addr) {
            w.thens.push(then);
            return;
        }
        let at = match self.cached(&addr) {
            Some(Loc::At { node, since_us }) => Some((node, since_us)),
            Some(Loc::Nowhere { .. }) => None,
            // At the lookup bound the answer is "offline" (counted).
            None if self.lookups_full() => {
                self.stats.lookups_refused += 1;
                None
            }
            None if self.can_look_up() => {
                let w = Waiting {
                    thens: vec![then],
                    ..Waiting::default()
                };
                self.waiting.insert(addr, w);
                self.look_up(addr);
                return;
            }
            None => None,
        };
        let shard = self.owner(&addr);
        self.emit(shard, ServiceEvent::Located { addr, at, then });
    }

    /// A DATA frame from another node was not delivered here.
    pub fn bounce(&mut self, to: RemoteConn, id: u64, code: ErrorCode, dst: Uuid) {
        let need = 1 + 2 + 4 + 4 + 8 + 2 + 16;
        let buf = self.node_buf(to.node, need);
        let wc = WireConn {
            shard: to.shard,
            conn: to.conn,
        };
        wire::put_bounce(buf, wc, id, code, dst);
    }

    // ----- to other nodes -------------------------------------------------

    fn node_buf(&mut self, node: u16, need: usize) -> &mut Vec<u8> {
        let me = Sender {
            name: &self.name,
            incarnation: self.incarnation,
        };
        let (prefix, nodes) = (&self.subjects.node_prefix, &self.nodes);
        let buf = self.out_node.entry(node).or_default();
        let subject = || format!("{prefix}{}", nodes[node as usize].name);
        make_room(buf, need, subject, &mut self.ready, &me);
        buf
    }

    fn send_data(&mut self, node: u16, it: RemoteItem, frame: &[u8]) {
        self.stats.data_sent += 1;
        let buf = self.node_buf(node, wire::DATA_OVERHEAD + frame.len());
        let wc = WireConn {
            shard: it.shard,
            conn: it.conn,
        };
        wire::put_data(buf, wc, frame);
    }

    /// A frame of a connection here that cannot reach its destination.
    fn bounce_local(&mut self, it: RemoteItem, frame: &[u8], code: ErrorCode) {
        self.stats.bounced += 1;
        let id = frame_id(frame);
        self.emit(
            it.shard as usize,
            ServiceEvent::StateError {
                conn: it.conn,
                id,
                code,
            },
        );
    }

    /// Waits for the next thing the cluster must handle.
    pub async fn next(&mut self) -> Wake {
        let hb = tokio::time::sleep_until(tokio::time::Instant::from_std(self.next_heartbeat));
        tokio::select! {
            Some(m) = self.inbox.recv() => Wake::Inbound(Box::new(m)),
            Some(r) = self.lookups.join_next(), if !self.lookups.is_empty() => Wake::Looked(r),
            Some(r) = self.dir_ops.join_next(), if !self.dir_ops.is_empty() => Wake::Dir(r),
            Some(r) = self.kv_setup.join_next(), if !self.kv_setup.is_empty() => Wake::Kv(Box::new(r)),
            _ = hb => Wake::Tick,
        }
    }

    pub fn handle(&mut self, w: Wake) {
        match w {
            Wake::Inbound(m) => self.on_inbound(*m),
            Wake::Looked(r) => self.looked_up(r),
            Wake::Dir(r) => self.dir_done(r),
            Wake::Kv(r) => self.kv_opened(*r),
            Wake::Tick => self.on_tick(),
        }
    }

    /// Publishes what this wakeup built and hands the shards their events.
    pub async fn flush(&mut self) {
        let nodes: Vec<u16> = self.out_node.keys().copied().collect();
        for node in nodes {
            let b = self.out_node.remove(&node).expect("listed");
            let subject = format!(
                "{}{}",
                self.subjects.node_prefix, self.nodes[node as usize].name
            );
            self.ready.push((subject, b));
        }
        for (subject, buf) in [
            (
                self.subjects.presence.clone(),
                std::mem::take(&mut self.out_presence),
            ),
            (
                self.subjects.state.clone(),
                std::mem::take(&mut self.out_state),
            ),
        ] {
            if !buf.is_empty() {
                self.ready.push((subject, buf));
            }
        }
        let ready = std::mem::take(&mut self.ready);
        let connected = self.connected();
        for (subject, buf) in ready {
            if !connected {
                self.undeliverable(&subject, &buf);
                continue;
            }
            if let Err(e) = self.client.publish(subject.clone(), buf.into()).await {
                tracing::debug!(%subject, error = %e, "cluster: publish failed");
            }
        }
        crate::service::send_batches(&self.shards, &mut self.events, "cluster events").await;
    }

    /// NATS is down: DATA in an unsent message is answered `dst_offline`;
    /// presence and heartbeats are sent again on reconnect.
    fn undeliverable(&mut self, subject: &str, buf: &[u8]) {
        self.stats.dropped_disconnected += 1;
        if !subject.starts_with(&self.subjects.node_prefix) {
            return;
        }
        let Ok((_, records)) = wire::split_header(buf) else {
            return;
        };
        let mut bounced = Vec::new();
        for r in wire::NodeRecords(records).flatten() {
            if let wire::NodeRecord::Data { from, frame } = r {
                bounced.push((from, frame_id(frame)));
            }
        }
        for (from, id) in bounced {
            self.stats.bounced += 1;
            self.emit(
                from.shard as usize,
                ServiceEvent::StateError {
                    conn: from.conn,
                    id,
                    code: ErrorCode::DstOffline,
                },
            );
        }
    }

    /// Copies the link's figures into the metrics registry.
    pub fn publish(&self, m: &crate::metrics::ClusterSlot) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        m.on.store(true, Relaxed);
        m.connected.store(self.connected(), Relaxed);
        let alive = self.nodes.iter().filter(|n| n.alive).count();
        m.nodes_alive.store(alive as u64, Relaxed);
        m.data_sent.store(s.data_sent, Relaxed);
        m.data_received.store(s.data_received, Relaxed);
        m.bounced.store(s.bounced, Relaxed);
        m.lookups.store(s.lookups, Relaxed);
        m.directory_errors.store(s.directory_errors, Relaxed);
        m.bad_messages.store(s.bad_messages, Relaxed);
    }

    pub async fn close(&mut self) {
        tracing::info!(stats = ?self.stats, "cluster: link counters");
        // Bounded: with NATS gone, a flush would wait for a reconnect.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
    }
}

/// Makes room for `need` more bytes in the message being built in `buf`:
/// a message that would grow past `MESSAGE_BYTES` goes to `ready` (named by
/// `subject`), and an empty one starts with the header.
fn make_room(
    buf: &mut Vec<u8>,
    need: usize,
    subject: impl FnOnce() -> String,
    ready: &mut Vec<(String, Vec<u8>)>,
    me: &Sender<'_>,
) {
    if buf.len() > wire::header_len(me.name) && buf.len() + need > MESSAGE_BYTES {
        ready.push((subject(), std::mem::take(buf)));
    }
    if buf.is_empty() {
        buf.reserve(16 * 1024);
        wire::put_header(buf, me);
    }
}

/// The destination of a DATA frame (bytes 24..40 of its header).
fn frame_dst(frame: &[u8]) -> Uuid {
    Uuid::from_slice(&frame[24..40]).expect("DATA frames carry a header")
}

/// The id of a DATA frame (bytes 40..48 of its header).
fn frame_id(frame: &[u8]) -> u64 {
    u64::from_be_bytes(
        frame[40..48]
            .try_into()
            .expect("DATA frames carry a header"),
    )
}
