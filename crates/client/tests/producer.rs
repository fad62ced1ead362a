//! Producer end to end against real brokers (and a fake meta server for routing).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qmq_client::*;
use qmq_protocol::ClientRequestType;
use tokio::sync::mpsc;

fn config() -> ProducerConfig {
    ProducerConfig {
        retry_backoff: Duration::from_millis(5),
        ..ProducerConfig::default()
    }
}

#[tokio::test]
async fn awaited_and_callback_sends_arrive_with_their_properties() {
    let (b, _dir) = broker().await;
    // Each send must succeed on its first try: a try timeout long enough for a loaded
    // machine (70 large sends at once on a debug build) keeps that about the broker.
    let producer = Arc::new(Producer::new(
        Arc::new(StaticRouter::new([addr(&b)])),
        ProducerConfig {
            send_timeout: Duration::from_secs(30),
            ..config()
        },
    ));
    let big = "x".repeat(message::LARGE_STRING_PART_CHARS * 3);
    let mut sends = Vec::new();
    for i in 0..70 {
        let mut m = new_message("p.basic");
        m.set_i32("n", i).unwrap();
        m.set_large_string("big", &big).unwrap();
        m.add_tag("t1").unwrap();
        let p = producer.clone();
        sends.push(tokio::spawn(async move { p.send(m).await }));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 70..100 {
        let mut m = new_message("p.basic");
        m.set_i32("n", i).unwrap();
        let tx = tx.clone();
        producer
            .send_with_callback(m, move |r| {
                let _ = tx.send(r);
            })
            .unwrap();
    }
    let mut sent = std::collections::HashSet::new();
    for s in sends {
        let r = s.await.unwrap().unwrap();
        assert_eq!(r.broker, addr(&b));
        assert_eq!(r.tries, 1);
        sent.insert(r.message_id);
    }
    for _ in 70..100 {
        sent.insert(rx.recv().await.unwrap().unwrap().message_id);
    }
    producer.close().await;
    assert!(matches!(
        producer.send(new_message("p.basic")).await,
        Err(SendError::Closed)
    ));

    let got = pull_n(&addr(&b), "p.basic", "g", 100).await;
    assert_eq!(ids(&got), sent);
    let mut ns: Vec<i32> = got.iter().map(|m| m.get_i32("n").unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..100).collect::<Vec<_>>());
    for m in got.iter().filter(|m| m.get_i32("n").unwrap() < 70) {
        assert_eq!(m.get_large_string("big").as_deref(), Some(big.as_str()));
        assert_eq!(m.tags, vec!["t1".to_string()]);
    }
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_message_id() {
    let (b, _dir) = broker().await;
    let proxy = lossy_proxy(addr(&b)).await;
    let producer = Producer::new(Arc::new(StaticRouter::new([proxy])), config());
    let m = new_message("p.dup");
    let id = m.message_id.clone();
    let r = producer.send(m).await.unwrap();
    assert_eq!(r.tries, 2, "the first answer was lost");
    assert_eq!(r.message_id, id);
    // The broker got the message twice and stored it once: its duplicate window answered the
    // retry DUPLICATE, which the producer counts as sent.
    let conn = Connection::connect(&addr(&b)).await.unwrap();
    let mut c = PullConsumer::new(conn, "p.dup", "g", "c");
    let (_, got) = c.pull(100, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message_id, id);
    let (_, more) = c.pull(100, Duration::from_millis(300)).await.unwrap();
    assert!(more.is_empty(), "a second copy: {more:?}");
}

#[tokio::test]
async fn the_breaker_keeps_a_dead_broker_out_of_the_way() {
    let (b, _dir) = broker().await;
    let dead = dead_addr().await;
    let producer = Producer::new(
        Arc::new(StaticRouter::new([dead, addr(&b)])),
        ProducerConfig {
            breaker: BreakerConfig {
                failure_threshold: 1,
                open_for: Duration::from_secs(3600),
            },
            ..config()
        },
    );
    let mut retried = 0;
    for _ in 0..20 {
        let r = producer.send(new_message("p.breaker")).await.unwrap();
        assert_eq!(r.broker, addr(&b));
        if r.tries > 1 {
            retried += 1;
        }
    }
    // Without the breaker, round robin would send every other message to the dead broker first.
    assert!(retried <= 1, "{retried} sends hit the dead broker");
}

#[tokio::test]
async fn gives_up_after_max_tries_and_drops_expired_messages() {
    let dead = dead_addr().await;
    let producer = Producer::new(
        Arc::new(StaticRouter::new([dead])),
        ProducerConfig {
            max_tries: 3,
            ..config()
        },
    );
    match producer.send(new_message("p.dead")).await {
        Err(SendError::GaveUp { tries: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut m = new_message("p.dead");
    m.set_expire_at(chrono::Utc::now() - chrono::Duration::seconds(1));
    assert!(matches!(producer.send(m).await, Err(SendError::Expired(_))));
}

#[tokio::test]
async fn meta_router_discovers_registers_and_follows_route_changes() {
    let (b1, _d1) = broker().await;
    let (b2, _d2) = broker().await;
    let meta = fake_meta(vec![addr(&b1)]).await;
    let mut cfg = MetaRouterConfig::new(&meta.http, "test-app");
    cfg.refresh = Duration::from_millis(50);
    let router = Arc::new(MetaRouter::new(cfg));
    let producer = Producer::new(router.clone(), config());

    let r = producer.send(new_message("p.meta")).await.unwrap();
    assert_eq!(r.broker, addr(&b1));
    {
        let reqs = meta.requests.lock();
        let first = &reqs[0];
        assert_eq!(first.subject(), "p.meta");
        assert_eq!(first.app_code(), "test-app");
        assert_eq!(first.client_type(), ClientType::Producer);
        assert_eq!(first.request_type(), ClientRequestType::Online);
    }

    *meta.brokers.lock() = vec![addr(&b2)];
    tokio::time::timeout(T, async {
        loop {
            let groups = router
                .route("p.meta", ClientType::Producer, "")
                .await
                .unwrap();
            if groups[0].master == addr(&b2) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("route refreshed");
    assert!(meta
        .requests
        .lock()
        .iter()
        .any(|r| r.request_type() == ClientRequestType::Heartbeat));
    let r = producer.send(new_message("p.meta")).await.unwrap();
    assert_eq!(r.broker, addr(&b2));
    assert_eq!(pull_n(&addr(&b1), "p.meta", "g", 1).await.len(), 1);
    assert_eq!(pull_n(&addr(&b2), "p.meta", "g", 1).await.len(), 1);
}

#[tokio::test]
async fn meta_router_reports_a_broken_discovery_endpoint() {
    let dead = dead_addr().await;
    let mut cfg = MetaRouterConfig::new(&dead, "app");
    cfg.timeout = Duration::from_secs(2);
    let router = MetaRouter::new(cfg);
    assert!(matches!(
        router.route("s", ClientType::Producer, "").await,
        Err(RouteError::Discovery { .. })
    ));
}

/// A router that answers only once released, to hold the producer's first batch.
struct Gate {
    broker: String,
    entered: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

impl Router for Gate {
    fn route<'a>(
        &'a self,
        _s: &'a str,
        _t: ClientType,
        _g: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<BrokerGroup>, RouteError>> {
        Box::pin(async move {
            self.entered.notify_one();
            let _permit = self.open.acquire().await.unwrap();
            StaticRouter::new([self.broker.clone()])
                .route("", ClientType::Producer, "")
                .await
        })
    }

    fn invalidate(&self, _subject: &str) {}
}

#[tokio::test]
async fn fire_and_forget_reports_a_full_queue_and_accepted_sends_complete() {
    let (b, _dir) = broker().await;
    let gate = Arc::new(Gate {
        broker: addr(&b),
        entered: tokio::sync::Notify::new(),
        open: tokio::sync::Semaphore::new(0),
    });
    let producer = Producer::new(
        gate.clone(),
        ProducerConfig {
            queue_capacity: 1,
            max_in_flight: 1,
            batch_size: 1,
            ..config()
        },
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let send = |tx: mpsc::UnboundedSender<Result<SendReceipt, SendError>>| {
        producer.send_with_callback(new_message("p.full"), move |r| {
            let _ = tx.send(r);
        })
    };
    send(tx.clone()).unwrap();
    gate.entered.notified().await; // the first batch is held in routing
    let results: Vec<_> = (0..3).map(|_| send(tx.clone())).collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(SendError::QueueFull))),
        "{results:?}"
    );
    gate.open.add_permits(100);
    for _ in 0..1 + accepted {
        rx.recv().await.unwrap().unwrap();
    }
    producer.close().await;
    assert_eq!(
        pull_n(&addr(&b), "p.full", "g", 1 + accepted).await.len(),
        1 + accepted
    );
}

#[tokio::test]
async fn delay_messages_are_routed_as_delay_producer() {
    let (b, _dir) = broker().await;
    let meta = fake_meta(vec![addr(&b)]).await;
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta.http, "app")));
    let producer = Producer::new(router, config());
    let mut m = new_message("p.delay");
    m.set_delay(Duration::from_secs(30));
    producer.send(m).await.unwrap();
    let reqs = meta.requests.lock();
    assert!(reqs
        .iter()
        .any(|r| r.subject() == "p.delay" && r.client_type() == ClientType::DelayProducer));
    assert!(!reqs.iter().any(|r| r.client_type() == ClientType::Producer));
}

/// A producer with a queue much smaller than the batches given to `send_all`, so it waits for
/// room; a long try timeout keeps every send to one try on a loaded machine.
fn send_all_producer(b: &qmq_broker::BrokerHandle) -> Producer {
    Producer::builder(Arc::new(StaticRouter::new([addr(b)])))
        .config(config())
        .queue_capacity(64)
        .send_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn send_all_returns_every_receipt_in_input_order() {
    let (b, _dir) = broker().await;
    let producer = send_all_producer(&b);
    let messages: Vec<Message> = (0..500)
        .map(|i| {
            let mut m = new_message(if i % 2 == 0 { "p.all.a" } else { "p.all.b" });
            m.set_i32("n", i).unwrap();
            m
        })
        .collect();
    let sent: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    let results = producer.send_all(messages).await;
    assert_eq!(results.len(), 500);
    let receipts: Vec<SendReceipt> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        receipts
            .iter()
            .map(|r| r.message_id.clone())
            .collect::<Vec<_>>(),
        sent
    );
    assert!(receipts.iter().all(|r| r.broker == addr(&b)));

    let mut got = pull_n(&addr(&b), "p.all.a", "g", 250).await;
    got.extend(pull_n(&addr(&b), "p.all.b", "g", 250).await);
    assert_eq!(ids(&got), sent.iter().cloned().collect());
    producer.close().await;
}

#[tokio::test]
async fn send_all_fails_only_the_messages_that_cannot_be_stored() {
    let (b, _dir) = broker().await;
    let producer = send_all_producer(&b);
    let mut messages: Vec<Message> = (0..500).map(|_| new_message("p.all.bad")).collect();
    // Expired before it could be sent.
    messages[100].set_expire_at(chrono::Utc::now() - chrono::Duration::seconds(1));
    // Cannot be encoded: an attribute value longer than the wire's 65535 bytes.
    messages[301]
        .attrs
        .push(("huge".to_owned(), "x".repeat(70_000)));
    let sent: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    let results = producer.send_all(messages).await;
    assert_eq!(results.len(), 500);
    let mut stored = std::collections::HashSet::new();
    for (i, (result, id)) in results.iter().zip(&sent).enumerate() {
        match (i, result) {
            (100, Err(SendError::Expired(expired))) => assert_eq!(expired, id),
            (301, Err(SendError::Encode(_))) => {}
            (100 | 301, other) => panic!("message {i}: {other:?}"),
            (_, Ok(r)) => {
                assert_eq!(&r.message_id, id);
                // The invalid message cost its batch-mates no try.
                assert_eq!(r.tries, 1, "message {i}");
                stored.insert(r.message_id.clone());
            }
            (_, Err(e)) => panic!("message {i}: {e}"),
        }
    }
    assert_eq!(stored.len(), 498);
    let got = pull_n(&addr(&b), "p.all.bad", "g", 498).await;
    assert_eq!(ids(&got), stored);
    producer.close().await;

    // A closed producer fails each message in its slot.
    let results = producer
        .send_all([new_message("p.all.bad"), new_message("p.all.bad")])
        .await;
    assert!(results.iter().all(|r| matches!(r, Err(SendError::Closed))));
}

#[tokio::test]
async fn the_producers_application_is_stamped_unless_a_message_names_one() {
    let (b, _dir) = broker().await;
    let producer = Producer::builder(Arc::new(StaticRouter::new([addr(&b)])))
        .config(config())
        .app_code("shop")
        .build()
        .unwrap();
    let plain = new_message("p.app");
    let mut named = new_message("p.app");
    named.set_attr(message::keys::APP_CODE, "billing".to_owned());
    let (plain_id, named_id) = (plain.message_id.clone(), named.message_id.clone());
    producer.send(plain).await.unwrap();
    producer.send(named).await.unwrap();
    producer.close().await;
    let got = pull_n(&addr(&b), "p.app", "g", 2).await;
    let app = |id: &str| {
        let m = got.iter().find(|m| m.message_id == id).unwrap();
        let apps: Vec<_> = m
            .attrs
            .iter()
            .filter(|(k, _)| k == message::keys::APP_CODE)
            .map(|(_, v)| v.clone())
            .collect();
        apps
    };
    assert_eq!(app(&plain_id), vec!["shop".to_owned()]);
    assert_eq!(app(&named_id), vec!["billing".to_owned()]);
}
