//! Annotation-style listeners (QMQ's `@QmqConsumer`): every `#[qmq_client::consumer]` function
//! in the program starts with one `subscribe_registered` call.
//!
//! `cargo run -p qmq-client --example macro_consumer -- 127.0.0.1:20881`

use std::sync::Arc;

use qmq_client::{Consumer, ConsumerConfig, HandleResult, ReceivedMessage, StaticRouter};

#[qmq_client::consumer(subject = "example.orders", group = "shipping")]
async fn ship(message: ReceivedMessage) -> HandleResult {
    println!("shipping {}", message.message_id);
    Ok(())
}

#[qmq_client::consumer(subject = "example.orders", group = "vip-desk", tags = ["vip"])]
async fn greet_vip(message: ReceivedMessage) -> HandleResult {
    println!("VIP order {}", message.message_id);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:20881".into());
    let consumer = Consumer::new(
        Arc::new(StaticRouter::new([broker])),
        ConsumerConfig::default(),
    );
    let n = consumer.subscribe_registered().await?;
    println!("{n} listeners running; Ctrl-C stops them");
    tokio::signal::ctrl_c().await?;
    consumer.shutdown().await;
    Ok(())
}
