//! Connection shards: one glommio executor per core, each owning a slice of
//! the connections and the routing table of the addresses it owns.
//!
//! Tasks of a shard (all on its one thread, none holding the state across an
//! await): an accept loop per listener, a reader per connection, one flusher
//! that writes every dirty connection once per loop tick, a writer only for
//! a connection whose socket buffer is full, one sender and one receiver per
//! other shard, the service receiver, and the ticker that sweeps timeouts.

pub mod conn;
pub mod handle;
pub mod msg;
pub mod sim;
pub mod state;
pub mod wheel;

use crate::admission::{Admission, Refusal};
use crate::config::Config;
use crate::metrics::Registry;
use crate::routing::ConnKey;
use crate::transport::tls::Tls;
use conn::{Conn, State, Wire};
use futures_lite::future::{poll_fn, yield_now};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::{TcpListener, TcpStream};
use glommio::Task;
use msg::{Batch, ServiceEvent, ServiceReq};
use state::{Outbox, ShardState};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::mpsc;

/// Pause after an accept error (e.g. out of descriptors) so a full process
/// does not spin on its listeners.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What every connection shard shares with the others: the admission
/// counts (atomics) and the metrics registry (one slot per shard).
pub struct Shared {
    pub admission: Admission,
    pub metrics: Arc<Registry>,
}

/// Everything a shard needs, built on the main thread and moved to the
/// shard's thread.
pub struct ShardSetup {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Arc<Config>,
    pub tcp: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    /// The TLS server configuration when a tls or wss listener is set.
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    /// Senders to every other shard (None at this shard's own index).
    pub to: Vec<Option<SharedSender<Batch>>>,
    /// Receivers from every other shard (None at this shard's own index).
    pub from: Vec<Option<SharedReceiver<Batch>>>,
    /// DATA bytes in flight on channel (this -> j) and (j -> this).
    pub out_bytes: Vec<Arc<AtomicUsize>>,
    pub in_bytes: Vec<Arc<AtomicUsize>>,
    pub service: mpsc::Sender<Vec<ServiceReq>>,
    pub events: mpsc::Receiver<Vec<ServiceEvent>>,
    /// Admission counts and metrics, shared by every shard.
    pub shared: Arc<Shared>,
    /// Told once the listeners are bound (or why they are not).
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
}

pub struct Shard {
    pub st: RefCell<ShardState>,
    accepts: RefCell<Vec<Task<()>>>,
}

impl Shard {
    /// Spawns the tasks the last state change asked for. Called after every
    /// state borrow ends, never inside one: a spawned task may run at once.
    fn spawn_pending(self: &Rc<Self>) {
        loop {
            let (readers, writers) = {
                let mut st = self.st.borrow_mut();
                if st.spawn_readers.is_empty() && st.spawn_writers.is_empty() {
                    return;
                }
                (
                    std::mem::take(&mut st.spawn_readers),
                    std::mem::take(&mut st.spawn_writers),
                )
            };
            for key in readers {
                glommio::spawn_local(reader(self.clone(), key)).detach();
            }
            for key in writers {
                glommio::spawn_local(writer(self.clone(), key)).detach();
            }
        }
    }
}

/// The shard's main future: binds, connects the channels, runs until a
/// shutdown has closed every connection (or its deadline passed).
pub async fn run(setup: ShardSetup) {
    let ShardSetup {
        id,
        nshards,
        cfg,
        tcp,
        ws,
        tls,
        wss,
        tls_config,
        to,
        from,
        out_bytes,
        in_bytes,
        service,
        events,
        shared,
        ready,
    } = setup;

    let mut listeners = Vec::new();
    let bound: Result<(), String> = (|| {
        let kinds = [
            (&tcp, Wire::Tcp, None),
            (&ws, Wire::WsUpgrade, None),
            (&tls, Wire::Tcp, tls_config.as_ref()),
            (&wss, Wire::WsUpgrade, tls_config.as_ref()),
        ];
        for (addrs, wire, tls) in kinds {
            for addr in addrs {
                let s = crate::transport::listen::listen(*addr, cfg.listen.backlog)
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                // SAFETY: a listening socket we own, handed to glommio.
                let l = unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) };
                listeners.push((l, wire, tls.cloned()));
            }
        }
        Ok(())
    })();
    let failed = bound.is_err();
    let _ = ready.send(bound);
    if failed {
        return;
    }

    // Both ends of every channel must connect; do them all at once.
    let mut connects: Vec<Task<(usize, ConnectedSender<Batch>)>> = Vec::new();
    for (j, s) in to.into_iter().enumerate() {
        if let Some(s) = s {
            connects.push(glommio::spawn_local(async move { (j, s.connect().await) }));
        }
    }
    let mut receivers: Vec<Task<(usize, ConnectedReceiver<Batch>)>> = Vec::new();
    for (j, r) in from.into_iter().enumerate() {
        if let Some(r) = r {
            receivers.push(glommio::spawn_local(async move { (j, r.connect().await) }));
        }
    }
    let mut senders = Vec::new();
    for c in connects {
        senders.push(c.await);
    }
    let mut inboxes = Vec::new();
    for r in receivers {
        inboxes.push(r.await);
    }

    let outboxes = out_bytes
        .into_iter()
        .map(|in_flight| Outbox {
            pending: Batch::default(),
            in_flight,
            waker: None,
        })
        .collect();
    let state = ShardState::new(
        id,
        nshards,
        cfg.clone(),
        outboxes,
        in_bytes,
        service,
        shared,
    );
    let shard = Rc::new(Shard {
        st: RefCell::new(state),
        accepts: RefCell::new(Vec::new()),
    });

    for (j, tx) in senders {
        glommio::spawn_local(outbox_sender(shard.clone(), j, tx)).detach();
    }
    for (j, rx) in inboxes {
        glommio::spawn_local(inbox(shard.clone(), j, rx)).detach();
    }
    glommio::spawn_local(service_events(shard.clone(), events)).detach();
    glommio::spawn_local(service_sender(shard.clone())).detach();
    glommio::spawn_local(flusher(shard.clone())).detach();
    for (listener, wire, tls) in listeners {
        let task = glommio::spawn_local(accept_loop(shard.clone(), listener, wire, tls));
        shard.accepts.borrow_mut().push(task);
    }

    ticker(shard.clone()).await;
    let st = shard.st.borrow();
    tracing::info!(shard = id, open = st.conns.len(), stats = ?st.stats, "shard stopped");
}

/// Sweeps timeouts every tick; after a shutdown began, ends once every
/// connection is gone or the deadline passed.
async fn ticker(shard: Rc<Shard>) {
    let tick = Duration::from_millis(shard.st.borrow().cfg.timeouts.timer_tick_ms as u64);
    loop {
        glommio::timer::sleep(tick).await;
        let done = {
            let mut st = shard.st.borrow_mut();
            st.sweep();
            st.report_drained();
            st.publish();
            st.shutting_down && (st.conns.is_empty() || st.now_ms >= st.shutdown_deadline_ms)
        };
        shard.spawn_pending();
        if !shard.st.borrow().accepting {
            // Stop accepting: dropping an accept task cancels it and closes
            // its listener.
            shard.accepts.borrow_mut().clear();
        }
        if done {
            return;
        }
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    wire: Wire,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                adopt(&shard, stream, wire, tls.as_ref());
                shard.spawn_pending();
            }
            Err(e) => {
                let (id, failures) = {
                    let mut st = shard.st.borrow_mut();
                    st.stats.accept_errors += 1;
                    (st.id, st.stats.accept_errors)
                };
                // Out of descriptors, this fires every pause: log the 1st,
                // 2nd, 4th, 8th... only.
                if failures.is_power_of_two() {
                    tracing::warn!(shard = id, error = %e, failures, "accept failed");
                }
                glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

fn adopt(
    shard: &Rc<Shard>,
    stream: TcpStream,
    wire: Wire,
    tls: Option<&Arc<rustls::ServerConfig>>,
) {
    let mut st = shard.st.borrow_mut();
    if !st.accepting {
        return;
    }
    if st.conns.len() >= st.cfg.limits.max_connections_per_shard {
        st.stats.refused_full += 1;
        if st.stats.refused_full.is_power_of_two() {
            tracing::warn!(
                shard = st.id,
                refused = st.stats.refused_full,
                "connection limit of the shard reached; closing new connections"
            );
        }
        return;
    }
    let peer = if st.shared.admission.per_ip_limits() {
        stream.peer_addr().ok().map(|a| a.ip())
    } else {
        None
    };
    let ticket = match st.shared.admission.admit(peer) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            refused(&mut st, refusal, peer);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    st.tick_clock();
    let now = st.now_ms;
    let mut conn = Conn::new(stream, wire, now);
    conn.ticket = ticket;
    if let Some(config) = tls {
        match Tls::new(config) {
            Ok(tls) => conn.set_tls(tls),
            Err(e) => {
                tracing::warn!(shard = st.id, error = %e, "cannot start a TLS session; closing");
                st.shared.admission.release(ticket);
                return;
            }
        }
    }
    st.traffic.open[conn.transport()] += 1;
    let transport = crate::metrics::TRANSPORTS[conn.transport()];
    let key = st.conns.insert(conn);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let peer = st
            .conns
            .get(key)
            .and_then(|c| c.stream.peer_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::debug!(shard = st.id, conn = key.slot, peer, transport, "accepted");
    }
    let deadline = now + st.cfg.timeouts.handshake_timeout_ms as u64;
    let tick = st.wheel.insert(key, deadline);
    if let Some(c) = st.conns.get_mut(key) {
        c.wheel_tick = tick;
    }
    st.stats.accepted += 1;
    st.spawn_readers.push(key);
}

/// Counts a connection admission refused (it is closed as it drops) and
/// logs the 1st, 2nd, 4th, 8th... refusal of each kind.
fn refused(st: &mut ShardState, refusal: Refusal, peer: Option<std::net::IpAddr>) {
    let n = match refusal {
        Refusal::Total => &mut st.stats.refused_total,
        Refusal::PerIp => &mut st.stats.refused_per_ip,
        Refusal::Rate => &mut st.stats.refused_rate,
    };
    *n += 1;
    let n = *n;
    if n.is_power_of_two() {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(
            shard = st.id,
            refused = n,
            peer,
            "{}; closing new connections",
            refusal.as_str()
        );
    }
}

/// Reads a connection into the shard's buffer and handles what arrived.
/// Ends (freeing the connection) at end of input, on an error, or once the
/// connection was handed to another shard.
async fn reader(shard: Rc<Shard>, key: ConnKey) {
    loop {
        let res = poll_fn(|cx| {
            let mut st = shard.st.borrow_mut();
            let st = &mut *st;
            let Some(conn) = st.conns.get_mut(key) else {
                return Poll::Ready(None);
            };
            if conn.state == State::HandedOver {
                return Poll::Ready(None);
            }
            Pin::new(&mut conn.stream)
                .poll_read(cx, &mut st.rbuf)
                .map(Some)
        })
        .await;
        let full = {
            let mut st = shard.st.borrow_mut();
            match res {
                Some(Ok(n)) if n > 0 => {
                    let mut buf = std::mem::take(&mut st.rbuf);
                    st.on_socket_input(key, &mut buf[..n]);
                    let full = n == buf.len();
                    st.rbuf = buf;
                    full
                }
                _ => {
                    st.finish(key);
                    drop(st);
                    shard.spawn_pending();
                    return;
                }
            }
        };
        shard.spawn_pending();
        if full {
            glommio::yield_if_needed().await;
        }
    }
}

/// Waits for room in a full socket buffer and writes the rest of the queue.
async fn writer(shard: Rc<Shard>, key: ConnKey) {
    loop {
        let res = poll_fn(|cx| {
            let mut st = shard.st.borrow_mut();
            let Some(conn) = st.conns.get_mut(key) else {
                return Poll::Ready(None);
            };
            if conn.state == State::HandedOver {
                return Poll::Ready(Some(Ok(0)));
            }
            let (stream, wire) = conn.wire_parts();
            if wire.is_empty() {
                return Poll::Ready(Some(Ok(0)));
            }
            Pin::new(stream).poll_write(cx, wire).map(Some)
        })
        .await;
        let mut st = shard.st.borrow_mut();
        match res {
            None => return,
            Some(Ok(n)) => {
                if st.wrote(key, n) {
                    return;
                }
            }
            Some(Err(_)) => {
                st.force_close(key);
                return;
            }
        }
    }
}

/// Writes every dirty connection once per loop tick: it wakes when the
/// first connection turns dirty, then lets every other ready task of this
/// tick run (and queue more) before it sends.
async fn flusher(shard: Rc<Shard>) {
    loop {
        poll_fn(|cx| {
            let mut st = shard.st.borrow_mut();
            if st.dirty.is_empty() {
                st.flusher = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        yield_now().await;
        shard.st.borrow_mut().flush_dirty();
        shard.spawn_pending();
    }
}

/// Sends what waits for shard `j`, one batch per loop tick. When the channel
/// is full it waits here; the shard goes on, and DATA for `j` beyond the
/// byte bound is refused with `slow_consumer`.
async fn outbox_sender(shard: Rc<Shard>, j: usize, tx: ConnectedSender<Batch>) {
    loop {
        poll_fn(|cx| {
            let mut st = shard.st.borrow_mut();
            let ob = &mut st.outboxes[j];
            if ob.pending.is_empty() {
                ob.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        yield_now().await;
        let batch = shard.st.borrow_mut().take_outbox(j);
        if tx.send(batch).await.is_err() {
            // The peer shard stopped (shutdown); what it was sent is moot.
            return;
        }
    }
}

async fn inbox(shard: Rc<Shard>, from: usize, rx: ConnectedReceiver<Batch>) {
    while let Some(batch) = rx.recv().await {
        shard.st.borrow_mut().on_batch(from, batch);
        shard.spawn_pending();
    }
}

/// Sends this tick's requests to the service shard as one batch. A full
/// channel parks only this task; meanwhile requests gather up to their bound.
async fn service_sender(shard: Rc<Shard>) {
    loop {
        poll_fn(|cx| {
            let mut st = shard.st.borrow_mut();
            if st.service_out.is_empty() && st.remote_items.is_empty() {
                st.service_waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        yield_now().await;
        let (batch, tx) = {
            let mut st = shard.st.borrow_mut();
            let n = st.service_out.len();
            let mut batch = std::mem::replace(&mut st.service_out, Vec::with_capacity(n));
            if !st.remote_items.is_empty() {
                batch.push(ServiceReq::RemoteData {
                    bytes: std::mem::take(&mut st.remote_bytes),
                    items: std::mem::take(&mut st.remote_items),
                });
            }
            (batch, st.service.clone())
        };
        if tx.send(batch).await.is_err() {
            // The service shard stopped (shutdown); nothing will answer.
            return;
        }
    }
}

async fn service_events(shard: Rc<Shard>, mut rx: mpsc::Receiver<Vec<ServiceEvent>>) {
    while let Some(events) = rx.recv().await {
        {
            let mut st = shard.st.borrow_mut();
            for ev in events {
                st.on_service(ev);
            }
        }
        shard.spawn_pending();
    }
}

/// Bytes of one parked reader future (for the memory simulation).
pub fn reader_future_bytes() -> usize {
    let (tx, _rx) = mpsc::channel::<Vec<ServiceReq>>(1);
    let cfg = Arc::new(Config::default());
    let mut cfg_small = (*cfg).clone();
    cfg_small.runtime.read_buffer_bytes = 4096;
    let shared = Arc::new(Shared {
        admission: Admission::new(&cfg_small.limits),
        metrics: Registry::new(1, state::Stats::NAMES),
    });
    let state = ShardState::new(
        0,
        1,
        Arc::new(cfg_small),
        Vec::new(),
        Vec::new(),
        tx,
        shared,
    );
    let shard = Rc::new(Shard {
        st: RefCell::new(state),
        accepts: RefCell::new(Vec::new()),
    });
    std::mem::size_of_val(&reader(shard, ConnKey { slot: 0, gen: 0 }))
}
