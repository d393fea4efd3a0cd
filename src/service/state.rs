//! State writes on the service shard: a bounded queue of STATE_PUTs from
//! every connection shard, committed in batches (one multi-row upsert per
//! table inside one transaction), acknowledged only after the commit. While
//! the database fails, writes stay queued and the batch is retried with
//! backoff; past the queue bound a writer is told `store_unavailable` at once.
//! Presence changes ride along in the same transactions.

use super::now_us;
use crate::config;
use crate::metrics::Registry;
use crate::proto::ErrorCode;
use crate::routing::owner_shard;
use crate::shard::msg::{Origin, ServiceEvent};
use crate::store::policy::{Backoff, BatchPolicy};
use crate::store::{PresenceRow, StateRow, Store, StoreConfig, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Capacity of the empty write queue kept for reuse; more is freed.
const QUEUE_KEEP: usize = 4096;

/// STATE_GETs that may wait for the database at once; more are answered
/// `store_unavailable`.
const GETS_IN_FLIGHT_MAX: usize = 1024;

/// A STATE_PUT waiting for its batch.
struct Pending {
    from: Origin,
    addr: Uuid,
    /// The shard's one copy, shared by the commit, the cache and the STATE
    /// pushes.
    blob: Arc<[u8]>,
    updated_at_us: u64,
    queued_ms: u64,
}

/// A batch on its way to the database.
pub struct Batch {
    writes: Vec<Pending>,
    presence: Vec<PresenceRow>,
}

/// What a commit gives back: its outcome and the batch itself.
pub type CommitResult = (Result<(), StoreError>, Batch);
/// A commit, ready to be spawned by the service loop.
pub type CommitTask = std::pin::Pin<Box<dyn std::future::Future<Output = CommitResult> + Send>>;
pub type OpenTask = JoinHandle<Result<Store, StoreError>>;

/// What a STATE_GET that went to the database found.
pub struct GetResult {
    from: Origin,
    addr: Uuid,
    found: Result<Option<(Vec<u8>, u64)>, StoreError>,
}

/// Committed states kept in memory. Bounded: when full, the older half is
/// forgotten (those addresses are read from the database again).
struct Cache {
    map: HashMap<Uuid, (Arc<[u8]>, u64, u64)>,
    seq: u64,
    cap: usize,
}

impl Cache {
    fn get(&self, addr: &Uuid) -> Option<(Arc<[u8]>, u64)> {
        self.map.get(addr).map(|(b, at, _)| (b.clone(), *at))
    }

    /// Keeps the newer of what is cached and `blob`.
    fn put(&mut self, addr: Uuid, blob: Arc<[u8]>, updated_at_us: u64) {
        if self.cap == 0 {
            return;
        }
        if let Some((_, at, _)) = self.map.get(&addr) {
            if *at > updated_at_us {
                return;
            }
        } else if self.map.len() >= self.cap {
            let cut = self.seq - (self.map.len() as u64) / 2;
            self.map.retain(|_, (_, _, seq)| *seq > cut);
        }
        self.seq += 1;
        self.map.insert(addr, (blob, updated_at_us, self.seq));
    }
}

pub struct StateService {
    cfg: config::Store,
    store_cfg: StoreConfig,
    shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
    store: Option<Arc<Store>>,
    /// A `Store::open` is running (the loop holds its task).
    opening: bool,
    /// Batches being committed (the loop holds their tasks).
    committing: usize,
    /// Writes in the batches being committed; they count against the queue
    /// bound until acknowledged.
    inflight_writes: usize,
    /// Addresses with a write in a batch being committed: a newer write of
    /// such an address waits for that batch, so one address's writes commit
    /// in the order they were sent even with several batches in flight.
    inflight_addrs: HashMap<Uuid, u32>,
    /// Presence rows ride in one batch at a time, for the same reason.
    presence_in_flight: bool,
    queue: VecDeque<Pending>,
    presence: HashMap<Uuid, PresenceRow>,
    cache: Cache,
    policy: BatchPolicy,
    backoff: Backoff,
    /// While the database fails: no new attempt before this (service clock).
    retry_at_ms: Option<u64>,
    gets_in_flight: usize,
    got_tx: mpsc::UnboundedSender<GetResult>,
    epoch: Instant,
    /// Replies gathered per shard, sent once per wakeup.
    replies: Vec<Vec<ServiceEvent>>,
    failing_since: Option<Instant>,
    pub committed_rows: u64,
    /// Shards that reported `Drained` during shutdown.
    drained: Vec<bool>,
    /// Cluster on: committed states are also handed to the other nodes
    /// (gathered here, taken by the service loop).
    pub announce: bool,
    pub committed_out: Vec<(Uuid, u64, Arc<[u8]>)>,
    metrics: Arc<Registry>,
}

impl StateService {
    pub fn new(
        cfg: config::Store,
        shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
        got_tx: mpsc::UnboundedSender<GetResult>,
        metrics: Arc<Registry>,
    ) -> Self {
        let store_cfg = store_config(&cfg);
        let replies: Vec<Vec<ServiceEvent>> = shards.iter().map(|_| Vec::new()).collect();
        let drained = vec![false; replies.len()];
        StateService {
            policy: BatchPolicy {
                max_rows: cfg.batch_rows,
                max_delay_ms: cfg.batch_interval_ms,
            },
            backoff: Backoff::new(cfg.retry_initial_ms, cfg.retry_max_ms),
            cache: Cache {
                map: HashMap::new(),
                seq: 0,
                cap: cfg.cache_entries,
            },
            cfg,
            store_cfg,
            shards,
            store: None,
            opening: false,
            committing: 0,
            inflight_writes: 0,
            inflight_addrs: HashMap::new(),
            presence_in_flight: false,
            queue: VecDeque::new(),
            presence: HashMap::new(),
            retry_at_ms: None,
            gets_in_flight: 0,
            got_tx,
            epoch: Instant::now(),
            replies,
            failing_since: None,
            committed_rows: 0,
            drained,
            announce: false,
            committed_out: Vec::new(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Copies the queue and store figures into the metrics registry (once
    /// per loop turn).
    pub fn publish(&self) {
        let m = &self.metrics.service;
        let up = self.store.is_some() && self.failing_since.is_none();
        m.store_ok.store(up, Relaxed);
        m.queued_writes
            .store((self.queue.len() + self.inflight_writes) as u64, Relaxed);
        m.committed_rows.store(self.committed_rows, Relaxed);
    }

    pub fn describe(&self) -> String {
        match &self.store_cfg {
            StoreConfig::Mysql { url, .. } => format!("mysql {}", redact(url)),
            StoreConfig::Sqlite { data_dir, .. } => format!("sqlite {}", data_dir.display()),
        }
    }

    // ----- requests -----------------------------------------------------

    pub fn put(&mut self, from: Origin, addr: Uuid, blob: Arc<[u8]>) {
        let too_big = self
            .store
            .as_ref()
            .is_some_and(|s| blob.len() > s.max_blob_bytes());
        if too_big || self.queue.len() + self.inflight_writes >= self.cfg.queue_capacity {
            self.reply(
                from.shard,
                ServiceEvent::StateError {
                    conn: from.conn,
                    id: from.id,
                    code: ErrorCode::StoreUnavailable,
                },
            );
            return;
        }
        let queued_ms = self.now_ms();
        self.queue.push_back(Pending {
            from,
            addr,
            blob,
            updated_at_us: now_us(),
            queued_ms,
        });
    }

    pub fn get(&mut self, from: Origin, addr: Uuid) {
        if let Some((blob, at)) = self.cache.get(&addr) {
            self.found(from, addr, blob, at);
            return;
        }
        let Some(store) = self.store.clone() else {
            self.state_error(from, ErrorCode::StoreUnavailable);
            return;
        };
        if self.gets_in_flight >= GETS_IN_FLIGHT_MAX {
            self.state_error(from, ErrorCode::StoreUnavailable);
            return;
        }
        self.gets_in_flight += 1;
        let tx = self.got_tx.clone();
        tokio::spawn(async move {
            let found = store
                .get_state(addr)
                .await
                .map(|o| o.map(|s| (s.blob, s.updated_at_us)));
            let _ = tx.send(GetResult { from, addr, found });
        });
    }

    pub fn got(&mut self, r: GetResult) {
        self.gets_in_flight -= 1;
        match r.found {
            Ok(Some((blob, at))) => {
                self.cache.put(r.addr, blob.into(), at);
                // The cache holds the newer of the database's answer and a
                // commit that landed meanwhile.
                let (blob, at) = self.cache.get(&r.addr).expect("just cached");
                self.found(r.from, r.addr, blob, at);
            }
            Ok(None) => match self.cache.get(&r.addr) {
                Some((blob, at)) => self.found(r.from, r.addr, blob, at),
                None => self.state_error(r.from, ErrorCode::NotFound),
            },
            Err(e) => {
                tracing::warn!(error = %e, "state read failed");
                self.state_error(r.from, ErrorCode::StoreUnavailable);
            }
        }
    }

    pub fn presence(
        &mut self,
        addr: Uuid,
        online: bool,
        at_us: u64,
        peer: Option<std::net::SocketAddr>,
    ) {
        // One pending row per address: the latest change wins, and the table
        // stays bounded by the number of addresses.
        if self.presence.len() >= self.cfg.queue_capacity && !self.presence.contains_key(&addr) {
            tracing::warn!("presence queue full; change not persisted");
            return;
        }
        self.presence.insert(
            addr,
            PresenceRow {
                addr,
                online,
                at_us,
                peer: peer.map(|p| p.to_string()),
            },
        );
    }

    /// TIME_RESP for a TIME_REQ taken at `t1`; `t2` is stamped now, as the
    /// answer joins this wakeup's outgoing batch.
    pub fn time_reply(
        &mut self,
        shard: u16,
        conn: crate::routing::ConnKey,
        id: u64,
        t0: u64,
        t1: u64,
    ) {
        let t2 = now_us();
        self.reply(
            shard,
            ServiceEvent::TimeResp {
                conn,
                id,
                t0,
                t1,
                t2,
            },
        );
    }

    pub fn drained(&mut self, shard: u16) {
        if let Some(d) = self.drained.get_mut(shard as usize) {
            *d = true;
        }
    }

    pub fn all_drained(&self) -> bool {
        self.drained.iter().all(|d| *d)
    }

    fn found(&mut self, from: Origin, addr: Uuid, blob: Arc<[u8]>, updated_at_us: u64) {
        // The owner shard of `addr` adds the live online flag.
        let owner = owner_shard(&addr, self.shards.len()) as u16;
        self.reply(
            owner,
            ServiceEvent::StateFound {
                to: from,
                addr,
                updated_at_us,
                blob,
            },
        );
    }

    fn state_error(&mut self, from: Origin, code: ErrorCode) {
        self.reply(
            from.shard,
            ServiceEvent::StateError {
                conn: from.conn,
                id: from.id,
                code,
            },
        );
    }

    /// A state another node committed: cached, and pushed to the watchers
    /// here by the owner shard.
    pub fn remote_committed(&mut self, addr: Uuid, updated_at_us: u64, blob: Arc<[u8]>) {
        self.cache.put(addr, blob.clone(), updated_at_us);
        let owner = owner_shard(&addr, self.shards.len()) as u16;
        self.reply(
            owner,
            ServiceEvent::StateCommitted {
                addr,
                updated_at_us,
                blob,
            },
        );
    }

    /// A `Locate` on a single node: the address is connected nowhere.
    pub fn located_nowhere(&mut self, addr: Uuid, then: crate::shard::msg::Then) {
        let owner = owner_shard(&addr, self.shards.len()) as u16;
        self.reply(
            owner,
            ServiceEvent::Located {
                addr,
                at: None,
                then,
            },
        );
    }

    fn reply(&mut self, shard: u16, ev: ServiceEvent) {
        if let Some(out) = self.replies.get_mut(shard as usize) {
            out.push(ev);
        }
    }

    /// Sends what this wakeup produced, one batch per shard.
    pub async fn send_replies(&mut self) {
        super::send_batches(&self.shards, &mut self.replies, "state replies").await;
    }

    // ----- the database -------------------------------------------------

    /// Starts opening the store if it is not open and no attempt is due later.
    pub fn ensure_open(&mut self) -> Option<OpenTask> {
        if self.store.is_some() || self.opening {
            return None;
        }
        if self.retry_at_ms.is_some_and(|t| t > self.now_ms()) {
            return None;
        }
        self.opening = true;
        let cfg = self.store_cfg.clone();
        Some(tokio::spawn(async move { Store::open(&cfg).await }))
    }

    pub fn opened(&mut self, r: Result<Result<Store, StoreError>, tokio::task::JoinError>) {
        self.opening = false;
        match r {
            Ok(Ok(store)) => {
                tracing::info!(store = %self.describe(), "state store open");
                self.store = Some(Arc::new(store));
                self.recovered();
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// Starts a commit when the batch policy says so and a commit slot is
    /// free (`commits_in_flight`). A batch never holds a write of an address
    /// that is in another batch still being committed.
    pub fn maybe_commit(&mut self, force: bool) -> Option<CommitTask> {
        if self.committing >= self.cfg.commits_in_flight
            || self.queue.is_empty() && (self.presence.is_empty() || self.presence_in_flight)
        {
            return None;
        }
        let now = self.now_ms();
        if self.retry_at_ms.is_some_and(|t| t > now) {
            return None;
        }
        let store = self.store.clone()?;
        let rows = self.queue.len() + self.presence.len();
        let oldest = self.oldest_ms();
        if !force && !self.policy.should_flush(rows, oldest, now) {
            return None;
        }
        let mut writes: Vec<Pending> =
            Vec::with_capacity(self.queue.len().min(self.cfg.batch_rows_max));
        let blob_max = store.max_blob_bytes();
        let mut waiting = VecDeque::new();
        while let Some(w) = self.queue.pop_front() {
            if writes.len() >= self.cfg.batch_rows_max {
                self.queue.push_front(w);
                break;
            }
            if self.inflight_addrs.contains_key(&w.addr) {
                waiting.push_back(w);
                continue;
            }
            // Queued before the store was open: a state the database can
            // never take must not hold up the others.
            if w.blob.len() > blob_max {
                self.replies[w.from.shard as usize].push(ServiceEvent::StateError {
                    conn: w.from.conn,
                    id: w.from.id,
                    code: ErrorCode::StoreUnavailable,
                });
            } else {
                writes.push(w);
            }
        }
        // What had to wait goes back in front, in its order.
        while let Some(w) = waiting.pop_back() {
            self.queue.push_front(w);
        }
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEEP {
            // Give back what a burst of writes grew.
            self.queue = VecDeque::new();
        }
        for w in &writes {
            *self.inflight_addrs.entry(w.addr).or_insert(0) += 1;
        }
        let take_presence = !self.presence_in_flight;
        if writes.is_empty() && (!take_presence || self.presence.is_empty()) {
            return None;
        }
        self.committing += 1;
        self.inflight_writes += writes.len();
        let presence: Vec<PresenceRow> = if take_presence {
            self.presence_in_flight = !self.presence.is_empty();
            // Taken, not drained: a burst of connections must not leave a
            // large table behind for the life of the process.
            std::mem::take(&mut self.presence).into_values().collect()
        } else {
            Vec::new()
        };
        let batch = Batch { writes, presence };
        let metrics = self.metrics.clone();
        Some(Box::pin(async move {
            let states: Vec<StateRow> = batch
                .writes
                .iter()
                .map(|w| StateRow {
                    addr: w.addr,
                    blob: w.blob.clone(),
                    updated_at_us: w.updated_at_us,
                })
                .collect();
            let started = Instant::now();
            let r = store.commit(&states, &batch.presence).await;
            let us = started.elapsed().as_micros() as u64;
            if r.is_ok() {
                metrics.service.commit_latency_us.observe(us);
                metrics.service.batch_rows.observe(states.len() as u64);
            } else {
                metrics.service.failed_commits.fetch_add(1, Relaxed);
            }
            tracing::debug!(
                rows = states.len(),
                presence = batch.presence.len(),
                ms = started.elapsed().as_millis() as u64,
                ok = r.is_ok(),
                "state batch"
            );
            (r, batch)
        }))
    }

    fn oldest_ms(&self) -> Option<u64> {
        match (self.queue.front(), self.presence.is_empty()) {
            (Some(p), _) => Some(p.queued_ms),
            // Presence rows carry no queue time; treat them as due now.
            (None, false) => Some(self.now_ms().saturating_sub(self.cfg.batch_interval_ms)),
            (None, true) => None,
        }
    }

    /// A commit finished: acknowledge and publish, or put the batch back.
    pub fn committed(
        &mut self,
        r: Result<(Result<(), StoreError>, Batch), tokio::task::JoinError>,
    ) {
        self.committing -= 1;
        let (result, batch) = match r {
            Ok(x) => {
                self.release(&x.1);
                x
            }
            Err(e) => {
                // The task panicked: its rows are gone from memory. Nothing
                // was acknowledged; say so loudly.
                tracing::error!(error = %e, "state commit task failed");
                if self.committing == 0 {
                    self.inflight_addrs.clear();
                    self.inflight_writes = 0;
                    self.presence_in_flight = false;
                }
                return;
            }
        };
        match result {
            Ok(()) => {
                self.committed_rows += batch.writes.len() as u64;
                self.recovered();
                let n = self.shards.len();
                for w in batch.writes {
                    self.reply(
                        w.from.shard,
                        ServiceEvent::StateAck {
                            conn: w.from.conn,
                            id: w.from.id,
                            updated_at_us: w.updated_at_us,
                        },
                    );
                    let blob = w.blob;
                    self.cache.put(w.addr, blob.clone(), w.updated_at_us);
                    if self.announce {
                        self.committed_out
                            .push((w.addr, w.updated_at_us, blob.clone()));
                    }
                    self.reply(
                        owner_shard(&w.addr, n) as u16,
                        ServiceEvent::StateCommitted {
                            addr: w.addr,
                            updated_at_us: w.updated_at_us,
                            blob,
                        },
                    );
                }
            }
            Err(e) if !e.is_transient() => {
                // Retrying cannot help (a schema or data problem): answer
                // the writers instead of blocking everyone behind them.
                tracing::error!(store = %self.describe(), error = %e, writes = batch.writes.len(), "state batch refused by the database; writers told store_unavailable");
                for w in batch.writes {
                    self.reply(
                        w.from.shard,
                        ServiceEvent::StateError {
                            conn: w.from.conn,
                            id: w.from.id,
                            code: ErrorCode::StoreUnavailable,
                        },
                    );
                }
            }
            Err(e) => {
                // Back to the front, in order; a newer presence row for the
                // same address (queued meanwhile) wins over the retried one.
                for w in batch.writes.into_iter().rev() {
                    self.queue.push_front(w);
                }
                for row in batch.presence {
                    self.presence.entry(row.addr).or_insert(row);
                }
                self.failed(&e.to_string());
            }
        }
    }

    /// A batch came back: its writes and addresses are no longer in flight.
    fn release(&mut self, batch: &Batch) {
        self.inflight_writes -= batch.writes.len();
        if !batch.presence.is_empty() {
            self.presence_in_flight = false;
        }
        for w in &batch.writes {
            if let Some(n) = self.inflight_addrs.get_mut(&w.addr) {
                *n -= 1;
                if *n == 0 {
                    self.inflight_addrs.remove(&w.addr);
                }
            }
        }
    }

    fn failed(&mut self, error: &str) {
        let delay = self.backoff.next_delay_ms();
        self.retry_at_ms = Some(self.now_ms() + delay);
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
        }
        tracing::warn!(store = %self.describe(), error, retry_in_ms = delay, queued = self.queue.len(), "state store failing; writes stay queued");
    }

    fn recovered(&mut self) {
        self.retry_at_ms = None;
        self.backoff.reset();
        if let Some(since) = self.failing_since.take() {
            tracing::info!(store = %self.describe(), down_ms = since.elapsed().as_millis() as u64, "state store back");
        }
    }

    /// When the loop must wake up next for the store (a flush or a retry).
    pub fn next_wake_ms(&self) -> Option<u64> {
        if let Some(t) = self.retry_at_ms {
            return Some(t);
        }
        if self.committing >= self.cfg.commits_in_flight || self.store.is_none() {
            return None;
        }
        let rows = self.queue.len() + self.presence.len();
        self.policy.next_flush_at(rows, self.oldest_ms())
    }

    pub fn service_ms_to_instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + std::time::Duration::from_millis(ms))
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.presence.is_empty() && self.committing == 0
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Closes the store (after the last commit).
    pub async fn close(&mut self) {
        if let Some(store) = self.store.take() {
            match Arc::try_unwrap(store) {
                Ok(store) => store.close().await,
                Err(_) => tracing::debug!("state reads still running at close"),
            }
        }
    }
}

/// The store the configuration names; `GATEWAY_MYSQL_URL` wins over the file.
pub fn store_config(cfg: &config::Store) -> StoreConfig {
    let url = std::env::var("GATEWAY_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| cfg.mysql_url.clone());
    if url.is_empty() {
        StoreConfig::Sqlite {
            data_dir: cfg.data_dir.clone(),
            cache_kib: cfg.sqlite_cache_kib,
        }
    } else {
        StoreConfig::Mysql {
            url,
            table_prefix: "gateway_".to_string(),
        }
    }
}

/// A URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("mysql://root:secret@db:3306/x"),
            "mysql://root:***@db:3306/x"
        );
        assert_eq!(redact("mysql://root@db:3306/x"), "mysql://root@db:3306/x");
    }

    #[test]
    fn cache_keeps_the_newer_state_and_stays_bounded() {
        let mut c = Cache {
            map: HashMap::new(),
            seq: 0,
            cap: 10,
        };
        let a = Uuid::new_v4();
        c.put(a, Arc::from(&b"new"[..]), 20);
        c.put(a, Arc::from(&b"old"[..]), 10);
        assert_eq!(&*c.get(&a).unwrap().0, b"new");
        for i in 0..100u64 {
            c.put(Uuid::new_v4(), Arc::from(&b"x"[..]), i);
            assert!(c.map.len() <= 10);
        }
    }

    /// Two batches in flight: a second write of an address whose first write
    /// is still committing waits for it (and does not hold up the others), so
    /// each address's writes are acknowledged and stored in the order sent.
    #[tokio::test]
    async fn an_address_waits_for_its_batch_in_flight() {
        let dir = std::env::temp_dir().join(format!(
            "gateway-state-order-{}-{}",
            std::process::id(),
            Uuid::new_v4()
        ));
        let cfg = config::Store {
            data_dir: dir.clone(),
            commits_in_flight: 2,
            ..config::Store::default()
        };
        let (tx, mut rx) = mpsc::channel(64);
        let (got_tx, _got_rx) = mpsc::unbounded_channel();
        let mut s = StateService::new(cfg, vec![tx], got_tx, Registry::new(1, &[]));
        let open = s.ensure_open().expect("opens");
        s.opened(open.await);
        let from = |id| Origin {
            shard: 0,
            conn: crate::routing::ConnKey { slot: 0, gen: 0 },
            id,
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

        s.put(from(1), a, Arc::from(&b"a1"[..]));
        let first = tokio::spawn(s.maybe_commit(true).expect("first batch"));
        s.put(from(2), a, Arc::from(&b"a2"[..]));
        s.put(from(3), b, Arc::from(&b"b1"[..]));
        let second = tokio::spawn(s.maybe_commit(true).expect("second batch: b1"));
        assert!(s.maybe_commit(true).is_none(), "at most two in flight");
        assert_eq!(s.queued(), 1, "a2 waits for a1's batch");

        s.committed(second.await);
        assert!(
            s.maybe_commit(true).is_none(),
            "a2 still waits while a1 commits"
        );
        s.committed(first.await);
        let third = tokio::spawn(s.maybe_commit(true).expect("third batch: a2"));
        s.committed(third.await);
        assert!(s.is_idle());
        s.send_replies().await;

        let mut acks = Vec::new();
        let mut stored = HashMap::new();
        while let Ok(batch) = rx.try_recv() {
            for ev in batch {
                match ev {
                    ServiceEvent::StateAck { id, .. } => acks.push(id),
                    ServiceEvent::StateCommitted { addr, blob, .. } => {
                        stored.insert(addr, blob.to_vec());
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(acks, [3, 1, 2]);
        assert_eq!(stored[&a], b"a2");
        assert_eq!(stored[&b], b"b1");
        let store = s.store.clone().expect("open");
        let row = store.get_state(a).await.expect("read").expect("stored");
        assert_eq!(row.blob, b"a2");
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
