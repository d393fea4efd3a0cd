//! The state store: where clients' latest state blobs and their presence are
//! kept. Used only from the service shard's tokio runtime, which batches the
//! writes of every connection shard into one [`Store::commit`] per batch.
//!
//! # Layout
//!
//! - [`policy`]: when to flush a batch and how long to back off after a
//!   failure. Pure; time is passed in.
//! - `schema`: the tables and their versioned migrations, per dialect.
//! - `rows`: shaping a commit into statements (last row per address wins,
//!   chunks under the server's limits), shared by both backends.
//! - `mysql`: MySQL/MariaDB over `mysql_async` (a connection pool on the
//!   calling runtime).
//! - `sqlite`: an embedded SQLite file, driven by one dedicated thread so its
//!   blocking calls never stall the runtime.
//!
//! # Guarantees
//!
//! - [`Store::commit`] is one transaction: when it returns `Ok`, every row is
//!   durable (InnoDB's redo log per the server's settings; SQLite in WAL mode
//!   with `synchronous=FULL`); when it returns `Err`, either nothing was
//!   written or (a connection lost while the commit itself was in flight)
//!   the outcome is unknown. Every write is an idempotent upsert, so the
//!   caller simply retries the same batch, in order, before newer ones.
//! - A failed call leaves the store usable: the next call uses a new
//!   connection once the database is reachable again.

pub mod policy;

mod mysql;
mod rows;
mod schema;
mod sqlite;

#[cfg(test)]
mod tests;

pub use rows::{PEER_CHARS_MAX, STATEMENT_ROWS_MAX};
pub use schema::{DEFAULT_TABLE_PREFIX, TABLE_PREFIX_CHARS_MAX};
pub use sqlite::FILE_NAME as SQLITE_FILE_NAME;

use std::fmt;
use std::path::PathBuf;

/// One client's latest state, to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub addr: uuid::Uuid,
    /// Shared with the service's cache and the STATE pushes, not copied.
    pub blob: std::sync::Arc<[u8]>,
    pub updated_at_us: u64,
}

/// One presence change, to be written. `online = true`: `connected_at_us`
/// and `last_seen_us` become `at_us` and the peer is replaced by `peer`.
/// `online = false`: `last_seen_us` becomes `at_us`; `connected_at_us` and
/// the last known peer are kept (a `Some` peer replaces it). The first row
/// ever written for an address that is offline gets `connected_at_us` 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    pub addr: uuid::Uuid,
    pub online: bool,
    pub at_us: u64,
    pub peer: Option<String>,
}

/// A state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    pub blob: Vec<u8>,
    pub updated_at_us: u64,
}

/// A presence row as stored (read back by tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPresence {
    pub online: bool,
    pub connected_at_us: u64,
    pub last_seen_us: u64,
    pub peer: Option<String>,
}

/// Everything that can go wrong in the store.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mysql: {0}")]
    Mysql(#[from] mysql_async::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database schema is at version {found}, newer than this gateway knows ({known})")]
    SchemaTooNew { found: u32, known: u32 },
    #[error("the database did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("could not take the schema migration lock {lock} within {timeout_s} s")]
    MigrationLock { lock: String, timeout_s: u32 },
    #[error("state of {addr} is {bytes} bytes; this database takes at most {max_bytes}")]
    BlobTooLarge {
        addr: uuid::Uuid,
        bytes: usize,
        max_bytes: usize,
    },
    #[error("{what} {value} is out of the range the store can keep")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("stored {what} is invalid: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("cannot start the sqlite thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the sqlite worker thread has stopped")]
    WorkerStopped,
}

impl StoreError {
    /// Whether the same call may succeed later as it is: the database or the
    /// connection to it failed, not the data. Retrying a non-transient error
    /// (a blob over the server's packet limit, a schema from a newer
    /// gateway) fails the same way until something is changed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Mysql(e) => mysql::is_transient(e),
            StoreError::Sqlite(e) => sqlite::is_transient(e),
            StoreError::DataDir { .. }
            | StoreError::Timeout { .. }
            | StoreError::Thread(_)
            | StoreError::MigrationLock { .. } => true,
            StoreError::Config(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::BlobTooLarge { .. }
            | StoreError::OutOfRange { .. }
            | StoreError::Corrupt { .. }
            | StoreError::WorkerStopped => false,
        }
    }
}

/// Which database to use.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// MySQL or MariaDB, e.g. `mysql://root@127.0.0.1:3306/test`. The tables
    /// are `<table_prefix>state`, `<table_prefix>presence` and
    /// `<table_prefix>schema_version` ([`DEFAULT_TABLE_PREFIX`] normally;
    /// tests use a unique prefix each).
    Mysql { url: String, table_prefix: String },
    /// The embedded store: `<data_dir>/gateway.sqlite3` (the directory is
    /// created), tables prefixed [`DEFAULT_TABLE_PREFIX`], with a page cache
    /// of at most `cache_kib` KiB.
    Sqlite { data_dir: PathBuf, cache_kib: u32 },
}

impl StoreConfig {
    /// MySQL with the default table prefix.
    pub fn mysql(url: impl Into<String>) -> Self {
        StoreConfig::Mysql {
            url: url.into(),
            table_prefix: DEFAULT_TABLE_PREFIX.to_string(),
        }
    }
}

/// Without the password: configurations end up in logs.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Mysql { url, table_prefix } => f
                .debug_struct("Mysql")
                .field("url", &mysql::redact_url(url))
                .field("table_prefix", table_prefix)
                .finish(),
            StoreConfig::Sqlite {
                data_dir,
                cache_kib,
            } => f
                .debug_struct("Sqlite")
                .field("data_dir", data_dir)
                .field("cache_kib", cache_kib)
                .finish(),
        }
    }
}

/// The state store, one of two backends. `Send + Sync`: tasks on the
/// service runtime share it behind an `Arc` and may call it concurrently
/// (MySQL uses one pooled connection per call in flight; SQLite runs calls
/// one at a time on its thread).
pub struct Store {
    backend: Backend,
}

enum Backend {
    Mysql(mysql::MysqlStore),
    Sqlite(sqlite::SqliteStore),
}

impl Store {
    /// Connects (MySQL: creates the pool on the calling runtime; SQLite:
    /// starts its thread and opens the file) and brings the schema to the
    /// latest version. Safe to call again after an error, and against an
    /// already migrated database.
    pub async fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let backend = match cfg {
            StoreConfig::Mysql { url, table_prefix } => {
                Backend::Mysql(mysql::MysqlStore::open(url, table_prefix).await?)
            }
            StoreConfig::Sqlite {
                data_dir,
                cache_kib,
            } => Backend::Sqlite(sqlite::SqliteStore::open(data_dir, *cache_kib).await?),
        };
        Ok(Store { backend })
    }

    /// One transaction: every state row and presence row, as multi-row
    /// upserts (one statement per table per chunk of at most
    /// [`STATEMENT_ROWS_MAX`] rows, cut earlier so a statement stays under
    /// the server's packet limit). Duplicate addresses in one call: the
    /// last state row for an address wins (earlier ones are not sent);
    /// presence rows apply in order, so the last row's `online` and
    /// `last_seen_us` win and `connected_at_us` comes from the last online
    /// row. Either everything commits or nothing does.
    pub async fn commit(
        &self,
        states: &[StateRow],
        presence: &[PresenceRow],
    ) -> Result<(), StoreError> {
        if states.is_empty() && presence.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Mysql(s) => s.commit(states, presence).await,
            Backend::Sqlite(s) => s.commit(states, presence).await,
        }
    }

    /// The stored state of `addr`, or `None` if it never stored one.
    pub async fn get_state(&self, addr: uuid::Uuid) -> Result<Option<StoredState>, StoreError> {
        match &self.backend {
            Backend::Mysql(s) => s.get_state(addr).await,
            Backend::Sqlite(s) => s.get_state(addr).await,
        }
    }

    /// The stored presence of `addr`, or `None` if it was never written.
    pub async fn get_presence(
        &self,
        addr: uuid::Uuid,
    ) -> Result<Option<StoredPresence>, StoreError> {
        match &self.backend {
            Backend::Mysql(s) => s.get_presence(addr).await,
            Backend::Sqlite(s) => s.get_presence(addr).await,
        }
    }

    /// The largest state blob one row may carry. MySQL: a little under the
    /// server's `max_allowed_packet` (read at open); the gateway's
    /// `limits.max_payload_bytes` should stay below it, or such a STATE_PUT
    /// can never commit.
    pub fn max_blob_bytes(&self) -> usize {
        match &self.backend {
            Backend::Mysql(s) => s.max_blob_bytes(),
            Backend::Sqlite(_) => sqlite::BLOB_BYTES_MAX,
        }
    }

    /// Closes the connections (MySQL: `Pool::disconnect`; SQLite: waits
    /// until its thread has closed the database). Errors are logged.
    pub async fn close(self) {
        match self.backend {
            Backend::Mysql(s) => s.close().await,
            Backend::Sqlite(s) => s.close().await,
        }
    }

    /// `"mysql"` or `"sqlite"`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Mysql(_) => "mysql",
            Backend::Sqlite(_) => "sqlite",
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("kind", &self.kind()).finish()
    }
}
