//! Starting and stopping the whole gateway: the service shard, the mesh of
//! cross-shard channels, and one pinned executor per connection shard.

use crate::config::Config;
use crate::service;
use crate::shard::{self, msg::Batch, ShardSetup};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A started gateway: where it listens, and the threads to wait for.
pub struct Gateway {
    pub tcp: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    pub shards: usize,
    shard_threads: Vec<glommio::ExecutorJoinHandle<()>>,
    service: service::Service,
}

impl Gateway {
    /// Blocks until every shard has stopped (after SIGTERM/SIGINT) and the
    /// service shard has drained.
    pub fn wait(self) {
        for t in self.shard_threads {
            if let Err(e) = t.join() {
                tracing::error!(error = ?e, "shard thread failed");
            }
        }
        self.service.stop();
    }
}

/// Binds every listener on every shard and starts serving. Returns once all
/// shards listen.
pub fn start(cfg: Config) -> anyhow::Result<Gateway> {
    let cfg = Arc::new(cfg);
    let n = cfg.shard_count();

    // Ports of 0 become one concrete port for all shards; the reservations
    // hold them until every shard has bound.
    let mut reservations = Vec::new();
    let mut resolve = |addrs: &[SocketAddr]| -> anyhow::Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for a in addrs {
            let (guard, bound) = crate::transport::listen::reserve(*a)?;
            reservations.extend(guard);
            out.push(bound);
        }
        Ok(out)
    };
    let tcp = resolve(&cfg.listen.tcp)?;
    let ws = resolve(&cfg.listen.ws)?;
    let tls = resolve(&cfg.listen.tls)?;
    let wss = resolve(&cfg.listen.wss)?;
    let tls_config = if tls.is_empty() && wss.is_empty() {
        None
    } else {
        Some(crate::transport::tls::server_config(
            &cfg.tls.cert_path,
            &cfg.tls.key_path,
        )?)
    };

    // One channel per ordered pair of shards, each with its byte counter.
    let mut to: Vec<Vec<Option<shared_channel::SharedSender<Batch>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut from: Vec<Vec<Option<shared_channel::SharedReceiver<Batch>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let counters: Vec<Vec<Arc<AtomicUsize>>> = (0..n)
        .map(|_| (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect())
        .collect();
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let (s, r) = shared_channel::new_bounded(cfg.limits.channel_capacity_batches);
                to[i][j] = Some(s);
                from[j][i] = Some(r);
            }
        }
    }

    // Batches of requests, one per shard per tick at most.
    let (req_tx, req_rx) = mpsc::channel(cfg.service.queue_batches);
    let mut event_txs = Vec::new();
    let mut event_rxs = Vec::new();
    for _ in 0..n {
        let (t, r) = mpsc::channel(cfg.service.reply_capacity);
        event_txs.push(t);
        event_rxs.push(r);
    }
    let metrics = crate::metrics::Registry::new(n, shard::state::Stats::NAMES);
    let service = service::start(
        req_rx,
        event_txs,
        cfg.store.clone(),
        cfg.cluster.clone(),
        metrics.clone(),
    )?;

    let cpus = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let shared = Arc::new(shard::Shared {
        admission: crate::admission::Admission::new(&cfg.limits),
        metrics: metrics.clone(),
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut shard_threads = Vec::new();
    for (id, (to_i, (from_i, events))) in to
        .into_iter()
        .zip(from.into_iter().zip(event_rxs))
        .enumerate()
    {
        let setup = ShardSetup {
            id,
            nshards: n,
            cfg: cfg.clone(),
            tcp: tcp.clone(),
            ws: ws.clone(),
            tls: tls.clone(),
            wss: wss.clone(),
            tls_config: tls_config.clone(),
            to: to_i,
            from: from_i,
            out_bytes: (0..n).map(|j| counters[id][j].clone()).collect(),
            in_bytes: (0..n).map(|j| counters[j][id].clone()).collect(),
            service: req_tx.clone(),
            events,
            shared: shared.clone(),
            ready: ready_tx.clone(),
        };
        let placement = if cfg.runtime.pin {
            Placement::Fixed(id % cpus)
        } else {
            Placement::Unbound
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .ring_depth(cfg.runtime.ring_depth)
            .io_memory(cfg.runtime.io_memory_bytes);
        if cfg.runtime.spin_before_park_us > 0 {
            builder =
                builder.spin_before_park(Duration::from_micros(cfg.runtime.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || shard::run(setup))
            .map_err(|e| anyhow::anyhow!("cannot start shard {id}: {e}"))?;
        shard_threads.push(handle);
    }
    drop(req_tx);
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!(e),
            Err(_) => anyhow::bail!("a shard died while starting"),
        }
    }
    drop(reservations);
    Ok(Gateway {
        tcp,
        ws,
        tls,
        wss,
        shards: n,
        shard_threads,
        service,
    })
}

/// Raises the soft open-files limit to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}
