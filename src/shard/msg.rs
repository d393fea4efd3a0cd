//! Messages between threads: one enum per direction, as the data flows.

use crate::proto::ErrorCode;
use crate::routing::ConnKey;
use std::os::fd::RawFd;
use std::sync::Arc;
use uuid::Uuid;

/// What one shard sends another in one wakeup: messages in order, with the
/// bytes of every DATA frame packed into one buffer.
#[derive(Default)]
pub struct Batch {
    pub msgs: Vec<Msg>,
    pub bytes: Vec<u8>,
    /// When the oldest DATA in it was read (for the routing latency).
    pub since: Option<std::time::Instant>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }
}

/// A message from shard A to shard B. `ConnKey`s name connections on the
/// shard they live on, which the message names implicitly: `origin` and
/// `sub` live on A, `to` lives on B.
pub enum Msg {
    /// A DATA frame (`bytes[start..start + len]`, exactly as the sender sent
    /// it) for an address B owns.
    Data {
        origin: ConnKey,
        start: u32,
        len: u32,
    },
    /// An ERROR answering frame `id` of connection `to` (e.g. `dst_offline`).
    Error {
        to: ConnKey,
        id: u64,
        code: ErrorCode,
    },
    /// PRESENCE for subscriber `to`; `id` is the SUBSCRIBE's id for the first
    /// answer and 0 for changes.
    Presence {
        to: ConnKey,
        id: u64,
        address: Uuid,
        online: bool,
        at_us: u64,
    },
    /// Connection `sub` on A watches `watched`, which B owns; B answers with
    /// a `Presence` echoing `id`.
    Subscribe {
        watched: Uuid,
        sub: ConnKey,
        id: u64,
    },
    /// Connection `sub` on A stops watching `watched`.
    Unsubscribe { watched: Uuid, sub: ConnKey },
    /// A connection that said HELLO on A for an address B owns.
    Handover(Box<Handover>),
    /// STATE for connection `to` on B: the answer to its STATE_GET (`id`) or
    /// a push to a subscriber (`id` 0). A (the owner of `address`) filled in
    /// `online` from its live routing table.
    State {
        to: ConnKey,
        id: u64,
        address: Uuid,
        updated_at_us: u64,
        online: bool,
        blob: Arc<[u8]>,
    },
}

/// A socket moving to its owner shard, with everything read or queued for
/// it that the new shard must not lose.
pub struct Handover {
    /// A `dup` of the socket; owned by this value until taken.
    pub fd: RawFd,
    pub addr: Uuid,
    /// The HELLO's id, echoed in WELCOME.
    pub hello_id: u64,
    pub websocket: bool,
    /// WebSocket: the HELLO came as JSON text.
    pub json: bool,
    /// Bytes read after the HELLO, not yet processed, in wire framing.
    pub leftover: Vec<u8>,
    /// Output queued before the HELLO (answers to earlier frames).
    pub out: Vec<u8>,
    /// What the HELLO's token allows (authentication on), checked once on
    /// the accepting shard.
    pub allow: Option<crate::auth::Allow>,
    /// The connection's admission ticket, released by the shard that ends up
    /// closing it.
    pub ticket: crate::admission::Ticket,
    /// The TLS session, with any records not yet written.
    pub tls: Option<Box<crate::transport::tls::Tls>>,
}

impl Handover {
    /// Takes the descriptor out; dropping the value afterwards closes nothing.
    pub fn take_fd(&mut self) -> RawFd {
        std::mem::replace(&mut self.fd, -1)
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        // A handover that never arrived (its shard is gone at shutdown) must
        // not leak the socket.
        if self.fd >= 0 {
            // SAFETY: `fd` is a descriptor this value owns (a dup nobody
            // else closes).
            unsafe { libc::close(self.fd) };
        }
    }
}

/// A connection on a shard, as the service shard names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub shard: u16,
    pub conn: ConnKey,
    /// The id of the frame being answered.
    pub id: u64,
}

/// A request from a connection shard to the service shard.
#[derive(Debug)]
pub enum ServiceReq {
    Time {
        shard: u16,
        conn: ConnKey,
        id: u64,
        t0: u64,
    },
    /// STATE_PUT from `addr` (the registered address of `from`).
    StatePut {
        from: Origin,
        addr: Uuid,
        /// Copied once out of the read buffer; the commit, the cache and
        /// the STATE pushes share it.
        blob: Arc<[u8]>,
    },
    /// STATE_GET of `addr` from `from`.
    StateGet { from: Origin, addr: Uuid },
    /// After StopAccepting: this shard has handled the input that had
    /// arrived by then, so every request it will still make is ahead of this.
    Drained { shard: u16 },
    /// An address came online or went offline (not on takeovers), for the
    /// presence table (and, in a cluster, the directory and other nodes).
    Presence {
        addr: Uuid,
        online: bool,
        at_us: u64,
        peer: Option<std::net::SocketAddr>,
    },
    /// Cluster: DATA frames for addresses not connected to this node,
    /// gathered by their owner shard in one tick (`bytes` packs the frames).
    RemoteData {
        bytes: Vec<u8>,
        items: Vec<RemoteItem>,
    },
    /// Cluster: a DATA frame from another node was not delivered here.
    Bounce {
        to: RemoteConn,
        id: u64,
        code: ErrorCode,
        dst: Uuid,
    },
    /// Cluster: where is `addr` (not connected to this node)? Asked by its
    /// owner shard, which goes on with `then` once told.
    Locate { addr: Uuid, then: Then },
}

/// A DATA frame (`bytes[start..start + len]`) from connection `conn` of
/// shard `shard` for another node.
#[derive(Debug, Clone, Copy)]
pub struct RemoteItem {
    pub shard: u16,
    pub conn: ConnKey,
    pub start: u32,
    pub len: u32,
}

/// A connection on another node: `node` indexes the cluster's node table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteConn {
    pub node: u16,
    pub shard: u16,
    pub conn: ConnKey,
}

/// A DATA frame (`bytes[start..start + len]`) from another node.
#[derive(Debug, Clone, Copy)]
pub struct RemoteDelivery {
    pub from: RemoteConn,
    pub start: u32,
    pub len: u32,
}

/// What an owner shard does once the cluster says where an address is.
#[derive(Debug)]
pub enum Then {
    /// Answer a SUBSCRIBE with the address's presence.
    Presence {
        sub: crate::routing::SubRef,
        id: u64,
    },
    /// Answer a STATE_GET with the stored state and the live `online` flag.
    State {
        to: Origin,
        updated_at_us: u64,
        blob: Arc<[u8]>,
    },
}

/// What the service shard sends a connection shard.
#[derive(Debug)]
pub enum ServiceEvent {
    TimeResp {
        conn: ConnKey,
        id: u64,
        t0: u64,
        t1: u64,
        t2: u64,
    },
    /// The write `id` of connection `conn` is committed.
    StateAck {
        conn: ConnKey,
        id: u64,
        updated_at_us: u64,
    },
    /// An ERROR answering frame `id` of `conn`: for a state request
    /// (`not_found`, `store_unavailable`), or a DATA frame another node
    /// could not deliver.
    StateError {
        conn: ConnKey,
        id: u64,
        code: crate::proto::ErrorCode,
    },
    /// To the owner shard of `addr`: the stored state a STATE_GET asked for;
    /// the owner adds the live `online` flag and passes it on.
    StateFound {
        to: Origin,
        addr: Uuid,
        updated_at_us: u64,
        blob: Arc<[u8]>,
    },
    /// To the owner shard of `addr`: a committed state update, for its
    /// subscribers.
    StateCommitted {
        addr: Uuid,
        updated_at_us: u64,
        blob: Arc<[u8]>,
    },
    /// Cluster: DATA from other nodes for addresses this shard owns.
    RemoteData {
        bytes: Vec<u8>,
        items: Vec<RemoteDelivery>,
    },
    /// Cluster: another node registered `addr` after this node's connection
    /// did (at `since_us`): close that connection with `taken_over`. The
    /// address stays online (elsewhere).
    TakeOver {
        addr: Uuid,
        since_us: u64,
        node: u16,
    },
    /// Cluster: `addr` came online or went offline on node `node`.
    RemotePresence {
        addr: Uuid,
        online: bool,
        at_us: u64,
        node: u16,
    },
    /// Cluster: node `node` is down (or restarted); what it had is offline.
    NodeDown { node: u16, at_us: u64 },
    /// Cluster: the answer to a `Locate`: the node and since when, or None
    /// when the address is connected nowhere.
    Located {
        addr: Uuid,
        at: Option<(u16, u64)>,
        then: Then,
    },
    /// SIGTERM or SIGINT, first step: stop accepting connections.
    StopAccepting,
    /// SIGTERM or SIGINT, last step (after queued writes are committed and
    /// acknowledged): tell every client, close, exit.
    Shutdown,
}
