//! One shard's state and the operations every transport shares: queueing
//! output, closing, registering, presence, cross-shard outboxes, flushing and
//! the timeout sweep. Everything here is synchronous; the tasks in
//! `shard::tasks` drive it and never hold it across an await.

use super::conn::{deadline_ms, Conn, Form, Slab, State, Wire};
use super::msg::{Batch, Msg, ServiceReq};
use super::wheel::{Entry, Wheel};
use crate::config::Config;
use crate::proto::{self, ErrorCode, Header, Kind};
use crate::routing::{owner_shard, ConnKey, PresenceMemory, SubRef, Subscriptions};
use crate::service::now_us;
use crate::transport::ws;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;
use tokio::sync::mpsc;
use uuid::Uuid;

/// An output buffer larger than this is freed once it has been sent instead
/// of going back to the pool, so the pool stays small after a burst.
const OUT_KEEP_BYTES: usize = 4096;

/// Output buffers kept for reuse per shard. A connection holds an output
/// buffer only while it has something to send; once flushed, the buffer goes
/// back to this pool, so an idle connection holds none and a busy one does
/// not allocate per message.
const OUT_POOL_MAX: usize = 1024;

/// Frames the gateway itself generates (errors, presence, replies) may use
/// this multiple of the outbound limit; DATA may use 1x. A connection whose
/// queue passes even that cannot be told anything and is closed.
const CONTROL_ALLOWANCE: usize = 2;

/// Whether a frame was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The destination's outbound queue is over its limit.
    Full,
    /// No such connection, or it is closing.
    Gone,
}

/// Which bound applies to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Data,
    Control,
}

/// Where an address is connected on its owner shard.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub conn: ConnKey,
    /// When the address came online (kept across takeovers).
    pub since_us: u64,
}

/// Frames to one other shard that wait for the next send.
pub struct Outbox {
    pub pending: Batch,
    /// DATA bytes queued for or in flight to that shard, shared with the
    /// receiving shard, which subtracts what it has handled.
    pub in_flight: Arc<AtomicUsize>,
    pub waker: Option<Waker>,
}

/// Counters a shard keeps about itself; logged at shutdown.
#[derive(Default, Debug)]
pub struct Stats {
    pub accepted: u64,
    pub accept_errors: u64,
    pub refused_full: u64,
    pub handovers_out: u64,
    pub handovers_in: u64,
    pub data_in: u64,
    pub data_cross_shard: u64,
    pub dst_offline: u64,
    pub slow_consumer: u64,
    pub closed_unreachable: u64,
    pub timeouts: u64,
    pub errors_sent: u64,
    pub time_local_fallback: u64,
    pub presence_unsaved: u64,
    /// HELLOs refused for their token, and frames refused as `forbidden`.
    pub auth_failed: u64,
    pub forbidden: u64,
    /// TLS sessions that failed (bad handshake, bad record).
    pub tls_failed: u64,
    /// DATA frames refused by `max_data_frames_per_s`.
    pub data_rate_limited: u64,
    /// New connections refused by admission, by reason.
    pub refused_total: u64,
    pub refused_per_ip: u64,
    pub refused_rate: u64,
    /// Cluster: DATA frames sent to and received from other nodes, and
    /// connections closed because another node took their address over.
    pub data_remote_out: u64,
    pub data_remote_in: u64,
    pub remote_takeovers: u64,
    /// Bounces for other nodes dropped because the service queue was full.
    pub remote_unanswered: u64,
}

impl Stats {
    /// The counters' names, as `/metrics` reports them
    /// (`gateway_<name>_total`), in the order of [`Stats::counters`].
    pub const NAMES: &'static [&'static str] = &[
        "accepted",
        "accept_errors",
        "refused_full",
        "handovers_out",
        "handovers_in",
        "data_in",
        "data_cross_shard",
        "dst_offline",
        "slow_consumer",
        "closed_unreachable",
        "timeouts",
        "errors_sent",
        "time_local_fallback",
        "presence_unsaved",
        "auth_failed",
        "forbidden",
        "tls_failed",
        "data_rate_limited",
        "refused_total",
        "refused_per_ip",
        "refused_rate",
        "data_remote_out",
        "data_remote_in",
        "remote_takeovers",
        "remote_unanswered",
    ];

    pub fn counters(&self) -> [u64; 25] {
        [
            self.accepted,
            self.accept_errors,
            self.refused_full,
            self.handovers_out,
            self.handovers_in,
            self.data_in,
            self.data_cross_shard,
            self.dst_offline,
            self.slow_consumer,
            self.closed_unreachable,
            self.timeouts,
            self.errors_sent,
            self.time_local_fallback,
            self.presence_unsaved,
            self.auth_failed,
            self.forbidden,
            self.tls_failed,
            self.data_rate_limited,
            self.refused_total,
            self.refused_per_ip,
            self.refused_rate,
            self.data_remote_out,
            self.data_remote_in,
            self.remote_takeovers,
            self.remote_unanswered,
        ]
    }
}

/// Per-kind and per-code counts and open connections by transport, for
/// `/metrics`; plain integers on the shard's thread, published each tick.
pub struct Traffic {
    pub frames_in: [u64; 256],
    pub frames_out: [u64; 256],
    pub errors: [u64; 16],
    /// Open connections by transport (`metrics::TRANSPORTS`).
    pub open: [u64; 4],
    /// Oldest read (or cross-shard batch) whose DATA is not yet written,
    /// and the DATA frames written as of the last flush.
    pub data_since: Option<Instant>,
    pub data_flushed: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            frames_in: [0; 256],
            frames_out: [0; 256],
            errors: [0; 16],
            open: [0; 4],
            data_since: None,
            data_flushed: 0,
        }
    }
}

pub struct ShardState {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Arc<Config>,
    pub conns: Slab<Conn>,
    pub table: HashMap<Uuid, Route>,
    pub subs: Subscriptions,
    pub presence: PresenceMemory,
    pub outboxes: Vec<Outbox>,
    /// DATA counters of the channels into this shard, by source shard.
    pub inbound: Vec<Arc<AtomicUsize>>,
    pub dirty: Vec<ConnKey>,
    out_pool: Vec<Vec<u8>>,
    pub flusher: Option<Waker>,
    /// Connections that need a reader task (accepted or handed over).
    pub spawn_readers: Vec<ConnKey>,
    /// Connections whose socket buffer is full and need a writer task.
    pub spawn_writers: Vec<ConnKey>,
    pub wheel: Wheel,
    due: Vec<Entry>,
    epoch: Instant,
    /// Shard clock in milliseconds: a coarse clock refreshed every timer tick
    /// and at accept, so the hot path never reads the time (liveness needs
    /// no better than a tick).
    pub now_ms: u64,
    /// The read buffer every connection of this shard reads into.
    pub rbuf: Vec<u8>,
    /// Reused buffers for frames the gateway builds.
    scratch: Vec<u8>,
    json_scratch: Vec<u8>,
    pub payload_scratch: Vec<u8>,
    /// Plaintext of the TLS records of one read (at most the read buffer's
    /// size; empty on a gateway without TLS listeners).
    pub tls_plain: Vec<u8>,
    pub data_scratch: Vec<u8>,
    /// Requests for the service shard gathered this tick; one task sends
    /// them as one batch (a wake-up of the service thread per tick, not per
    /// request). Bounded by `service.queue_capacity`.
    pub service_out: Vec<ServiceReq>,
    pub service_waker: Option<Waker>,
    pub service: mpsc::Sender<Vec<ServiceReq>>,
    /// Admission counts and metrics, shared by every shard.
    pub shared: Arc<super::Shared>,
    /// False once shutdown began: new connections are refused.
    pub accepting: bool,
    /// Shutdown began: report `Drained` to the service shard at the next
    /// tick, once the input already received has been handled.
    pub drain_report_due: bool,
    pub shutting_down: bool,
    pub shutdown_deadline_ms: u64,
    pub stats: Stats,
    pub traffic: Box<Traffic>,
    /// Token checking; None when authentication is off.
    pub auth: Option<crate::auth::Verifier>,
    /// Cluster on: addresses not connected here may be on other nodes.
    pub cluster: bool,
    /// DATA for other nodes gathered this tick (frames packed in
    /// `remote_bytes`), sent with the service batch; bounded by
    /// `cluster.pending_bytes`.
    pub remote_bytes: Vec<u8>,
    pub remote_items: Vec<super::msg::RemoteItem>,
    /// Cluster: watched addresses (owned here) that are online on another
    /// node, with the node and since when. Only watched addresses are kept.
    pub remote_online: HashMap<Uuid, (u16, u64)>,
    /// Cluster: SUBSCRIBEs whose first PRESENCE waits for a lookup (one
    /// entry per `Locate` in flight; each is answered).
    pub locating: Vec<(Uuid, SubRef)>,
}

impl ShardState {
    pub fn new(
        id: usize,
        nshards: usize,
        cfg: Arc<Config>,
        outboxes: Vec<Outbox>,
        inbound: Vec<Arc<AtomicUsize>>,
        service: mpsc::Sender<Vec<ServiceReq>>,
        shared: Arc<super::Shared>,
    ) -> Self {
        let t = &cfg.timeouts;
        let longest = t
            .heartbeat_timeout_ms
            .max(t.handshake_timeout_ms)
            .max(t.close_linger_ms) as u64;
        let tick = t.timer_tick_ms as u64;
        ShardState {
            id,
            nshards,
            conns: Slab::default(),
            table: HashMap::new(),
            subs: Subscriptions::default(),
            presence: PresenceMemory::new(cfg.limits.presence_memory_entries),
            outboxes,
            inbound,
            dirty: Vec::new(),
            out_pool: Vec::new(),
            flusher: None,
            spawn_readers: Vec::new(),
            spawn_writers: Vec::new(),
            wheel: Wheel::new(tick, Wheel::slots_for(longest, tick), 0),
            due: Vec::new(),
            epoch: Instant::now(),
            now_ms: 0,
            rbuf: vec![0; cfg.runtime.read_buffer_bytes],
            scratch: Vec::with_capacity(256),
            json_scratch: Vec::with_capacity(256),
            payload_scratch: Vec::new(),
            tls_plain: Vec::new(),
            data_scratch: Vec::new(),
            service_out: Vec::new(),
            service_waker: None,
            service,
            shared,
            accepting: true,
            drain_report_due: false,
            shutting_down: false,
            shutdown_deadline_ms: 0,
            stats: Stats::default(),
            traffic: Box::default(),
            auth: crate::auth::Verifier::from_config(&cfg.auth),
            cluster: cfg.cluster.enabled(),
            remote_bytes: Vec::new(),
            remote_items: Vec::new(),
            remote_online: HashMap::new(),
            locating: Vec::new(),
            cfg,
        }
    }

    pub fn tick_clock(&mut self) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
    }

    pub fn owner(&self, addr: &Uuid) -> usize {
        owner_shard(addr, self.nshards)
    }

    // ----- output -------------------------------------------------------

    /// Queues a binary frame (header + payload) for `key`, framed for its
    /// wire and converted to JSON when `form` says so.
    pub fn send_frame(&mut self, key: ConnKey, form: Form, frame: &[u8], class: Class) -> Sent {
        let limit = self.cfg.limits.outbound_queue_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return Sent::Gone;
        };
        if !conn.accepts_input() {
            return Sent::Gone;
        }
        let cap = match class {
            Class::Data => limit,
            Class::Control => limit * CONTROL_ALLOWANCE,
        };
        if conn.out.capacity() == 0 {
            if let Some(buf) = self.out_pool.pop() {
                conn.out = buf;
            }
        }
        if conn.queued_len() + frame.len() > cap {
            if class == Class::Control {
                // It cannot even be told; cut it off rather than queue without
                // bound.
                self.stats.closed_unreachable += 1;
                tracing::debug!(shard = self.id, addr = %conn.addr, "outbound queue over limit; closing");
                self.force_close(key);
            }
            return Sent::Full;
        }
        match (conn.wire, form) {
            (Wire::Ws, Form::Binary) => {
                ws::put_header(&mut conn.out, false, frame.len());
                conn.out.extend_from_slice(frame);
            }
            (Wire::Ws, Form::Json) => {
                let header = Header::parse(frame).expect("gateway frames have a header");
                self.json_scratch.clear();
                proto::encode_json(&header, &frame[proto::HEADER_LEN..], &mut self.json_scratch);
                ws::put_header(&mut conn.out, true, self.json_scratch.len());
                conn.out.extend_from_slice(&self.json_scratch);
            }
            _ => conn.out.extend_from_slice(frame),
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
        self.traffic.frames_out[frame[1] as usize] += 1;
        Sent::Queued
    }

    /// Queues bytes already framed for the wire (HTTP responses, WebSocket
    /// control frames).
    pub fn send_raw(&mut self, key: ConnKey, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.out.extend_from_slice(bytes);
        }
        self.mark_dirty(key);
    }

    pub fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
                if let Some(w) = self.flusher.take() {
                    w.wake();
                }
            }
        }
    }

    /// The registered address of `key`, or nil.
    fn dst_of(&self, key: ConnKey) -> Uuid {
        self.conns.get(key).map(|c| c.addr).unwrap_or(Uuid::nil())
    }

    /// Sends ERROR `code` answering frame `id` (0 when unsolicited), and
    /// closes the connection when the code says so.
    pub fn send_error(
        &mut self,
        key: ConnKey,
        form: Form,
        id: u64,
        code: ErrorCode,
        message: &str,
    ) {
        let dst = self.dst_of(key);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        proto::encode_error(&mut buf, dst, id, code, message);
        self.stats.errors_sent += 1;
        self.traffic.errors[code as usize] += 1;
        self.send_frame(key, form, &buf, Class::Control);
        self.scratch = buf;
        if code.closes_connection() {
            self.begin_close(key);
        }
    }

    /// Builds a gateway frame with `build` into the scratch buffer and sends it.
    pub fn send_built(&mut self, key: ConnKey, form: Form, build: impl FnOnce(&mut Vec<u8>, Uuid)) {
        let dst = self.dst_of(key);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        build(&mut buf, dst);
        self.send_frame(key, form, &buf, Class::Control);
        self.scratch = buf;
    }

    /// Sends a gateway frame built by `build` to a registered connection, in
    /// its own form; nothing if it has gone or is closing.
    pub fn send_to_registered(&mut self, to: ConnKey, build: impl FnOnce(&mut Vec<u8>, Uuid)) {
        let Some(conn) = self.conns.get(to) else {
            return;
        };
        if conn.state != State::Open {
            return;
        }
        let form = conn.form();
        self.send_built(to, form, build);
    }

    pub fn send_presence(&mut self, to: ConnKey, id: u64, address: Uuid, online: bool, at_us: u64) {
        self.send_to_registered(to, |b, dst| {
            proto::encode_presence(b, dst, id, address, online, at_us)
        });
    }

    // ----- lifecycle ----------------------------------------------------

    /// Starts closing `key` after whatever is queued (an ERROR, a close
    /// frame): the address goes offline now; the socket's write side is shut
    /// once the output is flushed; input is drained for the linger time.
    pub fn begin_close(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if !conn.accepts_input() {
            return;
        }
        self.unregister(key);
        let now = self.now_ms;
        let linger = self.cfg.timeouts.close_linger_ms as u64;
        let conn = self.conns.get_mut(key).expect("checked above");
        if conn.wire == Wire::Ws {
            ws::put_close(&mut conn.out, 1000);
        }
        conn.state = State::Closing;
        conn.mark_ms = now;
        conn.clear_input();
        conn.wheel_tick = self.wheel.insert(key, now + linger);
        self.mark_dirty(key);
    }

    /// Cuts a connection off at once: its reader sees end of input and frees
    /// it. Used when output cannot be delivered or the linger time is over.
    pub fn force_close(&mut self, key: ConnKey) {
        self.unregister(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.state == State::HandedOver {
            return;
        }
        conn.state = State::Draining;
        conn.out = Vec::new();
        // SAFETY: plain syscall on a descriptor this connection owns.
        unsafe { libc::shutdown(conn.stream.as_raw_fd(), libc::SHUT_RDWR) };
        // Should the reader not wake, look again after another linger.
        let at = self.now_ms + self.cfg.timeouts.close_linger_ms as u64;
        conn.mark_ms = self.now_ms;
        conn.wheel_tick = self.wheel.insert(key, at);
    }

    /// The address of `key` leaves the routing table (if it still points at
    /// `key`: a takeover moved it already) and its subscriptions end.
    pub fn unregister(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.state != State::Open {
            return;
        }
        let addr = conn.addr;
        let watching = conn.take_watching();
        // Leaves Open so a second call does nothing.
        conn.state = State::Closing;
        if self.table.get(&addr).map(|r| r.conn) == Some(key) {
            self.table.remove(&addr);
            if !self.shutting_down {
                let at = now_us();
                self.presence.went_offline(addr, at);
                self.publish_presence(addr, false, at);
                self.persist_presence(addr, false, at, None);
            }
        }
        for watched in watching {
            self.unsubscribe(key, watched);
        }
    }

    /// The reader saw end of input or an error: the connection is gone.
    pub fn on_eof(&mut self, key: ConnKey) {
        self.unregister(key);
    }

    /// Frees the slot (closing the socket). Called by the reader as it ends.
    pub fn finish(&mut self, key: ConnKey) {
        self.unregister(key);
        if let Some(conn) = self.conns.remove(key) {
            // A handed-over connection's ticket and count went with it.
            if conn.state != State::HandedOver {
                tracing::debug!(shard = self.id, conn = key.slot, addr = %conn.addr, "closed");
                self.shared.admission.release(conn.ticket);
                self.traffic.open[conn.transport()] -= 1;
            }
        }
    }

    /// HELLO accepted on the owner shard: the address is registered here.
    pub fn register(&mut self, key: ConnKey, addr: Uuid, hello_id: u64, form: Form) {
        let now = self.now_ms;
        let hb = self.cfg.timeouts.heartbeat_timeout_ms as u64;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.addr = addr;
        conn.state = State::Open;
        conn.mark_ms = now;
        if conn.wire == Wire::Ws {
            conn.json = form == Form::Json;
        }
        conn.wheel_tick = self.wheel.insert(key, now + hb);
        let since = now_us();
        let old = self.table.insert(
            addr,
            Route {
                conn: key,
                since_us: since,
            },
        );
        tracing::debug!(
            shard = self.id,
            conn = key.slot,
            %addr,
            transport = crate::metrics::TRANSPORTS[self.conns.get(key).map_or(0, |c| c.transport())],
            "registered"
        );
        match old {
            Some(old) if old.conn != key => {
                tracing::debug!(shard = self.id, conn = old.conn.slot, %addr, "taken over");
                // Takeover: not a presence change; the address stays online
                // since it first came.
                if let Some(r) = self.table.get_mut(&addr) {
                    r.since_us = old.since_us;
                }
                let old_form = self
                    .conns
                    .get(old.conn)
                    .map(|c| c.form())
                    .unwrap_or(Form::Binary);
                self.send_error(
                    old.conn,
                    old_form,
                    0,
                    ErrorCode::TakenOver,
                    "address taken over by a newer connection",
                );
            }
            _ => {
                self.presence.came_online(&addr);
                // Online on another node until now: moving here is no
                // presence change for the watchers.
                if self.remote_online.remove(&addr).is_none() {
                    self.publish_presence(addr, true, since);
                }
                let peer = self.conns.get(key).and_then(|c| c.stream.peer_addr().ok());
                self.persist_presence(addr, true, since, peer);
            }
        }
        let (hb_ms, max) = (
            self.cfg.timeouts.heartbeat_timeout_ms,
            self.cfg.limits.max_payload_bytes,
        );
        self.send_built(key, form, |b, dst| {
            proto::encode_welcome(b, dst, hello_id, now_us(), hb_ms, max)
        });
    }

    // ----- presence and subscriptions -----------------------------------

    /// Hands a presence change to the service shard for the presence table.
    /// Live presence never depends on it; if the service queue is full the
    /// record is skipped and counted.
    fn persist_presence(
        &mut self,
        addr: Uuid,
        online: bool,
        at_us: u64,
        peer: Option<std::net::SocketAddr>,
    ) {
        let req = ServiceReq::Presence {
            addr,
            online,
            at_us,
            peer,
        };
        if self.to_service(req).is_err() {
            self.stats.presence_unsaved += 1;
            if self.stats.presence_unsaved.is_power_of_two() {
                tracing::warn!(
                    shard = self.id,
                    unsaved = self.stats.presence_unsaved,
                    "service queue full; presence change not persisted"
                );
            }
        }
    }

    /// Tells every watcher of `addr` (which this shard owns) about a change.
    pub fn publish_presence(&mut self, addr: Uuid, online: bool, at_us: u64) {
        let n = self.subs.watchers(&addr).len();
        for i in 0..n {
            let w = self.subs.watchers(&addr)[i];
            if self.awaits_first_answer(addr, w) {
                continue;
            }
            if w.shard as usize == self.id {
                self.send_presence(w.conn, 0, addr, online, at_us);
            } else {
                self.outbox_push(
                    w.shard as usize,
                    Msg::Presence {
                        to: w.conn,
                        id: 0,
                        address: addr,
                        online,
                        at_us,
                    },
                );
            }
        }
    }

    /// On the owner shard of `watched`: adds a watcher and answers it with
    /// the current presence.
    pub fn subscribe_here(&mut self, watched: Uuid, sub: SubRef, id: u64) {
        self.subs.add(watched, sub);
        let (online, at_us) = match (self.table.get(&watched), self.remote_online.get(&watched)) {
            (Some(r), _) => (true, r.since_us),
            (None, Some((_, since))) => (true, *since),
            (None, None) if self.cluster => {
                // It may be online on another node: ask first.
                let then = super::msg::Then::Presence { sub, id };
                match self.to_service(ServiceReq::Locate {
                    addr: watched,
                    then,
                }) {
                    Ok(()) => {
                        // No push reaches it before its first answer.
                        self.locating.push((watched, sub));
                        return;
                    }
                    Err(_) => (false, self.presence.offline_since(&watched)),
                }
            }
            (None, None) => (false, self.presence.offline_since(&watched)),
        };
        self.answer_presence(sub, id, watched, online, at_us);
    }

    /// Sends PRESENCE of `address` to watcher `sub`, on whichever shard.
    pub fn answer_presence(
        &mut self,
        sub: SubRef,
        id: u64,
        address: Uuid,
        online: bool,
        at_us: u64,
    ) {
        if sub.shard as usize == self.id {
            self.send_presence(sub.conn, id, address, online, at_us);
        } else {
            self.outbox_push(
                sub.shard as usize,
                Msg::Presence {
                    to: sub.conn,
                    id,
                    address,
                    online,
                    at_us,
                },
            );
        }
    }

    /// Whether watcher `sub` of `addr` still waits for the PRESENCE that
    /// answers its SUBSCRIBE (a cluster lookup is running): pushes wait.
    pub fn awaits_first_answer(&self, addr: Uuid, sub: SubRef) -> bool {
        !self.locating.is_empty() && self.locating.contains(&(addr, sub))
    }

    /// On the owner shard of `watched`: watcher `sub` is gone.
    pub fn unwatch_here(&mut self, watched: Uuid, sub: SubRef) {
        self.subs.remove(&watched, sub);
        if self.subs.watchers(&watched).is_empty() {
            self.remote_online.remove(&watched);
        }
    }

    /// Connection `key` (on this shard) stops watching `watched`.
    pub fn unsubscribe(&mut self, key: ConnKey, watched: Uuid) {
        let owner = self.owner(&watched);
        if owner == self.id {
            self.unwatch_here(
                watched,
                SubRef {
                    shard: self.id as u16,
                    conn: key,
                },
            );
        } else {
            self.outbox_push(owner, Msg::Unsubscribe { watched, sub: key });
        }
    }

    // ----- the service shard --------------------------------------------

    /// Called every tick: after StopAccepting, tells the service shard that
    /// what had arrived is handled (one tick is enough for every readable
    /// socket to have been read).
    pub fn report_drained(&mut self) {
        if self.drain_report_due {
            self.drain_report_due = false;
            // Past the bound on purpose: the service waits for this one.
            self.service_out.push(ServiceReq::Drained {
                shard: self.id as u16,
            });
            if let Some(w) = self.service_waker.take() {
                w.wake();
            }
        }
    }

    /// Queues a request for the service shard; gives it back when this
    /// tick's batch is at its bound (the caller answers for it).
    pub fn to_service(&mut self, req: ServiceReq) -> Result<(), ServiceReq> {
        if self.service_out.len() >= self.cfg.service.queue_capacity {
            return Err(req);
        }
        self.service_out.push(req);
        if let Some(w) = self.service_waker.take() {
            w.wake();
        }
        Ok(())
    }

    // ----- cross-shard --------------------------------------------------

    pub fn outbox_push(&mut self, shard: usize, msg: Msg) {
        let ob = &mut self.outboxes[shard];
        ob.pending.msgs.push(msg);
        if let Some(w) = ob.waker.take() {
            w.wake();
        }
    }

    /// Queues a DATA frame for `shard`; false when the bytes already queued
    /// for or in flight to that shard are at their bound.
    pub fn outbox_push_data(&mut self, shard: usize, origin: ConnKey, frame: &[u8]) -> bool {
        let bound = self.cfg.limits.channel_pending_bytes;
        let ob = &mut self.outboxes[shard];
        let in_flight = ob.in_flight.load(Ordering::Relaxed);
        if in_flight + frame.len() > bound {
            return false;
        }
        ob.in_flight.fetch_add(frame.len(), Ordering::Relaxed);
        if ob.pending.since.is_none() {
            ob.pending.since = self.traffic.data_since;
        }
        let start = ob.pending.bytes.len() as u32;
        ob.pending.bytes.extend_from_slice(frame);
        ob.pending.msgs.push(Msg::Data {
            origin,
            start,
            len: frame.len() as u32,
        });
        if let Some(w) = ob.waker.take() {
            w.wake();
        }
        true
    }

    /// Takes what waits for `shard`, leaving buffers sized like the last batch.
    pub fn take_outbox(&mut self, shard: usize) -> Batch {
        let ob = &mut self.outboxes[shard];
        let msgs = ob.pending.msgs.len();
        let bytes = ob.pending.bytes.len();
        std::mem::replace(
            &mut ob.pending,
            Batch {
                msgs: Vec::with_capacity(msgs),
                bytes: Vec::with_capacity(bytes),
                since: None,
            },
        )
    }

    // ----- flushing -----------------------------------------------------

    /// Writes every dirty connection's queue with one non-blocking send each
    /// (on TLS, its queue sealed into records first). A socket that cannot
    /// take everything gets a writer task that waits for room; nobody else
    /// waits for it.
    pub fn flush_dirty(&mut self) {
        let mut list = std::mem::take(&mut self.dirty);
        for key in list.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.write_blocked {
                continue;
            }
            let (stream, wire) = conn.wire_parts();
            if !wire.is_empty() {
                // SAFETY: `wire` is a live buffer of `wire.len()` bytes and
                // the descriptor a socket this connection owns.
                let n = unsafe {
                    libc::send(
                        stream.as_raw_fd(),
                        wire.as_ptr().cast(),
                        wire.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    if err.kind() == std::io::ErrorKind::WouldBlock {
                        conn.write_blocked = true;
                        self.spawn_writers.push(key);
                    } else {
                        self.force_close(key);
                    }
                    continue;
                }
                let n = n as usize;
                if n < wire.len() {
                    wire.drain(..n);
                    conn.write_blocked = true;
                    self.spawn_writers.push(key);
                    continue;
                }
                let sent = std::mem::take(wire);
                self.recycle(sent);
                self.recycle_sealed(key);
            }
            self.after_write(key);
        }
        if self.dirty.is_empty() {
            self.dirty = list;
        }
        self.observe_routing();
    }

    /// DATA written by this flush: each counts the time since the oldest read
    /// (or cross-shard batch) that is not yet flushed, an upper bound of its
    /// own time in the gateway.
    fn observe_routing(&mut self) {
        let t = &mut *self.traffic;
        let written = t.frames_out[Kind::Data as usize];
        let n = written - t.data_flushed;
        if let (Some(since), true) = (t.data_since.take(), n > 0) {
            let us = since.elapsed().as_micros() as u64;
            self.shared.metrics.shards[self.id]
                .routing_latency_us
                .observe_n(us, n);
        }
        t.data_flushed = written;
    }

    /// Copies the counters into this shard's slot of the metrics registry
    /// (once per tick).
    pub fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let slot = &self.shared.metrics.shards[self.id];
        for (dst, v) in slot.counters.iter().zip(self.stats.counters()) {
            dst.store(v, Relaxed);
        }
        let t = &self.traffic;
        for (dst, v) in slot.open.iter().zip(t.open) {
            dst.store(v, Relaxed);
        }
        for (dst, src) in [
            (&slot.frames_in, &t.frames_in),
            (&slot.frames_out, &t.frames_out),
        ] {
            for (d, v) in dst.iter().zip(src.iter()) {
                d.store(*v, Relaxed);
            }
        }
        for (d, v) in slot.errors.iter().zip(t.errors) {
            d.store(v, Relaxed);
        }
        for (d, ob) in slot.channel_bytes.iter().zip(&self.outboxes) {
            d.store(ob.in_flight.load(Relaxed) as u64, Relaxed);
        }
        slot.ticked_ms
            .store(self.shared.metrics.now_ms() + 1, Relaxed);
    }

    /// Keeps a small emptied output buffer for the next connection that
    /// needs one; an idle connection holds none.
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= OUT_KEEP_BYTES
            && self.out_pool.len() < OUT_POOL_MAX
        {
            buf.clear();
            self.out_pool.push(buf);
        }
    }

    /// On TLS the frame queue was sealed (emptied) but kept its capacity.
    fn recycle_sealed(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.is_empty() && conn.out.capacity() > 0 {
            let buf = std::mem::take(&mut conn.out);
            self.recycle(buf);
        }
    }

    /// A writer task sent `n` more bytes; true when the queue is empty.
    pub fn wrote(&mut self, key: ConnKey, n: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return true;
        };
        let (_, wire) = conn.wire_parts();
        wire.drain(..n.min(wire.len()));
        if !wire.is_empty() {
            return false;
        }
        let sent = std::mem::take(wire);
        conn.write_blocked = false;
        self.recycle(sent);
        self.recycle_sealed(key);
        self.after_write(key);
        true
    }

    /// Once a closing connection's output is out, shut its write side (on
    /// TLS, after a close_notify).
    fn after_write(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.state == State::Closing && conn.queued_len() == 0 {
            if conn.tls_mut().is_some_and(|t| t.close_notify()) {
                self.mark_dirty(key);
                return;
            }
            // SAFETY: plain syscall on a descriptor this connection owns.
            unsafe { libc::shutdown(conn.stream.as_raw_fd(), libc::SHUT_WR) };
            conn.state = State::Draining;
        }
    }

    // ----- timeouts -----------------------------------------------------

    /// Handles every wheel entry that came due.
    pub fn sweep(&mut self) {
        self.tick_clock();
        let now = self.now_ms;
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, &mut due);
        for e in due.drain(..) {
            let Some(conn) = self.conns.get_mut(e.conn) else {
                continue;
            };
            if conn.wheel_tick != e.tick {
                continue;
            }
            let Some(deadline) = deadline_ms(conn.state, conn.mark_ms, &self.cfg.timeouts) else {
                continue;
            };
            if deadline > now {
                conn.wheel_tick = self.wheel.insert(e.conn, deadline);
                continue;
            }
            match conn.state {
                State::Handshake if conn.wire == Wire::WsUpgrade => self.force_close(e.conn),
                State::Handshake | State::Open => {
                    self.stats.timeouts += 1;
                    let form = conn.form();
                    let message = if conn.state == State::Open {
                        "no frame within the heartbeat timeout"
                    } else {
                        "no HELLO within the handshake timeout"
                    };
                    self.send_error(e.conn, form, 0, ErrorCode::Timeout, message);
                }
                _ => self.force_close(e.conn),
            }
        }
        self.due = due;
    }

    /// SIGTERM/SIGINT: every connection gets `shutting_down` and is closed.
    pub fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.accepting = false;
        self.tick_clock();
        self.shutdown_deadline_ms = self.now_ms + self.cfg.timeouts.shutdown_deadline_ms as u64;
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            match (conn.state, conn.wire) {
                (State::Handshake, Wire::WsUpgrade) => self.force_close(key),
                (State::Handshake | State::Open, _) => {
                    let form = conn.form();
                    self.send_error(
                        key,
                        form,
                        0,
                        ErrorCode::ShuttingDown,
                        "gateway shutting down",
                    );
                }
                _ => {}
            }
        }
        tracing::info!(shard = self.id, stats = ?self.stats, "shard shutting down");
    }
}
