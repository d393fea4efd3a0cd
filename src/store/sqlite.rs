//! The embedded store: one SQLite file, `<data_dir>/gateway.sqlite3`.
//!
//! rusqlite blocks, and the service runtime also answers time sync, so no
//! SQLite call may run on it. Every call goes to one dedicated thread that
//! owns the connection, over a bounded queue, and the answer comes back on
//! a oneshot. A thread of its own rather than `spawn_blocking`:
//! - SQLite takes one writer at a time anyway, so one thread loses nothing,
//!   and calls run in the order they were made (a commit queued before a
//!   read is visible to it);
//! - the connection and its prepared-statement cache stay on that thread,
//!   with no mutex around them and no blocking-pool thread per call;
//! - [`SqliteStore::close`] can wait until the file is really closed (WAL
//!   checkpointed), so a store reopened at once finds everything.

use super::rows::{self, STATEMENT_ROWS_MAX};
use super::schema::{self, DEFAULT_TABLE_PREFIX, MIGRATIONS, SQLITE_VERSION_TABLE};
use super::{PresenceRow, StateRow, StoreError, StoredPresence, StoredState};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The database file inside `data_dir`.
pub const FILE_NAME: &str = "gateway.sqlite3";

/// SQLite's default `SQLITE_MAX_LENGTH`: no string or blob may be longer.
pub(crate) const BLOB_BYTES_MAX: usize = 1_000_000_000;

/// `PRAGMA synchronous` reads back as a number; FULL is 2.
const SYNCHRONOUS_FULL: i64 = 2;

/// Calls waiting for the thread; one more waits (asynchronously) for room.
const REQUESTS_QUEUED_MAX: usize = 64;

/// How long a call waits for another process (a backup, the `sqlite3`
/// shell) that holds the write lock, before failing with a transient error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept: the upserts (ten row counts per table, see
/// `rows`) and the reads.
const STATEMENT_CACHE_CAPACITY: usize = 32;

enum Request {
    Commit {
        states: Vec<StateRow>,
        presence: Vec<PresenceRow>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    GetState {
        addr: Uuid,
        reply: oneshot::Sender<Result<Option<StoredState>, StoreError>>,
    },
    GetPresence {
        addr: Uuid,
        reply: oneshot::Sender<Result<Option<StoredPresence>, StoreError>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

pub(crate) struct SqliteStore {
    requests: mpsc::Sender<Request>,
}

impl SqliteStore {
    pub(crate) async fn open(data_dir: &Path, cache_kib: u32) -> Result<SqliteStore, StoreError> {
        let (requests, inbox) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let (opened_tx, opened) = oneshot::channel();
        let data_dir = data_dir.to_path_buf();
        std::thread::Builder::new()
            .name("gateway-sqlite".into())
            .spawn(move || run(data_dir, cache_kib, inbox, opened_tx))
            .map_err(StoreError::Thread)?;
        match opened.await {
            Ok(Ok(())) => Ok(SqliteStore { requests }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::WorkerStopped),
        }
    }

    pub(crate) async fn commit(
        &self,
        states: &[StateRow],
        presence: &[PresenceRow],
    ) -> Result<(), StoreError> {
        // The thread needs rows it owns; rows a later one overrides are
        // dropped before copying.
        let states: Vec<StateRow> = rows::last_state_per_address(states)
            .into_iter()
            .cloned()
            .collect();
        let presence = presence.to_vec();
        self.call(|reply| Request::Commit {
            states,
            presence,
            reply,
        })
        .await
    }

    pub(crate) async fn get_state(&self, addr: Uuid) -> Result<Option<StoredState>, StoreError> {
        self.call(|reply| Request::GetState { addr, reply }).await
    }

    pub(crate) async fn get_presence(
        &self,
        addr: Uuid,
    ) -> Result<Option<StoredPresence>, StoreError> {
        self.call(|reply| Request::GetPresence { addr, reply })
            .await
    }

    /// Returns once the thread has closed the database.
    pub(crate) async fn close(self) {
        let (done, closed) = oneshot::channel();
        if self.requests.send(Request::Close { done }).await.is_ok() {
            // An error here means the thread is gone already.
            let _ = closed.await;
        }
    }

    async fn call<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| StoreError::WorkerStopped)?;
        answer.await.map_err(|_| StoreError::WorkerStopped)?
    }
}

/// The thread: opens the database, then serves calls until `Close` or
/// until the store is dropped.
fn run(
    data_dir: PathBuf,
    cache_kib: u32,
    mut inbox: mpsc::Receiver<Request>,
    opened: oneshot::Sender<Result<(), StoreError>>,
) {
    let mut conn = match open_db(&data_dir, cache_kib) {
        Ok(conn) => conn,
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    if opened.send(Ok(())).is_err() {
        return;
    }
    let mut done = None;
    // Replies to callers that stopped waiting are dropped: their oneshot
    // is gone, and what was committed stays committed.
    while let Some(request) = inbox.blocking_recv() {
        match request {
            Request::Commit {
                states,
                presence,
                reply,
            } => {
                let _ = reply.send(commit(&mut conn, &states, &presence));
            }
            Request::GetState { addr, reply } => {
                let _ = reply.send(get_state(&conn, addr));
            }
            Request::GetPresence { addr, reply } => {
                let _ = reply.send(get_presence(&conn, addr));
            }
            Request::Close { done: d } => {
                done = Some(d);
                break;
            }
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the sqlite store");
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

pub(super) fn open_db(data_dir: &Path, cache_kib: u32) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let mut conn = Connection::open(data_dir.join(FILE_NAME))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Config(format!(
            "sqlite refused WAL mode (journal_mode is {mode})"
        )));
    }
    // In WAL mode `synchronous=NORMAL` does not fsync at commit, only at
    // checkpoints: after a power loss or an OS crash the last commits can
    // be gone although STATE_ACK was sent for them. FULL fsyncs the WAL
    // at every commit, so an acknowledged write survives. (A crash of the
    // gateway alone loses nothing under either setting.)
    conn.pragma_update(None, "synchronous", "FULL")?;
    let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
    if synchronous != SYNCHRONOUS_FULL {
        return Err(StoreError::Config(format!(
            "sqlite kept synchronous={synchronous}, not FULL"
        )));
    }
    // Negative: a size in KiB rather than in pages. The cache is the
    // store's largest fixed cost in the gateway's memory; the kernel's page
    // cache backs it.
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    migrate(&mut conn)?;
    Ok(conn)
}

/// Applies the missing migrations, each in its own write transaction
/// (taken at once, so two processes opening the same file migrate one
/// after the other; SQLite's DDL is transactional).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let p = DEFAULT_TABLE_PREFIX;
    conn.execute_batch(&schema::with_prefix(SQLITE_VERSION_TABLE, p))?;
    let read = format!("SELECT COALESCE(MAX(version), 0) FROM \"{p}schema_version\"");
    let record =
        format!("INSERT INTO \"{p}schema_version\" (version, applied_at_us) VALUES (?1, ?2)");
    let known = schema::latest_version();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row(&read, [], |row| row.get(0))?;
        if found > i64::from(known) {
            return Err(StoreError::SchemaTooNew {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                known,
            });
        }
        let Some(m) = MIGRATIONS
            .iter()
            .find(|m| i64::from(m.version) == found + 1)
        else {
            return Ok(());
        };
        for sql in m.sqlite {
            tx.execute_batch(&schema::with_prefix(sql, p))?;
        }
        let now = i64::try_from(now_us()).unwrap_or(i64::MAX);
        tx.execute(&record, (m.version, now))?;
        tx.commit()?;
        tracing::info!(version = m.version, "sqlite schema migrated");
    }
}

/// `values` (`columns` per row) cut into the statements' chunks: at most
/// `STATEMENT_ROWS_MAX` rows each, row counts powers of two (see `rows`).
fn row_chunks<T>(values: &[T], columns: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    for full in values.chunks(STATEMENT_ROWS_MAX * columns) {
        let mut rest = full;
        for count in rows::power_of_two_counts(full.len() / columns) {
            let (piece, tail) = rest.split_at(count * columns);
            out.push(piece);
            rest = tail;
        }
    }
    out
}

fn commit(
    conn: &mut Connection,
    states: &[StateRow],
    presence: &[PresenceRow],
) -> Result<(), StoreError> {
    let p = DEFAULT_TABLE_PREFIX;
    let mut state_values = Vec::with_capacity(states.len() * 3);
    for row in states {
        if row.blob.len() > BLOB_BYTES_MAX {
            return Err(StoreError::BlobTooLarge {
                addr: row.addr,
                bytes: row.blob.len(),
                max_bytes: BLOB_BYTES_MAX,
            });
        }
        state_values.push(blob(row.addr.as_bytes()));
        state_values.push(blob(&row.blob));
        state_values.push(integer("updated_at_us", row.updated_at_us)?);
    }
    let mut presence_values = Vec::with_capacity(presence.len() * 5);
    for row in presence {
        let connected_at_us = if row.online { row.at_us } else { 0 };
        presence_values.push(blob(row.addr.as_bytes()));
        presence_values.push(ToSqlOutput::Owned(Value::Integer(i64::from(row.online))));
        presence_values.push(integer("connected_at_us", connected_at_us)?);
        presence_values.push(integer("at_us", row.at_us)?);
        presence_values.push(match rows::bounded_peer(row.peer.as_deref()) {
            Some(peer) => ToSqlOutput::Borrowed(ValueRef::Text(peer.as_bytes())),
            None => ToSqlOutput::Owned(Value::Null),
        });
    }
    // Taken at once: a deferred transaction could fail to upgrade its
    // lock halfway if another process wrote meanwhile.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for chunk in row_chunks(&state_values, 3) {
        // Last row wins within one statement too: SQLite applies the rows
        // of a multi-row upsert in order.
        let sql = format!(
            "INSERT INTO \"{p}state\" (address, state, updated_at_us) VALUES {} \
             ON CONFLICT (address) DO UPDATE SET \
             state = excluded.state, updated_at_us = excluded.updated_at_us",
            rows::placeholders(chunk.len() / 3, 3)
        );
        tx.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(chunk))?;
    }
    for chunk in row_chunks(&presence_values, 5) {
        // In DO UPDATE a bare column is the stored row, so every assignment
        // reads the old values.
        let sql = format!(
            "INSERT INTO \"{p}presence\" (address, online, connected_at_us, last_seen_us, peer) \
             VALUES {} ON CONFLICT (address) DO UPDATE SET \
             connected_at_us = CASE WHEN excluded.online THEN excluded.connected_at_us \
                               ELSE connected_at_us END, \
             peer = CASE WHEN excluded.online THEN excluded.peer \
                    ELSE COALESCE(excluded.peer, peer) END, \
             last_seen_us = excluded.last_seen_us, \
             online = excluded.online",
            rows::placeholders(chunk.len() / 5, 5)
        );
        tx.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(chunk))?;
    }
    tx.commit()?;
    Ok(())
}

fn get_state(conn: &Connection, addr: Uuid) -> Result<Option<StoredState>, StoreError> {
    let sql = format!(
        "SELECT state, updated_at_us FROM \"{DEFAULT_TABLE_PREFIX}state\" WHERE address = ?1"
    );
    let row: Option<(Vec<u8>, i64)> = conn
        .prepare_cached(&sql)?
        .query_row([addr.as_bytes().as_slice()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    match row {
        Some((blob, updated_at_us)) => Ok(Some(StoredState {
            blob,
            updated_at_us: unsigned("updated_at_us", updated_at_us)?,
        })),
        None => Ok(None),
    }
}

fn get_presence(conn: &Connection, addr: Uuid) -> Result<Option<StoredPresence>, StoreError> {
    let sql = format!(
        "SELECT online, connected_at_us, last_seen_us, peer \
         FROM \"{DEFAULT_TABLE_PREFIX}presence\" WHERE address = ?1"
    );
    let row: Option<(bool, i64, i64, Option<String>)> = conn
        .prepare_cached(&sql)?
        .query_row([addr.as_bytes().as_slice()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    match row {
        Some((online, connected_at_us, last_seen_us, peer)) => Ok(Some(StoredPresence {
            online,
            connected_at_us: unsigned("connected_at_us", connected_at_us)?,
            last_seen_us: unsigned("last_seen_us", last_seen_us)?,
            peer,
        })),
        None => Ok(None),
    }
}

fn blob(bytes: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(bytes))
}

/// SQLite integers are signed 64-bit; a time past 2^63 µs (year 294,247)
/// is refused rather than stored negative.
fn integer(what: &'static str, value: u64) -> Result<ToSqlOutput<'static>, StoreError> {
    let v = i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })?;
    Ok(ToSqlOutput::Owned(Value::Integer(v)))
}

fn unsigned(what: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("negative value {value}"),
    })
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Busy or locked (another process holds the file), or the disk failed or
/// filled up: the same call can work later.
pub(crate) fn is_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(code) => matches!(
            code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
        ),
        None => false,
    }
}
