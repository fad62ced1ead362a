//! Sends a few messages with properties, a tag and an expiry as one batch (`send_all`, one
//! receipt per message, in order), one delayed message, and one fire-and-forget send with a
//! callback; brokers and delay servers are found through the meta server, as production
//! clients do. Prints one line per message and exits.
//!
//! Run a server first (`qmq standalone`), then:
//! `cargo run -p qmq-client --example producer -- [META_HTTP]` (the meta server's HTTP
//! address, default `127.0.0.1:8080`)

use std::time::Duration;

use qmq_client::{new_message, Client, MessageExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // Fails at once, naming the address, when the meta server cannot be reached.
    let client = Client::connect(&meta, "example").await?;
    let producer = client.producer().build()?;

    let mut orders = Vec::new();
    for i in 0..3 {
        let mut m = new_message("example.orders");
        m.set_i64("orderId", 1000 + i)?;
        m.set_bool("vip", i == 0)?;
        m.add_tag(if i == 0 { "vip" } else { "normal" })?;
        m.set_expire_after(Duration::from_secs(60));
        orders.push(m);
    }
    for result in producer.send_all(orders).await {
        let receipt = result?;
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
    let receipt = rx.await??;
    println!(
        "fire-and-forget {} stored on {}",
        receipt.message_id, receipt.broker
    );
    producer.close().await;
    Ok(())
}
