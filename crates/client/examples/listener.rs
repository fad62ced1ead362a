//! A listener consumer: handles `example.orders` as group `billing` until Ctrl-C, failing
//! every message on its first delivery to show the retry path (`qmq_times`).
//!
//! `cargo run -p qmq-client --example listener -- 127.0.0.1:20881`

use std::sync::Arc;

use qmq_client::{
    Consumer, ConsumerConfig, HandleError, MessageExt, ReceivedMessage, StaticRouter,
    SubscribeOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:20881".into());
    let consumer = Consumer::new(
        Arc::new(StaticRouter::new([broker])),
        ConsumerConfig::default(),
    );
    consumer
        .subscribe(
            "example.orders",
            "billing",
            |m: ReceivedMessage| async move {
                println!(
                    "{} order={:?} delivery #{}",
                    m.message_id,
                    m.get_i64("orderId"),
                    m.times()
                );
                if m.times() == 1 {
                    return Err(HandleError::msg("first delivery fails, on purpose"));
                }
                Ok(())
            },
            SubscribeOptions::default(),
        )
        .await?;
    tokio::signal::ctrl_c().await?;
    consumer.shutdown().await;
    Ok(())
}
