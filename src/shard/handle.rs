//! What a shard does with each frame, each cross-shard message and each
//! service event. Transports decode bytes into frames and call `on_frame`.

use super::conn::{Conn, Form, State, Wire};
use super::msg::{
    Batch, Handover, Msg, Origin, RemoteDelivery, RemoteItem, ServiceEvent, ServiceReq, Then,
};
use super::state::{Class, Sent, ShardState};
use crate::proto::{self, ErrorCode, Header, Kind};
use crate::routing::{ConnKey, SubRef};
use crate::service::now_us;
use glommio::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

/// What the transport does after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next frame.
    Continue,
    /// Stop reading this connection's input (it is closing).
    Stop,
    /// The connection said HELLO for an address another shard owns: hand the
    /// socket over with every byte after this frame.
    Handover { addr: Uuid, hello_id: u64 },
}

impl ShardState {
    /// One complete frame from connection `key`. `form` is the form it came
    /// in; `raw` is the whole binary frame when it arrived as one (so DATA is
    /// forwarded without being rebuilt).
    pub fn on_frame(
        &mut self,
        key: ConnKey,
        form: Form,
        header: &Header,
        payload: &[u8],
        raw: Option<&[u8]>,
    ) -> Flow {
        self.traffic.frames_in[header.kind as usize] += 1;
        let Some(conn) = self.conns.get_mut(key) else {
            return Flow::Stop;
        };
        let registered = conn.registered();
        // Before HELLO an answer takes the form of the message it answers;
        // after it, the form the HELLO chose.
        let reply = if registered.is_some() {
            conn.form()
        } else {
            form
        };
        if conn.wire == Wire::Ws && registered.is_none() {
            conn.json = form == Form::Json;
        }
        let kind = match proto::validate(header, payload.len(), registered) {
            Ok(kind) => kind,
            Err(code) => {
                self.send_error(key, reply, header.id, code, reject_message(code));
                return if code.closes_connection() {
                    Flow::Stop
                } else {
                    Flow::Continue
                };
            }
        };
        if self.auth.is_some() && !self.allowed(key, kind, header, payload, registered) {
            self.stats.forbidden += 1;
            self.send_error(
                key,
                reply,
                header.id,
                ErrorCode::Forbidden,
                "address not allowed by your token",
            );
            return Flow::Continue;
        }
        match kind {
            Kind::Hello => self.on_hello(key, reply, header, payload, registered),
            Kind::Heartbeat => {
                let id = header.id;
                self.send_built(key, reply, |b, dst| proto::encode_heartbeat(b, dst, id));
                Flow::Continue
            }
            Kind::Data => {
                self.stats.data_in += 1;
                let limit = self.cfg.limits.max_data_frames_per_s;
                if !self.conns.get_mut(key).is_some_and(|c| c.count_data(limit)) {
                    self.data_rate_exceeded(key, reply, header.id);
                    return Flow::Continue;
                }
                match raw {
                    Some(frame) => self.route_data(key, reply, header, frame),
                    None => {
                        // Arrived as JSON: build the binary frame once, in a
                        // reused buffer.
                        let mut buf = std::mem::take(&mut self.data_scratch);
                        buf.clear();
                        proto::encode_frame(
                            &mut buf,
                            Kind::Data,
                            header.src,
                            header.dst,
                            header.id,
                            payload,
                        );
                        self.route_data(key, reply, header, &buf);
                        self.data_scratch = buf;
                    }
                }
                Flow::Continue
            }
            Kind::TimeReq => {
                self.on_time_req(key, reply, header.id, proto::read_u64(payload));
                Flow::Continue
            }
            Kind::Subscribe => {
                self.on_subscribe(key, reply, header.id, proto::read_address(payload));
                Flow::Continue
            }
            Kind::Unsubscribe => {
                let watched = proto::read_address(payload);
                if self.conns.get_mut(key).is_some_and(|c| c.unwatch(&watched)) {
                    self.unsubscribe(key, watched);
                }
                Flow::Continue
            }
            Kind::StatePut => {
                let req = ServiceReq::StatePut {
                    from: self.origin(key, header.id),
                    addr: header.src,
                    blob: Arc::from(payload),
                };
                self.ask_store(key, reply, header.id, req);
                Flow::Continue
            }
            Kind::StateGet => {
                let req = ServiceReq::StateGet {
                    from: self.origin(key, header.id),
                    addr: proto::read_address(payload),
                };
                self.ask_store(key, reply, header.id, req);
                Flow::Continue
            }
            // `validate` lets only client kinds through.
            _ => unreachable!("validate returned a gateway-only kind"),
        }
    }

    /// Authentication on: whether connection `key`'s token lets this frame
    /// reach its target (DATA's `dst`, the address of STATE_GET and
    /// SUBSCRIBE). The connection's own address is always allowed; other
    /// kinds target the sender itself or the gateway.
    fn allowed(
        &self,
        key: ConnKey,
        kind: Kind,
        header: &Header,
        payload: &[u8],
        registered: Option<Uuid>,
    ) -> bool {
        let target = match kind {
            Kind::Data => header.dst,
            Kind::StateGet | Kind::Subscribe => proto::read_address(payload),
            _ => return true,
        };
        registered == Some(target) || self.conns.get(key).is_some_and(|c| c.allows(&target))
    }

    /// Hands a state request to the service shard, or answers
    /// `store_unavailable` when this tick's requests are at their bound.
    fn ask_store(&mut self, key: ConnKey, reply: Form, id: u64, req: ServiceReq) {
        if self.to_service(req).is_err() {
            self.send_error(
                key,
                reply,
                id,
                ErrorCode::StoreUnavailable,
                "state queue full",
            );
        }
    }

    fn origin(&self, conn: ConnKey, id: u64) -> Origin {
        Origin {
            shard: self.id as u16,
            conn,
            id,
        }
    }

    fn on_hello(
        &mut self,
        key: ConnKey,
        reply: Form,
        header: &Header,
        token: &[u8],
        registered: Option<Uuid>,
    ) -> Flow {
        if let Some(addr) = registered {
            // A repeated HELLO from the same address is answered again and
            // changes nothing (validate already refused a different src).
            let (id, hb, max) = (
                header.id,
                self.cfg.timeouts.heartbeat_timeout_ms,
                self.cfg.limits.max_payload_bytes,
            );
            debug_assert_eq!(addr, header.src);
            self.send_built(key, reply, |b, dst| {
                proto::encode_welcome(b, dst, id, now_us(), hb, max)
            });
            return Flow::Continue;
        }
        if header.src.is_nil() {
            self.send_error(
                key,
                reply,
                header.id,
                ErrorCode::AuthFailed,
                "the nil address belongs to the gateway",
            );
            return Flow::Stop;
        }
        if self.shutting_down {
            self.send_error(
                key,
                reply,
                header.id,
                ErrorCode::ShuttingDown,
                "gateway shutting down",
            );
            return Flow::Stop;
        }
        if let Some(auth) = &self.auth {
            match auth.verify(token, &header.src) {
                Ok(allow) => {
                    // Kept with the connection, and handed over with it.
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.set_allow(allow);
                    }
                }
                Err(why) => {
                    self.stats.auth_failed += 1;
                    tracing::debug!(shard = self.id, addr = %header.src, why, "HELLO refused");
                    let message = crate::auth::client_message(why);
                    self.send_error(key, reply, header.id, ErrorCode::AuthFailed, message);
                    return Flow::Stop;
                }
            }
        }
        if self.owner(&header.src) == self.id {
            self.register(key, header.src, header.id, reply);
            Flow::Continue
        } else {
            Flow::Handover {
                addr: header.src,
                hello_id: header.id,
            }
        }
    }

    fn route_data(&mut self, key: ConnKey, reply: Form, header: &Header, frame: &[u8]) {
        let owner = self.owner(&header.dst);
        if owner == self.id {
            self.deliver_data(self.id, key, header.dst, header.id, frame);
        } else if self.outbox_push_data(owner, key, frame) {
            self.stats.data_cross_shard += 1;
        } else {
            self.stats.slow_consumer += 1;
            self.send_error(
                key,
                reply,
                header.id,
                ErrorCode::SlowConsumer,
                "queue to the destination's shard is full",
            );
        }
    }

    /// Delivers a DATA frame to `dst`, which this shard owns, or answers its
    /// sender (on `origin_shard`) with the reason it could not.
    fn deliver_data(
        &mut self,
        origin_shard: usize,
        origin: ConnKey,
        dst: Uuid,
        id: u64,
        frame: &[u8],
    ) {
        let code = match self.table.get(&dst) {
            // Not connected here: another node may have it.
            None if self.cluster => {
                if self.forward_remote(origin_shard, origin, frame) {
                    return;
                }
                Some(ErrorCode::SlowConsumer)
            }
            None => Some(ErrorCode::DstOffline),
            Some(route) => {
                let to = route.conn;
                let form = self.conns.get(to).map(Conn::form).unwrap_or(Form::Binary);
                match self.send_frame(to, form, frame, Class::Data) {
                    Sent::Queued => None,
                    Sent::Full => Some(ErrorCode::SlowConsumer),
                    Sent::Gone => Some(ErrorCode::DstOffline),
                }
            }
        };
        let Some(code) = code else {
            return;
        };
        match code {
            ErrorCode::SlowConsumer => self.stats.slow_consumer += 1,
            _ => self.stats.dst_offline += 1,
        }
        if origin_shard == self.id {
            self.error_to(origin, id, code);
        } else {
            self.outbox_push(
                origin_shard,
                Msg::Error {
                    to: origin,
                    id,
                    code,
                },
            );
        }
    }

    /// An ERROR for a local connection, in its own form.
    fn error_to(&mut self, to: ConnKey, id: u64, code: ErrorCode) {
        let Some(conn) = self.conns.get(to) else {
            return;
        };
        let form = conn.form();
        self.send_error(to, form, id, code, reject_message(code));
    }

    fn on_time_req(&mut self, key: ConnKey, reply: Form, id: u64, t0: u64) {
        let req = ServiceReq::Time {
            shard: self.id as u16,
            conn: key,
            id,
            t0,
        };
        if self.to_service(req).is_err() {
            // The service shard is saturated (or gone at shutdown): answer
            // here rather than drop the request.
            self.stats.time_local_fallback += 1;
            let t1 = now_us();
            self.send_built(key, reply, |b, dst| {
                proto::encode_time_resp(b, dst, id, t0, t1, now_us())
            });
        }
    }

    fn on_subscribe(&mut self, key: ConnKey, reply: Form, id: u64, watched: Uuid) {
        let max = self.cfg.limits.max_subscriptions_per_connection;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.watching().contains(&watched) {
            if conn.watching().len() >= max {
                self.send_error(
                    key,
                    reply,
                    id,
                    ErrorCode::Forbidden,
                    "subscription limit reached",
                );
                return;
            }
            conn.watch(watched);
        }
        let owner = self.owner(&watched);
        if owner == self.id {
            let sub = SubRef {
                shard: self.id as u16,
                conn: key,
            };
            self.subscribe_here(watched, sub, id);
        } else {
            self.outbox_push(
                owner,
                Msg::Subscribe {
                    watched,
                    sub: key,
                    id,
                },
            );
        }
    }

    /// Moves connection `key` to the owner shard of `addr`: the socket (a
    /// dup; this shard's stream is dropped), the bytes after the HELLO and
    /// any output not yet sent.
    pub fn hand_over(&mut self, key: ConnKey, addr: Uuid, hello_id: u64, leftover: &[u8]) {
        let owner = self.owner(&addr);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // SAFETY: dup of a descriptor this connection owns.
        let fd = unsafe { libc::dup(conn.stream.as_raw_fd()) };
        if fd < 0 {
            tracing::warn!(shard = self.id, error = %std::io::Error::last_os_error(), "dup failed; closing connection");
            self.force_close(key);
            return;
        }
        // Counted by transport before the TLS session leaves with it.
        self.traffic.open[conn.transport()] -= 1;
        let handover = Handover {
            fd,
            addr,
            hello_id,
            websocket: conn.wire == Wire::Ws,
            json: conn.json,
            leftover: leftover.to_vec(),
            out: std::mem::take(&mut conn.out),
            allow: conn.take_allow(),
            ticket: conn.ticket,
            tls: conn.take_tls(),
        };
        conn.state = State::HandedOver;
        conn.clear_input();
        self.stats.handovers_out += 1;
        self.outbox_push(owner, Msg::Handover(Box::new(handover)));
    }

    /// A socket handed over by another shard: register it here and go on
    /// with the bytes that came after its HELLO.
    fn adopt_handover(&mut self, mut h: Handover) {
        self.tick_clock();
        let fd = h.take_fd();
        // SAFETY: `fd` is the dup the sending shard made for us; we own it now.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        let wire = if h.websocket { Wire::Ws } else { Wire::Tcp };
        let mut conn = Conn::new(stream, wire, self.now_ms);
        conn.ticket = h.ticket;
        if let Some(tls) = h.tls.take() {
            conn.set_tls(tls);
        }
        conn.json = h.json;
        conn.out = std::mem::take(&mut h.out);
        if let Some(allow) = h.allow.take() {
            conn.set_allow(allow);
        }
        self.traffic.open[conn.transport()] += 1;
        let key = self.conns.insert(conn);
        self.stats.handovers_in += 1;
        self.spawn_readers.push(key);
        let form = if h.websocket && h.json {
            Form::Json
        } else {
            Form::Binary
        };
        if self.shutting_down {
            self.send_error(
                key,
                form,
                h.hello_id,
                ErrorCode::ShuttingDown,
                "gateway shutting down",
            );
            return;
        }
        if self.conns.len() > self.cfg.limits.max_connections_per_shard {
            self.stats.refused_full += 1;
            self.send_error(
                key,
                form,
                h.hello_id,
                ErrorCode::AuthFailed,
                "connection limit reached",
            );
            return;
        }
        self.register(key, h.addr, h.hello_id, form);
        let mut leftover = std::mem::take(&mut h.leftover);
        if !leftover.is_empty() {
            self.on_input(key, &mut leftover);
        }
    }

    /// A batch from shard `from`, handled in order.
    pub fn on_batch(&mut self, from: usize, mut batch: Batch) {
        if let Some(since) = batch.since {
            let t = &mut self.traffic.data_since;
            *t = Some(t.map_or(since, |mine| mine.min(since)));
        }
        let bytes = std::mem::take(&mut batch.bytes);
        for msg in batch.msgs.drain(..) {
            match msg {
                Msg::Data { origin, start, len } => {
                    let frame = &bytes[start as usize..(start + len) as usize];
                    let header = Header::parse(frame).expect("DATA frames carry a header");
                    self.deliver_data(from, origin, header.dst, header.id, frame);
                }
                Msg::Error { to, id, code } => self.error_to(to, id, code),
                Msg::Presence {
                    to,
                    id,
                    address,
                    online,
                    at_us,
                } => self.send_presence(to, id, address, online, at_us),
                Msg::Subscribe { watched, sub, id } => {
                    let sub = SubRef {
                        shard: from as u16,
                        conn: sub,
                    };
                    self.subscribe_here(watched, sub, id);
                }
                Msg::Unsubscribe { watched, sub } => {
                    self.unwatch_here(
                        watched,
                        SubRef {
                            shard: from as u16,
                            conn: sub,
                        },
                    );
                }
                Msg::Handover(h) => self.adopt_handover(*h),
                Msg::State {
                    to,
                    id,
                    address,
                    updated_at_us,
                    online,
                    blob,
                } => self.send_state(to, id, address, updated_at_us, online, &blob),
            }
        }
        self.inbound[from].fetch_sub(bytes.len(), Ordering::Relaxed);
    }

    pub fn on_service(&mut self, ev: ServiceEvent) {
        match ev {
            ServiceEvent::TimeResp {
                conn,
                id,
                t0,
                t1,
                t2,
            } => self.send_to_registered(conn, |b, dst| {
                proto::encode_time_resp(b, dst, id, t0, t1, t2)
            }),
            ServiceEvent::StateAck {
                conn,
                id,
                updated_at_us,
            } => self.send_to_registered(conn, |b, dst| {
                proto::encode_state_ack(b, dst, id, updated_at_us)
            }),
            ServiceEvent::StateError { conn, id, code } => self.error_to(conn, id, code),
            ServiceEvent::StateFound {
                to,
                addr,
                updated_at_us,
                blob,
            } => {
                let online = self.online_anywhere(&addr);
                if !online && self.cluster {
                    // It may be online on another node: ask first.
                    let then = Then::State {
                        to,
                        updated_at_us,
                        blob,
                    };
                    if let Err(ServiceReq::Locate { then, .. }) =
                        self.to_service(ServiceReq::Locate { addr, then })
                    {
                        self.then(addr, false, 0, then);
                    }
                } else {
                    self.answer_state(to, addr, updated_at_us, online, blob);
                }
            }
            ServiceEvent::StateCommitted {
                addr,
                updated_at_us,
                blob,
            } => self.publish_state(addr, updated_at_us, blob),
            ServiceEvent::RemoteData { bytes, items } => self.on_remote_data(&bytes, &items),
            ServiceEvent::TakeOver {
                addr,
                since_us,
                node,
            } => self.on_remote_takeover(addr, since_us, node),
            ServiceEvent::RemotePresence {
                addr,
                online,
                at_us,
                node,
            } => self.on_remote_presence(addr, online, at_us, node),
            ServiceEvent::NodeDown { node, at_us } => self.on_node_down(node, at_us),
            ServiceEvent::Located { addr, at, then } => {
                let (online, since) = match (self.table.get(&addr), at) {
                    (Some(r), _) => (true, r.since_us),
                    (None, Some((node, since))) => {
                        if !self.subs.watchers(&addr).is_empty() {
                            self.remote_online.insert(addr, (node, since));
                        }
                        (true, since)
                    }
                    (None, None) => (false, self.presence.offline_since(&addr)),
                };
                self.then(addr, online, since, then);
            }
            ServiceEvent::StopAccepting => {
                self.accepting = false;
                self.drain_report_due = true;
            }
            ServiceEvent::Shutdown => self.begin_shutdown(),
        }
    }

    /// Pushes a committed state of `addr` (owned here) to its watchers.
    fn publish_state(&mut self, addr: Uuid, updated_at_us: u64, blob: std::sync::Arc<[u8]>) {
        let online = self.online_anywhere(&addr);
        let n = self.subs.watchers(&addr).len();
        for i in 0..n {
            let w = self.subs.watchers(&addr)[i];
            if self.awaits_first_answer(addr, w) {
                continue;
            }
            if w.shard as usize == self.id {
                self.send_state(w.conn, 0, addr, updated_at_us, online, &blob);
            } else {
                self.outbox_push(
                    w.shard as usize,
                    Msg::State {
                        to: w.conn,
                        id: 0,
                        address: addr,
                        updated_at_us,
                        online,
                        blob: blob.clone(),
                    },
                );
            }
        }
    }

    fn send_state(
        &mut self,
        to: ConnKey,
        id: u64,
        address: Uuid,
        updated_at_us: u64,
        online: bool,
        blob: &[u8],
    ) {
        self.send_to_registered(to, |b, dst| {
            proto::encode_state(b, dst, id, address, updated_at_us, online, blob)
        });
    }

    /// Bytes that arrived on `key` (read into the shard buffer or carried by
    /// a handover), dispatched by the connection's wire.
    pub fn on_input(&mut self, key: ConnKey, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.state == State::Open {
            conn.roll_data_second(self.now_ms);
            // Any input counts as liveness.
            conn.mark_ms = self.now_ms;
        }
        if !conn.accepts_input() {
            // Closing or draining: input is read and dropped.
            return;
        }
        match conn.wire {
            Wire::Tcp => self.on_tcp_input(key, data),
            Wire::WsUpgrade | Wire::Ws => self.on_ws_input(key, data),
        }
    }
}

/// The cluster: what an owner shard does for addresses on other nodes.
impl ShardState {
    /// Connected here, or (as far as this shard knows) on another node.
    fn online_anywhere(&self, addr: &Uuid) -> bool {
        self.table.contains_key(addr) || self.remote_online.contains_key(addr)
    }

    /// Queues a DATA frame for the node that has its destination; false
    /// when this tick's bound is reached.
    fn forward_remote(&mut self, origin_shard: usize, origin: ConnKey, frame: &[u8]) -> bool {
        if self.remote_bytes.len() + frame.len() > self.cfg.cluster.pending_bytes {
            return false;
        }
        let start = self.remote_bytes.len() as u32;
        self.remote_bytes.extend_from_slice(frame);
        self.remote_items.push(RemoteItem {
            shard: origin_shard as u16,
            conn: origin,
            start,
            len: frame.len() as u32,
        });
        self.stats.data_remote_out += 1;
        if let Some(w) = self.service_waker.take() {
            w.wake();
        }
        true
    }

    /// DATA from other nodes: delivered, or bounced to the sender's node.
    fn on_remote_data(&mut self, bytes: &[u8], items: &[RemoteDelivery]) {
        for d in items {
            let frame = &bytes[d.start as usize..(d.start + d.len) as usize];
            let Some(header) = Header::parse(frame) else {
                continue;
            };
            self.stats.data_remote_in += 1;
            let code = match self.table.get(&header.dst) {
                None => ErrorCode::DstOffline,
                Some(route) => {
                    let to = route.conn;
                    let form = self.conns.get(to).map(Conn::form).unwrap_or(Form::Binary);
                    match self.send_frame(to, form, frame, Class::Data) {
                        Sent::Queued => continue,
                        Sent::Full => ErrorCode::SlowConsumer,
                        Sent::Gone => ErrorCode::DstOffline,
                    }
                }
            };
            match code {
                ErrorCode::SlowConsumer => self.stats.slow_consumer += 1,
                _ => self.stats.dst_offline += 1,
            }
            let bounce = ServiceReq::Bounce {
                to: d.from,
                id: header.id,
                code,
                dst: header.dst,
            };
            if self.to_service(bounce).is_err() {
                // The sender gets no answer for this one frame; counted.
                self.stats.remote_unanswered += 1;
            }
        }
    }

    /// Another node registered `addr` after this node's connection (which
    /// registered at `since_us`): that connection ends with `taken_over`.
    fn on_remote_takeover(&mut self, addr: Uuid, since_us: u64, node: u16) {
        let Some(route) = self.table.get(&addr) else {
            return;
        };
        if route.since_us != since_us {
            return;
        }
        let key = route.conn;
        // Out of the table first: closing it is not a presence change.
        self.table.remove(&addr);
        self.stats.remote_takeovers += 1;
        if !self.subs.watchers(&addr).is_empty() {
            self.remote_online.insert(addr, (node, since_us));
        }
        tracing::debug!(shard = self.id, conn = key.slot, %addr, node, "taken over by another node");
        let form = self.conns.get(key).map(Conn::form).unwrap_or(Form::Binary);
        self.send_error(
            key,
            form,
            0,
            ErrorCode::TakenOver,
            "address taken over by a newer connection",
        );
    }

    /// `addr` came online or went offline on node `node`: its watchers here
    /// are told when that changes what they were told.
    fn on_remote_presence(&mut self, addr: Uuid, online: bool, at_us: u64, node: u16) {
        if self.table.contains_key(&addr) {
            // Connected here; a newer connection elsewhere comes as TakeOver.
            return;
        }
        if self.subs.watchers(&addr).is_empty() {
            self.remote_online.remove(&addr);
            return;
        }
        if online {
            if self.remote_online.insert(addr, (node, at_us)).is_none() {
                self.publish_presence(addr, true, at_us);
            }
        } else if self
            .remote_online
            .get(&addr)
            .is_some_and(|(n, _)| *n == node)
        {
            self.remote_online.remove(&addr);
            self.presence.went_offline(addr, at_us);
            self.publish_presence(addr, false, at_us);
        }
    }

    /// Node `node` is gone: what it had is offline for the watchers here.
    fn on_node_down(&mut self, node: u16, at_us: u64) {
        let gone: Vec<Uuid> = self
            .remote_online
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(a, _)| *a)
            .collect();
        for addr in gone {
            self.remote_online.remove(&addr);
            self.presence.went_offline(addr, at_us);
            self.publish_presence(addr, false, at_us);
        }
    }

    /// Goes on with what waited for a `Locate`.
    pub fn then(&mut self, addr: Uuid, online: bool, since_us: u64, then: Then) {
        match then {
            Then::Presence { sub, id } => {
                if let Some(i) = self.locating.iter().position(|e| *e == (addr, sub)) {
                    self.locating.swap_remove(i);
                }
                self.answer_presence(sub, id, addr, online, since_us)
            }
            Then::State {
                to,
                updated_at_us,
                blob,
            } => self.answer_state(to, addr, updated_at_us, online, blob),
        }
    }

    fn answer_state(
        &mut self,
        to: Origin,
        addr: Uuid,
        updated_at_us: u64,
        online: bool,
        blob: std::sync::Arc<[u8]>,
    ) {
        if to.shard as usize == self.id {
            self.send_state(to.conn, to.id, addr, updated_at_us, online, &blob);
        } else {
            self.outbox_push(
                to.shard as usize,
                Msg::State {
                    to: to.conn,
                    id: to.id,
                    address: addr,
                    updated_at_us,
                    online,
                    blob,
                },
            );
        }
    }
}

impl ShardState {
    /// A DATA frame over `max_data_frames_per_s`: dropped, answered
    /// `slow_consumer`, counted, and logged now and then.
    fn data_rate_exceeded(&mut self, key: ConnKey, reply: Form, id: u64) {
        self.stats.data_rate_limited += 1;
        if self.stats.data_rate_limited.is_power_of_two() {
            let addr = self.conns.get(key).map(|c| c.addr).unwrap_or_default();
            tracing::warn!(
                shard = self.id,
                %addr,
                limited = self.stats.data_rate_limited,
                "DATA over the per-connection rate limit; frames dropped"
            );
        }
        self.send_error(
            key,
            reply,
            id,
            ErrorCode::SlowConsumer,
            "DATA rate limit reached; frame dropped",
        );
    }
}

/// The message text of an ERROR answering a frame.
pub fn reject_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadFrame => "malformed frame",
        ErrorCode::NotRegistered => "send HELLO first",
        ErrorCode::AuthFailed => "HELLO refused",
        ErrorCode::DstOffline => "destination not connected",
        ErrorCode::SrcMismatch => "src is not the registered address",
        ErrorCode::TooLarge => "payload larger than the maximum",
        ErrorCode::SlowConsumer => "destination cannot keep up; frame dropped",
        ErrorCode::UnknownKind => "kind not accepted from clients",
        ErrorCode::TakenOver => "address taken over by a newer connection",
        ErrorCode::NotFound => "no state stored for that address",
        ErrorCode::Forbidden => "not allowed",
        ErrorCode::StoreUnavailable => "state store unavailable",
        ErrorCode::ShuttingDown => "gateway shutting down",
        ErrorCode::Timeout => "timed out",
    }
}
