//! Sends a few messages with properties, a tag and an expiry, awaiting each receipt, one delayed
//! message, and one fire-and-forget send with a callback; brokers and delay servers are found
//! through the meta server, as production clients do.
//!
//! Run a server first (`qmq standalone`), then:
//! `cargo run -p qmq-client --example producer -- 127.0.0.1:8080` (the meta server's HTTP address)

use std::sync::Arc;
use std::time::Duration;

use qmq_client::{new_message, MessageExt, MetaRouter, MetaRouterConfig, Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let producer = Producer::new(router, ProducerConfig::default());
    for i in 0..3 {
        let mut m = new_message("example.orders");
        m.set_i64("orderId", 1000 + i)?;
        m.set_bool("vip", i == 0)?;
        m.add_tag(if i == 0 { "vip" } else { "normal" })?;
        m.set_expire_after(Duration::from_secs(60));
        let receipt = producer.send(m).await?;
        println!("stored {} on {}", receipt.message_id, receipt.broker);
    }
    // Delivered to consumers in 5 s: routed to a delay server, which the meta server names.
    let mut m = new_message("example.orders");
    m.set_delay(Duration::from_secs(5));
    let receipt = producer.send(m).await?;
    println!(
        "delayed {} stored on {}",
        receipt.message_id, receipt.broker
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer.send_with_callback(new_message("example.orders"), move |result| {
        let _ = tx.send(result);
    })?;
    println!("fire-and-forget: {:?}", rx.await?);
    producer.close().await;
    Ok(())
}
