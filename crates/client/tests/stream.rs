//! The stream API ([`Consumer::stream`]) end to end against a real in-process broker: explicit
//! ack / nack / retry_after, dropped deliveries, backpressure and shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use parking_lot::Mutex;
use qmq_client::consumer::retry_subject;
use qmq_client::*;
use qmq_store::ConsumerKey;

/// The consumer id of every consumer here, so that the broker's progress can be read.
const ME: &str = "stream-test";

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        consumer_id: ME.into(),
        pull_wait: Duration::from_millis(100),
        backoff: Duration::from_millis(10),
        ..ConsumerConfig::default()
    }
}

/// Sends `n` messages; their ids in sending (and pull-log) order.
async fn produce(p: &Producer, subject: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(p.send(new_message(subject)).await.unwrap().message_id);
    }
    ids
}

/// The next delivery, or a panic after the deadline.
async fn next(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(T, deliveries.next())
        .await
        .expect("no delivery in time")
        .expect("the stream ended")
}

/// What the broker knows of consumer [`ME`] of `group` on `subject`: (last pull-log sequence
/// handed out, last acked); -1 for none.
fn progress(b: &qmq_broker::BrokerHandle, subject: &str, group: &str) -> (i64, i64) {
    let p = b.store().progress(&ConsumerKey {
        subject: subject.into(),
        group: group.into(),
        consumer: ME.into(),
    });
    (p.pulled, p.acked)
}

#[tokio::test]
async fn every_message_arrives_once_and_acked_ones_never_come_again() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent: HashSet<String> = produce(&producer, "s.ok", 50).await.into_iter().collect();
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.ok", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < 50 {
        let d = next(&mut deliveries).await;
        assert_eq!(d.subject(), "s.ok");
        assert_eq!(d.group(), "g");
        assert_eq!(d.times(), 1);
        assert!(
            got.insert(d.message_id.clone()),
            "{} came twice",
            d.message_id
        );
        d.ack();
    }
    assert_eq!(got, sent);
    // The broker has every message acked by this consumer: it hands none out again, not even
    // to a new connection of the same consumer.
    wait_until(T, "all 50 acked", || progress(&b, "s.ok", "g") == (49, 49)).await;
    deliveries.shutdown().await;
    assert_eq!(progress(&b, "s.ok", "g"), (49, 49));
    assert_drained(&addr(&b), "s.ok", "g").await;
    assert_drained(&addr(&b), &retry_subject("s.ok", "g"), "g").await;
}

#[tokio::test]
async fn a_nacked_delivery_comes_back_through_the_retry_subject() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let id = produce(&producer, "s.nack", 1).await.remove(0);
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.nack", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let first = next(&mut deliveries).await;
    assert_eq!((first.message_id.as_str(), first.times()), (id.as_str(), 1));
    first.nack(HandleError::msg("boom"));
    let again = next(&mut deliveries).await;
    assert_eq!(again.message_id, id);
    assert_eq!(again.times(), 2);
    assert_eq!(
        again.subject(),
        "s.nack",
        "the subscribed subject, not %RETRY%"
    );
    again.ack();
    // It came back through the retry subject, and both deliveries were acked there.
    let retry = retry_subject("s.nack", "g");
    wait_until(T, "both acked", || {
        progress(&b, "s.nack", "g") == (0, 0) && progress(&b, &retry, "g") == (0, 0)
    })
    .await;
    let stored = b.store().read(&retry, 0, 10).unwrap();
    assert_eq!(stored.len(), 1);
    deliveries.shutdown().await;
    assert_drained(&addr(&b), &retry, "g").await;
}

#[tokio::test]
async fn retry_after_sends_a_delayed_retry() {
    // A StaticRouter routes delay producers to the broker itself (no delay server: that path
    // needs the meta server's routes), so what is checked is what the client sent: the
    // message on the group's retry subject, flagged as a delay message scheduled `after` from
    // the nack. The broker serves it at once, as consumer.rs's listener test shows too.
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let id = produce(&producer, "s.later", 1).await.remove(0);
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.later", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let first = next(&mut deliveries).await;
    let before = chrono::Utc::now().timestamp_millis();
    first.retry_after(Duration::from_secs(3600));
    let retry = retry_subject("s.later", "g");
    let sent_back = pull_n(&addr(&b), &retry, "inspect", 1).await.remove(0);
    assert_eq!(sent_back.message_id, id);
    assert!(sent_back.flags.is_delay(), "not sent as a delay message");
    assert!(
        sent_back.expire_or_schedule >= before + 3_600_000,
        "scheduled at {}, nacked at {before}",
        sent_back.expire_or_schedule
    );
    assert_eq!(sent_back.times(), 2);
    let again = next(&mut deliveries).await;
    assert_eq!((again.message_id.clone(), again.times()), (id, 2));
    again.ack();
    deliveries.shutdown().await;
}

#[tokio::test]
async fn a_dropped_delivery_counts_as_a_failure_and_comes_back() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let id = produce(&producer, "s.drop", 1).await.remove(0);
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.drop", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let first = next(&mut deliveries).await;
    assert_eq!(first.times(), 1);
    drop(first);
    let again = next(&mut deliveries).await;
    assert_eq!((again.message_id.clone(), again.times()), (id, 2));
    again.ack();
    deliveries.shutdown().await;
    assert_eq!(
        b.store()
            .read(&retry_subject("s.drop", "g"), 0, 10)
            .unwrap()
            .len(),
        1
    );
}

/// Counts the messages handed to the stream: filters run just before the hand-out.
struct Counter(Arc<AtomicUsize>);

impl Filter for Counter {
    fn pre_on_message(&self, _: &ReceivedMessage, _: &mut FilterContext) -> bool {
        self.0.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[tokio::test]
async fn at_most_concurrency_deliveries_are_outstanding() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent: HashSet<String> = produce(&producer, "s.bp", 5).await.into_iter().collect();
    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            concurrency: 2,
            ..consumer_config()
        },
    );
    let handed = Arc::new(AtomicUsize::new(0));
    let options = SubscribeOptions {
        filters: vec![Arc::new(Counter(handed.clone()))],
        ..SubscribeOptions::default()
    };
    let mut deliveries = consumer.stream("s.bp", "g", options).await.unwrap();
    let d1 = next(&mut deliveries).await;
    let d2 = next(&mut deliveries).await;
    // All five are in the client's hands (one batch), but with two deliveries unresolved no
    // third is handed out. Checked for a while: a broken limit would hand it out at once, as
    // the messages are already in memory, so a pass cannot come from a slow machine.
    wait_until(T, "the batch pulled", || progress(&b, "s.bp", "g").0 == 4).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.next())
            .await
            .is_err(),
        "a third delivery while two are unresolved"
    );
    assert_eq!(handed.load(Ordering::SeqCst), 2);
    // Resolving one lets exactly one more through.
    let mut got: HashSet<String> = [d1.message_id.clone(), d2.message_id.clone()].into();
    d1.ack();
    let d3 = next(&mut deliveries).await;
    got.insert(d3.message_id.clone());
    assert_eq!(handed.load(Ordering::SeqCst), 3);
    d2.ack();
    d3.ack();
    while got.len() < 5 {
        let d = next(&mut deliveries).await;
        got.insert(d.message_id.clone());
        d.ack();
    }
    assert_eq!(got, sent);
    wait_until(T, "all acked", || progress(&b, "s.bp", "g") == (4, 4)).await;
    deliveries.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_unresolved_deliveries_to_come_again() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent = produce(&producer, "s.stop", 4).await;
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.stop", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let mut by_id: HashMap<String, Delivery> = HashMap::new();
    while by_id.len() < 4 {
        let d = next(&mut deliveries).await;
        by_id.insert(d.message_id.clone(), d);
    }
    // The first (in pull-log order) acked, the second nacked, the last two left unresolved.
    by_id.remove(&sent[0]).unwrap().ack();
    by_id
        .remove(&sent[1])
        .unwrap()
        .nack(HandleError::msg("boom"));
    deliveries.shutdown().await;
    // Shutdown sent the nacked one back and acked the batch up to the first unresolved
    // delivery (the acked and the nacked one); the unresolved ones are pulled, not acked.
    assert_eq!(progress(&b, "s.stop", "g"), (3, 1));
    let retry = retry_subject("s.stop", "g");
    assert_eq!(b.store().read(&retry, 0, 10).unwrap().len(), 1);
    // Resolving after shutdown changes nothing (a drop would otherwise count as a failure).
    drop(by_id);

    // A new stream of the same consumer gets the unresolved ones again, as they were, and the
    // nacked one through the retry subject; never the acked one.
    let mut deliveries = consumer
        .stream("s.stop", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let mut again = HashMap::new();
    while again.len() < 3 {
        let d = next(&mut deliveries).await;
        assert!(
            again.insert(d.message_id.clone(), d.times()).is_none(),
            "{} came twice",
            d.message_id
        );
        d.ack();
    }
    let expected: HashMap<String, u32> = [
        (sent[1].clone(), 2),
        (sent[2].clone(), 1),
        (sent[3].clone(), 1),
    ]
    .into();
    assert_eq!(again, expected);
    wait_until(T, "all acked", || {
        progress(&b, "s.stop", "g") == (3, 3) && progress(&b, &retry, "g") == (0, 0)
    })
    .await;
    deliveries.shutdown().await;
    assert_drained(&addr(&b), "s.stop", "g").await;
    assert_drained(&addr(&b), &retry, "g").await;
}

#[tokio::test]
async fn at_most_once_acks_before_yielding_and_never_retries() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "s.once", 3).await;
    let consumer = Consumer::new(router, consumer_config());
    let options = SubscribeOptions {
        consume_most_once: true,
        ..SubscribeOptions::default()
    };
    let mut deliveries = consumer.stream("s.once", "g", options).await.unwrap();
    let first = next(&mut deliveries).await;
    // The whole batch was acked before its first delivery was yielded.
    assert_eq!(progress(&b, "s.once", "g"), (2, 2));
    first.nack(HandleError::msg("lost, as asked"));
    next(&mut deliveries).await.nack(HandleError::msg("lost"));
    drop(next(&mut deliveries).await);
    deliveries.shutdown().await;
    assert!(b
        .store()
        .read(&retry_subject("s.once", "g"), 0, 10)
        .unwrap()
        .is_empty());
    assert_drained(&addr(&b), "s.once", "g").await;
}

#[tokio::test]
async fn broadcast_streams_each_get_every_message() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent: HashSet<String> = produce(&producer, "s.bcast", 5).await.into_iter().collect();
    let mut streams = Vec::new();
    for i in 0..2 {
        let consumer = Consumer::new(
            router.clone(),
            ConsumerConfig {
                consumer_id: format!("bcast-{i}"),
                ..consumer_config()
            },
        );
        let options = SubscribeOptions {
            broadcast: true,
            ..SubscribeOptions::default()
        };
        streams.push(consumer.stream("s.bcast", "g", options).await.unwrap());
    }
    for deliveries in &mut streams {
        let mut got = HashSet::new();
        while got.len() < 5 {
            let d = next(deliveries).await;
            got.insert(d.message_id.clone());
            d.ack();
        }
        assert_eq!(got, sent);
    }
    for deliveries in streams {
        deliveries.shutdown().await;
    }
}

/// Skips one message and records what `post_on_message` saw.
struct Recorder {
    skip: String,
    post: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Filter for Recorder {
    fn pre_on_message(&self, m: &ReceivedMessage, _: &mut FilterContext) -> bool {
        m.message_id != self.skip
    }

    fn post_on_message(&self, m: &ReceivedMessage, _: &mut FilterContext, r: &HandleResult) {
        self.post.lock().push((m.message_id.clone(), r.is_ok()));
    }
}

#[tokio::test]
async fn filters_run_around_deliveries_and_can_skip() {
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    let sent = produce(&producer, "s.filter", 3).await;
    let post = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::new(router, consumer_config());
    let options = SubscribeOptions {
        filters: vec![Arc::new(Recorder {
            skip: sent[0].clone(),
            post: post.clone(),
        })],
        ..SubscribeOptions::default()
    };
    let mut deliveries = consumer.stream("s.filter", "g", options).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        // sent[1] (nacked once, then acked) and sent[2].
        let d = next(&mut deliveries).await;
        assert_ne!(d.message_id, sent[0], "a skipped message was yielded");
        seen.push(d.message_id.clone());
        if d.message_id == sent[1] && d.times() == 1 {
            d.nack(HandleError::msg("once"));
        } else {
            d.ack();
        }
    }
    wait_until(T, "post filters ran", || post.lock().len() == 3).await;
    let mut post = post.lock().clone();
    post.sort();
    let mut expected = vec![
        (sent[1].clone(), false),
        (sent[1].clone(), true),
        (sent[2].clone(), true),
    ];
    expected.sort();
    assert_eq!(post, expected);
    // The skipped one was acked with its batch, not retried.
    wait_until(T, "batch acked", || progress(&b, "s.filter", "g") == (2, 2)).await;
    deliveries.shutdown().await;
}

#[tokio::test]
async fn deliveries_are_counted_in_the_process_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread test runtime: every task records into this thread's recorder.
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "s.metrics", 2).await;
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.metrics", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let mut acked = 0;
    while acked < 2 {
        let d = next(&mut deliveries).await;
        if d.times() == 1 {
            d.nack(HandleError::msg("first"));
        } else {
            d.ack();
            acked += 1;
        }
    }
    deliveries.shutdown().await;
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |outcome: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(k, _, _, _)| {
                k.key().name() == qmq_client::monitoring::PROCESS_TOTAL
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "outcome" && l.value() == outcome)
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "subject" && l.value() == "s.metrics")
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    assert_eq!((counter("ok"), counter("failed")), (2, 2));
}

#[tokio::test]
async fn a_shut_down_consumer_makes_no_stream() {
    let (b, _dir) = broker().await;
    let (router, _producer) = setup(&b);
    let consumer = Consumer::new(router, consumer_config());
    consumer.shutdown().await;
    assert!(matches!(
        consumer
            .stream("s.closed", "g", SubscribeOptions::default())
            .await,
        Err(ConsumeError::Closed)
    ));
}

/// Spans of the stream: each delivery has a `Qmq.Consume.Process` span from its hand-out to
/// its resolution, in the producer's trace. The global tracer provider is installed here for
/// this test binary (the other tests only make spans it records, and do not look at them).
#[tokio::test]
async fn each_delivery_has_a_process_span_in_the_producers_trace() {
    use opentelemetry::trace::{Status, TraceContextExt};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use qmq_client::tracing_ctx::CONSUME_PROCESS;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let (b, _dir) = broker().await;
    let (router, producer) = setup(&b);
    produce(&producer, "s.trace", 1).await;
    let consumer = Consumer::new(router, consumer_config());
    let mut deliveries = consumer
        .stream("s.trace", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let first = next(&mut deliveries).await;
    let carried = tracing_ctx::extract(first.message())
        .span()
        .span_context()
        .clone();
    assert!(carried.is_valid(), "the producer's context is carried");
    let span = first.trace_context().span().span_context().clone();
    assert_eq!(span.trace_id(), carried.trace_id());
    first.nack(HandleError::msg("boom"));
    let again = next(&mut deliveries).await;
    let span_again = again.trace_context().span().span_context().clone();
    again.ack();
    deliveries.shutdown().await;

    provider.force_flush().unwrap();
    let spans: Vec<_> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == CONSUME_PROCESS && s.span_context.trace_id() == carried.trace_id())
        .collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let by_id = |id| {
        spans
            .iter()
            .find(|s| s.span_context.span_id() == id)
            .unwrap()
    };
    assert!(matches!(by_id(span.span_id()).status, Status::Error { .. }));
    assert_eq!(by_id(span_again.span_id()).status, Status::Unset);
}

/// The stream and its deliveries move across tasks (a consuming loop is usually spawned).
#[test]
fn deliveries_and_delivery_are_send() {
    fn send<T: Send + 'static>() {}
    send::<Deliveries>();
    send::<Delivery>();
}
