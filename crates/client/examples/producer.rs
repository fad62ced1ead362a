//! Sends a few messages with properties, a tag and an expiry, awaiting each receipt, plus one
//! fire-and-forget send with a callback.
//!
//! Run a broker first (`qmq standalone`), then:
//! `cargo run -p qmq-client --example producer -- 127.0.0.1:20881`

use std::sync::Arc;
use std::time::Duration;

use qmq_client::{new_message, MessageExt, Producer, ProducerConfig, StaticRouter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:20881".into());
    let producer = Producer::new(
        Arc::new(StaticRouter::new([broker])),
        ProducerConfig::default(),
    );
    for i in 0..3 {
        let mut m = new_message("example.orders");
        m.set_i64("orderId", 1000 + i)?;
        m.set_bool("vip", i == 0)?;
        m.add_tag(if i == 0 { "vip" } else { "normal" })?;
        m.set_expire_after(Duration::from_secs(60));
        let receipt = producer.send(m).await?;
        println!("stored {} on {}", receipt.message_id, receipt.broker);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer.send_with_callback(new_message("example.orders"), move |result| {
        let _ = tx.send(result);
    })?;
    println!("fire-and-forget: {:?}", rx.await?);
    producer.close().await;
    Ok(())
}
