//! A listener consumer routed by the meta server: handles `example.orders` as group `billing`
//! until Ctrl-C, failing every message on its first delivery to show the retry path
//! (`qmq_times`).
//!
//! A new group starts at the latest message (QMQ's rule), so start this before the `producer`
//! example; `--earliest` makes a new group read what the subject already holds instead.
//! Delivery is at least once: a message whose handler finished can come again if the ack is
//! lost (see the crate docs; `qmq_client::idempotent` makes a handler run once per message).
//!
//! `cargo run -p qmq-client --example listener -- 127.0.0.1:8080 [--earliest] [--count N]`
//! (`--count N`: stop after N messages were handled and acked.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use qmq_client::{
    Consumer, ConsumerConfig, HandleError, MessageExt, MetaRouter, MetaRouterConfig, NewGroupStart,
    SubscribeOptions,
};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let args: Vec<String> = std::env::args().collect();
    let count: Option<usize> = match args.iter().position(|a| a == "--count") {
        Some(i) => Some(args.get(i + 1).ok_or("--count needs a number")?.parse()?),
        None => None,
    };
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let options = SubscribeOptions {
        new_group_start: if std::env::args().any(|a| a == "--earliest") {
            NewGroupStart::Earliest
        } else {
            NewGroupStart::Broker
        },
        ..SubscribeOptions::default()
    };
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (h, d) = (handled.clone(), done.clone());
    let consumer = Consumer::new(router, ConsumerConfig::default());
    consumer
        .subscribe(
            "example.orders",
            "billing",
            // The argument's type (`ReceivedMessage`) is inferred.
            move |m| {
                let (handled, done) = (h.clone(), d.clone());
                async move {
                    println!(
                        "{} order={:?} delivery #{}",
                        m.message_id,
                        m.get_i64("orderId"),
                        m.times()
                    );
                    if m.times() == 1 {
                        return Err(HandleError::msg("first delivery fails, on purpose"));
                    }
                    if Some(handled.fetch_add(1, Ordering::SeqCst) + 1) == count {
                        done.notify_one();
                    }
                    Ok(())
                }
            },
            options,
        )
        .await?;
    match count {
        Some(_) => done.notified().await,
        None => tokio::signal::ctrl_c().await?,
    }
    consumer.shutdown().await;
    Ok(())
}
