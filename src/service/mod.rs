//! The service shard: one thread outside the connection shards, running a
//! tokio current-thread runtime (the store's MySQL driver needs tokio). It
//! answers time sync, batches state writes into the store (`state`), and
//! turns SIGTERM/SIGINT into a graceful shutdown of every shard.
//!
//! Shards reach it over one bounded tokio channel (`try_send`, never
//! blocking a shard); it answers each shard over that shard's own bounded
//! channel, one batch per wakeup.

mod state;

use crate::cluster::Cluster;
use crate::shard::msg::{ServiceEvent, ServiceReq};
use state::StateService;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Request batches (one per shard per tick) taken from the queue per wakeup.
const BATCH_MAX: usize = 64;

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub struct Service {
    thread: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Service {
    /// Stops the service shard once the connection shards are gone, and
    /// waits for it.
    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("service thread panicked");
        }
    }
}

/// Starts the service thread. It runs until [`Service::stop`] or until every
/// request sender (one per shard) is dropped. Returns once its signal handlers
/// are installed, so a signal that arrives after this returns triggers a
/// graceful shutdown.
pub fn start(
    requests: mpsc::Receiver<Vec<ServiceReq>>,
    shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
    store: crate::config::Store,
    cluster: crate::config::Cluster,
    metrics: std::sync::Arc<crate::metrics::Registry>,
) -> std::io::Result<Service> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("gateway-service".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(run(
                requests, shards, store, cluster, metrics, ready_tx, stop_rx,
            ));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Service { thread, stop }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("service thread died at start")),
    }
}

/// How long the start waits for the store to open before reporting ready.
const FIRST_OPEN_WAIT: Duration = Duration::from_secs(5);

/// Far enough in the future to mean "no timer".
const NO_WAKE: Duration = Duration::from_secs(3600);

async fn run(
    mut requests: mpsc::Receiver<Vec<ServiceReq>>,
    shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
    store: crate::config::Store,
    cluster_cfg: crate::config::Cluster,
    metrics: std::sync::Arc<crate::metrics::Registry>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let signals =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    let (mut sigterm, mut sigint) = match signals {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let shutdown_flush = Duration::from_millis(store.shutdown_flush_ms);
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let mut state = StateService::new(store, shards.clone(), got_tx, metrics.clone());
    tracing::info!(store = %state.describe(), "state store configured");
    let mut tasks = Tasks {
        open: state.ensure_open(),
        commits: JoinSet::new(),
    };
    // A reachable store is open before the gateway reports ready, so the
    // first STATE_GET finds it; an unreachable one does not hold up the start
    // (writes queue until it comes).
    if let Some(open) = tasks.open.as_mut() {
        if let Ok(r) = tokio::time::timeout(FIRST_OPEN_WAIT, open).await {
            tasks.open = None;
            state.opened(r);
        }
    }
    let mut cluster = if cluster_cfg.enabled() {
        match Cluster::start(cluster_cfg, shards.clone()).await {
            Ok(c) => {
                state.announce = true;
                Some(c)
            }
            Err(e) => {
                let _ = ready.send(Err(std::io::Error::other(e)));
                return;
            }
        }
    } else {
        None
    };
    state.publish();
    let _ = ready.send(Ok(()));
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut shutting_down = false;
    loop {
        let wake = state
            .next_wake_ms()
            .map(|ms| state.service_ms_to_instant(ms))
            .unwrap_or_else(|| tokio::time::Instant::now() + NO_WAKE);
        tokio::select! {
            _ = &mut stop => break,
            n = requests.recv_many(&mut batch, BATCH_MAX) => {
                if n == 0 {
                    break;
                }
                handle(&mut batch, &mut state, &mut cluster);
            }
            w = async { cluster.as_mut().expect("guarded").next().await }, if cluster.is_some() => {
                cluster.as_mut().expect("guarded").handle(w);
            }
            Some(r) = tasks.commits.join_next(), if !tasks.commits.is_empty() => {
                state.committed(r);
            }
            r = async { tasks.open.as_mut().expect("guarded").await }, if tasks.open.is_some() => {
                tasks.open = None;
                state.opened(r);
            }
            Some(r) = got_rx.recv() => state.got(r),
            _ = tokio::time::sleep_until(wake) => {}
            _ = sigterm.recv(), if !shutting_down => {
                tracing::info!("SIGTERM: shutting down");
                shutting_down = true;
                shut_down(&mut state, &mut tasks, &mut requests, &shards, shutdown_flush, &mut cluster).await;
            }
            _ = sigint.recv(), if !shutting_down => {
                tracing::info!("SIGINT: shutting down");
                shutting_down = true;
                shut_down(&mut state, &mut tasks, &mut requests, &shards, shutdown_flush, &mut cluster).await;
            }
        }
        tasks.start(&mut state, false);
        if let Some(c) = cluster.as_mut() {
            exchange(&mut state, c);
        }
        state.send_replies().await;
        if let Some(c) = cluster.as_mut() {
            c.flush().await;
            c.publish(&metrics.service.cluster);
        }
        state.publish();
    }
    if let Some(c) = cluster.as_mut() {
        c.close().await;
    }
    if let Some(t) = tasks.open.take() {
        t.abort();
    }
    // Stopping now (every shard is gone): wait for the batches on their way.
    while let Some(r) = tasks.commits.join_next().await {
        state.committed(r);
    }
    state.close().await;
}

/// The store work in progress, owned by the service loop.
struct Tasks {
    open: Option<state::OpenTask>,
    commits: JoinSet<state::CommitResult>,
}

impl Tasks {
    /// Opens the store or starts a commit when one is due.
    fn start(&mut self, state: &mut StateService, force: bool) {
        if self.open.is_none() {
            self.open = state.ensure_open();
        }
        while let Some(batch) = state.maybe_commit(force) {
            self.commits.spawn(batch);
        }
    }
}

/// Committed states go to the other nodes, and theirs into the cache and
/// to the watchers here.
fn exchange(state: &mut StateService, c: &mut Cluster) {
    for (addr, at, blob) in state.committed_out.drain(..) {
        c.state_committed(addr, at, &blob);
    }
    for (addr, at, blob) in c.remote_states.drain(..) {
        state.remote_committed(addr, at, blob);
    }
}

/// Handles one batch of requests from the shards.
fn handle(
    batches: &mut Vec<Vec<ServiceReq>>,
    state: &mut StateService,
    cluster: &mut Option<Cluster>,
) {
    let t1 = now_us();
    for req in batches.drain(..).flatten() {
        match req {
            ServiceReq::Time {
                shard,
                conn,
                id,
                t0,
            } => state.time_reply(shard, conn, id, t0, t1),
            ServiceReq::StatePut { from, addr, blob } => state.put(from, addr, blob),
            ServiceReq::StateGet { from, addr } => state.get(from, addr),
            ServiceReq::Presence {
                addr,
                online,
                at_us,
                peer,
            } => {
                if let Some(c) = cluster.as_mut() {
                    c.local_presence(addr, online, at_us);
                }
                state.presence(addr, online, at_us, peer)
            }
            ServiceReq::Drained { shard } => state.drained(shard),
            ServiceReq::RemoteData { bytes, items } => {
                if let Some(c) = cluster.as_mut() {
                    c.remote_data(&bytes, &items);
                }
            }
            ServiceReq::Bounce { to, id, code, dst } => {
                if let Some(c) = cluster.as_mut() {
                    c.bounce(to, id, code, dst);
                }
            }
            ServiceReq::Locate { addr, then } => match cluster.as_mut() {
                Some(c) => c.locate(addr, then),
                None => state.located_nowhere(addr, then),
            },
        }
    }
}

/// The graceful shutdown: shards stop accepting; the queued writes are
/// committed (within the deadline) and acknowledged; then every shard tells
/// its clients and closes them.
async fn shut_down(
    state: &mut StateService,
    tasks: &mut Tasks,
    requests: &mut mpsc::Receiver<Vec<ServiceReq>>,
    shards: &[mpsc::Sender<Vec<ServiceEvent>>],
    deadline: Duration,
    cluster: &mut Option<Cluster>,
) {
    broadcast(shards, ServiceEvent::StopAccepting).await;
    let until = tokio::time::Instant::now() + deadline;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while tokio::time::Instant::now() < until {
        // Writes already on their way from the shards still count, and so
        // do writes the clients sent before the signal: every shard reports
        // when it has handled its input.
        while let Ok(req) = requests.try_recv() {
            batch.push(req);
        }
        handle(&mut batch, state, cluster);
        if state.all_drained() && state.is_idle() && tasks.commits.is_empty() {
            break;
        }
        tasks.start(state, true);
        tokio::select! {
            Some(r) = tasks.commits.join_next(), if !tasks.commits.is_empty() => {
                state.committed(r);
            }
            r = async { tasks.open.as_mut().expect("guarded").await }, if tasks.open.is_some() => {
                tasks.open = None;
                state.opened(r);
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        state.send_replies().await;
        if let Some(c) = cluster.as_mut() {
            c.flush().await;
        }
    }
    state.send_replies().await;
    if let Some(c) = cluster.as_mut() {
        c.flush().await;
    }
    if !state.is_idle() {
        tracing::error!(
            queued = state.queued(),
            "shutdown deadline passed with state writes not committed; they were not acknowledged"
        );
    }
    broadcast(shards, ServiceEvent::Shutdown).await;
}

/// Sends each shard its gathered events as one batch; a shard that is gone
/// (shutdown) loses its batch, which is logged.
pub(crate) async fn send_batches(
    shards: &[mpsc::Sender<Vec<ServiceEvent>>],
    out: &mut [Vec<ServiceEvent>],
    what: &'static str,
) {
    for (shard, events) in out.iter_mut().enumerate() {
        if events.is_empty() {
            continue;
        }
        if shards[shard].send(std::mem::take(events)).await.is_err() {
            tracing::debug!(shard, what, "shard gone; dropping its batch");
        }
    }
}

async fn broadcast(shards: &[mpsc::Sender<Vec<ServiceEvent>>], ev: ServiceEvent) {
    for (i, tx) in shards.iter().enumerate() {
        let ev = match &ev {
            ServiceEvent::StopAccepting => ServiceEvent::StopAccepting,
            _ => ServiceEvent::Shutdown,
        };
        if tx.send(vec![ev]).await.is_err() {
            tracing::debug!(shard = i, "shard already gone at shutdown");
        }
    }
}
