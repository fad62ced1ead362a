//! A producer process killed (SIGKILL) after its transaction committed and before its send
//! completed: the row stays pending and the watchdog sends it, exactly once. On PostgreSQL,
//! MariaDB and SQLite.
//!
//! The producer is this test binary re-run as a child (`producer_child`, which does nothing
//! unless `QMQ_WD_CHILD` is set). Its broker is a black hole that accepts connections and reads
//! but never answers: once the black hole has received bytes, the commit is done and the send
//! is in flight, and the child is killed then. No sleeps decide anything.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use qmq_client::idempotent::Dialect;
use qmq_client::outbox::{from_json, status};
use qmq_client::{new_message, Producer, ProducerConfig, StaticRouter};
use qmq_watchdog::{Outbox, ScanOptions};
use sqlx::Row;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const CHILD: &str = "QMQ_WD_CHILD";

/// The child's part: commit one message whose send never completes. Returns at once in a normal
/// test run.
#[tokio::test]
async fn producer_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split('\u{1f}');
    let mut next = || parts.next().unwrap().to_owned();
    let (dialect, url, table, broker, subject) = (next(), next(), next(), next(), next());
    let dialect = match dialect.as_str() {
        "postgres" => Dialect::Postgres,
        "mysql" => Dialect::MySql,
        _ => Dialect::Sqlite,
    };
    let producer = Arc::new(Producer::new(
        Arc::new(StaticRouter::new([broker])),
        ProducerConfig {
            max_tries: 1,
            send_timeout: Duration::from_secs(600),
            ..ProducerConfig::default()
        },
    ));
    let db = ChildDb {
        dialect,
        url,
        table,
    };
    db.commit(producer, new_message(&subject)).await;
    panic!("the send was supposed to hang until the parent killed this process");
}

struct ChildDb {
    dialect: Dialect,
    url: String,
    table: String,
}

impl ChildDb {
    async fn commit(&self, producer: Arc<Producer>, message: qmq_client::Message) {
        use qmq_client::outbox::TransactionalProducer;
        macro_rules! run {
            ($pool:ty) => {{
                let pool = <$pool>::connect(&self.url).await.unwrap();
                let outbox =
                    TransactionalProducer::with_table(producer, pool, &self.table).unwrap();
                let mut tx = outbox.begin().await.unwrap();
                tx.send(message).await.unwrap();
                let _ = tx.commit().await;
            }};
        }
        match self.dialect {
            Dialect::Postgres => run!(sqlx::PgPool),
            Dialect::MySql => run!(sqlx::MySqlPool),
            Dialect::Sqlite => run!(sqlx::SqlitePool),
        }
    }
}

/// A listener that accepts and reads but never answers; `got` turns true on the first byte.
async fn black_hole() -> (String, Arc<AtomicBool>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got = Arc::new(AtomicBool::new(false));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    g.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, got)
}

async fn producer_killed_after_commit(dialect: Dialect, test: &str) {
    with_outbox(dialect, test, |db| async move {
        let (hole, got) = black_hole().await;
        let subject = unique("wd.killed");
        let name = match dialect {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        };
        let spec = [name, &db.url, &db.table, &hole, &subject].join("\u{1f}");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "producer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Committed (the row is visible from here) and sending (the black hole has bytes).
        let deadline = Instant::now() + T;
        loop {
            if got.load(Ordering::SeqCst) && !db.rows().await.is_empty() {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the producer exited before it was killed: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "the producer never committed and sent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let rows = db.rows().await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, i64::from(status::PENDING));
        let content: String = {
            let sql = format!("SELECT content FROM {} WHERE id = {}", db.table, rows[0].0);
            let row = sqlx::query(&sql).fetch_one(&db.pool).await.unwrap();
            row.try_get::<String, _>("content")
                .or_else(|_| {
                    row.try_get::<Vec<u8>, _>("content")
                        .map(|b| String::from_utf8(b).unwrap())
                })
                .unwrap()
        };
        let message_id = from_json(&content).unwrap().message_id;

        let (b, _dir) = broker_on("127.0.0.1:0".parse().unwrap()).await;
        let addr = b.addr().to_string();
        let outbox = Outbox::connect(&db.url, &db.table, "test").await.unwrap();
        let p = producer(&addr, 3);
        let options = ScanOptions {
            grace: Duration::ZERO,
            ..ScanOptions::default()
        };
        let deadline = Instant::now() + T;
        while !db.rows().await.is_empty() {
            outbox
                .scan(&p, &options, &CancellationToken::new())
                .await
                .unwrap();
            assert!(
                Instant::now() < deadline,
                "the watchdog did not send the row"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = pull_exactly(&addr, &subject, "g", 1).await;
        assert_eq!(got[0].message_id, message_id);
        b.shutdown().await.unwrap();
    })
    .await;
}
on_all_databases!(producer_killed_after_commit);
