package io.opentracing;
public interface Scope extends java.io.Closeable {
    @Override void close();
    Span span();
}
