//! Listener and pull consumers end to end against a real broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use qmq_client::consumer::{dead_retry_subject, retry_subject};
use qmq_client::*;
use tokio::sync::{mpsc, Notify};

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        pull_wait: Duration::from_millis(100),
        backoff: Duration::from_millis(10),
        ..ConsumerConfig::default()
    }
}

async fn produce(p: &Producer, subject: &str, n: usize, tags: &[&str]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for _ in 0..n {
        let mut m = new_message(subject);
        for t in tags {
            m.add_tag(t).unwrap();
        }
        ids.insert(p.send(m).await.unwrap().message_id);
    }
    ids
}

/// Receives until `n` items arrived or the deadline passes.
async fn recv_n<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize) -> Vec<T> {
    let mut out = Vec::new();
    tokio::time::timeout(T, async {
        while out.len() < n {
            out.push(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} arrived", out.len()));
    out
}

#[tokio::test]
async fn handled_messages_are_acked() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent = produce(&producer, "c.ok", 50, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.ok",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    assert_eq!(m.subject(), "c.ok");
                    tx.send(m.message_id.clone()).unwrap();
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let got: HashSet<String> = recv_n(&mut rx, 50).await.into_iter().collect();
    assert_eq!(got, sent);
    consumer.shutdown().await;
    assert_drained(&addr(&b), "c.ok", "g").await;
    assert_drained(&addr(&b), &retry_subject("c.ok", "g"), "g").await;
}

#[tokio::test]
async fn failures_are_retried_with_qmq_times_then_dead_lettered() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let flaky = produce(&producer, "c.retry", 5, &[]).await;
    let poison = produce(&producer, "c.retry", 1, &[]).await;
    let poison_id = poison.iter().next().unwrap().clone();
    let mut cfg = consumer_config();
    cfg.max_retry_num = 2;
    let consumer = Consumer::new(router, cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pid = poison_id.clone();
    consumer
        .subscribe(
            "c.retry",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                let poison = m.message_id == pid;
                async move {
                    tx.send((m.message_id.clone(), m.times(), m.subject().to_owned()))
                        .unwrap();
                    if poison || m.times() == 1 {
                        return Err(HandleError::msg("boom"));
                    }
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    // 5 flaky: times 1 then 2; poison: times 1 and 2, then dead.
    let seen = recv_n(&mut rx, 12).await;
    let mut by_id: HashMap<String, Vec<u32>> = HashMap::new();
    for (id, times, subject) in seen {
        assert_eq!(subject, "c.retry");
        by_id.entry(id).or_default().push(times);
    }
    for id in flaky.iter().chain(poison.iter()) {
        let mut t = by_id.remove(id).unwrap();
        t.sort();
        assert_eq!(t, vec![1, 2], "{id}");
    }
    let dead = pull_n(&addr(&b), &dead_retry_subject("c.retry", "g"), "inspect", 1).await;
    assert_eq!(dead[0].message_id, poison_id);
    assert_eq!(dead[0].times(), 3);
    consumer.shutdown().await;
    assert_drained(&addr(&b), "c.retry", "g").await;
    assert_drained(&addr(&b), &retry_subject("c.retry", "g"), "g").await;
}

#[tokio::test]
async fn a_failed_message_comes_back_after_the_brokers_retry_delay_once() {
    // One mechanism: the client sends the failure straight to the retry subject (no delay of
    // its own by default) and the broker holds it for its retry delay.
    assert_eq!(ConsumerConfig::default().retry_delay, Duration::ZERO);
    let (b, _dir) = broker_with(|c| c.retry_delay = Duration::from_secs(1)).await;
    let (router, producer) = setup(&b);
    produce(&producer, "c.delay", 1, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.delay",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    tx.send((m.times(), now)).unwrap();
                    if m.times() == 1 {
                        return Err(HandleError::msg("boom"));
                    }
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let got = recv_n(&mut rx, 2).await;
    assert_eq!((got[0].0, got[1].0), (1, 2));
    let retry = retry_subject("c.delay", "g");
    let stored = b.store().read(&retry, 0, 1).unwrap()[0].appended_at_ms;
    assert!(stored >= got[0].1, "sent back after the failure");
    assert!(
        got[1].1 >= stored + 1000,
        "redelivered before the broker's retry delay"
    );
    consumer.shutdown().await;
}

#[tokio::test]
async fn need_retry_sends_the_message_back_now() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "c.needretry", 1, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.needretry",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    tx.send(m.times()).unwrap();
                    if m.times() == 1 {
                        return Err(HandleError::retry_after(Duration::from_secs(3600), "later"));
                    }
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(recv_n(&mut rx, 2).await, vec![1, 2]);
    consumer.shutdown().await;
}

#[tokio::test]
async fn at_most_once_acks_first_and_never_retries() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "c.once", 3, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.once",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    tx.send(m.message_id.clone()).unwrap();
                    Err(HandleError::msg("always fails"))
                }
            },
            SubscribeOptions {
                consume_most_once: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(recv_n(&mut rx, 3).await.len(), 3);
    consumer.shutdown().await;
    assert!(rx.try_recv().is_err(), "a message came twice");
    assert_drained(&addr(&b), "c.once", "g").await;
    assert_drained(&addr(&b), &retry_subject("c.once", "g"), "g").await;
}

#[tokio::test]
async fn broadcast_gives_every_consumer_every_message() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent = produce(&producer, "c.bcast", 10, &[]).await;
    let mut rxs = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let consumer = Consumer::new(router.clone(), consumer_config());
        let (tx, rx) = mpsc::unbounded_channel();
        consumer
            .subscribe(
                "c.bcast",
                "g",
                move |m: ReceivedMessage| {
                    let tx = tx.clone();
                    async move {
                        tx.send(m.message_id.clone()).unwrap();
                        Ok(())
                    }
                },
                SubscribeOptions {
                    broadcast: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        rxs.push(rx);
        consumers.push(consumer);
    }
    for rx in &mut rxs {
        let got: HashSet<String> = recv_n(rx, 10).await.into_iter().collect();
        assert_eq!(got, sent);
    }
    for c in consumers {
        c.shutdown().await;
    }
}

async fn tagged(tags: &[&str], tag_type: TagType) -> HashSet<String> {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let only_a = produce(&producer, "c.tags", 2, &["a"]).await;
    let only_b = produce(&producer, "c.tags", 2, &["b"]).await;
    let both = produce(&producer, "c.tags", 2, &["a", "b"]).await;
    produce(&producer, "c.tags", 2, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.tags",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    tx.send(m.message_id.clone()).unwrap();
                    Ok(())
                }
            },
            SubscribeOptions {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                tag_type: Some(tag_type),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let expected: HashSet<String> = match tag_type {
        TagType::And => both,
        _ => only_a.union(&both).cloned().collect(),
    };
    let got: HashSet<String> = recv_n(&mut rx, expected.len()).await.into_iter().collect();
    consumer.shutdown().await;
    assert!(
        rx.try_recv().is_err(),
        "a message outside the filter arrived"
    );
    assert!(got.is_disjoint(&only_b));
    assert_eq!(got, expected);
    got
}

#[tokio::test]
async fn tag_filters_and_or() {
    assert_eq!(tagged(&["a", "b"], TagType::And).await.len(), 2);
    assert_eq!(tagged(&["a"], TagType::Or).await.len(), 4);
}

struct Recorder {
    skip: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Filter for Recorder {
    fn pre_on_message(&self, m: &ReceivedMessage, ctx: &mut FilterContext) -> bool {
        ctx.insert("seen-by-pre", m.message_id.clone());
        m.message_id != self.skip
    }

    fn post_on_message(&self, m: &ReceivedMessage, ctx: &mut FilterContext, r: &HandleResult) {
        let from_pre = ctx
            .get::<String>("seen-by-pre")
            .cloned()
            .unwrap_or_default();
        assert_eq!(from_pre, m.message_id);
        self.log
            .lock()
            .push(format!("post {} ok={}", m.message_id, r.is_ok()));
    }
}

#[tokio::test]
async fn filters_run_around_the_handler_and_can_skip() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let ids: Vec<String> = produce(&producer, "c.filter", 3, &[])
        .await
        .into_iter()
        .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.filter",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    tx.send(m.message_id.clone()).unwrap();
                    Ok(())
                }
            },
            SubscribeOptions {
                filters: vec![Arc::new(Recorder {
                    skip: ids[0].clone(),
                    log: log.clone(),
                })],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got: HashSet<String> = recv_n(&mut rx, 2).await.into_iter().collect();
    consumer.shutdown().await;
    assert!(!got.contains(&ids[0]));
    let log = log.lock().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|l| l.ends_with("ok=true")));
    // The skipped message was acked, not retried.
    assert_drained(&addr(&b), "c.filter", "g").await;
    assert_drained(&addr(&b), &retry_subject("c.filter", "g"), "g").await;
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_handlers_and_acks() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "c.shutdown", 1, &[]).await;
    let consumer = Arc::new(Consumer::new(router, consumer_config()));
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let done = Arc::new(AtomicBool::new(false));
    let (s, r, d) = (started.clone(), release.clone(), done.clone());
    consumer
        .subscribe(
            "c.shutdown",
            "g",
            move |_m: ReceivedMessage| {
                let (s, r, d) = (s.clone(), r.clone(), d.clone());
                async move {
                    s.notify_one();
                    r.notified().await;
                    d.store(true, Ordering::SeqCst);
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::timeout(T, started.notified()).await.unwrap();
    let c = consumer.clone();
    let stopping = tokio::spawn(async move { c.shutdown().await });
    release.notify_one();
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_drained(&addr(&b), "c.shutdown", "g").await;
}

#[tokio::test]
async fn pull_client_pulls_and_acks() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent = produce(&producer, "c.pull", 10, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let mut pull = consumer.pull_client("c.pull", "g").await.unwrap();
    let mut got = HashSet::new();
    tokio::time::timeout(T, async {
        while got.len() < 10 {
            if let Some(batch) = pull.pull(4, Duration::from_millis(200)).await.unwrap() {
                assert!(batch.messages.len() <= 4);
                got.extend(batch.messages.iter().map(|m| m.message_id.clone()));
                pull.ack(&batch).await.unwrap();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, sent);
    assert!(pull
        .pull(4, Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    assert_drained(&addr(&b), "c.pull", "g").await;
}

#[tokio::test]
async fn subscriptions_follow_route_changes_from_the_meta_server() {
    let (b1, _d1) = broker().await;
    let (b2, _d2) = broker().await;
    let meta = fake_meta(vec![addr(&b1)]).await;
    let mut mc = MetaRouterConfig::new(&meta.http, "app");
    mc.refresh = Duration::from_millis(50);
    let router = Arc::new(MetaRouter::new(mc));
    let mut cfg = consumer_config();
    cfg.route_refresh = Duration::from_millis(50);
    let consumer = Consumer::new(router, cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.meta",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    tx.send(m.message_id.clone()).unwrap();
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    assert!(meta
        .requests
        .lock()
        .iter()
        .any(|r| r.client_type() == qmq_protocol::ClientType::Consumer
            && r.consumer_group() == "g"
            && r.subject() == "c.meta"));
    let (_, p1) = setup(&b1);
    let first = produce(&p1, "c.meta", 1, &[]).await;
    assert_eq!(
        recv_n(&mut rx, 1).await.into_iter().collect::<HashSet<_>>(),
        first
    );

    *meta.brokers.lock() = vec![addr(&b2)];
    let (_, p2) = setup(&b2);
    let second = produce(&p2, "c.meta", 1, &[]).await;
    assert_eq!(
        recv_n(&mut rx, 1).await.into_iter().collect::<HashSet<_>>(),
        second
    );
    consumer.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_counts_as_a_failure() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "c.panic", 1, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "c.panic",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                async move {
                    tx.send(m.times()).unwrap();
                    assert!(m.times() > 1, "first delivery panics");
                    Ok(())
                }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(recv_n(&mut rx, 2).await, vec![1, 2]);
    consumer.shutdown().await;
    assert_drained(&addr(&b), "c.panic", "g").await;
}

#[tokio::test]
async fn pull_client_retries_handed_back_messages() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent = produce(&producer, "c.pullretry", 1, &[]).await;
    let consumer = Consumer::new(router, consumer_config());
    let mut pull = consumer.pull_client("c.pullretry", "g").await.unwrap();
    let mut deliveries = Vec::new();
    tokio::time::timeout(T, async {
        while deliveries.len() < 2 {
            if let Some(batch) = pull.pull(4, Duration::from_millis(100)).await.unwrap() {
                for m in &batch.messages {
                    deliveries.push((m.message_id.clone(), m.times(), m.subject().to_owned()));
                    if m.times() == 1 {
                        assert!(pull.retry_later(m).await);
                    }
                }
                pull.ack(&batch).await.unwrap();
            }
        }
    })
    .await
    .unwrap();
    let id = sent.into_iter().next().unwrap();
    let subject = "c.pullretry".to_string();
    assert_eq!(
        deliveries,
        vec![(id.clone(), 1, subject.clone()), (id, 2, subject)]
    );
}

/// One log event of the consumer, as [`LogRecorder`] keeps it.
#[derive(Debug, Clone)]
struct LogLine {
    level: tracing::Level,
    message: String,
    broker: String,
    subject: String,
    at: std::time::Instant,
}

/// A tracing layer keeping every event (level, message, `broker` and `subject` fields).
#[derive(Clone, Default)]
struct LogRecorder(Arc<Mutex<Vec<LogLine>>>);

#[derive(Default)]
struct LogFields {
    message: String,
    broker: String,
    subject: String,
}

impl tracing::field::Visit for LogFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "message" => &mut self.message,
            "broker" => &mut self.broker,
            "subject" => &mut self.subject,
            _ => return,
        };
        *slot = format!("{value:?}");
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogRecorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = LogFields::default();
        event.record(&mut f);
        self.0.lock().push(LogLine {
            level: *event.metadata().level(),
            message: f.message,
            broker: f.broker,
            subject: f.subject,
            at: std::time::Instant::now(),
        });
    }
}

impl LogRecorder {
    /// The events about `broker`.
    fn about(&self, broker: &str) -> Vec<LogLine> {
        self.0
            .lock()
            .iter()
            .filter(|l| l.broker == broker)
            .cloned()
            .collect()
    }
}

/// A consumer whose broker is dead logs one warning per pull loop (the subject and its retry
/// subject) however often it retries, retries with a growing pause, and logs once (info) per
/// loop when the broker is back; the old loop logged a warning and an info line on every try,
/// 10 times a second.
#[tokio::test(flavor = "current_thread")]
async fn a_dead_broker_is_logged_once_and_retried_with_back_off() {
    use tracing_subscriber::layer::SubscriberExt;
    let recorder = LogRecorder::default();
    // The current-thread runtime runs every task of the test on this thread.
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let dead = dead_addr().await;
    let config = ConsumerConfig {
        pull_wait: Duration::from_millis(100),
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(160),
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new(Arc::new(StaticRouter::new([dead.clone()])), config);
    let sub = consumer
        .subscribe_handle(
            "dead.s",
            "g",
            Arc::new(|_m: ReceivedMessage| async { Ok(()) }),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let subjects = ["dead.s".to_owned(), retry_subject("dead.s", "g")];
    let tries = |lines: &[LogLine], subject: &str| -> Vec<std::time::Instant> {
        lines
            .iter()
            .filter(|l| l.subject == subject && l.message.starts_with("cannot connect for pulling"))
            .map(|l| l.at)
            .collect()
    };
    // Seven tries of each loop: pauses of 20, 40, 80, 160, 160, 160 ms in between.
    wait_until(T, "seven connection attempts per pull loop", || {
        let lines = recorder.about(&dead);
        subjects.iter().all(|s| tries(&lines, s).len() >= 7)
    })
    .await;
    let lines = recorder.about(&dead);
    let loud: Vec<&LogLine> = lines
        .iter()
        .filter(|l| l.level <= tracing::Level::INFO)
        .collect();
    assert_eq!(loud.len(), 2, "{loud:#?}");
    for s in &subjects {
        let warned = loud
            .iter()
            .filter(|l| l.level == tracing::Level::WARN && &l.subject == s)
            .count();
        assert_eq!(warned, 1, "{s}: {loud:#?}");
        let at = tries(&lines, s);
        let spread = at[6] - at[0];
        // 620 ms of pauses; a fixed 20 ms pause would take 120 ms.
        assert!(spread >= Duration::from_millis(550), "{s}: {spread:?}");
    }

    // The broker comes back on the same address: one info line per loop, no more warnings.
    let (_broker, _dir) = broker_with(|c| c.listen = dead.parse().unwrap()).await;
    wait_until(T, "pulling works again on both loops", || {
        recorder
            .about(&dead)
            .iter()
            .filter(|l| l.level == tracing::Level::INFO && l.message == "pulling works again")
            .count()
            == 2
    })
    .await;
    let loud: Vec<LogLine> = recorder
        .about(&dead)
        .into_iter()
        .filter(|l| l.level <= tracing::Level::INFO)
        .collect();
    assert_eq!(loud.len(), 4, "{loud:#?}");
    sub.shutdown().await;
}
