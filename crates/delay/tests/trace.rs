//! `Qmq.Delay.Schedule` and `Qmq.Delay.Dispatch` spans, recorded by an exporter that sends
//! each finished span down a channel; it is this test binary's global tracer provider.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{global, Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use qmq_delay::engine::{DISPATCH_SPAN, SCHEDULE_SPAN};
use qmq_delay::{DelayEngine, ManualClock, NewMessage};
use qmq_protocol::{Message, MessageFlags};
use tokio::sync::mpsc;

const T0: i64 = 1_700_000_000_000;

/// Sends every finished span to the channel.
#[derive(Debug)]
struct ChannelExporter(mpsc::UnboundedSender<SpanData>);

impl SpanExporter for ChannelExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for s in batch {
            let _ = self.0.send(s);
        }
        Ok(())
    }
}

/// The receiving end of the global provider's spans (installed once).
fn spans() -> &'static tokio::sync::Mutex<mpsc::UnboundedReceiver<SpanData>> {
    static RX: OnceLock<tokio::sync::Mutex<mpsc::UnboundedReceiver<SpanData>>> = OnceLock::new();
    RX.get_or_init(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(ChannelExporter(tx))
            .build();
        global::set_tracer_provider(provider);
        tokio::sync::Mutex::new(rx)
    })
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// Waits (bounded) for the next finished span named `name` about message `id`; no span it
/// passes over may be about `delay-untraced` (a message without a context gets none).
async fn next_span(name: &str, id: &str) -> SpanData {
    let mut rx = spans().lock().await;
    let id = Value::from(id.to_owned());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} span for {id}"))
            .unwrap();
        if s.name == name && attr(&s, "messageId") == Some(&id) {
            return s;
        }
        assert_ne!(
            attr(&s, "messageId"),
            Some(&Value::from("delay-untraced")),
            "{s:#?}"
        );
    }
}

/// A delayed message in stored form for `at`, carrying the context (`trace`, `span`) in its
/// `qtrace_` attributes, written by the shared carrier.
fn message(id: &str, at: i64, trace: Option<(TraceId, SpanId)>) -> NewMessage {
    let mut m = Message {
        flags: MessageFlags(0).with_delay(true),
        created_time: T0,
        expire_or_schedule: at,
        subject: "delay.traced".into(),
        message_id: id.into(),
        tags: Vec::new(),
        attrs: vec![("body".into(), "b".into())],
    };
    if let Some((trace, span)) = trace {
        let cx = Context::new().with_remote_span_context(SpanContext::new(
            trace,
            span,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        qmq_trace::inject(&cx, &mut m);
    }
    NewMessage {
        subject: m.subject.clone(),
        message_id: id.into(),
        schedule_ms: at,
        message: m.to_stored().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_and_dispatch_spans_continue_the_message_trace() {
    spans();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let mut cfg = config(dir.path());
    cfg.trace_spans = true;
    let engine = DelayEngine::open(cfg, Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();

    let (trace, parent) = (TraceId::from(0x5eed_u128), SpanId::from(0xfeed_u64));
    let traced = message("delay-traced", T0 + 5_000, Some((trace, parent)));
    let stored = traced.message.clone();
    let untraced = message("delay-untraced", T0 + 5_000, None);
    for r in engine.schedule(vec![traced, untraced]).await {
        r.unwrap();
    }

    let s = next_span(SCHEDULE_SPAN, "delay-traced").await;
    assert_eq!(s.span_kind, SpanKind::Server);
    assert_eq!(s.span_context.trace_id(), trace);
    assert_eq!(s.parent_span_id, parent);
    assert_eq!(s.status, Status::Unset);
    assert_eq!(attr(&s, "delayMs"), Some(&Value::I64(5_000)));
    assert_eq!(attr(&s, "dueTime"), Some(&Value::I64(T0 + 5_000)));
    assert_eq!(s.instrumentation_scope.name(), "qmq-delay");

    // Due 7 s later than scheduled: the dispatch span says how late.
    clock.set(T0 + 12_000);
    rec.wait_for("both delivered", |log| log.len() == 2).await;
    let d = next_span(DISPATCH_SPAN, "delay-traced").await;
    assert_eq!(d.span_kind, SpanKind::Producer);
    assert_eq!(d.span_context.trace_id(), trace);
    assert_eq!(d.parent_span_id, parent);
    assert_eq!(d.status, Status::Unset);
    assert_eq!(attr(&d, "latenessMs"), Some(&Value::I64(7_000)));
    assert_eq!(attr(&d, "attempt"), Some(&Value::I64(1)));

    // Delivered byte for byte: the server injects nothing.
    let delivered = rec.log.lock().clone();
    let got = delivered.iter().find(|d| d.id == "delay-traced").unwrap();
    assert_eq!(got.message, stored);

    // The message without a context got no span: every span sent so far is about the traced
    // one (the spans of one message arrive in order, the untraced one's would be among them).
    engine.shutdown().await.unwrap();
    let mut rx = spans().lock().await;
    while let Ok(s) = rx.try_recv() {
        assert_ne!(
            attr(&s, "messageId"),
            Some(&Value::from("delay-untraced")),
            "{s:#?}"
        );
    }
}
