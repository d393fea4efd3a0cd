//! The store against real databases: every behaviour is checked on both
//! backends. MariaDB/MySQL must be reachable at `GATEWAY_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306/test`); when it is not, the MySQL
//! tests fail, they do not skip. Each test gets its own tables (a unique
//! prefix) or its own directory, removed at the end even when it fails, so
//! the tests run in parallel.

use super::*;
use std::future::Future;
use std::time::Instant;
use uuid::Uuid;

const DEFAULT_TEST_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn mysql_url() -> String {
    std::env::var("GATEWAY_TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_MYSQL_URL.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mysql,
    Sqlite,
}

/// A database of its own for one test.
struct TestDb {
    cfg: StoreConfig,
}

impl TestDb {
    fn new(kind: Kind) -> TestDb {
        let unique = &Uuid::new_v4().simple().to_string()[..12];
        let cfg = match kind {
            Kind::Mysql => StoreConfig::Mysql {
                url: mysql_url(),
                table_prefix: format!("gwtest_{unique}_"),
            },
            Kind::Sqlite => StoreConfig::Sqlite {
                data_dir: std::env::temp_dir().join(format!("gwtest-{unique}")),
                cache_kib: 512,
            },
        };
        TestDb { cfg }
    }

    async fn remove(self) {
        match &self.cfg {
            StoreConfig::Mysql { url, table_prefix } => {
                let p = table_prefix;
                let sql =
                    format!("DROP TABLE IF EXISTS `{p}state`, `{p}presence`, `{p}schema_version`");
                if let Err(e) = mysql_exec(url, &sql).await {
                    eprintln!("could not drop the test tables {p}*: {e}");
                }
            }
            StoreConfig::Sqlite { data_dir, .. } => {
                let _ = std::fs::remove_dir_all(data_dir);
            }
        }
    }
}

/// Runs `body` on a fresh database of `kind`, then removes the database,
/// and fails as `body` did.
async fn with_db<F, Fut>(kind: Kind, body: F)
where
    F: FnOnce(StoreConfig) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = TestDb::new(kind);
    let outcome = tokio::spawn(body(db.cfg.clone())).await;
    db.remove().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// One statement on a connection of its own (not the store's pool).
async fn mysql_exec(url: &str, sql: &str) -> Result<(), mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let result = conn.query_drop(sql).await;
    conn.disconnect().await?;
    result
}

/// Runs one SQL statement against the database behind `cfg`, as another
/// client would (to break or inspect things behind the store's back).
async fn exec_outside(cfg: &StoreConfig, sql_with_prefix: &str) {
    match cfg {
        StoreConfig::Mysql { url, table_prefix } => {
            let sql = schema::with_prefix(sql_with_prefix, table_prefix).replace('"', "`");
            mysql_exec(url, &sql).await.expect("mysql statement");
        }
        StoreConfig::Sqlite { data_dir, .. } => {
            let sql = schema::with_prefix(sql_with_prefix, DEFAULT_TABLE_PREFIX);
            let conn = rusqlite::Connection::open(data_dir.join(sqlite::FILE_NAME)).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn.execute_batch(&sql).expect("sqlite statement");
        }
    }
}

/// The versions recorded in the schema table.
async fn schema_versions(cfg: &StoreConfig) -> Vec<u32> {
    match cfg {
        StoreConfig::Mysql { url, table_prefix } => {
            use mysql_async::prelude::Queryable;
            let mut conn = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
            let sql =
                format!("SELECT version FROM `{table_prefix}schema_version` ORDER BY version");
            let v: Vec<u32> = conn.query(sql).await.unwrap();
            conn.disconnect().await.unwrap();
            v
        }
        StoreConfig::Sqlite { data_dir, .. } => {
            let conn = rusqlite::Connection::open(data_dir.join(sqlite::FILE_NAME)).unwrap();
            let mut stmt = conn
                .prepare("SELECT version FROM gateway_schema_version ORDER BY version")
                .unwrap();
            let v = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<Vec<u32>, _>>()
                .unwrap();
            v
        }
    }
}

fn kind_of(cfg: &StoreConfig) -> &'static str {
    match cfg {
        StoreConfig::Mysql { .. } => "mysql",
        StoreConfig::Sqlite { .. } => "sqlite",
    }
}

async fn open(cfg: &StoreConfig) -> Store {
    match Store::open(cfg).await {
        Ok(store) => store,
        Err(e) => panic!("opening {cfg:?}: {e}"),
    }
}

fn state(addr: Uuid, blob: &[u8], updated_at_us: u64) -> StateRow {
    StateRow {
        addr,
        blob: blob.into(),
        updated_at_us,
    }
}

fn online(addr: Uuid, at_us: u64, peer: &str) -> PresenceRow {
    PresenceRow {
        addr,
        online: true,
        at_us,
        peer: Some(peer.to_string()),
    }
}

fn offline(addr: Uuid, at_us: u64) -> PresenceRow {
    PresenceRow {
        addr,
        online: false,
        at_us,
        peer: None,
    }
}

async fn stored(store: &Store, addr: Uuid) -> Option<(Vec<u8>, u64)> {
    store
        .get_state(addr)
        .await
        .expect("get_state")
        .map(|s| (s.blob, s.updated_at_us))
}

// ----- behaviour, on both backends ------------------------------------------

async fn opens_twice_and_migrates_once(cfg: StoreConfig) {
    let store = open(&cfg).await;
    assert_eq!(store.kind(), kind_of(&cfg));
    store.close().await;
    let store = open(&cfg).await;
    store.close().await;
    let latest = schema::latest_version();
    assert_eq!(
        schema_versions(&cfg).await,
        (1..=latest).collect::<Vec<_>>()
    );
}

async fn refuses_a_newer_schema(cfg: StoreConfig) {
    open(&cfg).await.close().await;
    exec_outside(
        &cfg,
        "INSERT INTO \"{p}schema_version\" (version, applied_at_us) VALUES (999, 0)",
    )
    .await;
    match Store::open(&cfg).await {
        Err(StoreError::SchemaTooNew { found: 999, known }) => {
            assert_eq!(known, schema::latest_version())
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

async fn commit_then_get(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .commit(&[state(a, b"{\"on\":true}", 10), state(b, b"b", 11)], &[])
        .await
        .unwrap();
    assert_eq!(
        stored(&store, a).await,
        Some((b"{\"on\":true}".to_vec(), 10))
    );
    assert_eq!(stored(&store, b).await, Some((b"b".to_vec(), 11)));
    // A later commit replaces the state (even with an older time: the
    // caller orders writes, the store does not second-guess them).
    store.commit(&[state(a, b"second", 5)], &[]).await.unwrap();
    assert_eq!(stored(&store, a).await, Some((b"second".to_vec(), 5)));
    // Nothing to write is a success that touches nothing.
    store.commit(&[], &[]).await.unwrap();
    store.close().await;
}

async fn unknown_address_is_none(cfg: StoreConfig) {
    let store = open(&cfg).await;
    assert_eq!(stored(&store, Uuid::new_v4()).await, None);
    assert_eq!(store.get_presence(Uuid::new_v4()).await.unwrap(), None);
    store.close().await;
}

async fn duplicate_addresses_last_wins(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .commit(
            &[
                state(a, b"a1", 1),
                state(b, b"b1", 2),
                state(a, b"a2", 3),
                state(a, b"a3", 2),
            ],
            &[
                online(a, 100, "10.0.0.1:1"),
                offline(a, 200),
                online(b, 300, "p"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(stored(&store, a).await, Some((b"a3".to_vec(), 2)));
    assert_eq!(stored(&store, b).await, Some((b"b1".to_vec(), 2)));
    let pa = store.get_presence(a).await.unwrap().unwrap();
    assert_eq!(
        pa,
        StoredPresence {
            online: false,
            connected_at_us: 100,
            last_seen_us: 200,
            peer: Some("10.0.0.1:1".into()),
        }
    );
    assert!(store.get_presence(b).await.unwrap().unwrap().online);
    // Duplicates across statement chunks: the last of 1,100 rows wins.
    let rows: Vec<StateRow> = (0..1_100u64)
        .map(|i| state(a, &i.to_be_bytes(), i))
        .collect();
    store.commit(&rows, &[]).await.unwrap();
    assert_eq!(
        stored(&store, a).await,
        Some((1_099u64.to_be_bytes().to_vec(), 1_099))
    );
    store.close().await;
}

async fn blobs_keep_every_byte(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let mebibyte: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (a, b, c, d) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let not_utf8 = b"\xff\xfe\x00'\"\\;--".to_vec();
    store
        .commit(
            &[
                state(a, &every_byte, 1),
                state(b, b"", 2),
                state(c, &mebibyte, 3),
                state(d, &not_utf8, i64::MAX as u64),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stored(&store, a).await, Some((every_byte, 1)));
    assert_eq!(stored(&store, b).await, Some((Vec::new(), 2)));
    assert_eq!(stored(&store, c).await, Some((mebibyte, 3)));
    assert_eq!(stored(&store, d).await, Some((not_utf8, i64::MAX as u64)));
    // Past i64: MySQL's BIGINT UNSIGNED keeps it, SQLite's INTEGER cannot.
    let r = store.commit(&[state(a, b"x", u64::MAX)], &[]).await;
    match store.kind() {
        "mysql" => {
            r.unwrap();
            assert_eq!(stored(&store, a).await, Some((b"x".to_vec(), u64::MAX)));
        }
        _ => assert!(matches!(r, Err(StoreError::OutOfRange { .. })), "{r:?}"),
    }
    store.close().await;
}

async fn presence_offline_keeps_connected_at(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let (a, never_online) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .commit(&[], &[online(a, 1_000, "127.0.0.1:5000")])
        .await
        .unwrap();
    let p = store.get_presence(a).await.unwrap().unwrap();
    assert_eq!(
        p,
        StoredPresence {
            online: true,
            connected_at_us: 1_000,
            last_seen_us: 1_000,
            peer: Some("127.0.0.1:5000".into()),
        }
    );
    store.commit(&[], &[offline(a, 2_000)]).await.unwrap();
    let p = store.get_presence(a).await.unwrap().unwrap();
    assert_eq!(
        p,
        StoredPresence {
            online: false,
            connected_at_us: 1_000,
            last_seen_us: 2_000,
            peer: Some("127.0.0.1:5000".into()),
        }
    );
    // Back online: a new connection time and peer.
    store
        .commit(&[], &[online(a, 3_000, "[::1]:6000")])
        .await
        .unwrap();
    let p = store.get_presence(a).await.unwrap().unwrap();
    assert_eq!(
        (p.online, p.connected_at_us, p.last_seen_us),
        (true, 3_000, 3_000)
    );
    assert_eq!(p.peer.as_deref(), Some("[::1]:6000"));
    // Offline for an address never seen online: no connection time.
    store
        .commit(&[], &[offline(never_online, 50)])
        .await
        .unwrap();
    let p = store.get_presence(never_online).await.unwrap().unwrap();
    assert_eq!(
        p,
        StoredPresence {
            online: false,
            connected_at_us: 0,
            last_seen_us: 50,
            peer: None,
        }
    );
    // A peer longer than the column is cut, not refused.
    let long = "x".repeat(PEER_CHARS_MAX + 45);
    store.commit(&[], &[online(a, 4_000, &long)]).await.unwrap();
    let p = store.get_presence(a).await.unwrap().unwrap();
    assert_eq!(p.peer.unwrap().len(), PEER_CHARS_MAX);
    store.close().await;
}

async fn commits_two_thousand_rows(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let addrs: Vec<Uuid> = (0..2_000).map(|_| Uuid::new_v4()).collect();
    let states: Vec<StateRow> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| state(*a, format!("state {i}").as_bytes(), i as u64))
        .collect();
    let presence: Vec<PresenceRow> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| online(*a, i as u64, "127.0.0.1:1"))
        .collect();
    store.commit(&states, &presence).await.unwrap();
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(
            stored(&store, *a).await,
            Some((format!("state {i}").into_bytes(), i as u64))
        );
    }
    let last = store.get_presence(addrs[1_999]).await.unwrap().unwrap();
    assert_eq!((last.online, last.connected_at_us), (true, 1_999));
    store.close().await;
}

/// A statement that fails halfway through a commit (here: the presence
/// table was dropped behind the store's back) takes the state rows written
/// before it down with it.
async fn a_failed_commit_writes_nothing(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let a = Uuid::new_v4();
    store.commit(&[state(a, b"before", 1)], &[]).await.unwrap();
    exec_outside(&cfg, "DROP TABLE \"{p}presence\"").await;
    let b = Uuid::new_v4();
    let many: Vec<StateRow> = (0..600u64)
        .map(|i| state(if i == 0 { a } else { Uuid::new_v4() }, b"after", i))
        .chain(std::iter::once(state(b, b"after", 9)))
        .collect();
    let r = store.commit(&many, &[online(b, 1, "p")]).await;
    assert!(r.is_err(), "commit into a missing table succeeded");
    assert_eq!(stored(&store, a).await, Some((b"before".to_vec(), 1)));
    assert_eq!(stored(&store, b).await, None);
    // The store is still usable for what does not touch the missing table.
    store.commit(&[state(b, b"ok", 2)], &[]).await.unwrap();
    assert_eq!(stored(&store, b).await, Some((b"ok".to_vec(), 2)));
    store.close().await;
}

async fn close_and_reopen_reads_back(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let a = Uuid::new_v4();
    store
        .commit(&[state(a, b"kept", 42)], &[online(a, 7, "p")])
        .await
        .unwrap();
    store.close().await;
    let store = open(&cfg).await;
    assert_eq!(stored(&store, a).await, Some((b"kept".to_vec(), 42)));
    assert!(store.get_presence(a).await.unwrap().unwrap().online);
    store.close().await;
}

/// 20 MiB of state in one commit, over MariaDB's default 16 MiB packet: the
/// rows are cut into several statements of one transaction.
async fn a_commit_larger_than_a_packet(cfg: StoreConfig) {
    let store = open(&cfg).await;
    let rows: Vec<StateRow> = (0..20u8)
        .map(|i| state(Uuid::new_v4(), &vec![i; 1024 * 1024], u64::from(i)))
        .collect();
    store.commit(&rows, &[]).await.unwrap();
    for row in &rows {
        assert_eq!(
            stored(&store, row.addr).await,
            Some((row.blob.to_vec(), row.updated_at_us))
        );
    }
    store.close().await;
}

/// Reads and commits from several tasks at once share the store.
async fn concurrent_calls(cfg: StoreConfig) {
    let store = std::sync::Arc::new(open(&cfg).await);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let a = Uuid::new_v4();
            for i in 0..20u64 {
                store
                    .commit(&[state(a, &[t as u8; 10], i)], &[])
                    .await
                    .unwrap();
                assert_eq!(store.get_state(a).await.unwrap().unwrap().updated_at_us, i);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    std::sync::Arc::into_inner(store).unwrap().close().await;
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod mysql_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    super::with_db(super::Kind::Mysql, super::$name).await
                }
            )*
        }
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    super::with_db(super::Kind::Sqlite, super::$name).await
                }
            )*
        }
    };
}

on_both_backends!(
    opens_twice_and_migrates_once,
    refuses_a_newer_schema,
    commit_then_get,
    unknown_address_is_none,
    duplicate_addresses_last_wins,
    blobs_keep_every_byte,
    presence_offline_keeps_connected_at,
    commits_two_thousand_rows,
    a_failed_commit_writes_nothing,
    a_commit_larger_than_a_packet,
    close_and_reopen_reads_back,
    concurrent_calls,
);

// ----- backend specifics -----------------------------------------------------

#[test]
fn the_store_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    fn send<T: Send>(_: &T) {}
    let cfg = StoreConfig::mysql("mysql://x");
    send(&Store::open(&cfg));
}

#[test]
fn configurations_hide_passwords() {
    let cfg = StoreConfig::mysql("mysql://root:hunter2@db/x");
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("gateway_"), "{shown}");
}

#[tokio::test]
async fn a_bad_table_prefix_is_refused_before_connecting() {
    let cfg = StoreConfig::Mysql {
        url: "mysql://nobody@127.0.0.1:1/x".into(),
        table_prefix: "x`; DROP TABLE y; --".into(),
    };
    assert!(matches!(
        Store::open(&cfg).await,
        Err(StoreError::Config(_))
    ));
}

#[tokio::test]
async fn an_unreachable_mysql_is_a_transient_error() {
    // Port 1 on loopback: nothing listens there.
    let cfg = StoreConfig::mysql("mysql://root@127.0.0.1:1/test");
    let e = Store::open(&cfg).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn sqlite_creates_its_directory_and_runs_in_wal_full() {
    let db = TestDb::new(Kind::Sqlite);
    let StoreConfig::Sqlite { data_dir, .. } = &db.cfg else {
        unreachable!()
    };
    let nested = data_dir.join("a/b");
    let cfg = StoreConfig::Sqlite {
        data_dir: nested.clone(),
        cache_kib: 256,
    };
    let store = open(&cfg).await;
    assert!(nested.join(sqlite::FILE_NAME).is_file());
    // The pragmas are per connection: look through the store's own.
    store.close().await;
    let conn = rusqlite::Connection::open(nested.join(sqlite::FILE_NAME)).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    db.remove().await;
}

/// The configured page cache is what the store's connection runs with.
#[test]
fn sqlite_page_cache_follows_the_configuration() {
    let dir = std::env::temp_dir().join(format!("gwtest-cache-{}", Uuid::new_v4().simple()));
    for kib in [256u32, 4096] {
        let conn = sqlite::open_db(&dir, kib).unwrap();
        let size: i64 = conn
            .pragma_query_value(None, "cache_size", |r| r.get(0))
            .unwrap();
        assert_eq!(size, -i64::from(kib));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file where the data directory should be: a clear error, not a panic.
#[tokio::test]
async fn sqlite_data_dir_that_is_a_file() {
    let path = std::env::temp_dir().join(format!("gwtest-file-{}", Uuid::new_v4().simple()));
    std::fs::write(&path, b"not a directory").unwrap();
    let r = Store::open(&StoreConfig::Sqlite {
        data_dir: path.clone(),
        cache_kib: 512,
    })
    .await;
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(r, Err(StoreError::DataDir { .. })), "{r:?}");
}

/// Kills the pool's server sessions (what a server restart does to them)
/// and checks the store carries on. On loopback mysql_async switches to the
/// server's Unix socket when it can; a remote server is reached over TCP,
/// and the pool checks the two kinds of connection differently.
#[tokio::test]
async fn mysql_reconnects_after_its_sessions_are_killed_unix_socket() {
    with_db(Kind::Mysql, |cfg| reconnects(cfg, "")).await;
}

#[tokio::test]
async fn mysql_reconnects_after_its_sessions_are_killed_tcp() {
    with_db(Kind::Mysql, |cfg| reconnects(cfg, "prefer_socket=false")).await;
}

async fn reconnects(test_db: StoreConfig, url_options: &'static str) {
    let StoreConfig::Mysql { url, table_prefix } = &test_db else {
        unreachable!()
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let cfg = StoreConfig::Mysql {
        url: format!("{url}{separator}{url_options}"),
        table_prefix: table_prefix.clone(),
    };
    let store = open(&cfg).await;
    let Backend::Mysql(mysql) = &store.backend else {
        unreachable!()
    };
    let a = Uuid::new_v4();
    store.commit(&[state(a, b"1", 1)], &[]).await.unwrap();

    // 1. Every pooled session is killed and the close has reached us:
    // the pool notices when handing a connection out, and the commit
    // succeeds at once.
    let ids = mysql.pooled_connection_ids().await.unwrap();
    kill_all(url, &ids).await;
    wait_until_gone(url, &ids).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    store.commit(&[state(a, b"2", 2)], &[]).await.unwrap();
    assert_eq!(stored(&store, a).await, Some((b"2".to_vec(), 2)));
    let new_ids = mysql.pooled_connection_ids().await.unwrap();
    assert!(
        new_ids.iter().all(|id| !ids.contains(id)),
        "{ids:?} {new_ids:?}"
    );

    // 2. Killed and used at once, before the close can have arrived:
    // at most that one call fails, with a transient error, and the
    // next succeeds.
    let mut failures = 0;
    for round in 0..5u64 {
        let ids = mysql.pooled_connection_ids().await.unwrap();
        kill_all(url, &ids).await;
        let row = [state(a, b"3", 3 + round)];
        if let Err(e) = store.commit(&row, &[]).await {
            assert!(e.is_transient(), "{e}");
            failures += 1;
            store.commit(&row, &[]).await.unwrap();
        }
        assert_eq!(stored(&store, a).await, Some((b"3".to_vec(), 3 + round)));
    }
    eprintln!(
        "mysql reconnect ({url_options:?}): {failures} of 5 commits right after KILL failed once"
    );

    // 3. Reads recover the same way.
    let ids = mysql.pooled_connection_ids().await.unwrap();
    kill_all(url, &ids).await;
    wait_until_gone(url, &ids).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(stored(&store, a).await, Some((b"3".to_vec(), 7)));
    store.close().await;
}

/// A commit whose session dies inside its transaction (killed while it
/// waits for a row lock held by another client) fails with a transient
/// error, leaves nothing behind, and the next commit works.
#[tokio::test]
async fn mysql_commit_killed_mid_transaction_writes_nothing() {
    with_db(Kind::Mysql, |cfg| async move {
        use mysql_async::prelude::Queryable;
        let StoreConfig::Mysql { url, table_prefix } = &cfg else {
            unreachable!()
        };
        let store = std::sync::Arc::new(open(&cfg).await);
        let (locked, other) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .commit(&[state(locked, b"old", 1)], &[])
            .await
            .unwrap();

        let mut holder = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
        holder.query_drop("START TRANSACTION").await.unwrap();
        let lock = format!("SELECT state FROM `{table_prefix}state` WHERE address = ? FOR UPDATE");
        let _: Option<Vec<u8>> = holder
            .exec_first(lock, (locked.as_bytes().as_slice(),))
            .await
            .unwrap();

        let committing = {
            let store = store.clone();
            tokio::spawn(async move {
                let rows = [state(other, b"new", 2), state(locked, b"new", 2)];
                store.commit(&rows, &[]).await
            })
        };
        // The store's session, found by the statement it is blocked in.
        let find = format!(
            "SELECT id FROM information_schema.processlist \
             WHERE info LIKE 'INSERT INTO `{table_prefix}state`%'"
        );
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let id = loop {
            let id: Option<u64> = holder.query_first(find.as_str()).await.unwrap();
            if let Some(id) = id {
                break id;
            }
            assert!(Instant::now() < deadline, "the commit never blocked");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        holder.query_drop(format!("KILL {id}")).await.unwrap();
        let e = committing.await.unwrap().unwrap_err();
        assert!(e.is_transient(), "{e}");
        holder.query_drop("ROLLBACK").await.unwrap();
        holder.disconnect().await.unwrap();

        assert_eq!(stored(&store, other).await, None);
        assert_eq!(stored(&store, locked).await, Some((b"old".to_vec(), 1)));
        store
            .commit(&[state(locked, b"new", 3)], &[])
            .await
            .unwrap();
        assert_eq!(stored(&store, locked).await, Some((b"new".to_vec(), 3)));
        eprintln!("mysql commit killed mid-transaction: {e}");
        std::sync::Arc::into_inner(store).unwrap().close().await;
    })
    .await;
}

async fn kill_all(url: &str, ids: &[u32]) {
    for id in ids {
        mysql_exec(url, &format!("KILL {id}")).await.unwrap();
    }
}

/// The largest blob the server's packet allows commits and reads back; one
/// byte more is refused before anything is sent, as a permanent error.
#[tokio::test]
async fn mysql_blob_limit_follows_max_allowed_packet() {
    with_db(Kind::Mysql, |cfg| async move {
        let store = open(&cfg).await;
        let max = store.max_blob_bytes();
        assert!(max >= 1024 * 1024, "max_allowed_packet below 1 MiB: {max}");
        let a = Uuid::new_v4();
        let biggest = vec![0xa5; max];
        store.commit(&[state(a, &biggest, 1)], &[]).await.unwrap();
        assert_eq!(stored(&store, a).await, Some((biggest, 1)));
        let e = store
            .commit(&[state(a, &vec![0; max + 1], 2)], &[])
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::BlobTooLarge { .. }), "{e}");
        assert!(!e.is_transient());
        store.close().await;
    })
    .await;
}

/// Waits until the server has finished sessions `ids` (at most 5 s).
async fn wait_until_gone(url: &str, ids: &[u32]) {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let sql = format!("SELECT COUNT(*) FROM information_schema.processlist WHERE id IN ({list})");
    loop {
        let n: Option<u64> = conn.query_first(sql.as_str()).await.unwrap();
        if n == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "sessions {list} still there");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    conn.disconnect().await.unwrap();
}

// ----- throughput (printed, never asserted) ----------------------------------

/// Batches of 512 rows.
const BENCH_BATCHES: usize = 40;
const BENCH_BATCH_ROWS: usize = 512;
/// Commits of one row each.
const BENCH_SINGLE_COMMITS: usize = 300;
/// A typical JSON state.
const BENCH_BLOB_BYTES: usize = 128;

/// Prints rows/s of `commit` for 512-row and 1-row batches on both
/// backends. Every commit changes what it writes (an unchanged row costs
/// SQLite no write and no fsync at all). Meaningful in release builds run
/// alone:
/// `cargo test --release --lib store::tests::commit_throughput -- --nocapture --test-threads=1`
#[tokio::test]
async fn commit_throughput() {
    for kind in [Kind::Mysql, Kind::Sqlite] {
        with_db(kind, move |cfg| async move {
            let store = open(&cfg).await;
            let addrs: Vec<Uuid> = (0..BENCH_BATCHES * BENCH_BATCH_ROWS)
                .map(|_| Uuid::new_v4())
                .collect();
            let rows = |round: u64| -> Vec<StateRow> {
                let mut blob = vec![b'x'; BENCH_BLOB_BYTES];
                blob[..8].copy_from_slice(&round.to_be_bytes());
                addrs.iter().map(|a| state(*a, &blob, round)).collect()
            };
            let mut rates = Vec::new();
            // New addresses, then the same addresses with a new state.
            for round in [1, 2] {
                let batch_rows = rows(round);
                let t = Instant::now();
                for batch in batch_rows.chunks(BENCH_BATCH_ROWS) {
                    store.commit(batch, &[]).await.unwrap();
                }
                rates.push(rate(batch_rows.len(), t));
            }
            let single_rows = rows(3);
            let t = Instant::now();
            for row in single_rows.iter().take(BENCH_SINGLE_COMMITS) {
                store.commit(std::slice::from_ref(row), &[]).await.unwrap();
            }
            let singles = rate(BENCH_SINGLE_COMMITS, t);
            println!(
                "store throughput {}: 512-row batches {:.0} rows/s (new addresses), \
                 {:.0} rows/s (updates); 1-row commits {singles:.0} rows/s \
                 ({BENCH_BLOB_BYTES}-byte blobs)",
                store.kind(),
                rates[0],
                rates[1]
            );
            store.close().await;
        })
        .await;
    }
}

fn rate(rows: usize, since: Instant) -> f64 {
    rows as f64 / since.elapsed().as_secs_f64()
}
