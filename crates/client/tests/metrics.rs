//! Client metrics, recorded into a `DebuggingRecorder` installed as this test thread's local
//! recorder. `#[tokio::test]` runs a current-thread runtime, so every task the client (and the
//! in-process broker) spawns runs on the test's thread and records into its recorder; tests
//! running in parallel on other threads have their own recorders.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::future::BoxFuture;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use parking_lot::Mutex;
use qmq_client::idempotent::{Idempotent, IdempotentChecker, IdempotentError};
use qmq_client::*;
use tokio::sync::mpsc;

/// One snapshot of a recorder, queried by name and labels.
struct Snap(Vec<(CompositeKey, Option<::metrics::Unit>, DebugValue)>);

impl Snap {
    fn take(s: &Snapshotter) -> Self {
        Snap(
            s.snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, unit, _, v)| (k, unit, v))
                .collect(),
        )
    }

    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let want: HashSet<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|(k, _, _)| {
                k.kind() == kind
                    && k.key().name() == name
                    && k.key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect::<HashSet<_>>()
                        == want
            })
            .map(|(_, _, v)| v)
    }

    /// A counter's value; 0 when it was never incremented.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} is {other:?}"),
        }
    }

    /// Every counter named `name`, summed over its labels.
    fn counter_sum(&self, name: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _, _)| k.kind() == MetricKind::Counter && k.key().name() == name)
            .map(|(_, _, v)| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    }

    /// A histogram's observations.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            None => Vec::new(),
            Some(other) => panic!("{name} is {other:?}"),
        }
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        match self.find(MetricKind::Gauge, name, &[]) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            None => None,
            Some(other) => panic!("{name} is {other:?}"),
        }
    }

    fn unit(&self, kind: MetricKind, name: &str) -> Option<::metrics::Unit> {
        self.0
            .iter()
            .find(|(k, _, _)| k.kind() == kind && k.key().name() == name)
            .and_then(|(_, u, _)| *u)
    }
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        pull_wait: Duration::from_millis(100),
        backoff: Duration::from_millis(10),
        ..ConsumerConfig::default()
    }
}

/// Skips the handler for messages carrying the `skip` property.
struct SkipFilter;

impl Filter for SkipFilter {
    fn pre_on_message(&self, message: &ReceivedMessage, _: &mut FilterContext) -> bool {
        message.get_string("skip").is_none()
    }
}

#[tokio::test]
async fn producer_and_listener_counts_match_what_was_sent_and_handled() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);

    const N: usize = 10;
    let (b, _dir) = broker().await;
    let router = Arc::new(StaticRouter::new([addr(&b)]));
    let producer = Producer::new(router.clone(), ProducerConfig::default());
    let mut ids = Vec::new();
    for i in 0..N {
        let mut m = new_message("m.flow");
        if i == 0 {
            m.set_string("skip", "yes").unwrap();
        }
        ids.push(producer.send(m).await.unwrap().message_id);
    }
    producer.close().await;
    // ids[0] is filtered out, ids[1] fails once, ids[2] panics once; the rest succeed.
    let (fails_once, panics_once) = (ids[1].clone(), ids[2].clone());
    let failed_before = Arc::new(Mutex::new(HashSet::new()));
    let consumer = Consumer::new(router, consumer_config());
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "m.flow",
            "g",
            move |m: ReceivedMessage| {
                let tx = tx.clone();
                let first = failed_before.lock().insert(m.message_id.clone());
                let fail = first && m.message_id == fails_once;
                let panic = first && m.message_id == panics_once;
                async move {
                    if fail {
                        return Err(HandleError::msg("fails once"));
                    }
                    if panic {
                        panic!("panics once");
                    }
                    tx.send(m.message_id.clone()).unwrap();
                    Ok(())
                }
            },
            SubscribeOptions {
                filters: vec![Arc::new(SkipFilter)],
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    // Every message but the skipped one succeeds once, the two failures on their redelivery.
    let mut ok = HashSet::new();
    tokio::time::timeout(T, async {
        while ok.len() < N - 1 {
            ok.insert(rx.recv().await.unwrap());
        }
    })
    .await
    .expect("handlers did not all succeed");
    // Lets the batches in hand finish: failures sent back, every batch acked.
    consumer.shutdown().await;

    let snap = Snap::take(&snapshotter);
    let s = [("subject", "m.flow")];
    let sg = [("subject", "m.flow"), ("group", "g")];
    let with = |extra: (&'static str, &'static str)| [("subject", "m.flow"), ("group", "g"), extra];

    // Producer.
    assert_eq!(
        snap.counter("qmq_client_send_total", &[s[0], ("outcome", "ok")]),
        N as u64
    );
    assert_eq!(snap.counter_sum("qmq_client_send_total"), N as u64);
    assert_eq!(snap.counter_sum("qmq_client_send_retries_total"), 0);
    let send_times = snap.histogram("qmq_client_send_seconds", &s);
    assert_eq!(send_times.len(), N);
    assert!(send_times.iter().all(|t| *t >= 0.0));
    assert_eq!(snap.gauge("qmq_client_send_queue_size"), Some(0.0));
    assert_eq!(
        snap.unit(MetricKind::Histogram, "qmq_client_send_seconds"),
        Some(::metrics::Unit::Seconds)
    );

    // Listener: N - 1 handled, 2 of them twice.
    assert_eq!(
        snap.counter("qmq_client_process_total", &with(("outcome", "ok"))),
        N as u64 - 1
    );
    assert_eq!(
        snap.counter("qmq_client_process_total", &with(("outcome", "failed"))),
        1
    );
    assert_eq!(
        snap.counter("qmq_client_process_total", &with(("outcome", "panicked"))),
        1
    );
    assert_eq!(
        snap.counter("qmq_client_process_total", &with(("outcome", "filtered"))),
        1
    );
    assert_eq!(snap.counter_sum("qmq_client_process_total"), N as u64 + 2);
    assert_eq!(
        snap.histogram("qmq_client_process_seconds", &sg).len(),
        N - 1 + 2
    );
    assert_eq!(
        snap.unit(MetricKind::Histogram, "qmq_client_process_seconds"),
        Some(::metrics::Unit::Seconds)
    );
    // N from the subject, 2 from the group's retry subject (counted under the real subject).
    assert_eq!(
        snap.counter("qmq_client_pulled_messages_total", &sg),
        N as u64 + 2
    );
    assert_eq!(
        snap.counter_sum("qmq_client_pulled_messages_total"),
        N as u64 + 2
    );
    assert_eq!(
        snap.counter("qmq_client_acked_messages_total", &sg),
        N as u64 + 2
    );
    assert_eq!(
        snap.counter("qmq_client_sent_back_total", &with(("to", "retry"))),
        2
    );
    assert_eq!(snap.counter_sum("qmq_client_sent_back_total"), 2);
    assert_eq!(snap.counter_sum("qmq_client_send_back_failed_total"), 0);
    assert_eq!(snap.counter_sum("qmq_client_ack_failed_total"), 0);
    assert_eq!(snap.counter_sum("qmq_client_duplicate_messages_total"), 0);
}

#[tokio::test]
async fn producer_outcomes_queue_full_gave_up_and_closed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);

    let dead = dead_addr().await;
    let producer = Producer::new(
        Arc::new(StaticRouter::new([dead])),
        ProducerConfig {
            queue_capacity: 1,
            max_tries: 2,
            retry_backoff: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    // On this current-thread runtime the dispatcher cannot run between these two calls, so the
    // second finds the one-slot queue full.
    producer
        .send_with_callback(new_message("m.out"), move |r| {
            tx.send(r).unwrap();
        })
        .unwrap();
    let full = producer.send_with_callback(new_message("m.out"), |_| {});
    assert!(matches!(full, Err(SendError::QueueFull)), "{full:?}");
    let result = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(SendError::GaveUp { tries: 2, .. })),
        "{result:?}"
    );
    producer.close().await;
    let closed = producer.send(new_message("m.out")).await;
    assert!(matches!(closed, Err(SendError::Closed)), "{closed:?}");

    let snap = Snap::take(&snapshotter);
    let out = |o| [("subject", "m.out"), ("outcome", o)];
    assert_eq!(snap.counter("qmq_client_send_total", &out("gave_up")), 1);
    assert_eq!(snap.counter("qmq_client_send_total", &out("queue_full")), 1);
    assert_eq!(snap.counter("qmq_client_send_total", &out("closed")), 1);
    assert_eq!(snap.counter_sum("qmq_client_send_total"), 3);
    // The first try's failure was retried; the second's was the last.
    assert_eq!(
        snap.counter(
            "qmq_client_send_retries_total",
            &[("subject", "m.out"), ("reason", "unreachable")]
        ),
        1
    );
    assert_eq!(snap.counter_sum("qmq_client_send_retries_total"), 1);
    // Only the queued message has a send time.
    assert_eq!(
        snap.histogram("qmq_client_send_seconds", &[("subject", "m.out")])
            .len(),
        1
    );
    assert_eq!(snap.gauge("qmq_client_send_queue_size"), Some(0.0));
}

#[tokio::test]
async fn pull_api_counts_pulled_and_acked_messages() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);

    let (b, _dir) = broker().await;
    let router = Arc::new(StaticRouter::new([addr(&b)]));
    let producer = Producer::new(router.clone(), ProducerConfig::default());
    for _ in 0..5 {
        producer.send(new_message("m.pull")).await.unwrap();
    }
    let consumer = Consumer::new(router, consumer_config());
    let mut pull = consumer.pull_client("m.pull", "g").await.unwrap();
    let mut got = 0;
    tokio::time::timeout(T, async {
        while got < 5 {
            if let Some(batch) = pull.pull(10, Duration::from_millis(100)).await.unwrap() {
                got += batch.messages.len();
                pull.ack(&batch).await.unwrap();
            }
        }
    })
    .await
    .expect("5 messages");
    assert_eq!(got, 5);

    let snap = Snap::take(&snapshotter);
    let sg = [("subject", "m.pull"), ("group", "g")];
    assert_eq!(snap.counter("qmq_client_pulled_messages_total", &sg), 5);
    assert_eq!(snap.counter("qmq_client_acked_messages_total", &sg), 5);
    assert_eq!(snap.counter_sum("qmq_client_pull_failed_total"), 0);
    assert_eq!(snap.counter_sum("qmq_client_process_total"), 0);
}

/// Claims in memory.
#[derive(Default)]
struct MemoryChecker(Mutex<HashSet<String>>);

impl IdempotentChecker for MemoryChecker {
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
        Box::pin(async move { Ok(!self.0.lock().insert(key.to_owned())) })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
        Box::pin(async move {
            self.0.lock().remove(key);
            Ok(())
        })
    }
}

#[tokio::test]
async fn idempotent_handler_counts_duplicates() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);

    let handler = Idempotent::new(MemoryChecker::default(), |_: ReceivedMessage| async {
        Ok(())
    });
    let m = ReceivedMessage::new(new_message("m.idem"), "m.idem", "g");
    for _ in 0..3 {
        handler.handle(m.clone()).await.unwrap();
    }

    let snap = Snap::take(&snapshotter);
    assert_eq!(
        snap.counter(
            "qmq_client_duplicate_messages_total",
            &[("subject", "m.idem"), ("group", "g")]
        ),
        2
    );
}
