//! Transactional messages (QMQ's outbox): a message is sent if and only if the business
//! transaction that produced it commits (cargo feature `sql`).
//!
//! Inside the caller's sqlx transaction, [`OutboxTransaction::send`] writes the message as a row
//! of the outbox table, so the row commits or rolls back with the business data.
//! [`OutboxTransaction::commit`] commits, then sends each message with the ordinary
//! [`Producer`] and deletes its row once a broker stored it. A rolled-back (or dropped)
//! transaction sends nothing. A message whose send fails after commit — broker down, process
//! killed — stays as a pending row, and the watchdog (`qmq watchdog`, crate `qmq-watchdog`)
//! resends it once the row is older than its grace period. Resends can duplicate a message (the
//! broker's duplicate window drops most): consumers should be idempotent
//! ([`crate::idempotent`]).
//!
//! ```no_run
//! # async fn demo(producer: std::sync::Arc<qmq_client::Producer>) -> Result<(), Box<dyn std::error::Error>> {
//! use qmq_client::outbox::TransactionalProducer;
//! use qmq_client::{new_message, MessageExt};
//!
//! let pool = sqlx::PgPool::connect("postgres://app@db/shop").await?;
//! let outbox = TransactionalProducer::new(producer, pool.clone());
//! outbox.create_table().await?; // once, or run the schema below as a migration
//!
//! let mut tx = outbox.begin().await?; // or outbox.attach(pool.begin().await?)
//! sqlx::query("INSERT INTO orders(id) VALUES(42)").execute(&mut *tx).await?;
//! let mut m = new_message("order.created");
//! m.set_i64("orderId", 42)?;
//! tx.send(m).await?; // the row is written now, in the transaction
//! let deliveries = tx.commit().await?; // commit, then send; rows of stored messages deleted
//! # Ok(()) }
//! ```
//!
//! # The table
//!
//! On MySQL/MariaDB it is QMQ's `qmq_produce.qmq_msg_queue`, exactly as the Java client's
//! `init_client.sql` creates it, so Java producers' rows are resent by this crate's watchdog and
//! this crate's rows by Java's:
//!
//! ```sql
//! CREATE TABLE qmq_produce.qmq_msg_queue (
//!   id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
//!   content     LONGTEXT NOT NULL,                 -- the message as JSON (see below)
//!   status      SMALLINT NOT NULL DEFAULT 0,       -- row state, see `status`
//!   error       INT UNSIGNED NOT NULL DEFAULT 0,   -- failed attempts
//!   create_time DATETIME NOT NULL,
//!   update_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
//! ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
//! ```
//!
//! On PostgreSQL: schema `qmq_produce`, `id BIGSERIAL`, `content TEXT`, `status SMALLINT`,
//! `error INTEGER CHECK (error >= 0)`, `create_time`/`update_time TIMESTAMPTZ`; there is no
//! `ON UPDATE`: every statement that changes a row sets `update_time` itself. On SQLite (no
//! schemas): table `qmq_msg_queue` in the business database, `id INTEGER PRIMARY KEY
//! AUTOINCREMENT`, times as UTC text `YYYY-MM-DD HH:MM:SS.SSS`. [`OutboxSql`] has the exact
//! statements; the table name is configurable ([`TransactionalProducer::with_table`]), but
//! QMQ's Java watchdog only ever reads `qmq_produce.qmq_msg_queue`.
//!
//! Rows hold the message as QMQ's JSON ([`to_json`]). Row states ([`status`]):
//!
//! | status | meaning | set by |
//! |---|---|---|
//! | 0 | pending: resent by the watchdog once older than its grace period | insert |
//! | −100 | the broker answered BLOCK: never resent | producer |
//! | −1 | the watchdog's send failed outright (QMQ: broker busy): left for an operator | watchdog |
//! | −2 | invalid content, or [`MAX_ERRORS`] failed attempts: left for an operator | watchdog |
//! | (deleted) | stored by a broker | producer or watchdog |

mod json;
mod sql;

pub use json::{from_json, to_json, ContentError};
pub use sql::{
    check_table, default_table, status, OutboxSql, DEFAULT_SQLITE_TABLE, DEFAULT_TABLE, MAX_ERRORS,
};

pub use crate::idempotent::Dialect;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use futures::future::BoxFuture;
use qmq_protocol::{Message, ProducerCode};
use sqlx::{Pool, Transaction};

use crate::{Producer, SendError, SendReceipt};

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused a statement or could not be reached.
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The table name is not `table` or `schema.table` of letters, digits and `_`.
    #[error("invalid outbox table name {0:?}")]
    BadTable(String),
    /// The database returned an id out of range.
    #[error("outbox row id {0} out of range")]
    BadId(u64),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    impl Sealed for sqlx::MySql {}
    impl Sealed for sqlx::Sqlite {}
}

/// A database the outbox works on: [`sqlx::Postgres`], [`sqlx::MySql`] (MariaDB too) or
/// [`sqlx::Sqlite`]. Sealed: the methods are the crate's plumbing.
pub trait OutboxDatabase: sqlx::Database + sealed::Sealed {
    /// The SQL dialect.
    const DIALECT: Dialect;

    /// Inserts a row with `sql` ([`OutboxSql::insert`]) and returns its id.
    #[doc(hidden)]
    fn insert_row<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        content: String,
    ) -> BoxFuture<'e, Result<i64, OutboxError>>;

    /// Runs `sql` with one id parameter; returns the rows affected.
    #[doc(hidden)]
    fn execute_id<'e>(
        pool: &'e Pool<Self>,
        sql: &'e str,
        id: i64,
    ) -> BoxFuture<'e, Result<u64, sqlx::Error>>;

    /// Runs `sql` without parameters.
    #[doc(hidden)]
    fn execute<'e>(pool: &'e Pool<Self>, sql: &'e str) -> BoxFuture<'e, Result<(), sqlx::Error>>;
}

macro_rules! common_impl {
    () => {
        fn execute_id<'e>(
            pool: &'e Pool<Self>,
            sql: &'e str,
            id: i64,
        ) -> BoxFuture<'e, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                Ok(sqlx::query(sql)
                    .bind(id)
                    .execute(pool)
                    .await?
                    .rows_affected())
            })
        }

        fn execute<'e>(
            pool: &'e Pool<Self>,
            sql: &'e str,
        ) -> BoxFuture<'e, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(sql).execute(pool).await?;
                Ok(())
            })
        }
    };
}

/// `insert_row` for databases whose INSERT returns the new id (`RETURNING id`).
macro_rules! insert_returning_id {
    () => {
        fn insert_row<'e>(
            conn: &'e mut Self::Connection,
            sql: &'e str,
            content: String,
        ) -> BoxFuture<'e, Result<i64, OutboxError>> {
            Box::pin(async move {
                Ok(sqlx::query_scalar::<_, i64>(sql)
                    .bind(content)
                    .fetch_one(conn)
                    .await?)
            })
        }
    };
}

impl OutboxDatabase for sqlx::Postgres {
    const DIALECT: Dialect = Dialect::Postgres;

    insert_returning_id!();

    common_impl!();
}

impl OutboxDatabase for sqlx::Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

    insert_returning_id!();

    common_impl!();
}

impl OutboxDatabase for sqlx::MySql {
    const DIALECT: Dialect = Dialect::MySql;

    fn insert_row<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        content: String,
    ) -> BoxFuture<'e, Result<i64, OutboxError>> {
        Box::pin(async move {
            let id = sqlx::query(sql)
                .bind(content)
                .execute(conn)
                .await?
                .last_insert_id();
            i64::try_from(id).map_err(|_| OutboxError::BadId(id))
        })
    }

    common_impl!();
}

struct Inner<DB: OutboxDatabase> {
    producer: Arc<Producer>,
    pool: Pool<DB>,
    sql: OutboxSql,
}

/// Sends messages if and only if the business transaction commits (see the [module](self)
/// docs). Cheap to clone; holds the [`Producer`] that sends after commit and the pool that
/// deletes or updates rows afterwards (the same database the transactions run on).
pub struct TransactionalProducer<DB: OutboxDatabase> {
    inner: Arc<Inner<DB>>,
}

impl<DB: OutboxDatabase> Clone for TransactionalProducer<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: OutboxDatabase> std::fmt::Debug for TransactionalProducer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("table", &self.inner.sql.table)
            .finish_non_exhaustive()
    }
}

/// What happened to one message after commit.
#[derive(Debug)]
pub struct Delivery {
    /// The message's id.
    pub message_id: String,
    /// Its outbox row.
    pub row_id: i64,
    /// Stored (the row is deleted), or why not: the row stays pending for the watchdog, or is
    /// marked blocked when the broker answered BLOCK.
    pub result: Result<SendReceipt, SendError>,
}

impl<DB: OutboxDatabase> TransactionalProducer<DB> {
    /// Writes to the dialect's default table ([`default_table`]: `qmq_produce.qmq_msg_queue`,
    /// `qmq_msg_queue` on SQLite) through `pool`, and sends with `producer`.
    pub fn new(producer: Arc<Producer>, pool: Pool<DB>) -> Self {
        let sql = OutboxSql::new(DB::DIALECT, default_table(DB::DIALECT))
            .expect("the default table name is valid");
        Self::from_parts(producer, pool, sql)
    }

    /// Like [`TransactionalProducer::new`] with another table (`table` or `schema.table`), e.g.
    /// one in the business schema where cross-schema transactions are not allowed. The
    /// watchdog must be told the same name.
    pub fn with_table(
        producer: Arc<Producer>,
        pool: Pool<DB>,
        table: &str,
    ) -> Result<Self, OutboxError> {
        let sql = OutboxSql::new(DB::DIALECT, table)?;
        Ok(Self::from_parts(producer, pool, sql))
    }

    fn from_parts(producer: Arc<Producer>, pool: Pool<DB>, sql: OutboxSql) -> Self {
        Self {
            inner: Arc::new(Inner {
                producer,
                pool,
                sql,
            }),
        }
    }

    /// The outbox table's name.
    pub fn table(&self) -> &str {
        &self.inner.sql.table
    }

    /// The statements on the table.
    pub fn sql(&self) -> &OutboxSql {
        &self.inner.sql
    }

    /// Creates the schema (MySQL database or PostgreSQL schema, for a qualified name) and the
    /// table if they do not exist.
    pub async fn create_table(&self) -> Result<(), OutboxError> {
        if let Some(s) = &self.inner.sql.create_schema {
            DB::execute(&self.inner.pool, s).await?;
        }
        DB::execute(&self.inner.pool, &self.inner.sql.create_table).await?;
        Ok(())
    }

    /// Begins a transaction on the pool and attaches it.
    pub async fn begin(&self) -> Result<OutboxTransaction<'static, DB>, OutboxError> {
        let tx = self.inner.pool.begin().await?;
        Ok(self.attach(tx))
    }

    /// Attaches the caller's transaction (on the same database as the pool): messages given to
    /// [`OutboxTransaction::send`] are written in it and sent after
    /// [`OutboxTransaction::commit`].
    pub fn attach<'c>(&self, tx: Transaction<'c, DB>) -> OutboxTransaction<'c, DB> {
        OutboxTransaction {
            tx,
            outbox: self.clone(),
            staged: Vec::new(),
        }
    }

    /// Sends `message` and settles its row: deleted once stored, marked blocked on BLOCK, left
    /// pending on any other failure.
    async fn deliver(&self, row_id: i64, message: Message) -> Delivery {
        let message_id = message.message_id.clone();
        let result = self.inner.producer.send(message).await;
        let settle = match &result {
            Ok(_) => Some(&self.inner.sql.delete),
            Err(SendError::Refused {
                code: ProducerCode::Block,
                ..
            }) => Some(&self.inner.sql.block),
            Err(e) => {
                tracing::warn!(message_id, row_id, table = self.inner.sql.table, error = %e,
                    "send after commit failed; the row stays for the watchdog");
                None
            }
        };
        if let Some(sql) = settle {
            if let Err(e) = DB::execute_id(&self.inner.pool, sql, row_id).await {
                tracing::warn!(message_id, row_id, table = self.inner.sql.table, error = %e,
                    "outbox row not settled; the watchdog may send the message again");
            }
        }
        Delivery {
            message_id,
            row_id,
            result,
        }
    }
}

/// The caller's transaction with the messages to send once it commits. Dereferences to the
/// database connection, so `&mut *tx` runs the business statements as with a plain
/// [`sqlx::Transaction`]. Dropping it without [`commit`](Self::commit) rolls back and sends
/// nothing.
pub struct OutboxTransaction<'c, DB: OutboxDatabase> {
    tx: Transaction<'c, DB>,
    outbox: TransactionalProducer<DB>,
    staged: Vec<(i64, Message)>,
}

impl<DB: OutboxDatabase> std::fmt::Debug for OutboxTransaction<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxTransaction")
            .field("table", &self.outbox.inner.sql.table)
            .field("staged", &self.staged.len())
            .finish_non_exhaustive()
    }
}

impl<'c, DB: OutboxDatabase> OutboxTransaction<'c, DB> {
    /// Writes `message` into the outbox table in this transaction; it is sent after
    /// [`commit`](Self::commit), never if the transaction rolls back. Returns the row's id.
    pub async fn send(&mut self, message: Message) -> Result<i64, OutboxError> {
        let content = to_json(&message);
        let id = DB::insert_row(&mut self.tx, &self.outbox.inner.sql.insert, content).await?;
        self.staged.push((id, message));
        Ok(id)
    }

    /// The messages written so far.
    pub fn pending(&self) -> usize {
        self.staged.len()
    }

    /// The underlying transaction, for functions that take a `&mut sqlx::Transaction`.
    pub fn transaction(&mut self) -> &mut Transaction<'c, DB> {
        &mut self.tx
    }

    /// Commits, then sends every message (concurrently, through the producer's queue) and
    /// waits for the outcomes. `Err` only when the commit failed, and then nothing is sent
    /// (should the commit have happened anyway, the watchdog sends the rows). A failed send
    /// leaves its row to the watchdog: see [`Delivery::result`].
    pub async fn commit(self) -> Result<Vec<Delivery>, OutboxError> {
        let Self { tx, outbox, staged } = self;
        tx.commit().await?;
        Ok(futures::future::join_all(
            staged
                .into_iter()
                .map(|(row, message)| outbox.deliver(row, message)),
        )
        .await)
    }

    /// Rolls back: the rows are gone, nothing is sent.
    pub async fn rollback(self) -> Result<(), OutboxError> {
        if !self.staged.is_empty() {
            tracing::debug!(
                messages = self.staged.len(),
                "transaction rolled back; its messages are discarded"
            );
        }
        self.tx.rollback().await?;
        Ok(())
    }
}

impl<DB: OutboxDatabase> Deref for OutboxTransaction<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: OutboxDatabase> DerefMut for OutboxTransaction<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}
