//! Trace context in QMQ message attributes, shared by the client and the servers.
//!
//! As in QMQ's Java client, a message carries the trace context in attributes whose keys are
//! the propagator's field names prefixed with [`PREFIX`] (`qtrace_`), here in the W3C Trace
//! Context format ([`W3cTraceContext`]): `qtrace_traceparent` and, when the trace state is not
//! empty, `qtrace_tracestate`. [`inject`] writes them, [`extract`] reads them back (a message
//! without a valid `traceparent` gives an empty context, a new root).
//!
//! The span helpers ([`tracer`], [`start`], [`end`]) make spans with the *global* tracer
//! provider ([`opentelemetry::global`]): without one installed, they are OpenTelemetry's no-op
//! spans. The servers only call them when tracing is enabled in their configuration, and only
//! for messages that carry a context ([`carried`]).

#![warn(missing_docs)]

use std::fmt::Display;
use std::str::FromStr;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use qmq_protocol::Message;

/// Prefix of the attributes that carry the trace context (QMQ's `qtrace_`).
pub const PREFIX: &str = "qtrace_";
/// The attribute carrying the W3C `traceparent`.
pub const TRACEPARENT_ATTR: &str = "qtrace_traceparent";
/// The attribute carrying the W3C `tracestate`.
pub const TRACESTATE_ATTR: &str = "qtrace_tracestate";

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Writes propagation fields into a message's attributes, each key prefixed with [`PREFIX`].
#[derive(Debug)]
pub struct MessageInjector<'a>(pub &'a mut Message);

impl Injector for MessageInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set_attr(&format!("{PREFIX}{key}"), value);
    }
}

/// Reads propagation fields from a message's attributes: every attribute whose key starts with
/// [`PREFIX`], under its key with the prefix stripped.
#[derive(Debug, Clone, Copy)]
pub struct MessageExtractor<'a>(pub &'a Message);

impl Extractor for MessageExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .attrs
            .iter()
            .find(|(k, _)| k.strip_prefix(PREFIX) == Some(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .attrs
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(PREFIX))
            .collect()
    }
}

/// The W3C Trace Context propagator (`traceparent`, `tracestate`), the format the client writes
/// and reads. The same format as `opentelemetry_sdk`'s `TraceContextPropagator` (the tests check
/// one against the other), kept here so that the client depends on the OpenTelemetry API only.
/// Unlike that one it writes no `tracestate` when the trace state is empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cTraceContext;

impl W3cTraceContext {
    fn extract_span_context(extractor: &dyn Extractor) -> Option<SpanContext> {
        let header = extractor.get(TRACEPARENT)?.trim();
        let parts: Vec<&str> = header.split_terminator('-').collect();
        if parts.len() < 4 {
            return None;
        }
        let version = u8::from_str_radix(parts[0], 16).ok()?;
        // Version 255 is invalid; version 0 has exactly four fields; later versions may add
        // fields after the first four.
        if parts[0].len() != 2 || version == 0xff || (version == 0 && parts.len() != 4) {
            return None;
        }
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(parts[1], 32) || !lower_hex(parts[2], 16) || !lower_hex(parts[3], 2) {
            return None;
        }
        let trace_id = TraceId::from_hex(parts[1]).ok()?;
        let span_id = SpanId::from_hex(parts[2]).ok()?;
        let flags = TraceFlags::new(u8::from_str_radix(parts[3], 16).ok()?) & TraceFlags::SAMPLED;
        let state = extractor
            .get(TRACESTATE)
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let sc = SpanContext::new(trace_id, span_id, flags, true, state);
        sc.is_valid().then_some(sc)
    }
}

impl TextMapPropagator for W3cTraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(
            TRACEPARENT,
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags() & TraceFlags::SAMPLED
            ),
        );
        let state = sc.trace_state().header();
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match Self::extract_span_context(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static NAMES: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
        FieldIter::new(NAMES.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]))
    }
}

/// Writes the span context of `cx` into `message`'s `qtrace_` attributes, replacing the ones it
/// carried. Leaves the message as it is when `cx` holds no valid span context (so a message
/// forwarded outside any trace keeps the context it came with).
pub fn inject(cx: &Context, message: &mut Message) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    message.attrs.retain(|(k, _)| k != TRACESTATE_ATTR);
    W3cTraceContext.inject_context(cx, &mut MessageInjector(message));
}

/// The context `message` carries in its `qtrace_` attributes, as the remote parent of a new
/// span; an empty context (a new root) when it carries none or an invalid one.
pub fn extract(message: &Message) -> Context {
    W3cTraceContext.extract_with_context(&Context::new(), &MessageExtractor(message))
}

/// The context `message` carries, as the remote parent of a new span, or `None` when it
/// carries no valid one (what a server checks before making a span for the message).
pub fn carried(message: &Message) -> Option<Context> {
    let cx = extract(message);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The tracer of instrumentation scope `scope` (version `version`) from the global provider.
pub fn tracer(scope: &'static str, version: &'static str) -> BoxedTracer {
    global::tracer_with_scope(
        InstrumentationScope::builder(scope)
            .with_version(version)
            .build(),
    )
}

/// Starts span `name` of `kind` under `parent` with `tracer`; `attrs` are only computed when
/// the span records. Returns `parent` with the new span current.
pub fn start(
    tracer: &BoxedTracer,
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attrs: impl FnOnce() -> Vec<KeyValue>,
) -> Context {
    let mut span = tracer.build_with_context(SpanBuilder::from_name(name).with_kind(kind), parent);
    if span.is_recording() {
        span.set_attributes(attrs());
    }
    parent.with_span(span)
}

/// Sets attributes on the span of `cx`, if it records; `attrs` are only computed then.
pub fn set_attributes(cx: &Context, attrs: impl FnOnce() -> Vec<KeyValue>) {
    let span = cx.span();
    if span.is_recording() {
        span.set_attributes(attrs());
    }
}

/// Ends the span of `cx`, with an error status (and event `event`, if any) when `error` is set.
pub fn end(cx: &Context, error: Option<&dyn Display>, event: Option<&'static str>) {
    let span = cx.span();
    if let Some(e) = error {
        if span.is_recording() {
            let e = e.to_string();
            if let Some(event) = event {
                span.add_event(event, vec![KeyValue::new("error", e.clone())]);
            }
            span.set_status(Status::error(e));
        }
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    fn message() -> Message {
        Message {
            subject: "trace.unit".into(),
            message_id: "1".into(),
            ..Message::default()
        }
    }

    fn remote(trace: u128, span: u64, state: &str) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_str(state).unwrap(),
        ))
    }

    #[test]
    fn no_qtrace_attributes_give_a_new_root() {
        let m = message();
        let cx = extract(&m);
        assert!(!cx.span().span_context().is_valid());
        assert!(!cx.has_active_span());
    }

    #[test]
    fn inject_then_extract_round_trips() {
        let mut m = message();
        inject(&remote(0xabc, 0x123, "k=v"), &mut m);
        assert_eq!(
            m.attr(TRACEPARENT_ATTR),
            Some("00-00000000000000000000000000000abc-0000000000000123-01")
        );
        assert_eq!(m.attr(TRACESTATE_ATTR), Some("k=v"));
        let cx = extract(&m);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id(), TraceId::from(0xabc));
        assert_eq!(sc.span_id(), SpanId::from(0x123));
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "k=v");
    }

    #[test]
    fn reinjecting_replaces_the_old_context() {
        let mut m = message();
        inject(&remote(1, 1, "k=v"), &mut m);
        inject(&remote(2, 2, ""), &mut m);
        let traceparents = m
            .attrs
            .iter()
            .filter(|(k, _)| k == TRACEPARENT_ATTR)
            .count();
        assert_eq!(traceparents, 1);
        assert_eq!(m.attr(TRACESTATE_ATTR), None);
        assert_eq!(extract(&m).span().span_context().span_id(), SpanId::from(2));
        // No valid context: the message keeps what it carries.
        inject(&Context::new(), &mut m);
        assert_eq!(extract(&m).span().span_context().span_id(), SpanId::from(2));
    }

    /// A carrier as QMQ's Java client writes it (any `qtrace_`-prefixed keys, here W3C ones
    /// written by an OpenTelemetry tracer plus foreign ones): the extractor hands every prefixed
    /// key over stripped, and the W3C fields come back as they were.
    #[test]
    fn java_style_carrier_round_trips() {
        let mut m = message();
        m.set_attr(
            "qtrace_traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        m.set_attr(
            "qtrace_tracestate",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        );
        m.set_attr(
            "qtrace_uber-trace-id",
            "4bf92f3577b34da6:00f067aa0ba902b7:0:1",
        );
        m.set_attr("qmq_createTime", "1");
        let extractor = MessageExtractor(&m);
        let mut keys = extractor.keys();
        keys.sort_unstable();
        assert_eq!(keys, ["traceparent", "tracestate", "uber-trace-id"]);
        assert_eq!(
            MessageExtractor(&m).get("uber-trace-id"),
            Some("4bf92f3577b34da6:00f067aa0ba902b7:0:1")
        );

        let cx = extract(&m);
        let mut again = message();
        inject(&cx, &mut again);
        assert_eq!(again.attr(TRACEPARENT_ATTR), m.attr(TRACEPARENT_ATTR));
        assert_eq!(again.attr(TRACESTATE_ATTR), m.attr(TRACESTATE_ATTR));
    }

    #[test]
    fn invalid_traceparents_give_a_new_root() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut m = message();
            m.set_attr(TRACEPARENT_ATTR, bad);
            assert!(!extract(&m).span().span_context().is_valid(), "{bad:?}");
        }
    }

    /// The client's propagator and `opentelemetry_sdk`'s `TraceContextPropagator` read each
    /// other's output.
    #[test]
    fn agrees_with_the_sdk_propagator() {
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        let sdk = TraceContextPropagator::new();
        for (state, flags) in [
            ("", TraceFlags::SAMPLED),
            ("a=1,b=2", TraceFlags::NOT_SAMPLED),
        ] {
            let cx = Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
                SpanId::from(0x0102_0304_0506_0708),
                flags,
                true,
                TraceState::from_str(state).unwrap(),
            ));
            let mut ours = message();
            inject(&cx, &mut ours);
            let mut theirs = message();
            sdk.inject_context(&cx, &mut MessageInjector(&mut theirs));
            assert_eq!(ours.attr(TRACEPARENT_ATTR), theirs.attr(TRACEPARENT_ATTR));
            let from_sdk = extract(&theirs);
            let via_sdk = sdk.extract(&MessageExtractor(&ours));
            for got in [from_sdk, via_sdk] {
                assert_eq!(got.span().span_context(), cx.span().span_context());
            }
        }
    }

    #[test]
    fn carried_is_none_without_a_valid_context() {
        let mut m = message();
        assert!(carried(&m).is_none());
        m.set_attr(
            TRACEPARENT_ATTR,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = carried(&m).unwrap();
        assert_eq!(
            cx.span().span_context().span_id(),
            SpanId::from(0x00f0_67aa_0ba9_02b7)
        );
    }
}
