//! Transactional sends per second against plain sends, same database, same run, same broker
//! (an in-process qmq-rs broker in a temp dir, `--flush async`: fsync every 10 ms).
//!
//! Three rows, each `messages` messages from `tasks` concurrent tasks:
//! - `plain send`: `Producer::send` only;
//! - `tx + plain send`: a transaction inserting one business row, committed, then
//!   `Producer::send` (what an application without an outbox does: not atomic);
//! - `transactional`: the same transaction with `OutboxTransaction::send` and `commit`
//!   (outbox insert in the transaction, send after commit, row deleted).
//!
//! `cargo run --release -p qmq-client --features sql --example outbox_bench -- <db-url> [messages] [tasks]`
//! with `postgres://…`, `mysql://…` or `sqlite://…?mode=rwc`. The tables are private to the
//! run (a schema or database named `qmq_bench_<random>`, or the SQLite file) and dropped after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qmq_client::outbox::TransactionalProducer;
use qmq_client::{new_message, Producer, ProducerConfig, StaticRouter};

/// Runs `op(i)` for `i` in `0..n` on `tasks` tasks; returns operations per second.
async fn rate<F, Fut>(n: usize, tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let op = op.clone();
        set.spawn(async move {
            let mut i = t;
            while i < n {
                op(i).await;
                i += tasks;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("a benchmark task failed");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

macro_rules! bench {
    ($pool_ty:ty, $url:expr, $schema:expr, $n:expr, $tasks:expr, $producer:expr) => {{
        let pool = <$pool_ty>::connect($url).await?;
        let (orders, table) = match $schema {
            Some(s) => (format!("{s}.bench_orders"), format!("{s}.qmq_msg_queue")),
            None => ("bench_orders".to_owned(), "qmq_msg_queue".to_owned()),
        };
        let outbox = TransactionalProducer::with_table($producer.clone(), pool.clone(), &table)?;
        outbox.create_table().await?;
        sqlx::query(&format!(
            "CREATE TABLE {orders} (id BIGINT PRIMARY KEY, amount BIGINT)"
        ))
        .execute(&pool)
        .await?;
        let subject = "bench.outbox";
        // Warm-up: connections, routes, broker files.
        for _ in 0..50 {
            $producer.send(new_message(subject)).await?;
        }
        let p = $producer.clone();
        let plain = rate($n, $tasks, move |_| {
            let p = p.clone();
            async move {
                p.send(new_message(subject)).await.expect("send");
            }
        })
        .await;
        let (p, pl, o) = ($producer.clone(), pool.clone(), orders.clone());
        let tx_plain = rate($n, $tasks, move |i| {
            let (p, pl, o) = (p.clone(), pl.clone(), o.clone());
            async move {
                let mut tx = pl.begin().await.expect("begin");
                sqlx::query(&format!("INSERT INTO {o}(id, amount) VALUES ({i}, 1)"))
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tx.commit().await.expect("commit");
                p.send(new_message(subject)).await.expect("send");
            }
        })
        .await;
        let (ob, o) = (outbox.clone(), orders.clone());
        let n = $n;
        let transactional = rate($n, $tasks, move |i| {
            let (ob, o) = (ob.clone(), o.clone());
            async move {
                let mut tx = ob.begin().await.expect("begin");
                let id = i + n;
                sqlx::query(&format!("INSERT INTO {o}(id, amount) VALUES ({id}, 1)"))
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tx.send(new_message(subject)).await.expect("outbox insert");
                let d = tx.commit().await.expect("commit");
                d[0].result.as_ref().expect("send");
            }
        })
        .await;
        let left: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await?;
        assert_eq!(left, 0, "every outbox row is deleted");
        if let Some(s) = $schema {
            let drop = if $url.starts_with("postgres") {
                format!("DROP SCHEMA {s} CASCADE")
            } else {
                format!("DROP DATABASE {s}")
            };
            sqlx::query(&drop).execute(&pool).await?;
        }
        (plain, tx_plain, transactional)
    }};
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: outbox_bench <db-url> [messages] [tasks]")?;
    let n: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let tasks: usize = args.next().map_or(Ok(1), |s| s.parse())?;

    let dir = tempfile::tempdir()?;
    let mut store = qmq_store::StoreConfig::new(dir.path());
    store.flush = qmq_store::FlushPolicy::Async {
        interval: Duration::from_millis(10),
    };
    let mut config = qmq_broker::BrokerConfig::new(store);
    config.listen = "127.0.0.1:0".parse()?;
    let broker = qmq_broker::serve(config).await?;
    // Low level, no meta server: the in-process broker is the only one, so a fixed route.
    let producer = Arc::new(Producer::new(
        Arc::new(StaticRouter::new([broker.addr().to_string()])),
        ProducerConfig::default(),
    ));

    let schema = format!("qmq_bench_{:08x}", rand::random::<u32>());
    let (plain, tx_plain, transactional) = if url.starts_with("postgres") {
        let admin = sqlx::PgPool::connect(&url).await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await?;
        bench!(sqlx::PgPool, &url, Some(&schema), n, tasks, producer)
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        let url = url.replacen("mariadb:", "mysql:", 1);
        let admin = sqlx::MySqlPool::connect(&url).await?;
        sqlx::query(&format!("CREATE DATABASE {schema}"))
            .execute(&admin)
            .await?;
        bench!(sqlx::MySqlPool, &url, Some(&schema), n, tasks, producer)
    } else {
        bench!(sqlx::SqlitePool, &url, None::<&str>, n, tasks, producer)
    };
    println!(
        "database {}, {n} messages, {tasks} task(s)",
        url.split('@').next_back().unwrap_or(&url)
    );
    println!("| row | msgs/s | vs plain send |");
    println!("|---|---:|---:|");
    println!("| plain send | {plain:.0} | 1.00 |");
    println!(
        "| tx + plain send | {tx_plain:.0} | {:.2} |",
        tx_plain / plain
    );
    println!(
        "| transactional | {transactional:.0} | {:.2} |",
        transactional / plain
    );
    producer.close().await;
    broker.shutdown().await?;
    Ok(())
}
