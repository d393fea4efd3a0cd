//! The service shard: one thread outside the connection shards, running a
//! tokio current-thread runtime (the store's MySQL driver needs tokio). It
//! answers time sync, and it turns SIGTERM/SIGINT into a shutdown of every
//! shard.
//!
//! Shards reach it over one bounded tokio channel (`try_send`, never
//! blocking a shard); it answers each shard over that shard's own bounded
//! channel, one batch per wakeup.

use crate::shard::msg::{ServiceEvent, ServiceReq};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Requests taken from the queue per wakeup.
const BATCH_MAX: usize = 1024;

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
/// request sender (one per shard) is dropped. Returns once its signal handlers are installed, so a
/// signal that arrives after this returns triggers a graceful shutdown.
pub fn start(
    requests: mpsc::Receiver<ServiceReq>,
    shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
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
            rt.block_on(run(requests, shards, ready_tx, stop_rx));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Service { thread, stop }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("service thread died at start")),
    }
}

async fn run(
    mut requests: mpsc::Receiver<ServiceReq>,
    shards: Vec<mpsc::Sender<Vec<ServiceEvent>>>,
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
    let _ = ready.send(Ok(()));
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut replies: Vec<Vec<ServiceEvent>> = shards.iter().map(|_| Vec::new()).collect();
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            n = requests.recv_many(&mut batch, BATCH_MAX) => {
                if n == 0 {
                    break;
                }
                answer(&mut batch, &mut replies, &shards).await;
            }
            _ = sigterm.recv(), if !shutting_down => {
                tracing::info!("SIGTERM: shutting down");
                shutting_down = true;
                broadcast_shutdown(&shards).await;
            }
            _ = sigint.recv(), if !shutting_down => {
                tracing::info!("SIGINT: shutting down");
                shutting_down = true;
                broadcast_shutdown(&shards).await;
            }
        }
    }
}

/// Answers one batch of requests: t1 is stamped when the batch is taken,
/// t2 just before the replies leave.
async fn answer(
    batch: &mut Vec<ServiceReq>,
    replies: &mut [Vec<ServiceEvent>],
    shards: &[mpsc::Sender<Vec<ServiceEvent>>],
) {
    let t1 = now_us();
    for req in batch.drain(..) {
        match req {
            ServiceReq::Time {
                shard,
                conn,
                id,
                t0,
            } => {
                if let Some(out) = replies.get_mut(shard as usize) {
                    out.push(ServiceEvent::TimeResp {
                        conn,
                        id,
                        t0,
                        t1,
                        t2: 0,
                    });
                }
            }
        }
    }
    let t2 = now_us();
    for (shard, out) in replies.iter_mut().enumerate() {
        if out.is_empty() {
            continue;
        }
        for ev in out.iter_mut() {
            if let ServiceEvent::TimeResp { t2: slot, .. } = ev {
                *slot = t2;
            }
        }
        let events = std::mem::take(out);
        // Waiting here is the service's own backpressure; shards never wait
        // on the service.
        if shards[shard].send(events).await.is_err() {
            tracing::debug!(shard, "shard gone; dropping its time replies");
        }
    }
}

async fn broadcast_shutdown(shards: &[mpsc::Sender<Vec<ServiceEvent>>]) {
    for (i, tx) in shards.iter().enumerate() {
        if tx.send(vec![ServiceEvent::Shutdown]).await.is_err() {
            tracing::debug!(shard = i, "shard already gone at shutdown");
        }
    }
}
