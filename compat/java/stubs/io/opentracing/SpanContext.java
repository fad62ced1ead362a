package io.opentracing;
public interface SpanContext {}
