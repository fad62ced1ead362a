//! The transactional producer against real PostgreSQL, MariaDB and SQLite (a temp file) and a
//! real broker: a message is sent if and only if its transaction commits. Servers are found at
//! the URLs `qmq_testkit` reads; a test whose server does not answer is skipped with one line
//! (or fails, where `QMQ_TEST_REQUIRE_SERVICES=1`). Every test works in its own PostgreSQL
//! schema or MariaDB database and drops it afterwards.

mod common;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::FutureExt;
use qmq_client::outbox::{from_json, status, OutboxDatabase, TransactionalProducer};
use qmq_client::*;
use qmq_testkit::{require, MYSQL, POSTGRES};
use sqlx::{Executor, IntoArguments, Pool};

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

async fn count<DB>(pool: &Pool<DB>, sql: &str) -> i64
where
    DB: OutboxDatabase,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
{
    sqlx::query_scalar::<DB, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn producer(broker: String, tries: u32) -> Arc<Producer> {
    Arc::new(Producer::new(
        Arc::new(StaticRouter::new([broker])),
        ProducerConfig {
            max_tries: tries,
            retry_backoff: Duration::from_millis(10),
            send_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    ))
}

/// A message with a property, for `subject`.
fn message(subject: &str, n: i64) -> Message {
    let mut m = new_message(subject);
    m.set_i64("n", n).unwrap();
    m
}

/// Commit → stored once, row deleted; rollback and drop → nothing stored, no row; the business
/// rows follow their transactions.
async fn commit_and_rollback<DB>(pool: Pool<DB>, schema: Option<&str>)
where
    DB: OutboxDatabase,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'a> &'a mut DB::Connection: Executor<'a, Database = DB>,
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
{
    let qualify = |t: &str| schema.map_or(t.to_owned(), |s| format!("{s}.{t}"));
    let (outbox_table, orders) = (qualify("qmq_msg_queue"), qualify("orders"));
    let (b, _dir) = broker().await;
    let subject = unique("tx.commit");
    let outbox =
        TransactionalProducer::with_table(producer(addr(&b), 3), pool.clone(), &outbox_table)
            .unwrap();
    outbox.create_table().await.unwrap();
    outbox.create_table().await.unwrap(); // idempotent
    sqlx::query(&format!("CREATE TABLE {orders} (id BIGINT PRIMARY KEY)"))
        .execute(&pool)
        .await
        .unwrap();

    // Rolled back explicitly, and dropped without commit: neither is ever sent.
    let mut tx = outbox.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders}(id) VALUES (1)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled = message(&subject, 1);
    let rolled_id = rolled.message_id.clone();
    tx.send(rolled).await.unwrap();
    assert_eq!(tx.pending(), 1);
    tx.rollback().await.unwrap();
    let mut tx = outbox.attach(pool.begin().await.unwrap());
    let dropped = message(&subject, 2);
    let dropped_id = dropped.message_id.clone();
    tx.send(dropped).await.unwrap();
    drop(tx);

    // Committed: sent, its row deleted, the business row kept.
    let mut tx = outbox.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders}(id) VALUES (3)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let committed = message(&subject, 3);
    let committed_id = committed.message_id.clone();
    let row = tx.send(committed).await.unwrap();
    assert!(row > 0);
    let deliveries = tx.commit().await.unwrap();
    assert_eq!(deliveries.len(), 1);
    let d = &deliveries[0];
    assert_eq!(
        (d.message_id.as_str(), d.row_id),
        (committed_id.as_str(), row)
    );
    assert_eq!(d.result.as_ref().unwrap().message_id, committed_id);

    assert_eq!(
        count(&pool, &format!("SELECT COUNT(*) FROM {outbox_table}")).await,
        0
    );
    assert_eq!(
        count(&pool, &format!("SELECT COUNT(*) FROM {orders}")).await,
        1
    );
    assert_eq!(
        count(&pool, &format!("SELECT MAX(id) FROM {orders}")).await,
        3
    );

    // The broker has exactly the committed message: pull it, then find nothing more.
    let got = pull_n(&addr(&b), &subject, "g", 1).await;
    assert_eq!(got[0].message_id, committed_id);
    assert_eq!(got[0].get_i64("n"), Some(3));
    let conn = Connection::connect(&addr(&b)).await.unwrap();
    let mut c = PullConsumer::new(conn, &subject, "g", "test-puller-2");
    let (_, more) = c.pull(100, Duration::from_millis(300)).await.unwrap();
    assert!(
        more.is_empty(),
        "only the committed message is stored: {more:?}"
    );
    let all = pull_n(&addr(&b), &subject, "other-group", 1).await;
    assert!(ids(&all).contains(&committed_id));
    assert!(!ids(&all).contains(&rolled_id) && !ids(&all).contains(&dropped_id));
    b.shutdown().await.unwrap();
}

/// Broker down at commit: the commit succeeds, the send fails, the row stays pending with the
/// message's JSON (for the watchdog).
async fn broker_down_leaves_a_pending_row<DB>(pool: Pool<DB>, table: &str)
where
    DB: OutboxDatabase,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'a> &'a mut DB::Connection: Executor<'a, Database = DB>,
    for<'a> &'a Pool<DB>: Executor<'a, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    i16: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
{
    let outbox =
        TransactionalProducer::with_table(producer(dead_addr().await, 2), pool.clone(), table)
            .unwrap();
    outbox.create_table().await.unwrap();
    let mut tx = outbox.begin().await.unwrap();
    let mut m = message("tx.down", 7);
    m.add_tag("t1").unwrap();
    let id = m.message_id.clone();
    let row = tx.send(m).await.unwrap();
    let deliveries = tx.commit().await.unwrap();
    assert!(
        deliveries[0].result.is_err(),
        "nothing listens: {deliveries:?}"
    );
    let (content, st): (String, i16) = sqlx::query_as(&format!(
        "SELECT content, status FROM {table} WHERE id = {row}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(st, status::PENDING);
    let back = from_json(&content).unwrap();
    assert_eq!(back.message_id, id);
    assert_eq!(back.tags, vec!["t1".to_owned()]);
    assert_eq!(back.get_i64("n"), Some(7));
}

/// Runs `body`, then `cleanup`, then re-raises a panic of `body`.
async fn cleaned<F, C>(body: F, cleanup: C)
where
    F: std::future::Future<Output = ()>,
    C: std::future::Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

async fn postgres(test: &str) -> Option<(sqlx::PgPool, String)> {
    let url = require(&POSTGRES, test)?;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let schema = unique("qmqtx");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    Some((pool, schema))
}

async fn drop_pg(pool: sqlx::PgPool, schema: String) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

async fn mysql(test: &str) -> Option<(sqlx::MySqlPool, String)> {
    let url = require(&MYSQL, test)?;
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    let db = unique("qmqtx");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&pool)
        .await
        .unwrap();
    Some((pool, db))
}

async fn drop_my(pool: sqlx::MySqlPool, db: String) {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&pool)
        .await
        .unwrap();
}

async fn sqlite() -> (sqlx::SqlitePool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    (sqlx::SqlitePool::connect(&url).await.unwrap(), dir)
}

#[tokio::test]
async fn postgres_commit_sends_once_rollback_never() {
    let Some((pool, schema)) = postgres("postgres_commit_sends_once_rollback_never").await else {
        return;
    };
    cleaned(
        commit_and_rollback(pool.clone(), Some(&schema)),
        drop_pg(pool, schema.clone()),
    )
    .await;
}

#[tokio::test]
async fn mysql_commit_sends_once_rollback_never() {
    let Some((pool, db)) = mysql("mysql_commit_sends_once_rollback_never").await else {
        return;
    };
    cleaned(
        commit_and_rollback(pool.clone(), Some(&db)),
        drop_my(pool, db.clone()),
    )
    .await;
}

#[tokio::test]
async fn sqlite_commit_sends_once_rollback_never() {
    let (pool, _dir) = sqlite().await;
    commit_and_rollback(pool, None).await;
}

#[tokio::test]
async fn postgres_broker_down_leaves_a_pending_row() {
    let Some((pool, schema)) = postgres("postgres_broker_down_leaves_a_pending_row").await else {
        return;
    };
    let table = format!("{schema}.qmq_msg_queue");
    cleaned(
        broker_down_leaves_a_pending_row(pool.clone(), &table),
        drop_pg(pool, schema.clone()),
    )
    .await;
}

#[tokio::test]
async fn mysql_broker_down_leaves_a_pending_row() {
    let Some((pool, db)) = mysql("mysql_broker_down_leaves_a_pending_row").await else {
        return;
    };
    let table = format!("{db}.qmq_msg_queue");
    cleaned(
        broker_down_leaves_a_pending_row(pool.clone(), &table),
        drop_my(pool, db.clone()),
    )
    .await;
}

#[tokio::test]
async fn sqlite_broker_down_leaves_a_pending_row() {
    let (pool, _dir) = sqlite().await;
    broker_down_leaves_a_pending_row(pool, "qmq_msg_queue").await;
}

/// The default table is QMQ's `qmq_produce.qmq_msg_queue` on MySQL, with Java's exact columns.
#[tokio::test]
async fn mysql_default_table_has_javas_columns() {
    let Some((pool, db)) = mysql("mysql_default_table_has_javas_columns").await else {
        return;
    };
    let (p, name) = (pool.clone(), db.clone());
    cleaned(
        async move {
            let db = name;
            let (b, _dir) = broker().await;
            let outbox = TransactionalProducer::new(producer(addr(&b), 1), p.clone());
            assert_eq!(outbox.table(), "qmq_produce.qmq_msg_queue");
            // Inspect the schema the producer creates, under a private database name.
            let table = format!("{db}.qmq_msg_queue");
            let mine = TransactionalProducer::with_table(producer(addr(&b), 1), p.clone(), &table)
                .unwrap();
            mine.create_table().await.unwrap();
            let cols: Vec<(String, String)> = sqlx::query_as(
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR) \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'qmq_msg_queue' ORDER BY ORDINAL_POSITION",
            )
            .bind(&db)
            .fetch_all(&p)
            .await
            .unwrap();
            let cols: Vec<(&str, &str)> =
                cols.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            assert_eq!(
                cols,
                [
                    ("id", "bigint(20)"),
                    ("content", "longtext"),
                    ("status", "smallint(6)"),
                    ("error", "int(10) unsigned"),
                    ("create_time", "datetime"),
                    ("update_time", "timestamp"),
                ]
            );
            b.shutdown().await.unwrap();
        },
        drop_my(pool, db.clone()),
    )
    .await;
}
