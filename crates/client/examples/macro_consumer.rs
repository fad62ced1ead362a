//! Annotation-style listeners (QMQ's `@QmqConsumer`): every `#[qmq_client::consumer]` function
//! in the program starts with one `subscribe_registered` call on a consumer routed by the meta
//! server (QMQ's `@EnableQmq(appCode, metaServer)`).
//!
//! `cargo run -p qmq-client --example macro_consumer -- 127.0.0.1:8080`

use std::sync::Arc;

use qmq_client::{
    Consumer, ConsumerConfig, HandleResult, MetaRouter, MetaRouterConfig, ReceivedMessage,
};

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
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    let n = consumer.subscribe_registered().await?;
    println!("{n} listeners running; Ctrl-C stops them");
    tokio::signal::ctrl_c().await?;
    consumer.shutdown().await;
    Ok(())
}
