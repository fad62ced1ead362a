package io.opentracing.propagation;
public interface Format<C> {
    final class Builtin<C> implements Format<C> {
        public static final Format<TextMap> TEXT_MAP = new Builtin<TextMap>();
    }
}
