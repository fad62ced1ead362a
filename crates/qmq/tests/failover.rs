//! A broker group's master fails over while clients routed by the meta server keep working:
//! a real meta server, broker A serving group "g1", a producer sending without pause and a
//! listener consuming. A stops (it takes its group offline, as its shutdown does); broker B
//! starts on another port under the same group name and registers. Without a restart, the
//! producer moves to B within a bounded time and loses nothing it reported acknowledged, and
//! the listener consumes what is sent after the switch.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qmq_broker::{BrokerConfig, BrokerHandle};
use qmq_client::{
    new_message, Connection, Consumer, ConsumerConfig, MetaRouter, MetaRouterConfig, NewGroupStart,
    Producer, ProducerConfig, PullConsumer, ReceivedMessage, SubscribeOptions,
};
use qmq_meta::{MetaConfig, MetaServerHandle};
use qmq_store::{FlushPolicy, ResetTo, StoreConfig};

const SUBJECT: &str = "failover.orders";
/// How long the clients may take to reach B once it is registered (the routers' periodic
/// refresh is 30 s, longer than this: only the immediate re-read passes).
const SWITCH: Duration = Duration::from_secs(15);
const LIMIT: Duration = Duration::from_secs(30);

async fn meta(dir: &Path) -> MetaServerHandle {
    qmq_meta::serve(MetaConfig {
        data_dir: dir.join("meta"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        ..MetaConfig::default()
    })
    .await
    .unwrap()
}

/// A master of group "g1" storing in `dir`, registered with `meta` (if any).
async fn broker(dir: &Path, meta: Option<String>) -> BrokerHandle {
    let mut store = StoreConfig::new(dir);
    store.flush = FlushPolicy::SyncBeforeAck;
    let mut c = BrokerConfig::new(store);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.group = "g1".into();
    c.meta = meta;
    c.new_group_start = ResetTo::Earliest;
    c.retry_delay = Duration::ZERO;
    qmq_broker::serve(c).await.unwrap()
}

/// Every message id stored for `SUBJECT` on the broker at `addr` (read by a fresh group).
async fn stored_ids(addr: &str) -> HashSet<String> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut c = PullConsumer::new(conn, SUBJECT, "audit", "auditor")
        .new_group_start(NewGroupStart::Earliest);
    let mut ids = HashSet::new();
    loop {
        let (first, ms) = c.pull(1000, Duration::from_millis(300)).await.unwrap();
        if ms.is_empty() {
            return ids;
        }
        c.ack(first, first + ms.len() as i64 - 1).await.unwrap();
        ids.extend(ms.into_iter().map(|m| m.message_id));
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Acked = Arc<Mutex<Vec<(String, String)>>>;

fn acked_on(acked: &Acked, broker: &str) -> usize {
    acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, b)| b == broker)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_listener_follow_a_master_failover_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let meta = meta(dir.path()).await;
    let meta_tcp = meta.tcp_addr().to_string();
    let meta_http = meta.http_addr().to_string();
    let a = broker(&dir.path().join("a"), Some(meta_tcp.clone())).await;
    let a_addr = a.addr().to_string();

    // Clients know only the meta server.
    let router = || Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta_http, "test")));
    let producer = Arc::new(Producer::new(
        router(),
        ProducerConfig {
            retry_backoff: Duration::from_millis(20),
            ..ProducerConfig::default()
        },
    ));
    let acked: Acked = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (producer, acked, failed, stop) = (
            producer.clone(),
            acked.clone(),
            failed.clone(),
            stop.clone(),
        );
        senders.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match producer.send(new_message(SUBJECT)).await {
                    Ok(r) => acked.lock().unwrap().push((r.message_id, r.broker)),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    let consumed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let consumer = Consumer::new(
        router(),
        ConsumerConfig {
            pull_wait: Duration::from_millis(200),
            backoff: Duration::from_millis(20),
            ..ConsumerConfig::default()
        },
    );
    let seen = consumed.clone();
    consumer
        .subscribe(
            SUBJECT,
            "c1",
            move |m: ReceivedMessage| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().insert(m.message_id.clone());
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
    wait_until(LIMIT, "sends and consumption through A", || {
        acked_on(&acked, &a_addr) >= 20 && !consumed.lock().unwrap().is_empty()
    })
    .await;

    // The master goes away (its group goes offline); B takes the group over on another port.
    a.shutdown().await.unwrap();
    let b = broker(&dir.path().join("b"), Some(meta_tcp.clone())).await;
    let b_addr = b.addr().to_string();
    assert_ne!(a_addr, b_addr);
    wait_until(SWITCH, "the producer sends to B", || {
        acked_on(&acked, &b_addr) >= 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        tokio::time::timeout(LIMIT, s).await.unwrap().unwrap();
    }
    producer.close().await;

    // Everything the producer reported acknowledged is stored on A or B.
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked
            .iter()
            .all(|(_, broker)| broker == &a_addr || broker == &b_addr),
        "acknowledged by a broker that is neither A nor B"
    );
    let on_b = stored_ids(&b_addr).await;
    let a_again = broker(&dir.path().join("a"), None).await; // A's data, off the route
    let on_a = stored_ids(&a_again.addr().to_string()).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, _)| !on_a.contains(id) && !on_b.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost (failed sends: {}): {lost:?}",
        lost.len(),
        acked.len(),
        failed.load(Ordering::SeqCst)
    );

    // The listener consumes what was sent after the switch, without a restart.
    let after: HashSet<String> = acked
        .iter()
        .filter(|(_, broker)| broker == &b_addr)
        .map(|(id, _)| id.clone())
        .collect();
    wait_until(
        SWITCH,
        "the listener consumes the messages sent to B",
        || after.is_subset(&consumed.lock().unwrap()),
    )
    .await;
    consumer.shutdown().await;
    b.shutdown().await.unwrap();
    a_again.shutdown().await.unwrap();
    meta.shutdown().await;
}
