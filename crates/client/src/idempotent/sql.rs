//! Database-backed checkers through sqlx's `Any` driver, on QMQ's dedupe table:
//!
//! ```sql
//! id        auto-increment primary key
//! k         VARCHAR(255) NOT NULL, unique   -- QMQ's docs use 100 and say to size it to the keys
//! update_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
//! ```
//!
//! A claim is an insert that ignores duplicates (`INSERT IGNORE` on MySQL, `ON CONFLICT DO
//! NOTHING` on PostgreSQL, `INSERT OR IGNORE` on SQLite): one row inserted means the key was
//! new. A release deletes the row.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyConnection;
use sqlx::AnyPool;

use super::{message_key, IdempotentChecker, IdempotentError};
use crate::consumer::{HandleError, HandleResult, MessageHandler, ReceivedMessage};

/// The SQL dialect of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The dialect of a sqlx database URL.
    pub fn from_url(url: &str) -> Result<Self, IdempotentError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            "sqlite" => Ok(Self::Sqlite),
            _ => Err(IdempotentError::BadUrl(url.to_owned())),
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Self::Postgres => format!("${n}"),
            Self::MySql | Self::Sqlite => "?".into(),
        }
    }
}

/// Statements for one table in one dialect.
#[derive(Debug)]
struct Sql {
    create: String,
    claim: String,
    release: String,
    collect: String,
}

impl Sql {
    fn new(dialect: Dialect, table: &str) -> Self {
        let p1 = dialect.placeholder(1);
        let (create, claim, collect) = match dialect {
            Dialect::MySql => (
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (\
                     id BIGINT NOT NULL AUTO_INCREMENT, \
                     k VARCHAR(255) NOT NULL, \
                     update_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
                     PRIMARY KEY (id), UNIQUE KEY uniq_k (k)\
                     ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                ),
                format!("INSERT IGNORE INTO {table}(k) VALUES({p1})"),
                format!("DELETE FROM {table} WHERE update_at < NOW() - INTERVAL {p1} SECOND"),
            ),
            Dialect::Postgres => (
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (\
                     id BIGSERIAL PRIMARY KEY, \
                     k VARCHAR(255) NOT NULL UNIQUE, \
                     update_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                ),
                format!("INSERT INTO {table}(k) VALUES({p1}) ON CONFLICT (k) DO NOTHING"),
                format!(
                    "DELETE FROM {table} WHERE update_at < \
                     LOCALTIMESTAMP - CAST({p1} AS DOUBLE PRECISION) * INTERVAL '1 second'"
                ),
            ),
            Dialect::Sqlite => (
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (\
                     id INTEGER PRIMARY KEY AUTOINCREMENT, \
                     k VARCHAR(255) NOT NULL UNIQUE, \
                     update_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                ),
                format!("INSERT OR IGNORE INTO {table}(k) VALUES({p1})"),
                format!(
                    "DELETE FROM {table} WHERE update_at < datetime('now', '-' || {p1} || ' seconds')"
                ),
            ),
        };
        Self {
            create,
            claim,
            release: format!("DELETE FROM {table} WHERE k={p1}"),
            collect,
        }
    }
}

fn check_table(table: &str) -> Result<(), IdempotentError> {
    let ok = !table.is_empty()
        && table.len() <= 64
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !table.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(IdempotentError::BadTable(table.to_owned()))
    }
}

/// A checker keeping claimed keys in a database table (QMQ's `JdbcIdempotentChecker`).
#[derive(Debug, Clone)]
pub struct SqlChecker {
    pool: AnyPool,
    dialect: Dialect,
    sql: Arc<Sql>,
}

impl SqlChecker {
    /// Connects to `url` (`postgres://`, `mysql://`, `mariadb://` or `sqlite:`) and uses table
    /// `table` (letters, digits and `_` only).
    pub async fn connect(url: &str, table: &str) -> Result<Self, IdempotentError> {
        let dialect = Dialect::from_url(url)?;
        sqlx::any::install_default_drivers();
        let url = url.replacen("mariadb:", "mysql:", 1);
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        Self::with_pool(pool, dialect, table)
    }

    /// Uses an existing pool of the given dialect.
    pub fn with_pool(
        pool: AnyPool,
        dialect: Dialect,
        table: &str,
    ) -> Result<Self, IdempotentError> {
        check_table(table)?;
        Ok(Self {
            pool,
            dialect,
            sql: Arc::new(Sql::new(dialect, table)),
        })
    }

    /// The pool (for the application's own queries, e.g. in a [`Transactional`] set-up).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Creates the table if it does not exist.
    pub async fn create_table(&self) -> Result<(), IdempotentError> {
        sqlx::query(&self.sql.create).execute(&self.pool).await?;
        Ok(())
    }

    /// Deletes claims older than `older_than` (by the database's clock); returns how many.
    pub async fn garbage_collect(&self, older_than: Duration) -> Result<u64, IdempotentError> {
        let secs = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let done = sqlx::query(&self.sql.collect)
            .bind(secs)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn claim_on(&self, conn: &mut AnyConnection, key: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&self.sql.claim)
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected() == 0)
    }
}

impl IdempotentChecker for SqlChecker {
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            Ok(self.claim_on(&mut conn, key).await?)
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
        Box::pin(async move {
            sqlx::query(&self.sql.release)
                .bind(key)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

/// A handler that runs inside the claim's database transaction.
pub trait TransactionalHandler: Send + Sync + 'static {
    /// Handles `message` using `tx` for its database writes; they commit with the claim on
    /// `Ok` and roll back with it on `Err`.
    fn handle<'c>(
        &'c self,
        message: ReceivedMessage,
        tx: &'c mut AnyConnection,
    ) -> BoxFuture<'c, HandleResult>;
}

impl<F> TransactionalHandler for F
where
    F: for<'c> Fn(ReceivedMessage, &'c mut AnyConnection) -> BoxFuture<'c, HandleResult>
        + Send
        + Sync
        + 'static,
{
    fn handle<'c>(
        &'c self,
        message: ReceivedMessage,
        tx: &'c mut AnyConnection,
    ) -> BoxFuture<'c, HandleResult> {
        self(message, tx)
    }
}

/// QMQ's `TransactionalJdbcIdempotentChecker`: begin a transaction, claim the key in it, run
/// the handler with the same transaction, commit on success, roll back on failure. The claim
/// and the handler's writes are one unit: no claim without the writes, no writes twice.
///
/// ```no_run
/// # async fn demo(checker: qmq_client::idempotent::SqlChecker) {
/// use qmq_client::idempotent::Transactional;
/// use qmq_client::ReceivedMessage;
///
/// let handler = Transactional::from_fn(checker, |m: ReceivedMessage, tx| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO orders(id) VALUES($1)")
///             .bind(m.message_id.clone())
///             .execute(&mut *tx)
///             .await?;
///         Ok(())
///     })
/// });
/// # }
/// ```
pub struct Transactional<H> {
    checker: SqlChecker,
    handler: Arc<H>,
}

impl<H: TransactionalHandler> Transactional<H> {
    /// Runs `handler` in transactions on `checker`'s database.
    pub fn new(checker: SqlChecker, handler: H) -> Self {
        Self {
            checker,
            handler: Arc::new(handler),
        }
    }
}

impl<F> Transactional<F>
where
    F: for<'c> Fn(ReceivedMessage, &'c mut AnyConnection) -> BoxFuture<'c, HandleResult>
        + Send
        + Sync
        + 'static,
{
    /// Like [`Transactional::new`] for a closure returning `Box::pin(async move { .. })`
    /// (this signature lets the compiler infer the closure's lifetimes).
    pub fn from_fn(checker: SqlChecker, handler: F) -> Self {
        Self::new(checker, handler)
    }
}

impl<H: TransactionalHandler> MessageHandler for Transactional<H> {
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, HandleResult> {
        let checker = self.checker.clone();
        let handler = self.handler.clone();
        Box::pin(async move {
            let key = message_key(&message);
            let mut tx = checker.pool.begin().await.map_err(IdempotentError::from)?;
            if checker
                .claim_on(&mut tx, &key)
                .await
                .map_err(IdempotentError::from)?
            {
                tx.rollback().await.map_err(IdempotentError::from)?;
                return Ok(());
            }
            match TransactionalHandler::handle(&*handler, message, &mut tx).await {
                Ok(()) => {
                    tx.commit()
                        .await
                        .map_err(|e| HandleError::from(IdempotentError::from(e)))?;
                    Ok(())
                }
                Err(e) => {
                    if let Err(re) = tx.rollback().await {
                        tracing::warn!(key, error = %re, "rollback failed (the connection drops it)");
                    }
                    Err(e)
                }
            }
        })
    }
}
