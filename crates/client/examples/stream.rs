//! A stream consumer routed by the meta server: reads `example.orders` as group `stream` as a
//! `Stream` of deliveries, acking each one explicitly, and nacks every message on its first
//! delivery to show the retry path (it comes back through the group's retry subject with
//! `qmq_times` 2, after the broker's retry delay).
//!
//! A new group starts at the latest message (QMQ's rule), so start this before the `producer`
//! example; `--earliest` makes a new group read what the subject already holds instead. With
//! `--count N` it stops after acking N messages (exit status 0); without, it runs until
//! Ctrl-C. One line per delivery.
//!
//! `cargo run -p qmq-client --example stream -- 127.0.0.1:8080 [--earliest] [--count N]`

use std::sync::Arc;

use futures::StreamExt;
use qmq_client::{
    Consumer, ConsumerConfig, HandleError, MessageExt, MetaRouter, MetaRouterConfig, NewGroupStart,
    SubscribeOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let count: Option<usize> = match args.iter().position(|a| a == "--count") {
        Some(i) => Some(args.get(i + 1).ok_or("--count needs a number")?.parse()?),
        None => None,
    };

    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    let options = SubscribeOptions {
        new_group_start: if args.iter().any(|a| a == "--earliest") {
            NewGroupStart::Earliest
        } else {
            NewGroupStart::Broker
        },
        ..SubscribeOptions::default()
    };
    let mut deliveries = consumer.stream("example.orders", "stream", options).await?;
    let mut acked = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while count.is_none_or(|n| acked < n) {
        let d = tokio::select! {
            d = deliveries.next() => match d {
                Some(d) => d,
                None => break,
            },
            _ = &mut ctrl_c => break,
        };
        let first = d.times() == 1;
        println!(
            "{} order={:?} delivery #{} {}",
            d.message_id,
            d.get_i64("orderId"),
            d.times(),
            if first { "nack" } else { "ack" }
        );
        if first {
            // Back through %RETRY%example.orders%stream, with qmq_times incremented.
            d.nack(HandleError::msg("first delivery fails, on purpose"));
        } else {
            d.ack();
            acked += 1;
        }
    }
    // Sends the nacks back and acks what is done; anything unresolved comes again.
    deliveries.shutdown().await;
    Ok(())
}
