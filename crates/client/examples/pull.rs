//! The pull API (QMQ's `PullConsumer`): asks for batches of `example.orders` as group `audit`
//! from every broker the meta server routes the subject to, hands messages it cannot handle
//! back for a later retry, and acks each batch.
//!
//! `cargo run -p qmq-client --example pull -- 127.0.0.1:8080`

use std::sync::Arc;
use std::time::Duration;

use qmq_client::{Consumer, ConsumerConfig, MessageExt, MetaRouter, MetaRouterConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    let mut pull = consumer.pull_client("example.orders", "audit").await?;
    for _ in 0..10 {
        match pull.pull(10, Duration::from_secs(1)).await? {
            Some(batch) => {
                let mut handed_back = true;
                for m in &batch.messages {
                    println!("{} tags={:?}", m.message_id, m.tags);
                    // A message without an orderId "fails": back through the retry subject.
                    if m.get_i64("orderId").is_none() && !pull.retry_later(m).await {
                        handed_back = false; // not acked below: the batch comes again
                    }
                }
                if handed_back {
                    pull.ack(&batch).await?;
                }
            }
            None => println!("nothing yet"),
        }
    }
    Ok(())
}
