//! The pull API: asks for batches of `example.orders` as group `audit` and acks them.
//!
//! `cargo run -p qmq-client --example pull -- 127.0.0.1:20881`

use std::sync::Arc;
use std::time::Duration;

use qmq_client::{Consumer, ConsumerConfig, StaticRouter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:20881".into());
    let consumer = Consumer::new(
        Arc::new(StaticRouter::new([broker])),
        ConsumerConfig::default(),
    );
    let mut pull = consumer.pull_client("example.orders", "audit").await?;
    for _ in 0..10 {
        match pull.pull(10, Duration::from_secs(1)).await? {
            Some(batch) => {
                for m in &batch.messages {
                    println!("{} tags={:?}", m.message_id, m.tags);
                }
                pull.ack(&batch).await?;
            }
            None => println!("nothing yet"),
        }
    }
    Ok(())
}
