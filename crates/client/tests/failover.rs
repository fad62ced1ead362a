//! Clients routed by a meta server follow a failover at once: a broker that answers
//! BROKER_REJECT (a slave or a deposed master) or refuses connections makes the producer and
//! the consumers re-read their routes right away and move to the group's new master.
//!
//! The meta server's periodic refresh and the listener's route refresh are left at their
//! defaults (30 s), longer than every deadline here: only the forced re-read can pass.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use qmq_client::*;
use qmq_protocol::ClientType;
use tokio::sync::mpsc;

/// Deadline for a client to reach the new master (well under the 30 s refresh periods).
const MOVE: Duration = Duration::from_secs(10);

fn router(meta: &FakeMeta) -> Arc<MetaRouter> {
    Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta.http, "app")))
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        pull_wait: Duration::from_millis(100),
        backoff: Duration::from_millis(10),
        ..ConsumerConfig::default()
    }
}

/// Registrations the fake meta server saw for `subject`.
fn registrations(meta: &FakeMeta, subject: &str) -> usize {
    meta.requests
        .lock()
        .iter()
        .filter(|r| r.subject() == subject)
        .count()
}

#[tokio::test]
async fn broker_reject_makes_the_producer_reread_routes_and_retry_on_the_new_master() {
    let (b, _dir) = broker().await;
    let old = rejecting_broker().await;
    let meta = fake_meta(vec![old.addr.clone()]).await;
    let router = router(&meta);
    // The client knows the old master; then the meta server promotes the new one.
    let before = router
        .route("f.reject", ClientType::Producer, "")
        .await
        .unwrap();
    assert_eq!(before[0].master, old.addr);
    *meta.brokers.lock() = vec![addr(&b)];

    let producer = Producer::new(router, ProducerConfig::default());
    let m = new_message("f.reject");
    let id = m.message_id.clone();
    let r = tokio::time::timeout(MOVE, producer.send(m))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.broker, addr(&b));
    assert_eq!(r.message_id, id, "the retry keeps the message id");
    assert_eq!(r.tries, 2, "one rejected try, then the new master");
    assert_eq!(old.requests.load(Ordering::SeqCst), 1);
    let got = pull_n(&addr(&b), "f.reject", "g", 1).await;
    assert_eq!(got[0].message_id, id);
    // The connection to the rejecting broker is dropped.
    wait_until(MOVE, "connection to the old master closed", || {
        old.closed_by_client.load(Ordering::SeqCst) == 1
    })
    .await;
    producer.close().await;
}

#[tokio::test]
async fn a_refused_connection_makes_the_producer_reread_routes() {
    let (b, _dir) = broker().await;
    let dead = dead_addr().await;
    let meta = fake_meta(vec![dead.clone()]).await;
    let router = router(&meta);
    router
        .route("f.refused", ClientType::Producer, "")
        .await
        .unwrap();
    *meta.brokers.lock() = vec![addr(&b)];

    let producer = Producer::new(router, ProducerConfig::default());
    let r = tokio::time::timeout(MOVE, producer.send(new_message("f.refused")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.broker, addr(&b));
    assert_eq!(r.tries, 2);
    producer.close().await;
}

/// A route whose only broker has its circuit breaker open (it failed before the failover) is
/// read again: the group's new master, at another address, has a closed breaker.
#[tokio::test]
async fn an_open_breaker_makes_the_producer_reread_a_stale_route() {
    let (b, _dir) = broker().await;
    let dead = dead_addr().await;
    let meta = fake_meta(vec![dead.clone()]).await;
    let router = router(&meta);
    let producer = Producer::new(
        router.clone(),
        ProducerConfig {
            retry_backoff: Duration::from_millis(10),
            ..ProducerConfig::default()
        },
    );
    // The dead address's breaker opens (and stays open longer than this test).
    let failed = producer.send(new_message("f.breaker")).await;
    assert!(failed.is_err(), "nothing serves {dead}");
    // The meta server now answers the new master; only a re-read finds it.
    *meta.brokers.lock() = vec![addr(&b)];
    let before = registrations(&meta, "f.breaker");
    let r = tokio::time::timeout(MOVE, producer.send(new_message("f.breaker")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.broker, addr(&b));
    assert!(registrations(&meta, "f.breaker") > before);
    producer.close().await;
}

#[tokio::test]
async fn forced_route_rereads_are_throttled() {
    let meta = fake_meta(vec!["10.0.0.1:1".into()]).await;
    let router = router(&meta);
    let route = |r: &Arc<MetaRouter>| {
        let r = r.clone();
        async move {
            r.route("f.throttle", ClientType::Producer, "")
                .await
                .unwrap()[0]
                .master
                .clone()
        }
    };
    assert_eq!(route(&router).await, "10.0.0.1:1");
    assert_eq!(registrations(&meta, "f.throttle"), 1);

    // The first forced re-read happens at once...
    *meta.brokers.lock() = vec!["10.0.0.2:2".into()];
    let forced = tokio::time::Instant::now();
    router.invalidate("f.throttle");
    assert_eq!(route(&router).await, "10.0.0.2:2");
    assert_eq!(registrations(&meta, "f.throttle"), 2);

    // ...a storm of invalidations right after does not reach the meta server...
    *meta.brokers.lock() = vec!["10.0.0.3:3".into()];
    for _ in 0..50 {
        router.invalidate("f.throttle");
        if route(&router).await == "10.0.0.3:3" {
            break;
        }
    }
    let elapsed = forced.elapsed();
    if elapsed < Duration::from_millis(200) {
        assert_eq!(registrations(&meta, "f.throttle"), 2, "{elapsed:?}");
    }
    // ...and the stale route is read again once the throttle period is over.
    let end = tokio::time::Instant::now() + MOVE;
    loop {
        router.invalidate("f.throttle");
        if route(&router).await == "10.0.0.3:3" {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "never re-read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(forced.elapsed() >= Duration::from_millis(200));
    assert_eq!(registrations(&meta, "f.throttle"), 3);
}

/// Subscribes a listener of `subject` as group "g" that reports every message id.
async fn listen(consumer: &Consumer, subject: &str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            subject,
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(m.message_id.clone());
                    Ok(())
                }
            },
            SubscribeOptions {
                new_group_start: NewGroupStart::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    rx
}

async fn send_to(broker: &str, subject: &str) -> String {
    let producer = Producer::new(
        Arc::new(StaticRouter::new([broker])),
        ProducerConfig::default(),
    );
    let id = producer
        .send(new_message(subject))
        .await
        .unwrap()
        .message_id;
    producer.close().await;
    id
}

async fn recv_within(rx: &mut mpsc::UnboundedReceiver<String>, limit: Duration) -> String {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no message within {limit:?}"))
        .unwrap()
}

#[tokio::test]
async fn a_listener_moves_to_the_new_master_when_the_old_one_goes_away() {
    let (b1, _d1) = broker().await;
    let (b2, _d2) = broker().await;
    let meta = fake_meta(vec![addr(&b1)]).await;
    let consumer = Consumer::new(router(&meta), consumer_config());
    let mut rx = listen(&consumer, "f.listen").await;
    let first = send_to(&addr(&b1), "f.listen").await;
    assert_eq!(recv_within(&mut rx, T).await, first);

    // Failover: the old master stops; the listener re-reads its route while the meta server
    // still names the old master, then the meta server names the new one.
    let before = registrations(&meta, "f.listen");
    b1.shutdown().await.unwrap();
    wait_until(MOVE, "a route re-read after the master stopped", || {
        registrations(&meta, "f.listen") > before
    })
    .await;
    *meta.brokers.lock() = vec![addr(&b2)];
    let second = send_to(&addr(&b2), "f.listen").await;
    assert_eq!(recv_within(&mut rx, MOVE).await, second);
    consumer.shutdown().await;
}

#[tokio::test]
async fn a_listener_moves_off_a_broker_answering_broker_reject() {
    let (b, _dir) = broker().await;
    let old = rejecting_broker().await;
    let meta = fake_meta(vec![old.addr.clone()]).await;
    let consumer = Consumer::new(router(&meta), consumer_config());
    let mut rx = listen(&consumer, "f.listen.reject").await;
    wait_until(MOVE, "pulls reach the old master", || {
        old.requests.load(Ordering::SeqCst) > 0
    })
    .await;
    *meta.brokers.lock() = vec![addr(&b)];
    let id = send_to(&addr(&b), "f.listen.reject").await;
    assert_eq!(recv_within(&mut rx, MOVE).await, id);
    consumer.shutdown().await;
}

#[tokio::test]
async fn a_pull_client_moves_to_the_new_master() {
    let (b1, _d1) = broker().await;
    let (b2, _d2) = broker().await;
    let meta = fake_meta(vec![addr(&b1)]).await;
    let consumer = Consumer::new(router(&meta), consumer_config());
    let b1_addr = addr(&b1);
    let mut b1 = Some(b1);
    let mut pull = consumer.pull_client("f.pull", "g").await.unwrap();
    let first = send_to(&b1_addr, "f.pull").await;
    let second = send_to(&addr(&b2), "f.pull").await;
    let mut got = HashSet::new();
    let mut errors = 0;
    let mut failed_over = false;
    tokio::time::timeout(MOVE, async {
        while got.len() < 2 {
            match pull.pull(10, Duration::from_millis(100)).await {
                Ok(Some(batch)) => {
                    got.extend(batch.messages.iter().map(|m| m.message_id.clone()));
                    pull.ack(&batch).await.unwrap();
                }
                Ok(None) => {}
                Err(_) => {
                    // A pause before trying again, as an application would make.
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            if got.contains(&first) && !failed_over {
                // Failover: the meta server names the new master, the old one stops.
                failed_over = true;
                *meta.brokers.lock() = vec![addr(&b2)];
                if let Some(old) = b1.take() {
                    old.shutdown().await.unwrap();
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got {got:?} with {errors} errors"));
    assert_eq!(got, HashSet::from([first, second]));
}
