package io.opentracing;
public interface Span {
    SpanContext context();
    Span setTag(String key, String value);
    Span log(String event);
    void finish();
}
