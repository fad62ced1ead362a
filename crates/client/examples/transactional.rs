//! Transactional messages: an order row and its "order.created" message commit together, or
//! neither happens. A rolled-back transaction sends nothing; a message whose send fails after
//! commit stays in the outbox table for the watchdog (`qmq watchdog`, or the one in
//! `qmq standalone` once the database is registered with `qmq tools add-db`).
//!
//! Run a server first (`qmq standalone`), then (the meta server's HTTP address, the database):
//! `cargo run -p qmq-client --features sql --example transactional -- 127.0.0.1:8080 sqlite://orders.db?mode=rwc`
//!
//! The example uses SQLite so that it needs no database server; with PostgreSQL or MariaDB use
//! `sqlx::PgPool` or `sqlx::MySqlPool` instead of `sqlx::SqlitePool`: nothing else changes.

use std::sync::Arc;

use qmq_client::outbox::TransactionalProducer;
use qmq_client::{new_message, MessageExt, MetaRouter, MetaRouterConfig, Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let meta = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let db = args
        .next()
        .unwrap_or_else(|| "sqlite://orders.db?mode=rwc".into());

    let producer = Arc::new(Producer::new(
        Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example"))),
        ProducerConfig::default(),
    ));
    let pool = sqlx::SqlitePool::connect(&db).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, amount INTEGER)")
        .execute(&pool)
        .await?;
    let outbox = TransactionalProducer::new(producer.clone(), pool.clone());
    outbox.create_table().await?;

    // Committed: the order and its message.
    let mut tx = outbox.begin().await?;
    let order: i64 = sqlx::query_scalar("INSERT INTO orders(amount) VALUES(1999) RETURNING id")
        .fetch_one(&mut *tx)
        .await?;
    let mut m = new_message("example.order.created");
    m.set_i64("orderId", order)?;
    tx.send(m).await?;
    for d in tx.commit().await? {
        match d.result {
            Ok(receipt) => println!("order {order}: message {} stored", receipt.message_id),
            Err(e) => println!(
                "order {order}: message {} left in the outbox (row {}) for the watchdog: {e}",
                d.message_id, d.row_id
            ),
        }
    }

    // Rolled back: neither the order nor the message.
    let mut tx = outbox.attach(pool.begin().await?);
    sqlx::query("INSERT INTO orders(amount) VALUES(5)")
        .execute(&mut *tx)
        .await?;
    tx.send(new_message("example.order.created")).await?;
    tx.rollback().await?;
    println!("rolled back: nothing sent");

    producer.close().await;
    Ok(())
}
