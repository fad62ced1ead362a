//! Traces from producer to consumer: spans recorded by an in-memory exporter installed as the
//! global tracer provider. The provider is process-wide, so the tests share it and each looks
//! only at the spans of its own subject.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{global, Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use qmq_client::tracing_ctx::{
    CONSUME_ACK, CONSUME_PROCESS, PRODUCE_SEND, QUEUE_SENDER_SEND, TRACEPARENT_ATTR,
};
use qmq_client::*;
use tokio::sync::mpsc;

/// The global provider, installed once, and its exporter.
fn provider() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static P: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    P.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        (provider, exporter)
    })
}

/// The finished spans about `subject`, plus those of trace `trace` (if any).
fn finished(subject: &str, trace: Option<opentelemetry::trace::TraceId>) -> Vec<SpanData> {
    let (provider, exporter) = provider();
    provider.force_flush().unwrap();
    let subject = Value::from(subject.to_owned());
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| {
            attr(s, "subject") == Some(&subject) || Some(s.span_context.trace_id()) == trace
        })
        .collect()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn only<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "spans named {name}: {spans:#?}");
    found[0]
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_spans_share_one_trace() {
    let (provider, _) = provider();

    let (b, _dir) = broker().await;
    let router = Arc::new(StaticRouter::new([addr(&b)]));
    let producer = Producer::new(router.clone(), ProducerConfig::default());

    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            pull_wait: Duration::from_millis(100),
            backoff: Duration::from_millis(10),
            ..ConsumerConfig::default()
        },
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer
        .subscribe(
            "trace.one",
            "g",
            move |m: ReceivedMessage| {
                // The handler runs inside its Qmq.Consume.Process span.
                let current = Context::current().span().span_context().clone();
                tx.send((m, current)).unwrap();
                async { Ok(()) }
            },
            SubscribeOptions::default(),
        )
        .await
        .unwrap();

    // The caller's own span: Qmq.Produce.Send becomes its child.
    let app_tracer = provider.tracer("app");
    let request = opentelemetry::trace::Tracer::start(&app_tracer, "app.request");
    let request_cx = Context::current_with_span(request);
    let receipt = producer
        .send(new_message("trace.one"))
        .with_context(request_cx.clone())
        .await
        .unwrap();
    request_cx.span().end();

    let (received, handler_span): (ReceivedMessage, SpanContext) =
        tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(received.message_id, receipt.message_id);
    // Shutting down waits for the handler's end and the batch's ack: every span has ended.
    consumer.shutdown().await;
    producer.close().await;
    let request_trace = request_cx.span().span_context().trace_id();
    let spans = finished("trace.one", Some(request_trace));

    let app = only(&spans, "app.request");
    let send = only(&spans, PRODUCE_SEND);
    let try_ = only(&spans, QUEUE_SENDER_SEND);
    let process = only(&spans, CONSUME_PROCESS);
    let ack = only(&spans, CONSUME_ACK);

    let trace_id = app.span_context.trace_id();
    for s in [send, try_, process] {
        assert_eq!(s.span_context.trace_id(), trace_id, "{}", s.name);
    }
    // app.request -> Produce.Send -> QueueSender.Send -> (message) -> Consume.Process
    assert_eq!(send.parent_span_id, app.span_context.span_id());
    assert_eq!(try_.parent_span_id, send.span_context.span_id());
    assert_eq!(process.parent_span_id, try_.span_context.span_id());
    assert!(process.parent_span_is_remote);
    assert_eq!(handler_span, process.span_context);

    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    for s in [send, try_, process, ack] {
        assert_eq!(s.status, Status::Unset, "{}", s.name);
        assert_eq!(
            attr(s, "subject"),
            Some(&Value::from("trace.one")),
            "{}",
            s.name
        );
    }
    let id = Value::from(receipt.message_id.clone());
    for s in [send, try_, process] {
        assert_eq!(attr(s, "messageId"), Some(&id), "{}", s.name);
    }
    assert_eq!(attr(try_, "broker"), Some(&Value::from(receipt.broker)));
    assert_eq!(attr(process, "consumerGroup"), Some(&Value::from("g")));
    assert_eq!(attr(ack, "consumerGroup"), Some(&Value::from("g")));
    assert_eq!(attr(ack, "messages"), Some(&Value::from(1_i64)));
    assert_eq!(
        ack.links
            .iter()
            .map(|l| &l.span_context)
            .collect::<Vec<_>>(),
        [&SpanContext::new(
            trace_id,
            try_.span_context.span_id(),
            try_.span_context.trace_flags(),
            true,
            Default::default()
        )]
    );

    // The carrier: W3C traceparent of the try that stored the message, in a qtrace_ attribute.
    assert_eq!(
        received.attr(TRACEPARENT_ATTR).map(str::to_owned),
        Some(format!(
            "00-{}-{}-01",
            trace_id,
            try_.span_context.span_id()
        ))
    );
}

/// A try whose answer was lost and the try that follows each get a `Qmq.QueueSender.Send` span;
/// each stored copy of the message carries the context of the try that sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_try_injects_its_own_span() {
    provider();
    // Without the broker's duplicate window, so that both tries' copies are stored and each
    // shows the context its try wrote.
    let (b, _dir) = broker_with(|c| {
        c.retry_delay = Duration::ZERO;
        c.dedup_window = Duration::ZERO;
    })
    .await;
    let proxy = lossy_proxy(addr(&b)).await;
    let producer = Producer::new(
        Arc::new(StaticRouter::new([proxy])),
        ProducerConfig {
            retry_backoff: Duration::from_millis(10),
            ..ProducerConfig::default()
        },
    );
    let receipt = producer.send(new_message("trace.retry")).await.unwrap();
    assert_eq!(receipt.tries, 2, "the first answer was lost");
    // The broker stored both tries' copies.
    let copies = pull_n(&addr(&b), "trace.retry", "g", 2).await;
    producer.close().await;

    let spans = finished("trace.retry", None);
    let send = only(&spans, PRODUCE_SEND);
    assert_eq!(send.status, Status::Unset);
    let tries = named(&spans, QUEUE_SENDER_SEND);
    assert_eq!(tries.len(), 2, "{spans:#?}");
    for t in &tries {
        assert_eq!(t.span_context.trace_id(), send.span_context.trace_id());
        assert_eq!(t.parent_span_id, send.span_context.span_id());
    }
    let failed: Vec<_> = tries.iter().filter(|t| t.status != Status::Unset).collect();
    assert_eq!(failed.len(), 1, "one try failed: {tries:#?}");
    assert_eq!(attr(failed[0], "tries"), Some(&Value::from(1_i64)));

    let expected: HashSet<String> = tries
        .iter()
        .map(|t| {
            format!(
                "00-{}-{}-01",
                t.span_context.trace_id(),
                t.span_context.span_id()
            )
        })
        .collect();
    let carried: HashSet<String> = copies
        .iter()
        .map(|m| m.attr(TRACEPARENT_ATTR).unwrap().to_owned())
        .collect();
    assert_eq!(carried, expected);
}
