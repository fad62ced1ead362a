package io.opentracing;
public interface ScopeManager {
    Scope activate(Span span, boolean finishSpanOnClose);
    Scope active();
}
