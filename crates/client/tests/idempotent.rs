//! Idempotent checkers against real PostgreSQL, MariaDB, SQLite and Redis. The servers are
//! found at the URLs `qmq_testkit` reads (`QMQ_TEST_POSTGRES_URL`, `QMQ_TEST_MYSQL_URL`,
//! `QMQ_TEST_REDIS_URL`; loopback by default); a test whose server does not answer is skipped
//! with one line (or fails, where `QMQ_TEST_REQUIRE_SERVICES=1`).
//! Every test uses its own random table or key prefix and removes it afterwards.

mod common;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::FutureExt;
use parking_lot::Mutex;
use qmq_client::idempotent::*;
use qmq_client::*;
use qmq_testkit::{require, MYSQL, POSTGRES, REDIS};
use tokio::sync::mpsc;

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// Runs `body`, then drops `tables` whatever happened, then re-raises a panic.
async fn with_tables<F: std::future::Future<Output = ()>>(
    checker: &SqlChecker,
    tables: &[&str],
    body: F,
) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for t in tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(checker.pool())
            .await
            .unwrap();
    }
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

fn ph(c: &SqlChecker) -> &'static str {
    if c.dialect() == Dialect::Postgres {
        "$1"
    } else {
        "?"
    }
}

async fn rows(c: &SqlChecker, table: &str, column: &str, value: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = {}", ph(c));
    let row: (i64,) = sqlx::query_as(&sql)
        .bind(value.to_owned())
        .fetch_one(c.pool())
        .await
        .unwrap();
    row.0
}

fn received(subject: &str) -> ReceivedMessage {
    ReceivedMessage::new(new_message(subject), subject, "g")
}

async fn checker_semantics(url: &str) {
    let table = unique("qmq_dedup");
    let checker = SqlChecker::connect(url, &table).await.unwrap();
    checker.create_table().await.unwrap();
    let c = checker.clone();
    let t = table.clone();
    with_tables(&checker, &[&t], async move {
        assert!(!c.claim("k1").await.unwrap(), "new key");
        assert!(c.claim("k1").await.unwrap(), "claimed before");
        c.release("k1").await.unwrap();
        assert!(!c.claim("k1").await.unwrap(), "released");

        let fail = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fail.clone(), calls.clone());
        let handler = Idempotent::new(c.clone(), move |_m: ReceivedMessage| {
            let (f, n) = (f.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                if f.load(Ordering::SeqCst) {
                    Err(HandleError::msg("handler failed"))
                } else {
                    Ok(())
                }
            }
        });
        let m = received("idem.s");
        let key = message_key(&m);
        assert_eq!(key, format!("idem.s%g%{}", m.message_id));
        assert!(handler.handle(m.clone()).await.is_err());
        assert_eq!(rows(&c, &table, "k", &key).await, 0, "failed: no mark left");
        fail.store(false, Ordering::SeqCst);
        handler.handle(m.clone()).await.unwrap();
        assert_eq!(rows(&c, &table, "k", &key).await, 1);
        handler.handle(m.clone()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the duplicate was skipped");

        sqlx::query(&format!(
            "INSERT INTO {table}(k, update_at) VALUES('old', '2000-01-01 00:00:00')"
        ))
        .execute(c.pool())
        .await
        .unwrap();
        assert_eq!(
            c.garbage_collect(Duration::from_secs(3600)).await.unwrap(),
            1
        );
        assert_eq!(rows(&c, &table, "k", "old").await, 0);
        assert_eq!(rows(&c, &table, "k", &key).await, 1, "recent claims stay");
    })
    .await;
}

#[tokio::test]
async fn postgres_checker() {
    let Some(url) = require(&POSTGRES, "idempotent::postgres_checker") else {
        return;
    };
    checker_semantics(&url).await;
}

#[tokio::test]
async fn mariadb_checker() {
    let Some(url) = require(&MYSQL, "idempotent::mariadb_checker") else {
        return;
    };
    checker_semantics(&url).await;
}

#[tokio::test]
async fn sqlite_checker() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
    checker_semantics(&url).await;
}

async fn transactional_semantics(url: &str) {
    let table = unique("qmq_dedup");
    let biz = unique("qmq_biz");
    let checker = SqlChecker::connect(url, &table).await.unwrap();
    checker.create_table().await.unwrap();
    sqlx::query(&format!("CREATE TABLE {biz} (v VARCHAR(255) NOT NULL)"))
        .execute(checker.pool())
        .await
        .unwrap();
    let c = checker.clone();
    let (t, b) = (table.clone(), biz.clone());
    with_tables(&checker, &[&table, &biz], async move {
        let fail = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let insert = format!("INSERT INTO {b} (v) VALUES ({})", ph(&c));
        let (f, n) = (fail.clone(), calls.clone());
        let handler = Transactional::from_fn(c.clone(), move |m: ReceivedMessage, tx| {
            let (f, n, insert) = (f.clone(), n.clone(), insert.clone());
            Box::pin(async move {
                n.fetch_add(1, Ordering::SeqCst);
                sqlx::query(&insert)
                    .bind(m.message_id.clone())
                    .execute(&mut *tx)
                    .await?;
                if f.load(Ordering::SeqCst) {
                    return Err(HandleError::msg("after writing"));
                }
                Ok(())
            })
        });
        let m = received("idem.tx");
        let key = message_key(&m);
        assert!(handler.handle(m.clone()).await.is_err());
        assert_eq!(rows(&c, &t, "k", &key).await, 0, "claim rolled back");
        assert_eq!(
            rows(&c, &b, "v", &m.message_id).await,
            0,
            "write rolled back"
        );
        fail.store(false, Ordering::SeqCst);
        handler.handle(m.clone()).await.unwrap();
        handler.handle(m.clone()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(rows(&c, &t, "k", &key).await, 1);
        assert_eq!(
            rows(&c, &b, "v", &m.message_id).await,
            1,
            "written exactly once"
        );
    })
    .await;
}

#[tokio::test]
async fn postgres_transactional() {
    let Some(url) = require(&POSTGRES, "idempotent::postgres_transactional") else {
        return;
    };
    transactional_semantics(&url).await;
}

#[tokio::test]
async fn mariadb_transactional() {
    let Some(url) = require(&MYSQL, "idempotent::mariadb_transactional") else {
        return;
    };
    transactional_semantics(&url).await;
}

#[tokio::test]
async fn sqlite_transactional() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    transactional_semantics(&url).await;
}

#[tokio::test]
async fn redis_checker_claims_expire_and_failures_release() {
    let Some(url) = require(
        &REDIS,
        "idempotent::redis_checker_claims_expire_and_failures_release",
    ) else {
        return;
    };
    let prefix = format!("{}:", unique("qmq_test"));
    let checker = RedisChecker::connect(&url, &prefix, Duration::from_secs(60))
        .await
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let handler = Idempotent::new(checker.clone(), move |_m: ReceivedMessage| {
        let f = f.clone();
        async move {
            if f.load(Ordering::SeqCst) {
                Err(HandleError::msg("no"))
            } else {
                Ok(())
            }
        }
    });
    let m = received("idem.redis");
    let full = format!("{prefix}{}", message_key(&m));
    let exists = |conn: &mut redis::aio::MultiplexedConnection| {
        let full = full.clone();
        let mut conn = conn.clone();
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&full)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 1
        }
    };
    assert!(handler.handle(m.clone()).await.is_err());
    assert!(!exists(&mut conn).await, "failed: no mark left");
    fail.store(false, Ordering::SeqCst);
    handler.handle(m.clone()).await.unwrap();
    assert!(exists(&mut conn).await);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&full)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "expiry set: {pttl}");
    assert!(
        checker.claim(&message_key(&m)).await.unwrap(),
        "claimed before"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&full)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Counts every message the subscription hands to its handler.
struct Deliveries(mpsc::UnboundedSender<()>);

impl Filter for Deliveries {
    fn post_on_message(&self, _m: &ReceivedMessage, _c: &mut FilterContext, _r: &HandleResult) {
        let _ = self.0.send(());
    }
}

trait CountExt {
    fn try_iter_count(&self) -> usize;
}

impl CountExt for std::sync::mpsc::Receiver<()> {
    fn try_iter_count(&self) -> usize {
        self.try_iter().count()
    }
}

#[tokio::test]
async fn duplicates_through_a_broker_run_the_handler_once() {
    // The broker's duplicate window would answer the copies DUPLICATE without storing them: off
    // here, so that the copies reach the consumer (as they do when a resend comes after the
    // window, or through another broker group).
    let (b, _dir) = broker_with(|c| {
        c.retry_delay = Duration::ZERO;
        c.dedup_window = Duration::ZERO;
    })
    .await;
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", db.path().join("e.db").display());
    let table = unique("qmq_dedup");
    let checker = SqlChecker::connect(&url, &table).await.unwrap();
    checker.create_table().await.unwrap();
    let router = Arc::new(StaticRouter::new([addr(&b)]));
    let producer = Producer::new(router.clone(), ProducerConfig::default());
    // The same message (same id) stored three times, as after lost answers.
    let m = new_message("idem.e2e");
    for _ in 0..3 {
        producer.send(m.clone()).await.unwrap();
    }
    let failing = new_message("idem.e2e");
    producer.send(failing.clone()).await.unwrap();
    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            pull_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    );
    let calls: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let (c, fid) = (calls.clone(), failing.message_id.clone());
    let handler = Idempotent::new(checker.clone(), move |m: ReceivedMessage| {
        let (c, tx, fail) = (c.clone(), tx.clone(), m.message_id == fid && m.times() == 1);
        async move {
            c.lock()
                .entry(m.message_id.clone())
                .or_default()
                .push(m.times());
            let _ = tx.send(());
            if fail {
                return Err(HandleError::msg("first try fails"));
            }
            Ok(())
        }
    });
    let (dtx, mut deliveries) = mpsc::unbounded_channel();
    consumer
        .subscribe_with(
            "idem.e2e",
            "g",
            handler,
            SubscribeOptions {
                filters: vec![Arc::new(Deliveries(dtx))],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Three copies of `m` and two deliveries of `failing` reach the wrapper.
    tokio::time::timeout(T, async {
        for _ in 0..5 {
            deliveries.recv().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(rx.try_iter_count(), 3);
    consumer.shutdown().await;
    let calls = calls.lock().clone();
    assert_eq!(calls[&m.message_id], vec![1], "duplicates skipped");
    assert_eq!(
        calls[&failing.message_id],
        vec![1, 2],
        "retried after failure"
    );
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(checker.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_panicking_handler_releases_its_claim() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let table = unique("qmq_dedup");
    let checker = SqlChecker::connect(&url, &table).await.unwrap();
    checker.create_table().await.unwrap();
    let handler = Idempotent::new(checker.clone(), |_m: ReceivedMessage| async move {
        if true {
            panic!("handler bug");
        }
        Ok(())
    });
    let m = received("idem.panic");
    let err = handler.handle(m.clone()).await.unwrap_err();
    assert!(err.to_string().contains("handler bug"), "{err}");
    assert_eq!(rows(&checker, &table, "k", &message_key(&m)).await, 0);
}
