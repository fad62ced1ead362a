package io.opentracing;
import io.opentracing.propagation.Format;
public interface Tracer {
    ScopeManager scopeManager();
    SpanBuilder buildSpan(String operationName);
    <C> void inject(SpanContext spanContext, Format<C> format, C carrier);
    <C> SpanContext extract(Format<C> format, C carrier);
    interface SpanBuilder {
        SpanBuilder asChildOf(SpanContext parent);
        SpanBuilder withTag(String key, String value);
        Scope startActive(boolean finishSpanOnClose);
    }
}
