//! The tables and their versioned migrations, for both SQL dialects.
//!
//! `<prefix>schema_version` holds one row per applied migration. On open the
//! store applies, in order, every migration above the highest recorded
//! version, each with its version row in one transaction. A database whose
//! version is above the last one listed here belongs to a newer gateway and
//! is refused rather than written with an old idea of its tables.
//!
//! MySQL commits DDL implicitly, so there a migration's `CREATE TABLE`s are
//! not rolled back with its version row; every statement is therefore
//! written to be safe to run again (`IF NOT EXISTS`), and a migration cut
//! short is simply re-applied on the next open.

use super::StoreError;

/// One schema step: the same change written for each dialect. `{p}` stands
/// for the table prefix.
pub(crate) struct Migration {
    pub version: u32,
    pub mysql: &'static [&'static str],
    pub sqlite: &'static [&'static str],
}

/// Every migration, in order; versions are 1, 2, 3, ... with no gap.
/// Append only: a released migration is never edited.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    mysql: &[
        "CREATE TABLE IF NOT EXISTS `{p}state` (
            address BINARY(16) NOT NULL PRIMARY KEY,
            state LONGBLOB NOT NULL,
            updated_at_us BIGINT UNSIGNED NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS `{p}presence` (
            address BINARY(16) NOT NULL PRIMARY KEY,
            online BOOLEAN NOT NULL,
            connected_at_us BIGINT UNSIGNED NOT NULL,
            last_seen_us BIGINT UNSIGNED NOT NULL,
            peer VARCHAR(255) NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ],
    sqlite: &[
        "CREATE TABLE IF NOT EXISTS \"{p}state\" (
            address BLOB NOT NULL PRIMARY KEY CHECK (length(address) = 16),
            state BLOB NOT NULL,
            updated_at_us INTEGER NOT NULL CHECK (updated_at_us >= 0)
        )",
        "CREATE TABLE IF NOT EXISTS \"{p}presence\" (
            address BLOB NOT NULL PRIMARY KEY CHECK (length(address) = 16),
            online INTEGER NOT NULL CHECK (online IN (0, 1)),
            connected_at_us INTEGER NOT NULL CHECK (connected_at_us >= 0),
            last_seen_us INTEGER NOT NULL CHECK (last_seen_us >= 0),
            peer TEXT NULL
        )",
    ],
}];

/// The version a fully migrated database is at.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The version table, created before anything else (so not a migration).
pub(crate) const MYSQL_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS `{p}schema_version` (
    version INT UNSIGNED NOT NULL PRIMARY KEY,
    applied_at_us BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB";

pub(crate) const SQLITE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS \"{p}schema_version\" (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at_us INTEGER NOT NULL
)";

/// The table prefix when none is given.
pub const DEFAULT_TABLE_PREFIX: &str = "gateway_";

/// Longest table prefix: MySQL names stop at 64 characters and the longest
/// suffix is `schema_version` (14).
pub const TABLE_PREFIX_CHARS_MAX: usize = 48;

/// The prefix goes into SQL text as part of identifiers, so only plain
/// identifier characters are allowed (no quoting, no injection).
pub(crate) fn check_table_prefix(prefix: &str) -> Result<(), StoreError> {
    let plain = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if prefix.is_empty() || prefix.len() > TABLE_PREFIX_CHARS_MAX || !plain {
        return Err(StoreError::Config(format!(
            "table prefix {prefix:?} must be 1 to {TABLE_PREFIX_CHARS_MAX} characters of [A-Za-z0-9_]"
        )));
    }
    Ok(())
}

/// `sql` with `{p}` replaced by the (checked) table prefix.
pub(crate) fn with_prefix(sql: &str, prefix: &str) -> String {
    sql.replace("{p}", prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(!m.mysql.is_empty() && !m.sqlite.is_empty());
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }

    #[test]
    fn every_statement_can_run_twice() {
        for m in MIGRATIONS {
            for sql in m.mysql.iter().chain(m.sqlite) {
                assert!(sql.contains("IF NOT EXISTS"), "not idempotent: {sql}");
            }
        }
    }

    #[test]
    fn table_prefixes() {
        assert!(check_table_prefix(DEFAULT_TABLE_PREFIX).is_ok());
        assert!(check_table_prefix("t_0123456789abcdef_").is_ok());
        assert!(check_table_prefix(&"a".repeat(TABLE_PREFIX_CHARS_MAX)).is_ok());
        for bad in [
            "",
            "a`b",
            "a b",
            "x;DROP",
            "é_",
            &"a".repeat(TABLE_PREFIX_CHARS_MAX + 1),
        ] {
            assert!(check_table_prefix(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(with_prefix("`{p}state`", "gw_"), "`gw_state`");
    }
}
