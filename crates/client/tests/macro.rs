//! `#[qmq_client::consumer]` registers functions that `subscribe_registered` starts.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use qmq_client::annotation::registered;
use qmq_client::*;
use tokio::sync::mpsc;

static SEEN: OnceLock<mpsc::UnboundedSender<(&'static str, String)>> = OnceLock::new();

#[qmq_client::consumer(subject = "m.orders", group = "billing")]
async fn on_order(message: ReceivedMessage) -> HandleResult {
    SEEN.get()
        .unwrap()
        .send(("order", message.message_id.clone()))
        .unwrap();
    Ok(())
}

#[qmq_client::consumer(
    subject = "m.vip",
    group = "vip",
    tags = ["gold", "fast"],
    tag_type = "and",
    broadcast = false,
    consume_most_once = true
)]
async fn on_vip(message: ReceivedMessage) -> HandleResult {
    SEEN.get()
        .unwrap()
        .send(("vip", message.message_id.clone()))
        .unwrap();
    Ok(())
}

#[test]
fn attributes_are_registered() {
    let vip = registered().find(|r| r.subject == "m.vip").unwrap();
    assert_eq!(vip.group, "vip");
    assert_eq!(vip.tags, ["gold", "fast"]);
    assert_eq!(vip.tag_type, TagType::And);
    assert!(vip.consume_most_once);
    assert!(!vip.broadcast);
    assert!(vip.name.ends_with("::on_vip"));
    let order = registered().find(|r| r.subject == "m.orders").unwrap();
    assert_eq!(order.tag_type, TagType::Or);
    assert!(order.tags.is_empty());
    assert_eq!(registered().count(), 2);
}

#[tokio::test]
async fn registered_consumers_receive_their_messages() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    SEEN.set(tx).unwrap();
    let (b, _dir) = broker().await;
    let router = Arc::new(StaticRouter::new([addr(&b)]));
    let producer = Producer::new(router.clone(), ProducerConfig::default());
    let order = producer
        .send(new_message("m.orders"))
        .await
        .unwrap()
        .message_id;
    let mut gold_fast = new_message("m.vip");
    gold_fast.add_tag("gold").unwrap();
    gold_fast.add_tag("fast").unwrap();
    let vip = producer.send(gold_fast).await.unwrap().message_id;
    let mut gold_only = new_message("m.vip");
    gold_only.add_tag("gold").unwrap();
    producer.send(gold_only).await.unwrap();

    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            pull_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    );
    assert_eq!(consumer.subscribe_registered().await.unwrap(), 2);
    let mut got = HashSet::new();
    tokio::time::timeout(T, async {
        while got.len() < 2 {
            got.insert(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap();
    consumer.shutdown().await;
    assert!(
        rx.try_recv().is_err(),
        "the gold-only message passed the AND filter"
    );
    assert_eq!(got, HashSet::from([("order", order), ("vip", vip)]));
}
