//! MySQL / MariaDB over `mysql_async`.
//!
//! The pool lives on the runtime that called [`MysqlStore::open`] (its
//! recycler is a task there), so the store must be used and closed on that
//! runtime. Reconnecting needs nothing from the caller: the pool checks an
//! idle connection when handing it out (a closed socket is dropped and a new
//! connection made), and a connection that fails during a call is dropped
//! instead of going back to the pool. So after the server restarts or kills
//! our sessions, at most the call that was using a dead connection fails;
//! the next call connects anew once the server accepts connections.

use super::rows::{self, STATEMENT_ROWS_MAX};
use super::schema::{self, MIGRATIONS, MYSQL_VERSION_TABLE};
use super::{PresenceRow, StateRow, StoreError, StoredPresence, StoredState};
use mysql_async::prelude::*;
use mysql_async::{
    Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Transaction, TxOpts, Value,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The service shard runs one commit at a time plus a few reads: one idle
/// connection kept warm, a few more on demand.
const POOL: PoolConstraints = match PoolConstraints::new(1, 4) {
    Some(c) => c,
    None => panic!("pool bounds"),
};

/// Idle connections above the pool's minimum are closed after this long.
/// It must not be zero: with zero the pool keeps only `min` idle
/// connections, and since a connection goes back to the pool through a
/// background task, a call right after another finds none idle, connects
/// anew and then closes one of the two: a new connection (several round
/// trips) for nearly every call.
const POOL_IDLE_TTL: Duration = Duration::from_secs(60);

/// How long [`MysqlStore::open`] waits for another gateway that is
/// migrating the same tables (less than [`CALL_TIMEOUT`], which bounds the
/// whole open).
const MIGRATION_LOCK_TIMEOUT_S: u32 = 20;

/// One call (a read, a small commit) may take this long; past it the call
/// fails with a transient error and its connection is dropped. Without it a
/// server that hangs, or vanishes without closing the socket, would stall
/// the caller until TCP gives up (many minutes).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A commit gets one more second per this many bytes of row data, so a
/// large batch to a slow but working server is not cut off every time.
const COMMIT_TIMEOUT_BYTES_PER_S: usize = 1024 * 1024;

/// Room left in a packet besides the row values (header, statement id,
/// parameter types, null bitmap).
const PACKET_HEADROOM_BYTES: usize = 64 * 1024;

/// `max_allowed_packet` assumed when the server does not say (MySQL 5.7's
/// default, the smallest of current servers).
const MAX_ALLOWED_PACKET_FALLBACK_BYTES: u64 = 4 * 1024 * 1024;

/// Target size of one multi-row statement: big enough that per-statement
/// round trips do not matter, small enough to stay well under the packet.
const STATEMENT_BYTES_MAX: usize = 4 * 1024 * 1024;

pub(crate) struct MysqlStore {
    pool: Pool,
    prefix: String,
    /// The server's `max_allowed_packet` less headroom: the most one row's
    /// blob may be.
    blob_bytes_max: usize,
    /// What the rows of one statement may add up to.
    statement_bytes_max: usize,
}

impl MysqlStore {
    pub(crate) async fn open(url: &str, prefix: &str) -> Result<MysqlStore, StoreError> {
        schema::check_table_prefix(prefix)?;
        let opts = Opts::from_url(url).map_err(mysql_async::Error::from)?;
        // `reset_connection` (the default) would clear the prepared statement
        // cache each time a connection goes back to the pool, re-preparing
        // the upserts on every commit; the store leaves no session state
        // behind (the migration lock is released explicitly), so it is off.
        let pool_opts = PoolOpts::default()
            .with_constraints(POOL)
            .with_inactive_connection_ttl(POOL_IDLE_TTL)
            .with_reset_connection(false);
        let pool = Pool::new(OptsBuilder::from_opts(opts).pool_opts(pool_opts));
        let store = MysqlStore {
            pool,
            prefix: prefix.to_string(),
            blob_bytes_max: 0,
            statement_bytes_max: 0,
        };
        // On any error the pool is closed before the error is returned: a
        // caller that retries `open` must not pile up connections.
        match with_timeout(store.prepare()).await {
            Ok(max_packet_bytes) => {
                let blob_bytes_max = max_packet_bytes.saturating_sub(PACKET_HEADROOM_BYTES);
                Ok(MysqlStore {
                    blob_bytes_max,
                    statement_bytes_max: blob_bytes_max.min(STATEMENT_BYTES_MAX),
                    ..store
                })
            }
            Err(e) => {
                store.close().await;
                Err(e)
            }
        }
    }

    /// Migrates and reads the packet limit.
    async fn prepare(&self) -> Result<usize, StoreError> {
        let mut conn = self.pool.get_conn().await?;
        let lock = format!("{}migrate", self.prefix);
        conn.query_drop(schema::with_prefix(MYSQL_VERSION_TABLE, &self.prefix))
            .await?;
        let locked: Option<Option<i64>> = conn
            .exec_first(
                "SELECT GET_LOCK(?, ?)",
                (lock.as_str(), MIGRATION_LOCK_TIMEOUT_S),
            )
            .await?;
        if locked != Some(Some(1)) {
            return Err(StoreError::MigrationLock {
                lock,
                timeout_s: MIGRATION_LOCK_TIMEOUT_S,
            });
        }
        let migrated = migrate(&mut conn, &self.prefix).await;
        let released = conn.exec_drop("DO RELEASE_LOCK(?)", (lock.as_str(),)).await;
        migrated?;
        released?;
        let max_packet_bytes: Option<u64> = conn.query_first("SELECT @@max_allowed_packet").await?;
        let max_packet_bytes = max_packet_bytes.unwrap_or(MAX_ALLOWED_PACKET_FALLBACK_BYTES);
        Ok(usize::try_from(max_packet_bytes).unwrap_or(usize::MAX))
    }

    pub(crate) async fn commit(
        &self,
        states: &[StateRow],
        presence: &[PresenceRow],
    ) -> Result<(), StoreError> {
        let states = rows::last_state_per_address(states);
        if let Some(big) = states.iter().find(|r| r.blob.len() > self.blob_bytes_max) {
            return Err(StoreError::BlobTooLarge {
                addr: big.addr,
                bytes: big.blob.len(),
                max_bytes: self.blob_bytes_max,
            });
        }
        let state_chunks = rows::chunks(
            &states,
            STATEMENT_ROWS_MAX,
            self.statement_bytes_max,
            rows::state_row_bytes,
        );
        let presence_chunks = rows::chunks(
            presence,
            STATEMENT_ROWS_MAX,
            self.statement_bytes_max,
            rows::presence_row_bytes,
        );
        let row_bytes: usize = states.iter().map(rows::state_row_bytes).sum::<usize>()
            + presence.iter().map(rows::presence_row_bytes).sum::<usize>();
        let extra = Duration::from_secs((row_bytes / COMMIT_TIMEOUT_BYTES_PER_S) as u64);
        with_timeout_of(CALL_TIMEOUT + extra, async {
            let mut conn = self.pool.get_conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let written = self
                .write_chunks(&mut tx, &state_chunks, &presence_chunks)
                .await;
            match written {
                Ok(()) => Ok(tx.commit().await?),
                Err(e) => {
                    // A broken connection cannot roll back; the server does
                    // when it notices the session is gone.
                    if let Err(rollback) = tx.rollback().await {
                        tracing::debug!(error = %rollback, "rollback after a failed commit");
                    }
                    Err(e.into())
                }
            }
        })
        .await
    }

    /// One upsert per chunk, states first.
    async fn write_chunks(
        &self,
        tx: &mut Transaction<'_>,
        state_chunks: &[&[&StateRow]],
        presence_chunks: &[&[PresenceRow]],
    ) -> Result<(), mysql_async::Error> {
        for chunk in state_chunks {
            tx.exec_drop(self.state_upsert(chunk.len()), state_params(chunk))
                .await?;
        }
        for chunk in presence_chunks {
            tx.exec_drop(self.presence_upsert(chunk.len()), presence_params(chunk))
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn get_state(&self, addr: Uuid) -> Result<Option<StoredState>, StoreError> {
        let sql = format!(
            "SELECT state, updated_at_us FROM `{}state` WHERE address = ?",
            self.prefix
        );
        with_timeout(async {
            let mut conn = self.pool.get_conn().await?;
            let row: Option<(Vec<u8>, u64)> =
                conn.exec_first(sql, (addr.as_bytes().as_slice(),)).await?;
            Ok(row.map(|(blob, updated_at_us)| StoredState {
                blob,
                updated_at_us,
            }))
        })
        .await
    }

    pub(crate) async fn get_presence(
        &self,
        addr: Uuid,
    ) -> Result<Option<StoredPresence>, StoreError> {
        let sql = format!(
            "SELECT online, connected_at_us, last_seen_us, peer FROM `{}presence` WHERE address = ?",
            self.prefix
        );
        with_timeout(async {
            let mut conn = self.pool.get_conn().await?;
            let row: Option<(bool, u64, u64, Option<String>)> =
                conn.exec_first(sql, (addr.as_bytes().as_slice(),)).await?;
            Ok(row.map(
                |(online, connected_at_us, last_seen_us, peer)| StoredPresence {
                    online,
                    connected_at_us,
                    last_seen_us,
                    peer,
                },
            ))
        })
        .await
    }

    pub(crate) fn max_blob_bytes(&self) -> usize {
        self.blob_bytes_max
    }

    pub(crate) async fn close(self) {
        if let Err(e) = self.pool.disconnect().await {
            tracing::warn!(error = %e, "closing the mysql pool");
        }
    }

    /// The server-side ids of every connection the pool has (it is filled
    /// to its maximum first): tests kill them to act out a server restart.
    #[cfg(test)]
    pub(crate) async fn pooled_connection_ids(&self) -> Result<Vec<u32>, StoreError> {
        let mut held = Vec::with_capacity(POOL.max());
        for _ in 0..POOL.max() {
            held.push(self.pool.get_conn().await?);
        }
        Ok(held.iter().map(Conn::id).collect())
    }

    /// Last row wins within one statement too: MySQL applies the rows of a
    /// multi-row `INSERT ... ON DUPLICATE KEY UPDATE` in order.
    fn state_upsert(&self, rows: usize) -> String {
        format!(
            "INSERT INTO `{}state` (address, state, updated_at_us) VALUES {} \
             ON DUPLICATE KEY UPDATE state = VALUES(state), updated_at_us = VALUES(updated_at_us)",
            self.prefix,
            rows::placeholders(rows, 3)
        )
    }

    /// `VALUES(col)` (not the MySQL 8 row alias) so MariaDB takes it too.
    /// The assignments read the old `connected_at_us` and `peer` before
    /// anything overwrites them; `online` is set last.
    fn presence_upsert(&self, rows: usize) -> String {
        format!(
            "INSERT INTO `{}presence` (address, online, connected_at_us, last_seen_us, peer) VALUES {} \
             ON DUPLICATE KEY UPDATE \
             connected_at_us = IF(VALUES(online), VALUES(connected_at_us), connected_at_us), \
             peer = IF(VALUES(online), VALUES(peer), COALESCE(VALUES(peer), peer)), \
             last_seen_us = VALUES(last_seen_us), \
             online = VALUES(online)",
            self.prefix,
            rows::placeholders(rows, 5)
        )
    }
}

/// Applies the migrations above the recorded version, under the lock.
async fn migrate(conn: &mut Conn, prefix: &str) -> Result<(), StoreError> {
    let sql = format!("SELECT COALESCE(MAX(version), 0) FROM `{prefix}schema_version`");
    let found: Option<u64> = conn.query_first(sql).await?;
    let found = found.unwrap_or(0);
    let known = schema::latest_version();
    if found > u64::from(known) {
        return Err(StoreError::SchemaTooNew {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            known,
        });
    }
    let record =
        format!("INSERT INTO `{prefix}schema_version` (version, applied_at_us) VALUES (?, ?)");
    for m in MIGRATIONS.iter().filter(|m| u64::from(m.version) > found) {
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        for sql in m.mysql {
            tx.query_drop(schema::with_prefix(sql, prefix)).await?;
        }
        tx.exec_drop(record.as_str(), (m.version, now_us())).await?;
        tx.commit().await?;
        tracing::info!(version = m.version, prefix, "mysql schema migrated");
    }
    Ok(())
}

fn state_params(chunk: &[&StateRow]) -> Params {
    let mut values = Vec::with_capacity(chunk.len() * 3);
    for row in chunk {
        values.push(Value::Bytes(row.addr.as_bytes().to_vec()));
        values.push(Value::Bytes(row.blob.to_vec()));
        values.push(Value::UInt(row.updated_at_us));
    }
    Params::Positional(values)
}

fn presence_params(chunk: &[PresenceRow]) -> Params {
    let mut values = Vec::with_capacity(chunk.len() * 5);
    for row in chunk {
        let connected_at_us = if row.online { row.at_us } else { 0 };
        values.push(Value::Bytes(row.addr.as_bytes().to_vec()));
        values.push(Value::Int(i64::from(row.online)));
        values.push(Value::UInt(connected_at_us));
        values.push(Value::UInt(row.at_us));
        values.push(match rows::bounded_peer(row.peer.as_deref()) {
            Some(peer) => Value::Bytes(peer.as_bytes().to_vec()),
            None => Value::NULL,
        });
    }
    Params::Positional(values)
}

async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    with_timeout_of(CALL_TIMEOUT, call).await
}

async fn with_timeout_of<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout {
            timeout_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Server errors that say "not now" rather than "not this": the session or
/// the server went away, a lock could not be had, the server is read-only
/// for a failover.
const TRANSIENT_SERVER_CODES: &[u16] = &[
    1040, // ER_CON_COUNT_ERROR: too many connections
    1053, // ER_SERVER_SHUTDOWN
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK
    1290, // ER_OPTION_PREVENTS_STATEMENT (--read-only)
    1317, // ER_QUERY_INTERRUPTED
    1836, // ER_READ_ONLY_MODE
    1927, // ER_CONNECTION_KILLED (MariaDB)
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
];

pub(crate) fn is_transient(e: &mysql_async::Error) -> bool {
    use mysql_async::{DriverError, Error};
    match e {
        Error::Io(_) => true,
        Error::Driver(d) => matches!(
            d,
            DriverError::ConnectionClosed | DriverError::PacketOutOfOrder
        ),
        Error::Server(s) => TRANSIENT_SERVER_CODES.contains(&s.code),
        Error::Other(_) | Error::Url(_) => false,
    }
}

/// `url` without its password, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end]
        .rfind('@')
        .map(|i| scheme_end + i)
    else {
        return url.to_string();
    };
    match url[scheme_end..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..scheme_end + colon], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://root:s3cr:et@db:3306/x?a=b"),
            "mysql://root:***@db:3306/x?a=b"
        );
        assert_eq!(redact_url("mysql://root@db/x"), "mysql://root@db/x");
        assert_eq!(redact_url("mysql://db/x@y"), "mysql://db/x@y");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn transient_errors() {
        use mysql_async::{DriverError, Error, ServerError};
        let io = Error::Io(mysql_async::IoError::Io(std::io::Error::other("reset")));
        assert!(is_transient(&io));
        assert!(is_transient(&Error::Driver(DriverError::ConnectionClosed)));
        assert!(!is_transient(&Error::Driver(DriverError::PoolDisconnected)));
        let server = |code| {
            Error::Server(ServerError {
                code,
                message: String::new(),
                state: String::new(),
            })
        };
        assert!(is_transient(&server(1213)));
        assert!(!is_transient(&server(1064)));
    }
}
