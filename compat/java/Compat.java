import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import qunar.tc.qmq.Message;
import qunar.tc.qmq.MessageSendStateListener;
import qunar.tc.qmq.consumer.MessageConsumerProvider;
import qunar.tc.qmq.producer.MessageProducerProvider;

/**
 * The QMQ Java client against a qmq-rs server: 100 messages with a property and a tag, plus one
 * message delayed by 3 s, sent by the Java producer and received (and acked by returning) by a Java
 * listener. Exits 0 only if every send succeeded, every message arrived once with its property and
 * tag, and the delayed one arrived no earlier than its delay.
 *
 * Usage: java Compat http://host:port/meta/address
 */
public final class Compat {
    private static final int COUNT = 100;
    private static final long DELAY_MS = 3000;

    public static void main(String[] args) throws Exception {
        String meta = args[0];
        // A fresh subject per run: a rerun against the same server must not see old messages.
        String subject = "java.compat." + UUID.randomUUID().toString().substring(0, 8);

        Set<String> received = ConcurrentHashMap.newKeySet();
        AtomicInteger duplicates = new AtomicInteger();
        AtomicInteger damaged = new AtomicInteger();
        CountDownLatch allReceived = new CountDownLatch(COUNT);
        CountDownLatch delayReceived = new CountDownLatch(1);
        AtomicLong delaySentAt = new AtomicLong();
        AtomicLong delayTook = new AtomicLong(-1);

        MessageConsumerProvider consumer = new MessageConsumerProvider();
        consumer.setAppCode("qmq-rs-compat");
        consumer.setMetaServer(meta);
        consumer.init();
        consumer.addListener(subject, "compat", m -> {
            if ("delay".equals(m.getStringProperty("kind"))) {
                delayTook.set(System.currentTimeMillis() - delaySentAt.get());
                delayReceived.countDown();
                return;
            }
            if (!received.add(m.getMessageId())) {
                duplicates.incrementAndGet();
                return;
            }
            if (!"v".equals(m.getStringProperty("k")) || !m.getTags().contains("tagA")) {
                damaged.incrementAndGet();
            }
            allReceived.countDown();
        }, Executors.newFixedThreadPool(4));

        MessageProducerProvider producer = new MessageProducerProvider();
        producer.setAppCode("qmq-rs-compat");
        producer.setMetaServer(meta);
        producer.init();

        CountDownLatch sent = new CountDownLatch(COUNT + 1);
        AtomicInteger sendFailures = new AtomicInteger();
        MessageSendStateListener callback = new MessageSendStateListener() {
            @Override
            public void onSuccess(Message m) {
                sent.countDown();
            }

            @Override
            public void onFailed(Message m) {
                sendFailures.incrementAndGet();
                sent.countDown();
            }
        };
        for (int i = 0; i < COUNT; i++) {
            Message m = producer.generateMessage(subject);
            m.setProperty("k", "v");
            m.setProperty("seq", i);
            m.setProperty("kind", "normal");
            m.addTag("tagA");
            producer.sendMessage(m, callback);
        }
        Message delayed = producer.generateMessage(subject);
        delayed.setProperty("kind", "delay");
        delayed.setDelayTime(DELAY_MS, TimeUnit.MILLISECONDS);
        delaySentAt.set(System.currentTimeMillis());
        producer.sendMessage(delayed, callback);

        boolean allSent = sent.await(30, TimeUnit.SECONDS);
        boolean allGot = allReceived.await(60, TimeUnit.SECONDS);
        boolean delayGot = delayReceived.await(30, TimeUnit.SECONDS);
        boolean ok = allSent && sendFailures.get() == 0 && allGot && duplicates.get() == 0
                && damaged.get() == 0 && delayGot && delayTook.get() >= DELAY_MS - 50;
        System.out.printf(
                "java client vs qmq-rs on %s: sent %s (failures %d), received %d/%d (duplicates %d, damaged %d), delayed message after %d ms: %s%n",
                subject, allSent ? "all" : "NOT all", sendFailures.get(), received.size(), COUNT,
                duplicates.get(), damaged.get(), delayTook.get(), ok ? "OK" : "FAILED");
        producer.destroy();
        consumer.destroy();
        System.exit(ok ? 0 : 1);
    }
}
