package io.opentracing.propagation;
import java.util.Iterator;
import java.util.Map;
public interface TextMap extends Iterable<Map.Entry<String, String>> {
    void put(String key, String value);
    Iterator<Map.Entry<String, String>> iterator();
}
