//! `Qmq.Broker.Append` spans, recorded by an in-memory exporter installed as the global tracer
//! provider of this test binary. The provider is process-wide, so each test looks only at the
//! spans of its own message ids.

mod common;

use std::sync::OnceLock;

use common::*;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{global, Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use qmq_broker::server::APPEND_SPAN;
use qmq_protocol::Message;

/// The global provider (spans exported as each ends), installed once, and its exporter.
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

/// The finished spans tagged with message id `id`.
fn spans_of(id: &str) -> Vec<SpanData> {
    let (provider, exporter) = provider();
    provider.force_flush().unwrap();
    let id = Value::from(id.to_owned());
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| attr(s, "messageId") == Some(&id))
        .collect()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// A producer-side context, written into `m`'s `qtrace_` attributes by the shared carrier.
fn traced(m: &mut Message, trace: u128, span: u64) -> (TraceId, SpanId) {
    let (trace, span) = (TraceId::from(trace), SpanId::from(span));
    let cx = Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("k", "v")]).unwrap(),
    ));
    qmq_trace::inject(&cx, m);
    (trace, span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_a_trace_context_gets_an_append_span_under_it() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = qmq_config(dir.path());
    config.trace_spans = true;
    config.group = "traced-group".into();
    config.new_group_start = qmq_store::ResetTo::Earliest;
    let (broker, conn) = start_with(config).await;

    let mut with = message("traced", "append-with", &[], "a");
    let (trace, parent) = traced(&mut with, 0xa11ce, 0xb0b);
    let without = message("traced", "append-without", &[], "b");
    assert!(send(&conn, &[with.clone(), without.clone()])
        .await
        .is_empty());

    let spans = spans_of("append-with");
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(s.name, APPEND_SPAN);
    assert_eq!(s.span_kind, SpanKind::Server);
    assert_eq!(s.span_context.trace_id(), trace);
    assert_eq!(s.parent_span_id, parent);
    assert!(s.parent_span_is_remote);
    assert_eq!(s.status, Status::Unset);
    assert_eq!(attr(s, "subject"), Some(&Value::from("traced")));
    assert_eq!(attr(s, "brokerGroup"), Some(&Value::from("traced-group")));
    assert_eq!(attr(s, "offset"), Some(&Value::I64(0)));
    assert_eq!(s.instrumentation_scope.name(), "qmq-broker");

    // No context: no span (the broker starts no traces).
    assert!(spans_of("append-without").is_empty());

    // The attributes are stored byte for byte: the broker injects nothing.
    let (_, got) = pull(&conn, &pull_request("traced", "g", "c", 10, -1)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], with);
    assert_eq!(got[1], without);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spans_when_tracing_is_off() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start_with(qmq_config(dir.path())).await;
    let mut m = message("untraced", "append-off", &[], "a");
    traced(&mut m, 0xdead, 0xbeef);
    assert!(send(&conn, &[m]).await.is_empty());
    assert!(spans_of("append-off").is_empty());
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_stay_with_their_messages_when_the_duplicate_window_drops_some() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = qmq_config(dir.path());
    config.trace_spans = true;
    let (broker, conn) = start_with(config).await;
    let mut first = message("traced.dup", "dup-first", &[], "a");
    traced(&mut first, 0x1, 0x2);
    assert!(send(&conn, &[first.clone()]).await.is_empty());

    // The stored one again (a duplicate, dropped before the append), then a new one.
    let mut fresh = message("traced.dup", "dup-fresh", &[], "b");
    let (trace, parent) = traced(&mut fresh, 0x3, 0x4);
    let failed = send(&conn, &[first, fresh]).await;
    assert_eq!(failed.len(), 1, "{failed:?}");

    let spans = spans_of("dup-fresh");
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].span_context.trace_id(), trace);
    assert_eq!(spans[0].parent_span_id, parent);
    assert_eq!(spans[0].status, Status::Unset);
    assert!(
        attr(&spans[0], "offset").is_some(),
        "the new message's span has its offset"
    );
    // The duplicate's second span ended too (without an offset: it was not stored again).
    let first_spans = spans_of("dup-first");
    assert_eq!(first_spans.len(), 2, "{first_spans:#?}");
    assert_eq!(
        first_spans
            .iter()
            .filter(|s| attr(s, "offset").is_some())
            .count(),
        1
    );
    broker.shutdown().await.unwrap();
}
