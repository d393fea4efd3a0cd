//! The directory: where addresses are (lookups through a bounded cache),
//! this node's own entries (written one at a time per address), and the
//! bucket itself (opened, or created, on every connect).

use super::*;

impl Cluster {
    pub(super) fn cached(&mut self, addr: &Uuid) -> Option<Loc> {
        match self.cache.get(addr).copied() {
            Some(Loc::At { node, since_us }) if self.nodes[node as usize].alive => {
                Some(Loc::At { node, since_us })
            }
            Some(Loc::Nowhere { until }) if Instant::now() < until => Some(Loc::Nowhere { until }),
            Some(_) => {
                self.cache.remove(addr);
                None
            }
            None => None,
        }
    }

    pub(super) fn cache_put(&mut self, addr: Uuid, loc: Loc) {
        if self.cache.len() >= self.cfg.cache_entries && !self.cache.contains_key(&addr) {
            // Bounded: start over rather than track recency per entry.
            self.cache.clear();
        }
        self.cache.insert(addr, loc);
    }

    /// Lookups in flight are bounded by `directory_ops_in_flight`.
    pub(super) fn lookups_full(&self) -> bool {
        self.lookups.len() >= self.cfg.directory_ops_in_flight
    }

    pub(super) fn can_look_up(&self) -> bool {
        self.kv.is_some() && self.connected()
    }

    pub(super) fn look_up(&mut self, addr: Uuid) {
        let kv = self.kv.clone().expect("checked by can_look_up");
        self.stats.lookups += 1;
        self.lookups.spawn(async move {
            let r = kv.get(addr.to_string()).await.map_err(|e| e.to_string());
            (addr, r)
        });
    }

    /// A lookup came back: what waited for it goes on.
    pub(super) fn looked_up(&mut self, r: Result<LookupDone, tokio::task::JoinError>) {
        let Ok((addr, result)) = r else {
            return;
        };
        let loc = match result {
            Ok(Some(v)) => match wire::decode_dir(&v) {
                Some(e) => self.loc_of(e),
                None => self.nowhere(),
            },
            Ok(None) => self.nowhere(),
            Err(e) => {
                self.stats.directory_errors += 1;
                tracing::debug!(%addr, error = %e, "cluster: directory lookup failed");
                self.nowhere()
            }
        };
        // A presence record may have arrived meanwhile; it is newer.
        let loc = match self.cache.get(&addr) {
            Some(l) => *l,
            None => {
                self.cache_put(addr, loc);
                loc
            }
        };
        let Some(w) = self.waiting.remove(&addr) else {
            return;
        };
        self.waiting_bytes -= w.bytes.len();
        for it in &w.items {
            let frame = &w.bytes[it.start as usize..(it.start + it.len) as usize];
            match loc {
                Loc::At { node, .. } => self.send_data(node, *it, frame),
                Loc::Nowhere { .. } => self.bounce_local(*it, frame, ErrorCode::DstOffline),
            }
        }
        let at = match loc {
            Loc::At { node, since_us } => Some((node, since_us)),
            Loc::Nowhere { .. } => None,
        };
        let shard = self.owner(&addr);
        for then in w.thens {
            self.emit(shard, ServiceEvent::Located { addr, at, then });
        }
    }

    pub(super) fn nowhere(&self) -> Loc {
        Loc::Nowhere {
            until: Instant::now() + Duration::from_millis(self.cfg.heartbeat_ms),
        }
    }

    /// Where a directory entry points, if that node is alive and the entry
    /// is of its current life.
    pub(super) fn loc_of(&mut self, e: wire::DirEntry) -> Loc {
        if e.node == self.name {
            // Not connected here (the shard asked): a stale entry.
            return self.nowhere();
        }
        let node = self.node(&e.node, e.incarnation);
        let n = &self.nodes[node as usize];
        if n.alive && n.incarnation == e.incarnation {
            Loc::At {
                node,
                since_us: e.since_us,
            }
        } else {
            self.nowhere()
        }
    }

    pub(super) fn start_kv_setup(&mut self, delay: Duration) {
        let js = async_nats::jetstream::new(self.client.clone());
        let bucket = self.cfg.directory_bucket.clone();
        let ttl = Duration::from_secs(self.cfg.directory_ttl_s);
        self.kv_setup.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(kv) = js.get_key_value(&bucket).await {
                return Ok(kv);
            }
            // The bucket's stream, created directly: the client's
            // `create_key_value` first reads account fields that NATS
            // servers before 2.10 do not send. Same settings as a key-value
            // bucket with history 1, kept in memory.
            use async_nats::jetstream::stream;
            js.create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                storage: stream::StorageType::Memory,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: 1,
                duplicate_window: ttl.min(Duration::from_secs(120)),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create bucket {bucket}: {e}"))?;
            js.get_key_value(&bucket)
                .await
                .map_err(|e| format!("cannot open bucket {bucket}: {e}"))
        });
    }

    /// The directory bucket is open (or could not be: try again soon).
    pub(super) fn kv_opened(
        &mut self,
        r: Result<Result<kv::Store, String>, tokio::task::JoinError>,
    ) {
        match r {
            Ok(Ok(kv)) => {
                tracing::info!(bucket = %self.cfg.directory_bucket, "cluster: directory open");
                self.kv = Some(kv);
                self.resync();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cluster: directory unavailable; retrying");
                self.start_kv_setup(Duration::from_millis(500));
            }
            Err(e) => tracing::error!(error = %e, "cluster: directory setup task failed"),
        }
    }

    /// After (re)connecting: every local address is announced and written
    /// again, so nodes that marked this one down see it back.
    pub(super) fn resync(&mut self) {
        let all: Vec<(Uuid, u64)> = self.local.iter().map(|(a, l)| (*a, l.since_us)).collect();
        for (addr, since_us) in all {
            self.push_presence(PresenceRecord {
                addr,
                online: true,
                at_us: since_us,
            });
            self.schedule(addr, DirOp::Put { since_us });
        }
        self.next_heartbeat = Instant::now();
    }

    pub(super) fn schedule(&mut self, addr: Uuid, op: DirOp) {
        // An address already queued keeps its place, with the newer op.
        if self.dir_next.insert(addr, op).is_none() {
            self.dir_ready.push_back(addr);
        }
        self.pump();
    }

    /// Starts queued directory writes, one at a time per address.
    pub(super) fn pump(&mut self) {
        let Some(kv) = self.kv.clone() else {
            return;
        };
        if !self.connected() {
            return;
        }
        while self.dir_ops.len() < self.cfg.directory_ops_in_flight {
            let Some(addr) = self.dir_ready.pop_front() else {
                break;
            };
            if self.dir_busy.contains(&addr) {
                continue;
            }
            let Some(op) = self.dir_next.remove(&addr) else {
                continue;
            };
            let value = match op {
                DirOp::Put { since_us } => {
                    Some(Bytes::from(wire::encode_dir(since_us, &self.me())))
                }
                DirOp::Delete { rev: None } => continue,
                DirOp::Delete { .. } => None,
            };
            self.dir_busy.insert(addr);
            self.stats.directory_writes += 1;
            let kv = kv.clone();
            self.dir_ops.spawn(async move {
                let key = addr.to_string();
                let r = match (op, value) {
                    (DirOp::Put { .. }, Some(v)) => {
                        kv.put(key, v).await.map(Some).map_err(|e| e.to_string())
                    }
                    (DirOp::Delete { rev }, _) => kv
                        .delete_expect_revision(key, rev)
                        .await
                        .map(|_| None)
                        .map_err(|e| e.to_string()),
                    _ => Ok(None),
                };
                (addr, op, r)
            });
        }
    }

    pub(super) fn dir_done(&mut self, r: Result<DirDone, tokio::task::JoinError>) {
        let Ok((addr, op, result)) = r else {
            return;
        };
        self.dir_busy.remove(&addr);
        match (op, result) {
            (DirOp::Put { since_us }, Ok(Some(rev))) => match self.local.get_mut(&addr) {
                Some(l) if l.since_us == since_us => l.rev = Some(rev),
                // Gone meanwhile: take our entry back out, unless a newer
                // write is already queued.
                Some(_) => {}
                None => {
                    self.dir_next
                        .entry(addr)
                        .or_insert(DirOp::Delete { rev: Some(rev) });
                }
            },
            (_, Err(e)) => {
                // A failed put is written again at the next sweep or
                // reconnect; a failed delete expires with the TTL (or
                // another node's entry replaced ours).
                self.stats.directory_errors += 1;
                tracing::debug!(%addr, error = %e, "cluster: directory write failed");
            }
            _ => {}
        }
        if self.dir_next.contains_key(&addr) {
            self.dir_ready.push_back(addr);
        }
        self.pump();
        if self.dir_next.is_empty() && self.dir_ops.is_empty() && self.dir_next.capacity() > 4096 {
            // A burst (a sweep, a reconnect) is written: give its memory back
            // (what is left in the ready queue has nothing to do).
            self.dir_ready.clear();
            self.dir_next.shrink_to_fit();
            self.dir_ready.shrink_to_fit();
            self.dir_busy.shrink_to_fit();
        }
    }
}
