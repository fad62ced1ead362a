//! Annotation-style listeners (QMQ's `@QmqConsumer`): every `#[qmq_client::consumer]` function
//! in the program starts with one `subscribe_registered_with` call on a consumer routed by the
//! meta server (QMQ's `@EnableQmq(appCode, metaServer)`). The context gives what QMQ takes from
//! Spring: a `${...}` placeholder's value, the handlers' shared state and a named idempotent
//! checker.
//!
//! `cargo run -p qmq-client --example macro_consumer -- 127.0.0.1:8080 [--count N]`
//!
//! With `--count N` it exits after N handler calls (a `vip` message is handled by both groups,
//! so it counts twice); without it, it runs until Ctrl-C. The subject is
//! `${example.subject:example.orders}`: `EXAMPLE_SUBJECT=other.subject` in the environment
//! changes it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use qmq_client::annotation::ConsumerContext;
use qmq_client::idempotent::{IdempotentChecker, IdempotentError};
use qmq_client::{
    Consumer, ConsumerConfig, HandleResult, MetaRouter, MetaRouterConfig, ReceivedMessage,
};
use tokio::sync::Notify;

/// What the handlers share: how many messages they handled, and whom to tell.
struct Stats {
    handled: AtomicUsize,
    changed: Notify,
}

impl Stats {
    fn handled(&self) {
        self.handled.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
    }
}

/// An in-memory idempotent checker (one process only: use `SqlChecker` or `RedisChecker` when
/// several consumers share a group).
#[derive(Default)]
struct Seen(Mutex<HashSet<String>>);

impl IdempotentChecker for Seen {
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
        let before = !self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned());
        Box::pin(async move { Ok(before) })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        Box::pin(async { Ok(()) })
    }
}

/// Ships each order once, whatever the number of deliveries.
#[qmq_client::consumer(
    subject = "${example.subject:example.orders}",
    group = "shipping",
    idempotent = "dedup"
)]
async fn ship(message: ReceivedMessage, stats: Arc<Stats>) -> HandleResult {
    println!("shipping {}", message.message_id);
    stats.handled();
    Ok(())
}

const VIP_TAG: &str = "vip";

#[qmq_client::consumer(
    subject = "${example.subject:example.orders}",
    group = "vip-desk",
    tags = [VIP_TAG]
)]
async fn greet_vip(message: ReceivedMessage, stats: Arc<Stats>) -> HandleResult {
    println!("VIP order {}", message.message_id);
    stats.handled();
    Ok(())
}

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

    let stats = Arc::new(Stats {
        handled: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    let context = ConsumerContext::new()
        .state(stats.clone())
        .checker("dedup", Seen::default());
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    let n = consumer.subscribe_registered_with(&context).await?;
    match count {
        Some(count) => {
            println!("{n} listeners running until {count} messages are handled");
            while stats.handled.load(Ordering::SeqCst) < count {
                tokio::select! {
                    _ = stats.changed.notified() => {}
                    r = tokio::signal::ctrl_c() => { r?; break; }
                }
            }
        }
        None => {
            println!("{n} listeners running; Ctrl-C stops them");
            tokio::signal::ctrl_c().await?;
        }
    }
    consumer.shutdown().await;
    Ok(())
}
