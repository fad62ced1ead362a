//! The outbox table's schema and statements, per SQL dialect. The producer and the watchdog
//! (`qmq-watchdog`) share them, so both read and write rows the same way.

use super::OutboxError;
use crate::idempotent::Dialect;

/// Row states (`status` column), as QMQ's producer and watchdog use them.
pub mod status {
    /// Pending: just inserted, or the producer's send failed. The only state the watchdog
    /// resends.
    pub const PENDING: i16 = 0;
    /// The watchdog's send call failed outright (QMQ: "broker busy"). Left for an operator.
    pub const BROKER_BUSY: i16 = -1;
    /// Invalid: empty or unparseable content, no usable subject, or too many failed attempts.
    /// Left for an operator.
    pub const INVALID: i16 = -2;
    /// The broker answered BLOCK (refused by policy). Never resent automatically.
    pub const BLOCKED: i16 = -100;
}

/// A row whose `error` count reaches this is marked [`status::INVALID`] instead of being sent
/// again (QMQ's watchdog: 1000).
pub const MAX_ERRORS: i64 = 1000;

/// The outbox table QMQ's Java producer and watchdog use on MySQL/MariaDB (and the default on
/// PostgreSQL, there as schema `qmq_produce`).
pub const DEFAULT_TABLE: &str = "qmq_produce.qmq_msg_queue";

/// The default table on SQLite, which has no schemas: `qmq_msg_queue` in the business database.
pub const DEFAULT_SQLITE_TABLE: &str = "qmq_msg_queue";

/// The default outbox table of a dialect.
pub fn default_table(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => DEFAULT_SQLITE_TABLE,
        Dialect::MySql | Dialect::Postgres => DEFAULT_TABLE,
    }
}

/// Checks an outbox table name: `table` or `schema.table`, each part letters, digits and `_`,
/// not starting with a digit (the name is put into SQL text, never bound).
pub fn check_table(table: &str) -> Result<(), OutboxError> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    let ok = match table.split_once('.') {
        Some((schema, name)) => part_ok(schema) && part_ok(name),
        None => part_ok(table),
    };
    if ok {
        Ok(())
    } else {
        Err(OutboxError::BadTable(table.to_owned()))
    }
}

/// Every statement on one outbox table in one dialect.
///
/// Parameters, in order: `insert` (content), `delete`/`block` (id), `select_pending` (grace in
/// milliseconds, lowest id to skip, row limit), `mark` (status, id), `failed` (id). Times come from the database's
/// clock (`update_time` is compared with the database's "now"), so producer, watchdog and
/// database need not agree on the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSql {
    /// The dialect.
    pub dialect: Dialect,
    /// The table, as given.
    pub table: String,
    /// `CREATE DATABASE`/`CREATE SCHEMA IF NOT EXISTS` for a qualified table name on MySQL or
    /// PostgreSQL; `None` otherwise.
    pub create_schema: Option<String>,
    /// `CREATE TABLE IF NOT EXISTS`.
    pub create_table: String,
    /// Inserts a pending row; on PostgreSQL and SQLite it returns the new `id`
    /// (`RETURNING id`), on MySQL the id is the statement's last insert id.
    pub insert: String,
    /// Deletes a row: its message is stored by a broker.
    pub delete: String,
    /// Marks a row blocked (status −100) and counts the failure.
    pub block: String,
    /// Pending rows older than the grace period with an id above the one given, by id: `id`,
    /// `content`, `error` (as a 64-bit integer). The id lets one scan move forward past rows it
    /// handled but could not send.
    pub select_pending: String,
    /// Sets a pending row's status and counts the failure.
    pub mark: String,
    /// Counts a failed resend of a pending row, which stays pending; restarts its grace period.
    pub failed: String,
}

impl OutboxSql {
    /// The statements for `table` (see [`check_table`]) in `dialect`.
    pub fn new(dialect: Dialect, table: &str) -> Result<Self, OutboxError> {
        check_table(table)?;
        let schema = table.split_once('.').map(|(s, _)| s);
        let (p1, p2, p3) = match dialect {
            Dialect::Postgres => ("$1", "$2", "$3"),
            Dialect::MySql | Dialect::Sqlite => ("?", "?", "?"),
        };
        let now = match dialect {
            Dialect::MySql | Dialect::Postgres => "CURRENT_TIMESTAMP",
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
        };
        let create_schema = match (dialect, schema) {
            (Dialect::MySql, Some(s)) => Some(format!("CREATE DATABASE IF NOT EXISTS {s}")),
            (Dialect::Postgres, Some(s)) => Some(format!("CREATE SCHEMA IF NOT EXISTS {s}")),
            _ => None,
        };
        let create_table = match dialect {
            Dialect::MySql => format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 id BIGINT NOT NULL AUTO_INCREMENT, \
                 content LONGTEXT NOT NULL, \
                 status SMALLINT NOT NULL DEFAULT 0, \
                 error INT UNSIGNED NOT NULL DEFAULT 0, \
                 create_time DATETIME NOT NULL, \
                 update_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
                 PRIMARY KEY (id)\
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ),
            Dialect::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 id BIGSERIAL PRIMARY KEY, \
                 content TEXT NOT NULL, \
                 status SMALLINT NOT NULL DEFAULT 0, \
                 error INTEGER NOT NULL DEFAULT 0 CHECK (error >= 0), \
                 create_time TIMESTAMPTZ NOT NULL, \
                 update_time TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            ),
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 content TEXT NOT NULL, \
                 status INTEGER NOT NULL DEFAULT 0, \
                 error INTEGER NOT NULL DEFAULT 0 CHECK (error >= 0), \
                 create_time TEXT NOT NULL, \
                 update_time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))"
            ),
        };
        let insert = match dialect {
            Dialect::MySql => format!("INSERT INTO {table}(content, create_time) VALUES(?, {now})"),
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO {table}(content, create_time) VALUES({p1}, {now}) RETURNING id"
            ),
        };
        let cutoff = match dialect {
            Dialect::MySql => "CURRENT_TIMESTAMP(3) - INTERVAL (? * 1000) MICROSECOND".to_owned(),
            Dialect::Postgres => {
                "CURRENT_TIMESTAMP - CAST($1 AS DOUBLE PRECISION) * INTERVAL '1 millisecond'"
                    .to_owned()
            }
            Dialect::Sqlite => {
                "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (? / 1000.0) || ' seconds')".to_owned()
            }
        };
        let error = match dialect {
            Dialect::MySql => "CAST(error AS SIGNED)",
            Dialect::Postgres => "CAST(error AS BIGINT)",
            Dialect::Sqlite => "error",
        };
        let pending = status::PENDING;
        Ok(Self {
            dialect,
            table: table.to_owned(),
            create_schema,
            create_table,
            insert,
            delete: format!("DELETE FROM {table} WHERE id = {p1}"),
            block: format!(
                "UPDATE {table} SET status = {}, error = error + 1, update_time = {now} \
                 WHERE id = {p1}",
                status::BLOCKED
            ),
            select_pending: format!(
                "SELECT id, content, {error} AS error FROM {table} \
                 WHERE status = {pending} AND update_time < {cutoff} AND id > {p2} \
                 ORDER BY id LIMIT {p3}"
            ),
            mark: format!(
                "UPDATE {table} SET status = {p1}, error = error + 1, update_time = {now} \
                 WHERE id = {p2} AND status = {pending}"
            ),
            failed: format!(
                "UPDATE {table} SET error = error + 1, update_time = {now} \
                 WHERE id = {p1} AND status = {pending}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        for ok in ["qmq_msg_queue", "qmq_produce.qmq_msg_queue", "_t1"] {
            check_table(ok).unwrap();
        }
        for bad in ["", "a.b.c", "1t", "t;drop", "a.", ".b", "t t"] {
            assert!(check_table(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schema_creation_only_for_qualified_names_on_servers() {
        let my = OutboxSql::new(Dialect::MySql, DEFAULT_TABLE).unwrap();
        assert_eq!(
            my.create_schema.as_deref(),
            Some("CREATE DATABASE IF NOT EXISTS qmq_produce")
        );
        let pg = OutboxSql::new(Dialect::Postgres, DEFAULT_TABLE).unwrap();
        assert_eq!(
            pg.create_schema.as_deref(),
            Some("CREATE SCHEMA IF NOT EXISTS qmq_produce")
        );
        assert!(pg.select_pending.contains("id > $2") && pg.select_pending.ends_with("$3"));
        let lite = OutboxSql::new(Dialect::Sqlite, DEFAULT_SQLITE_TABLE).unwrap();
        assert_eq!(lite.create_schema, None);
        assert!(!OutboxSql::new(Dialect::MySql, DEFAULT_SQLITE_TABLE)
            .unwrap()
            .insert
            .contains("RETURNING"));
    }
}
