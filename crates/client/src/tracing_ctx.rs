//! Distributed tracing through the [OpenTelemetry](https://docs.rs/opentelemetry) API: spans for
//! sending, handling and acknowledging messages, and the trace context carried from producer
//! to consumer in message attributes.
//!
//! The spans are made by the *global* tracer provider ([`opentelemetry::global`]): the
//! application installs one (with the exporter of its choice, e.g. OTLP from
//! `opentelemetry-otlp`); without one the spans are OpenTelemetry's no-op spans and cost next to
//! nothing. Install the provider before sending; spans made before are not recorded.
//!
//! | span | kind | when | parent | attributes |
//! |---|---|---|---|---|
//! | `Qmq.Produce.Send` | producer | [`Producer::send`](crate::Producer::send) (or `send_with_callback`) to the message's final outcome | the caller's current context | `subject`, `messageId` |
//! | `Qmq.QueueSender.Send` | client | one try of the producer's queue at sending the message | `Qmq.Produce.Send` | `subject`, `messageId`, `broker` (once stored), `tries` |
//! | `Qmq.Consume.Process` | consumer | a listener's filters and handler on one message; for a stream, one [`Delivery`](crate::Delivery) from its hand-out to its ack or nack ([`Delivery::trace_context`](crate::Delivery::trace_context)) | the context the message carries; a new root if none | `subject`, `messageId`, `consumerGroup`, `times` |
//! | `Qmq.Consume.Ack` | client | a listener or stream acknowledging a pulled batch | none (links to the batch's carried contexts) | `subject`, `consumerGroup`, `messages` |
//!
//! Failures set the span's status to error; a failed send adds a `send_failed` event, a failed
//! ack an `ack_failed` event.
//!
//! **Carrier.** As in QMQ's Java client, the context travels in message attributes whose keys
//! are the propagator's field names prefixed with [`PREFIX`] (`qtrace_`), in the W3C Trace
//! Context format ([`W3cTraceContext`]): `qtrace_traceparent` and, when the trace state is not
//! empty, `qtrace_tracestate`. Each try of the producer injects the context of its own
//! `Qmq.QueueSender.Send` span, so the consumer's `Qmq.Consume.Process` span is a child of the
//! try that stored the message. Reading, every `qtrace_` attribute is handed to the propagator
//! with the prefix stripped ([`MessageExtractor`]); a message without a valid `traceparent`
//! starts a new trace. The handler runs with the `Qmq.Consume.Process` context current, so
//! messages it sends, and spans it starts, join the same trace.
//!
//! A message read by hand (the pull APIs make no span) joins its producer's trace with
//! [`extract`]:
//!
//! ```
//! use opentelemetry::trace::TraceContextExt;
//! use qmq_client::tracing_ctx::{extract, TRACEPARENT_ATTR};
//!
//! let mut m = qmq_client::new_message("order.created");
//! m.set_attr(TRACEPARENT_ATTR, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! let cx = extract(&m);
//! assert_eq!(
//!     cx.span().span_context().trace_id().to_string(),
//!     "4bf92f3577b34da6a3ce929d0e0e4736"
//! );
//! ```

use std::fmt::Display;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use qmq_protocol::Message;

use qmq_trace::end;

use crate::consumer::{HandleResult, ReceivedMessage};

pub use qmq_trace::{
    extract, inject, MessageExtractor, MessageInjector, W3cTraceContext, PREFIX, TRACEPARENT_ATTR,
    TRACESTATE_ATTR,
};

/// Name of the client's instrumentation scope (its tracer).
pub const TRACER_NAME: &str = "qmq-client";

/// `Qmq.Produce.Send`.
pub const PRODUCE_SEND: &str = "Qmq.Produce.Send";
/// `Qmq.QueueSender.Send`.
pub const QUEUE_SENDER_SEND: &str = "Qmq.QueueSender.Send";
/// `Qmq.Consume.Process`.
pub const CONSUME_PROCESS: &str = "Qmq.Consume.Process";
/// `Qmq.Consume.Ack`.
pub const CONSUME_ACK: &str = "Qmq.Consume.Ack";

fn tracer() -> BoxedTracer {
    qmq_trace::tracer(TRACER_NAME, env!("CARGO_PKG_VERSION"))
}

/// Starts span `name` of `kind` under `parent`; `attrs` are only computed when it records.
fn start(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attrs: impl FnOnce() -> Vec<KeyValue>,
) -> Context {
    qmq_trace::start(&tracer(), name, kind, parent, attrs)
}

/// The `Qmq.Produce.Send` span of one message, from the send call to its final outcome.
#[derive(Debug)]
pub(crate) struct SendTrace(Context);

impl SendTrace {
    /// Starts the span as a child of the current context and injects it into `message`.
    pub(crate) fn start(message: &mut Message) -> Self {
        let cx = start(
            PRODUCE_SEND,
            SpanKind::Producer,
            &Context::current(),
            || {
                vec![
                    KeyValue::new("subject", message.subject.clone()),
                    KeyValue::new("messageId", message.message_id.clone()),
                ]
            },
        );
        inject(&cx, message);
        Self(cx)
    }

    /// Starts the `Qmq.QueueSender.Send` span of try number `tries` and injects it into
    /// `message`, the copy that goes on the wire.
    pub(crate) fn start_try(&self, message: &mut Message, tries: u32) -> TryTrace {
        let cx = start(QUEUE_SENDER_SEND, SpanKind::Client, &self.0, || {
            vec![
                KeyValue::new("subject", message.subject.clone()),
                KeyValue::new("messageId", message.message_id.clone()),
                KeyValue::new("tries", i64::from(tries)),
            ]
        });
        inject(&cx, message);
        TryTrace(cx)
    }

    /// Ends the span; `error` is why the message was not stored.
    pub(crate) fn finish(self, error: Option<&dyn Display>) {
        end(&self.0, error, Some("send_failed"));
    }
}

/// The `Qmq.QueueSender.Send` span of one try at sending one message.
#[derive(Debug)]
pub(crate) struct TryTrace(Context);

impl TryTrace {
    /// Ends the span: `broker` stored the message, or `error` says why the try failed.
    pub(crate) fn finish(self, broker: Option<&str>, error: Option<&dyn Display>) {
        if let Some(b) = broker {
            let span = self.0.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("broker", b.to_owned()));
            }
        }
        end(&self.0, error, None);
    }
}

/// Starts the `Qmq.Consume.Process` span of `message` under `parent` (what [`extract`] read
/// from it); returns the context to run the filters and handler in.
pub(crate) fn start_process(message: &ReceivedMessage, parent: &Context) -> Context {
    start(CONSUME_PROCESS, SpanKind::Consumer, parent, || {
        vec![
            KeyValue::new("subject", message.subject().to_owned()),
            KeyValue::new("messageId", message.message_id.clone()),
            KeyValue::new("consumerGroup", message.group().to_owned()),
            KeyValue::new(
                "times",
                i64::from(crate::MessageExt::times(message.message())),
            ),
        ]
    })
}

/// Ends the `Qmq.Consume.Process` span of `cx` with the handler's result.
pub(crate) fn end_process(cx: &Context, result: &HandleResult) {
    end(cx, result.as_ref().err().map(|e| e as &dyn Display), None);
}

/// The span context a pulled message carries, if valid: what a batch's ack span links to.
pub(crate) fn carried(parent: &Context) -> Option<SpanContext> {
    let span = parent.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// Starts the `Qmq.Consume.Ack` span of a batch of `messages` messages, linked to `links`.
pub(crate) fn start_ack(
    subject: &str,
    group: &str,
    messages: i64,
    links: &[SpanContext],
) -> Context {
    let cx = start(CONSUME_ACK, SpanKind::Client, &Context::new(), || {
        vec![
            KeyValue::new("subject", subject.to_owned()),
            KeyValue::new("consumerGroup", group.to_owned()),
            KeyValue::new("messages", messages),
        ]
    });
    let span = cx.span();
    if span.is_recording() {
        for l in links {
            span.add_link(l.clone(), Vec::new());
        }
    }
    cx
}

/// Ends the `Qmq.Consume.Ack` span of `cx`; `error` is why the ack failed.
pub(crate) fn end_ack(cx: &Context, error: Option<&dyn Display>) {
    end(cx, error, Some("ack_failed"));
}
