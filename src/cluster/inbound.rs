//! What other nodes send: DATA and bounces, presence, states, heartbeats;
//! and node liveness.

use super::*;

impl Cluster {
    pub(super) fn on_inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Node(m) => self.on_node_message(&m.payload),
            Inbound::Presence(m) => self.on_presence_message(&m.payload),
            Inbound::State(m) => self.on_state_message(&m.payload),
            Inbound::Heartbeat(m) => {
                if let Ok((s, _)) = wire::split_header(&m.payload) {
                    if s.name != self.name {
                        let i = self.node(s.name, s.incarnation);
                        self.seen(i, s.incarnation);
                    }
                } else {
                    self.stats.bad_messages += 1;
                }
            }
            Inbound::Event(ev) => self.on_event(ev),
        }
    }

    pub(super) fn seen(&mut self, i: u16, incarnation: u64) {
        let n = &mut self.nodes[i as usize];
        if incarnation != n.incarnation {
            // An older life's late message.
            return;
        }
        n.last_seen = Instant::now();
        if !n.alive {
            n.alive = true;
            tracing::info!(node = %n.name, "cluster: node up");
        }
    }

    /// The sender's index, or None for our own messages and stale lives.
    pub(super) fn sender(&mut self, s: &Sender<'_>) -> Option<u16> {
        if s.name == self.name {
            return None;
        }
        let i = self.node(s.name, s.incarnation);
        if self.nodes[i as usize].incarnation != s.incarnation {
            return None;
        }
        self.seen(i, s.incarnation);
        Some(i)
    }

    pub(super) fn on_node_message(&mut self, msg: &[u8]) {
        let Ok((s, records)) = wire::split_header(msg) else {
            self.stats.bad_messages += 1;
            return;
        };
        let Some(node) = self.sender(&s) else {
            return;
        };
        // DATA gathered per owner shard: one event each.
        let mut per_shard: Vec<Option<(Vec<u8>, Vec<RemoteDelivery>)>> =
            (0..self.nshards).map(|_| None).collect();
        for r in wire::NodeRecords(records) {
            match r {
                Ok(wire::NodeRecord::Data { from, frame }) => {
                    if !is_data_frame(frame) {
                        // Only whole DATA frames go to clients, whatever a
                        // publisher on the subject sent.
                        self.stats.bad_messages += 1;
                        continue;
                    }
                    self.stats.data_received += 1;
                    let shard = self.owner(&frame_dst(frame));
                    let (bytes, items) = per_shard[shard].get_or_insert_with(Default::default);
                    let start = bytes.len() as u32;
                    bytes.extend_from_slice(frame);
                    items.push(RemoteDelivery {
                        from: RemoteConn {
                            node,
                            shard: from.shard,
                            conn: from.conn,
                        },
                        start,
                        len: frame.len() as u32,
                    });
                }
                Ok(wire::NodeRecord::Bounce { to, id, code, dst }) => {
                    if code == ErrorCode::DstOffline {
                        // Our cache pointed there: stale.
                        self.cache.remove(&dst);
                    }
                    self.stats.bounced += 1;
                    if (to.shard as usize) < self.nshards {
                        self.emit(
                            to.shard as usize,
                            ServiceEvent::StateError {
                                conn: to.conn,
                                id,
                                code,
                            },
                        );
                    }
                }
                Err(e) => {
                    self.stats.bad_messages += 1;
                    tracing::debug!(error = %e, "cluster: bad node message");
                }
            }
        }
        for (shard, got) in per_shard.into_iter().enumerate() {
            if let Some((bytes, items)) = got {
                self.emit(shard, ServiceEvent::RemoteData { bytes, items });
            }
        }
    }

    pub(super) fn on_presence_message(&mut self, msg: &[u8]) {
        let Ok((s, records)) = wire::split_header(msg) else {
            self.stats.bad_messages += 1;
            return;
        };
        let theirs = s.name.to_string();
        let Some(node) = self.sender(&s) else {
            return;
        };
        for r in wire::PresenceRecords(records) {
            let Ok(r) = r else {
                self.stats.bad_messages += 1;
                break;
            };
            self.remote_presence(node, &theirs, r);
        }
    }

    pub(super) fn remote_presence(&mut self, node: u16, theirs: &str, r: PresenceRecord) {
        let shard = self.owner(&r.addr);
        if r.online {
            self.cache_put(
                r.addr,
                Loc::At {
                    node,
                    since_us: r.at_us,
                },
            );
            if let Some(l) = self.local.get(&r.addr) {
                // Connected here too: the newer registration wins (ties go
                // to the greater node name).
                let since = l.since_us;
                if (since, self.name.as_str()) < (r.at_us, theirs) {
                    self.local.remove(&r.addr);
                    self.emit(
                        shard,
                        ServiceEvent::TakeOver {
                            addr: r.addr,
                            since_us: since,
                            node,
                        },
                    );
                } else {
                    // Ours is newer; its entry may have been overwritten.
                    self.schedule(r.addr, DirOp::Put { since_us: since });
                    self.cache.remove(&r.addr);
                }
                return;
            }
        } else if self.waiting.contains_key(&r.addr)
            || matches!(self.cache.get(&r.addr), Some(Loc::At { node: n, .. }) if *n == node)
        {
            // Newer than any lookup running now (which may have read the
            // entry before its delete): what waits for it sees "nowhere".
            let nowhere = self.nowhere();
            self.cache_put(r.addr, nowhere);
        }
        self.emit(
            shard,
            ServiceEvent::RemotePresence {
                addr: r.addr,
                online: r.online,
                at_us: r.at_us,
                node,
            },
        );
    }

    pub(super) fn on_state_message(&mut self, msg: &[u8]) {
        let Ok((s, records)) = wire::split_header(msg) else {
            self.stats.bad_messages += 1;
            return;
        };
        if self.sender(&s).is_none() {
            return;
        }
        for r in wire::StateRecords(records) {
            let Ok(r) = r else {
                self.stats.bad_messages += 1;
                break;
            };
            self.remote_states
                .push((r.addr, r.updated_at_us, Arc::from(r.blob)));
        }
    }

    pub(super) fn on_event(&mut self, ev: async_nats::Event) {
        match ev {
            async_nats::Event::Connected => {
                tracing::info!(nats = %self.cfg.nats_url, "cluster: connected to NATS");
                // Again on every reconnect: a restarted NATS may have lost
                // the bucket (it is kept in memory).
                if self.kv_setup.is_empty() {
                    self.start_kv_setup(Duration::ZERO);
                }
                self.resync();
            }
            async_nats::Event::Disconnected => {
                tracing::warn!(nats = %self.cfg.nats_url, "cluster: disconnected from NATS; addresses on other nodes are unreachable until it is back");
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(
                    sid,
                    "cluster: NATS dropped messages for a slow subscription"
                );
            }
            async_nats::Event::ClientError(e) => {
                tracing::debug!(error = %e, "cluster: NATS connection attempt failed");
            }
            other => tracing::info!(event = %other, "cluster: NATS event"),
        }
    }

    /// The index of node `name`, known from now on. A node first heard of
    /// is alive until its heartbeats say otherwise.
    pub(super) fn node(&mut self, name: &str, incarnation: u64) -> u16 {
        if let Some(&i) = self.node_index.get(name) {
            let n = &mut self.nodes[i as usize];
            if incarnation > n.incarnation {
                // Restarted: what it had before is gone.
                let was_alive = n.alive;
                n.incarnation = incarnation;
                n.last_seen = Instant::now();
                n.alive = true;
                if was_alive {
                    tracing::info!(node = %name, "cluster: node restarted");
                    self.forget_node(i);
                } else {
                    tracing::info!(node = %name, "cluster: node up");
                }
            }
            return i;
        }
        let i = self.nodes.len() as u16;
        tracing::info!(node = %name, "cluster: node up");
        self.nodes.push(Node {
            name: name.to_string(),
            incarnation,
            last_seen: Instant::now(),
            alive: true,
        });
        self.node_index.insert(name.to_string(), i);
        i
    }

    /// Everything known of node `i`'s addresses is void: caches drop it and
    /// watchers are told its addresses are offline.
    pub(super) fn forget_node(&mut self, i: u16) {
        self.cache
            .retain(|_, l| !matches!(l, Loc::At { node, .. } if *node == i));
        self.out_node.remove(&i);
        let at_us = now_us();
        for shard in 0..self.nshards {
            self.emit(shard, ServiceEvent::NodeDown { node: i, at_us });
        }
    }

    /// Heartbeats, node timeouts and the directory sweep.
    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + Duration::from_millis(self.cfg.heartbeat_ms);
        let mut hb = Vec::with_capacity(80);
        wire::put_header(&mut hb, &self.me());
        self.ready.push((self.subjects.heartbeat.clone(), hb));
        let timeout = Duration::from_millis(self.cfg.node_timeout_ms);
        let mut down = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.alive && now.duration_since(n.last_seen) > timeout {
                n.alive = false;
                tracing::warn!(node = %n.name, "cluster: node down (no heartbeat)");
                down.push(i as u16);
            }
        }
        for i in down {
            self.stats.nodes_down += 1;
            self.forget_node(i);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(self.cfg.directory_ttl_s / 4);
            let all: Vec<(Uuid, u64)> = self.local.iter().map(|(a, l)| (*a, l.since_us)).collect();
            for (addr, since_us) in all {
                if let std::collections::hash_map::Entry::Vacant(e) = self.dir_next.entry(addr) {
                    e.insert(DirOp::Put { since_us });
                    self.dir_ready.push_back(addr);
                }
            }
            self.pump();
        }
    }
}

/// Whether `frame` is one whole binary DATA frame of version 1.
fn is_data_frame(frame: &[u8]) -> bool {
    crate::proto::Header::parse(frame).is_some_and(|h| {
        h.version == crate::proto::VERSION
            && h.kind == crate::proto::Kind::Data as u8
            && h.len as usize + crate::proto::HEADER_LEN == frame.len()
    })
}
