import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.BooleanSupplier;
import java.util.function.Consumer;

import qunar.tc.qmq.ListenerHolder;
import qunar.tc.qmq.Message;
import qunar.tc.qmq.MessageListener;
import qunar.tc.qmq.MessageSendStateListener;
import qunar.tc.qmq.PullConsumer;
import qunar.tc.qmq.SubscribeParam;
import qunar.tc.qmq.TagType;
import qunar.tc.qmq.consumer.MessageConsumerProvider;
import qunar.tc.qmq.producer.MessageProducerProvider;

/**
 * The QMQ Java client against a qmq-rs server, as a list of named checks. Each check uses its own
 * fresh subject and prints one line {@code CHECK <name>: OK|FAILED (<details>)}; the program exits
 * 0 only if every check passed.
 *
 * <ul>
 *   <li>{@code messages}: 100 messages with a property and a tag arrive once each, intact.</li>
 *   <li>{@code delay}: a message delayed by 3 s arrives, no earlier than its delay.</li>
 *   <li>{@code retry-timing}: a listener that throws on a message's first delivery gets it again,
 *       no earlier than the broker's retry delay (QMQ {@code message.retry.delay.seconds}).</li>
 *   <li>{@code dead-letters}: a message with {@code setMaxRetryNum(2)} that always fails is
 *       delivered twice, then arrives on {@code %DEAD_RETRY%<subject>%<group>}.</li>
 *   <li>{@code tags}: AND and OR tag subscriptions get exactly the matching messages.</li>
 *   <li>{@code broadcast}: two consumers (different client ids) in broadcast mode each get every
 *       message.</li>
 *   <li>{@code pull-api}: the pull consumer pulls and acks every message; the one it nacks comes
 *       back through the retry subject.</li>
 *   <li>{@code new-group-start}: a group that subscribes after 10 messages were stored gets none of
 *       them, only later ones (QMQ starts a new group at the subject's end).</li>
 *   <li>{@code rust-body}: the Rust client's message bodies, sent by its {@code body_producer}
 *       example run as a process ({@code -Dcompat.rustBodyProducer=<binary>}), read as documented:
 *       a short text body with {@code getStringProperty("body")}, a long one with
 *       {@code getLargeString("body")}, a bytes body with
 *       {@code Base64.getDecoder().decode(getLargeString("body"))} when {@code bodyEncoding} is
 *       {@code base64}.</li>
 *   <li>{@code failover} (qmq-rs issue #14, test 7): against a replicated broker group, a producer
 *       sends continuously and a listener consumes while the master is killed with {@code kill -9}
 *       half-way; the producer must get acknowledgements again (from the promoted slave, found
 *       through the meta server by the client itself) and every acknowledged message must be
 *       consumed. Needs {@code -Dcompat.failover.masterPid=<pid>} (and optionally
 *       {@code -Dcompat.failover.slaveLog=<file>}, the slave's stdout, to time the promotion), so
 *       it runs only when named; {@code scripts/java-compat.sh} starts the cluster for it, and
 *       restarts the killed member once {@code -Dcompat.failover.killedFile} exists.</li>
 * </ul>
 *
 * <p>A QMQ broker starts a new group at the end of the subject, so a check must not send before its
 * consumers have pulled once. Each check therefore first sends "probe" messages (property
 * {@code kind=probe}, ignored by the checks) every 200 ms until every consumer has received one.
 *
 * <p>Usage: {@code java Compat http://host:port/meta/address [retry delay seconds] [check names...]}
 * (retry delay default 5; no check names: all checks but {@code failover}).
 */
public final class Compat {
    /** How long a check waits for the messages it expects (beyond any delay it is testing). */
    private static final long WAIT_MS = 30_000;
    /** How long a check may take to see its first probe (consumer registered and pulling). */
    private static final long PRIME_MS = 20_000;
    /** Slack allowed on "no earlier than" comparisons (millisecond rounding of stored times). */
    private static final long SLACK_MS = 50;
    /**
     * How long the failover check waits for the producer to get acknowledgements again after the
     * kill: the client looks the route up again only every 60 s when the broker is silent.
     */
    private static final long RESUME_MS = 90_000;
    /** Checks that need more than a standalone server: run only when named. */
    private static final Set<String> NAMED_ONLY = Set.of("failover");

    private final String meta;
    private final long retryDelayMs;
    private final String run = UUID.randomUUID().toString().substring(0, 8);
    private final MessageProducerProvider producer = new MessageProducerProvider();
    private final MessageConsumerProvider consumer;
    private final List<ListenerHolder> listeners = new ArrayList<>();

    private record Result(boolean ok, String details) {
    }

    private interface Check {
        Result run() throws Exception;
    }

    /** What a listener kept of a message it received. */
    private record Got(String kind, Set<String> tags, String k, long at) {
    }

    /**
     * A listener that records the non-probe messages it receives, by their {@code id} property,
     * and counts duplicates; probes only set {@link #probed}.
     */
    private static final class Recorder implements MessageListener {
        final AtomicBoolean probed = new AtomicBoolean();
        final Map<String, Got> got = new ConcurrentHashMap<>();
        final AtomicInteger duplicates = new AtomicInteger();

        @Override
        public void onMessage(Message m) {
            if ("probe".equals(m.getStringProperty("kind"))) {
                probed.set(true);
                return;
            }
            Got g = new Got(m.getStringProperty("kind"), new HashSet<>(m.getTags()),
                    m.getStringProperty("k"), System.currentTimeMillis());
            if (got.putIfAbsent(m.getStringProperty("id"), g) != null) {
                duplicates.incrementAndGet();
            }
        }
    }

    private Compat(String meta, long retryDelayMs) {
        this.meta = meta;
        this.retryDelayMs = retryDelayMs;
        producer.setAppCode("qmq-rs-compat");
        producer.setMetaServer(meta);
        producer.init();
        consumer = newConsumer(null);
    }

    public static void main(String[] args) throws Exception {
        String meta = args[0];
        long retryDelayMs = args.length > 1 ? Long.parseLong(args[1]) * 1000 : 5000;
        Set<String> only = new HashSet<>(Arrays.asList(args).subList(Math.min(args.length, 2), args.length));
        Compat c = new Compat(meta, retryDelayMs);

        Map<String, Check> checks = new LinkedHashMap<>();
        checks.put("messages", c::messages);
        checks.put("delay", c::delay);
        checks.put("retry-timing", c::retryTiming);
        checks.put("dead-letters", c::deadLetters);
        checks.put("tags", c::tags);
        checks.put("broadcast", c::broadcast);
        checks.put("pull-api", c::pullApi);
        checks.put("new-group-start", c::newGroupStart);
        checks.put("rust-body", c::rustBody);
        checks.put("failover", c::failover);

        int failed = 0;
        for (Map.Entry<String, Check> e : checks.entrySet()) {
            if (only.isEmpty() ? NAMED_ONLY.contains(e.getKey()) : !only.contains(e.getKey())) {
                continue;
            }
            Result r;
            try {
                r = e.getValue().run();
            } catch (Exception ex) {
                r = new Result(false, "exception: " + ex);
            }
            c.stopListeners();
            if (!r.ok()) {
                failed++;
            }
            System.out.printf("CHECK %s: %s (%s)%n", e.getKey(), r.ok() ? "OK" : "FAILED", r.details());
            System.out.flush();
        }
        System.out.printf("%d check(s) failed%n", failed);
        System.out.flush();
        // The client's background threads are not all daemons; exit explicitly.
        System.exit(failed == 0 ? 0 : 1);
    }

    // ---------------------------------------------------------------------------------------------
    // The checks

    /** 100 messages with a property and a tag arrive once each, intact. */
    private Result messages() throws Exception {
        final int count = 100;
        String subject = subject("messages");
        Recorder rec = new Recorder();
        listen(subject, "compat", rec, null);
        if (!prime(subject, p -> { }, rec.probed::get)) {
            return notReady();
        }
        List<Message> batch = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            Message m = message(subject, "normal", String.valueOf(i));
            m.setProperty("k", "v");
            m.addTag("tagA");
            batch.add(m);
        }
        int sendFailures = sendAll(batch);
        boolean all = waitFor(() -> rec.got.size() >= count, WAIT_MS);
        long damaged = rec.got.values().stream()
                .filter(g -> !"v".equals(g.k()) || !g.tags().contains("tagA")).count();
        boolean ok = sendFailures == 0 && all && rec.duplicates.get() == 0 && damaged == 0;
        return new Result(ok, String.format("send failures %d, received %d/%d, duplicates %d, damaged %d",
                sendFailures, rec.got.size(), count, rec.duplicates.get(), damaged));
    }

    /** A message delayed by 3 s arrives, and not before its delay. */
    private Result delay() throws Exception {
        final long delayMs = 3000;
        String subject = subject("delay");
        Recorder rec = new Recorder();
        listen(subject, "compat", rec, null);
        if (!prime(subject, p -> { }, rec.probed::get)) {
            return notReady();
        }
        Message m = message(subject, "delay", "d");
        m.setDelayTime(delayMs, TimeUnit.MILLISECONDS);
        long sentAt = System.currentTimeMillis();
        int sendFailures = sendAll(List.of(m));
        boolean got = waitFor(() -> rec.got.containsKey("d"), delayMs + WAIT_MS);
        long took = got ? rec.got.get("d").at() - sentAt : -1;
        boolean ok = sendFailures == 0 && got && took >= delayMs - SLACK_MS;
        return new Result(ok, String.format("send failures %d, delayed %d ms, arrived %s",
                sendFailures, delayMs, got ? "after " + took + " ms" : "NOT AT ALL"));
    }

    /**
     * A listener throws on each message's first delivery; every message must be delivered again,
     * and not before the broker's retry delay has passed since the failure.
     */
    private Result retryTiming() throws Exception {
        final int count = 3;
        String subject = subject("retry-timing");
        AtomicBoolean probed = new AtomicBoolean();
        Map<String, Long> failedAt = new ConcurrentHashMap<>();
        Map<String, Long> redeliveredAt = new ConcurrentHashMap<>();
        listen(subject, "compat", m -> {
            if ("probe".equals(m.getStringProperty("kind"))) {
                probed.set(true);
                return;
            }
            String id = m.getStringProperty("id");
            long now = System.currentTimeMillis();
            if (failedAt.putIfAbsent(id, now) == null) {
                throw new RuntimeException("compat: first delivery of " + id + " fails on purpose");
            }
            redeliveredAt.putIfAbsent(id, now);
        }, null);
        if (!prime(subject, p -> { }, probed::get)) {
            return notReady();
        }
        List<Message> batch = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            batch.add(message(subject, "retry", String.valueOf(i)));
        }
        int sendFailures = sendAll(batch);
        boolean all = waitFor(() -> redeliveredAt.size() >= count, retryDelayMs + WAIT_MS);
        long min = Long.MAX_VALUE;
        long max = -1;
        for (Map.Entry<String, Long> e : redeliveredAt.entrySet()) {
            long gap = e.getValue() - failedAt.get(e.getKey());
            min = Math.min(min, gap);
            max = Math.max(max, gap);
        }
        boolean ok = sendFailures == 0 && all && min >= retryDelayMs - SLACK_MS;
        return new Result(ok, String.format(
                "send failures %d, failed %d, redelivered %d/%d, %s (broker retry delay %d ms)",
                sendFailures, failedAt.size(), redeliveredAt.size(), count,
                max < 0 ? "none redelivered" : "redelivery " + min + ".." + max + " ms after the failure",
                retryDelayMs));
    }

    /**
     * A message with a max retry count of 2 whose listener always fails is delivered twice, then
     * arrives on the dead-letter subject, read by a Java listener of the same group subscribed to
     * that subject.
     */
    private Result deadLetters() throws Exception {
        final int maxRetry = 2;
        String subject = subject("dead-letters");
        String group = "dl";
        String dead = "%DEAD_RETRY%" + subject + "%" + group;
        Map<String, AtomicInteger> deliveries = new ConcurrentHashMap<>();
        listen(subject, group, m -> {
            String id = m.getStringProperty("id");
            if (id != null) {
                deliveries.computeIfAbsent(id, x -> new AtomicInteger()).incrementAndGet();
            }
            throw new RuntimeException("compat: this listener always fails");
        }, null);
        Recorder deadRec = new Recorder();
        // The same group: the client drops pulled messages whose qmq_consumerGroupName property
        // (set when a message is sent back) names another group.
        listen(dead, group, deadRec, null);
        // A probe with a max retry count of 0 goes to the dead-letter subject on its first failure:
        // once one arrives there, both the failing group and the dead-letter reader are pulling.
        if (!prime(subject, p -> p.setMaxRetryNum(0), deadRec.probed::get)) {
            return new Result(false, "no probe (max retry 0) reached " + dead + " within " + PRIME_MS + " ms");
        }
        Message m = message(subject, "doomed", "x");
        m.setMaxRetryNum(maxRetry);
        long sentAt = System.currentTimeMillis();
        int sendFailures = sendAll(List.of(m));
        boolean got = waitFor(() -> deadRec.got.containsKey("x"), maxRetry * retryDelayMs + WAIT_MS);
        int delivered = deliveries.getOrDefault("x", new AtomicInteger()).get();
        boolean ok = sendFailures == 0 && got && delivered == maxRetry && deadRec.duplicates.get() == 0;
        return new Result(ok, String.format(
                "send failures %d, max retry %d, delivered %d time(s) to the failing group, %s %s",
                sendFailures, maxRetry, delivered,
                got ? "arrived on" : "NOT on", dead)
                + (got ? " after " + (deadRec.got.get("x").at() - sentAt) + " ms" : ""));
    }

    /**
     * One group subscribes with tags {a, b} in AND mode, another in OR mode; messages tagged
     * {a, b}, {a}, {b}, {c} and none are sent. AND must get exactly the {a, b} ones, OR exactly
     * those with a or b.
     */
    private Result tags() throws Exception {
        final int rounds = 10;
        String subject = subject("tags");
        Recorder and = new Recorder();
        Recorder or = new Recorder();
        Set<String> ab = Set.of("a", "b");
        listen(subject, "and", and, new SubscribeParam.SubscribeParamBuilder()
                .setTagType(TagType.AND).setTags(ab).create());
        listen(subject, "or", or, new SubscribeParam.SubscribeParamBuilder()
                .setTagType(TagType.OR).setTags(ab).create());
        if (!prime(subject, p -> { p.addTag("a"); p.addTag("b"); }, () -> and.probed.get() && or.probed.get())) {
            return notReady();
        }
        // Per round the {a, b} message goes last, so once the last one arrived everything sent
        // before it has been offered to both groups.
        String[][] kinds = {{"c"}, {}, {"a"}, {"b"}, {"a", "b"}};
        List<Message> batch = new ArrayList<>();
        Set<String> wantAnd = new HashSet<>();
        Set<String> wantOr = new HashSet<>();
        for (int i = 0; i < rounds; i++) {
            for (String[] tags : kinds) {
                String kind = tags.length == 0 ? "none" : String.join("", tags);
                String id = kind + i;
                Message m = message(subject, kind, id);
                for (String t : tags) {
                    m.addTag(t);
                }
                batch.add(m);
                if (kind.equals("ab")) {
                    wantAnd.add(id);
                }
                if (kind.contains("a") || kind.contains("b")) {
                    wantOr.add(id);
                }
            }
        }
        int sendFailures = sendAll(batch);
        boolean all = waitFor(() -> and.got.keySet().containsAll(wantAnd) && or.got.keySet().containsAll(wantOr), WAIT_MS);
        Set<String> extraAnd = new HashSet<>(and.got.keySet());
        extraAnd.removeAll(wantAnd);
        Set<String> extraOr = new HashSet<>(or.got.keySet());
        extraOr.removeAll(wantOr);
        int missingAnd = (int) wantAnd.stream().filter(id -> !and.got.containsKey(id)).count();
        int missingOr = (int) wantOr.stream().filter(id -> !or.got.containsKey(id)).count();
        boolean ok = sendFailures == 0 && all && extraAnd.isEmpty() && extraOr.isEmpty()
                && and.duplicates.get() == 0 && or.duplicates.get() == 0;
        return new Result(ok, String.format(
                "send failures %d; AND{a,b}: %d/%d, missing %d, unexpected %s, duplicates %d; "
                        + "OR{a,b}: %d/%d, missing %d, unexpected %s, duplicates %d",
                sendFailures, and.got.size() - extraAnd.size(), wantAnd.size(), missingAnd, sorted(extraAnd),
                and.duplicates.get(), or.got.size() - extraOr.size(), wantOr.size(), missingOr, sorted(extraOr),
                or.duplicates.get()));
    }

    /** Two consumers with different client ids subscribe in broadcast mode; each gets everything. */
    private Result broadcast() throws Exception {
        final int count = 20;
        String subject = subject("broadcast");
        Recorder one = new Recorder();
        Recorder two = new Recorder();
        MessageConsumerProvider c1 = newConsumer("compat-bc1-" + run);
        MessageConsumerProvider c2 = newConsumer("compat-bc2-" + run);
        try {
            // An empty group means broadcast: the client uses its client id as the group.
            listeners.add(c1.addListener(subject, "", one, pool()));
            listeners.add(c2.addListener(subject, "", two, pool()));
            if (!prime(subject, p -> { }, () -> one.probed.get() && two.probed.get())) {
                return notReady();
            }
            List<Message> batch = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                batch.add(message(subject, "broadcast", String.valueOf(i)));
            }
            int sendFailures = sendAll(batch);
            boolean all = waitFor(() -> one.got.size() >= count && two.got.size() >= count, WAIT_MS);
            boolean ok = sendFailures == 0 && all && one.duplicates.get() == 0 && two.duplicates.get() == 0;
            return new Result(ok, String.format(
                    "send failures %d, consumer 1 received %d/%d (duplicates %d), consumer 2 received %d/%d (duplicates %d)",
                    sendFailures, one.got.size(), count, one.duplicates.get(), two.got.size(), count,
                    two.duplicates.get()));
        } finally {
            stopListeners();
            c1.destroy();
            c2.destroy();
        }
    }

    /**
     * The pull consumer pulls every message and acks it; one message is nacked instead and must be
     * pulled again (from the retry subject). No acked message may come back.
     */
    private Result pullApi() throws Exception {
        final int count = 30;
        final String nacked = "7";
        String subject = subject("pull-api");
        PullConsumer pc = consumer.getOrCreatePullConsumer(subject, "pull", false);
        try {
            AtomicBoolean probed = new AtomicBoolean();
            Map<String, Integer> seen = new ConcurrentHashMap<>();
            AtomicInteger acks = new AtomicInteger();
            AtomicInteger nacks = new AtomicInteger();
            Consumer<List<Message>> handle = ms -> {
                for (Message m : ms) {
                    if ("probe".equals(m.getStringProperty("kind"))) {
                        probed.set(true);
                        m.ack(0, null);
                        continue;
                    }
                    String id = m.getStringProperty("id");
                    int n = seen.merge(id, 1, Integer::sum);
                    if (id.equals(nacked) && n == 1) {
                        nacks.incrementAndGet();
                        m.ack(0, new RuntimeException("compat: nack on purpose"));
                    } else {
                        acks.incrementAndGet();
                        m.ack(0, null);
                    }
                }
            };
            long primeDeadline = System.currentTimeMillis() + PRIME_MS;
            while (!probed.get()) {
                if (System.currentTimeMillis() > primeDeadline) {
                    return notReady();
                }
                producer.sendMessage(probe(subject));
                handle.accept(pc.pull(10, 1000));
            }
            List<Message> batch = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                batch.add(message(subject, "pull", String.valueOf(i)));
            }
            int sendFailures = sendAll(batch);
            long deadline = System.currentTimeMillis() + retryDelayMs + WAIT_MS;
            while (!(seen.size() >= count && seen.getOrDefault(nacked, 0) >= 2)
                    && System.currentTimeMillis() < deadline) {
                handle.accept(pc.pull(10, 1000));
            }
            // One more pull: nothing acked may come back.
            handle.accept(pc.pull(10, 1000));
            long duplicates = seen.entrySet().stream()
                    .filter(e -> e.getValue() > (e.getKey().equals(nacked) ? 2 : 1)).count();
            int nackedBack = Math.max(0, seen.getOrDefault(nacked, 0) - 1);
            boolean ok = sendFailures == 0 && seen.size() == count && nackedBack == 1 && duplicates == 0;
            return new Result(ok, String.format(
                    "send failures %d, pulled %d/%d, acked %d, nacked %d, nacked one pulled again %d time(s), duplicates %d",
                    sendFailures, seen.size(), count, acks.get(), nacks.get(), nackedBack, duplicates));
        } finally {
            pc.close();
        }
    }

    /**
     * 10 "old" messages are stored, then a new group subscribes, then "new" messages are sent one
     * every 200 ms until the group has 5 of them (at most 30 s). It must have received no old one.
     */
    private Result newGroupStart() throws Exception {
        final int old = 10;
        final int wantNew = 5;
        String subject = subject("new-group-start");
        List<Message> batch = new ArrayList<>();
        for (int i = 0; i < old; i++) {
            batch.add(message(subject, "old", "old" + i));
        }
        int sendFailures = sendAll(batch);
        if (sendFailures != 0) {
            return new Result(false, sendFailures + " of the old messages were not stored");
        }
        Recorder rec = new Recorder();
        listen(subject, "late", rec, null);
        BooleanSupplier enoughNew = () -> rec.got.values().stream().filter(g -> "new".equals(g.kind())).count() >= wantNew;
        long deadline = System.currentTimeMillis() + WAIT_MS;
        int sent = 0;
        while (!enoughNew.getAsBoolean() && System.currentTimeMillis() < deadline) {
            producer.sendMessage(message(subject, "new", "new" + sent++));
            waitFor(enoughNew, 200);
        }
        long gotOld = rec.got.values().stream().filter(g -> "old".equals(g.kind())).count();
        long gotNew = rec.got.values().stream().filter(g -> "new".equals(g.kind())).count();
        boolean ok = gotNew >= wantNew && gotOld == 0;
        return new Result(ok, String.format(
                "%d old messages stored before the group subscribed; it received %d old and %d new (wanted %d, sent %d)%s",
                old, gotOld, gotNew, wantNew, sent,
                gotOld > 0 ? ": it started at the earliest message, QMQ starts a new group at the latest" : ""));
    }

    /** The bodies {@code crates/client/examples/body_producer.rs} sends (keep both in step). */
    private static final String RUST_SHORT_BODY = "short body \u2713";
    private static final int RUST_TEXT_CHARS = 20_000;
    private static final int RUST_BYTES_LEN = 70_000;

    private static String rustTextBody() {
        char[] cycle = {'q', 'm', 'q', '-', '\u00e9', '\u00df', '\u2713', '\u4e2d'};
        StringBuilder b = new StringBuilder(RUST_TEXT_CHARS);
        for (int i = 0; i < RUST_TEXT_CHARS; i++) {
            b.append(cycle[i % cycle.length]);
        }
        return b.toString();
    }

    private static byte[] rustBytesBody() {
        byte[] b = new byte[RUST_BYTES_LEN];
        for (int i = 0; i < RUST_BYTES_LEN; i++) {
            b[i] = (byte) ((i * 7 + 3) % 256);
        }
        return b;
    }

    /** What the listener read of a body: the plain property, the large string, the encoding. */
    private record Body(String plain, String large, String encoding) {
    }

    /**
     * The Rust client sends a short and a long text body and a bytes body (its
     * {@code body_producer} example, run as a process); this consumer reads them as the Rust
     * client documents: {@code getStringProperty("body")} for a text body of at most 8192 chars,
     * {@code getLargeString("body")} for any text body, and
     * {@code Base64.getDecoder().decode(getLargeString("body"))} when {@code bodyEncoding} is
     * {@code base64}.
     */
    private Result rustBody() throws Exception {
        String bin = System.getProperty("compat.rustBodyProducer");
        if (bin == null) {
            return new Result(false, "needs -Dcompat.rustBodyProducer=<the body_producer example's binary>");
        }
        String subject = subject("rust-body");
        AtomicBoolean probed = new AtomicBoolean();
        Map<String, Body> got = new ConcurrentHashMap<>();
        listen(subject, "compat", m -> {
            if ("probe".equals(m.getStringProperty("kind"))) {
                probed.set(true);
                return;
            }
            got.put(m.getStringProperty("id"), new Body(m.getStringProperty("body"),
                    m.getLargeString("body"), m.getStringProperty("bodyEncoding")));
        }, null);
        if (!prime(subject, p -> { }, probed::get)) {
            return notReady();
        }
        java.net.URI uri = java.net.URI.create(meta);
        Process rust = new ProcessBuilder(bin, uri.getHost() + ":" + uri.getPort(), "--subject", subject)
                .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.INHERIT).start();
        if (!rust.waitFor(WAIT_MS, TimeUnit.MILLISECONDS)) {
            rust.destroyForcibly();
            return new Result(false, "the Rust producer did not finish within " + WAIT_MS + " ms");
        }
        if (rust.exitValue() != 0) {
            return new Result(false, "the Rust producer exited with " + rust.exitValue());
        }
        boolean all = waitFor(() -> got.size() >= 3, WAIT_MS);
        List<String> wrong = new ArrayList<>();
        Body s = got.get("short");
        if (s == null || !RUST_SHORT_BODY.equals(s.plain()) || !RUST_SHORT_BODY.equals(s.large())
                || s.encoding() != null) {
            wrong.add("short text " + s);
        }
        Body t = got.get("text");
        String text = rustTextBody();
        if (t == null || t.plain() != null || !text.equals(t.large()) || t.encoding() != null) {
            wrong.add("long text " + (t == null ? "missing" : String.format(
                    "plain %s, large %d chars (equal: %b), encoding %s", t.plain() == null ? "null" : "set",
                    t.large() == null ? -1 : t.large().length(), text.equals(t.large()), t.encoding())));
        }
        Body b = got.get("bytes");
        boolean bytesOk = false;
        if (b != null && "base64".equals(b.encoding()) && b.large() != null) {
            try {
                bytesOk = Arrays.equals(rustBytesBody(), java.util.Base64.getDecoder().decode(b.large()));
            } catch (IllegalArgumentException e) {
                wrong.add("bytes: not base64: " + e.getMessage());
            }
        }
        if (!bytesOk) {
            wrong.add("bytes " + (b == null ? "missing" : "encoding " + b.encoding() + ", "
                    + (b.large() == null ? "no body" : b.large().length() + " base64 chars")));
        }
        boolean ok = all && wrong.isEmpty();
        return new Result(ok, String.format("received %d/3 (short, %d-char text, %d bytes)%s", got.size(),
                RUST_TEXT_CHARS, RUST_BYTES_LEN, wrong.isEmpty() ? "" : ", wrong: " + wrong));
    }

    /**
     * A producer sends one message every 10 ms (at most 50 unanswered) and records the ones it
     * gets acknowledged; a listener consumes. Once 200 were acknowledged and 100 consumed, the
     * master is killed ({@code kill -9}); the producer and the consumer go on without a restart.
     * The check passes when 200 messages created after the kill were acknowledged (so by the new
     * master) within {@link #RESUME_MS}, and every acknowledged message was then consumed.
     */
    private Result failover() throws Exception {
        final int ackedBefore = 200;
        final int consumedBefore = 100;
        final int ackedAfter = 200;
        final int maxInFlight = 50;
        String pid = System.getProperty("compat.failover.masterPid");
        if (pid == null) {
            return new Result(false, "no master to kill: -Dcompat.failover.masterPid not set "
                    + "(scripts/java-compat.sh starts a replicated group for this check)");
        }
        String slaveLog = System.getProperty("compat.failover.slaveLog");
        String subject = subject("failover");
        Recorder rec = new Recorder();
        listen(subject, "compat", rec, null);
        if (!prime(subject, p -> { }, rec.probed::get)) {
            return notReady();
        }

        Set<String> acked = ConcurrentHashMap.newKeySet();
        AtomicInteger sendFailures = new AtomicInteger();
        AtomicInteger next = new AtomicInteger();
        // Index of the first message created after the kill; MAX_VALUE before it.
        AtomicInteger firstAfterKill = new AtomicInteger(Integer.MAX_VALUE);
        AtomicInteger ackedAfterKill = new AtomicInteger();
        AtomicLong firstAckAfterKillAt = new AtomicLong();
        Semaphore inFlight = new Semaphore(maxInFlight);
        AtomicBoolean stop = new AtomicBoolean();
        MessageSendStateListener callback = new MessageSendStateListener() {
            @Override
            public void onSuccess(Message m) {
                String id = m.getStringProperty("id");
                acked.add(id);
                if (Integer.parseInt(id) >= firstAfterKill.get()) {
                    firstAckAfterKillAt.compareAndSet(0, System.currentTimeMillis());
                    ackedAfterKill.incrementAndGet();
                }
                inFlight.release();
            }

            @Override
            public void onFailed(Message m) {
                sendFailures.incrementAndGet();
                inFlight.release();
            }
        };
        Thread sender = new Thread(() -> {
            try {
                while (!stop.get()) {
                    inFlight.acquire();
                    Message m = message(subject, "failover", String.valueOf(next.getAndIncrement()));
                    try {
                        producer.sendMessage(m, callback);
                    } catch (RuntimeException e) {
                        sendFailures.incrementAndGet();
                        inFlight.release();
                    }
                    Thread.sleep(10);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }, "compat-failover-producer");
        sender.setDaemon(true);
        sender.start();
        try {
            if (!waitFor(() -> acked.size() >= ackedBefore && rec.got.size() >= consumedBefore, WAIT_MS)) {
                return new Result(false, String.format(
                        "before the kill: acknowledged %d (wanted %d), consumed %d (wanted %d) within %d ms",
                        acked.size(), ackedBefore, rec.got.size(), consumedBefore, WAIT_MS));
            }
            int ackedAtKill = acked.size();
            int consumedAtKill = rec.got.size();
            long killedAt = System.currentTimeMillis();
            int rc = new ProcessBuilder("kill", "-9", pid).inheritIO().start().waitFor();
            if (rc != 0) {
                return new Result(false, "kill -9 " + pid + " exited with " + rc);
            }
            // Created once the master is dead: an acknowledgement for these can only come from
            // the new master.
            firstAfterKill.set(next.get());
            String killedFile = System.getProperty("compat.failover.killedFile");
            if (killedFile != null) {
                // The script restarts the killed member (as the new slave) once this file exists.
                Files.writeString(Path.of(killedFile), pid);
            }
            String promoted = "not timed";
            if (slaveLog != null) {
                Path log = Path.of(slaveLog);
                BooleanSupplier isMaster = () -> {
                    try {
                        return Files.readString(log).contains("master epoch=2");
                    } catch (java.io.IOException e) {
                        return false;
                    }
                };
                if (!waitFor(isMaster, WAIT_MS)) {
                    return new Result(false, "the slave was not promoted (no \"master epoch=2\" in "
                            + slaveLog + ") within " + WAIT_MS + " ms of the kill");
                }
                promoted = (System.currentTimeMillis() - killedAt) + " ms";
            }
            boolean resumed = waitFor(() -> ackedAfterKill.get() >= ackedAfter, RESUME_MS);
            stop.set(true);
            sender.join(WAIT_MS);
            // Every message sent gets an answer (acknowledged or failed) before it is counted out.
            boolean answered = inFlight.tryAcquire(maxInFlight, 2 * WAIT_MS, TimeUnit.MILLISECONDS);
            boolean all = waitFor(() -> rec.got.keySet().containsAll(acked), 2 * WAIT_MS);
            List<String> missing = new ArrayList<>();
            for (String id : acked) {
                if (!rec.got.containsKey(id)) {
                    missing.add(id);
                }
            }
            missing.sort((a, b) -> Integer.compare(Integer.parseInt(a), Integer.parseInt(b)));
            long firstAck = firstAckAfterKillAt.get();
            boolean ok = resumed && answered && all && missing.isEmpty();
            return new Result(ok, String.format(
                    "sent %d, acknowledged %d (%d before the kill, %d created after it), send failures %d; "
                            + "consumed %d before the kill; "
                            + "slave promoted after %s; first acknowledgement from the new master %s; "
                            + "%sconsumed %d of the %d acknowledged, missing %d%s, duplicates %d",
                    next.get(), acked.size(), ackedAtKill, ackedAfterKill.get(), sendFailures.get(),
                    consumedAtKill, promoted,
                    firstAck == 0 ? "NEVER" : (firstAck - killedAt) + " ms after the kill",
                    answered ? "" : "some sends never answered, ",
                    acked.size() - missing.size(), acked.size(), missing.size(),
                    missing.isEmpty() ? "" : " " + missing.subList(0, Math.min(10, missing.size())),
                    rec.duplicates.get()));
        } finally {
            stop.set(true);
            sender.interrupt();
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers

    private String subject(String check) {
        return "java.compat." + check + "." + run;
    }

    private Message message(String subject, String kind, String id) {
        Message m = producer.generateMessage(subject);
        m.setProperty("kind", kind);
        m.setProperty("id", id);
        return m;
    }

    private Message probe(String subject) {
        Message m = producer.generateMessage(subject);
        m.setProperty("kind", "probe");
        return m;
    }

    private static Result notReady() {
        return new Result(false, "no probe reached the consumer(s) within " + PRIME_MS + " ms");
    }

    private static List<String> sorted(Set<String> s) {
        List<String> l = new ArrayList<>(s);
        Collections.sort(l);
        return l;
    }

    /** A consumer provider; {@code clientId} null keeps the client's default id. */
    private MessageConsumerProvider newConsumer(String clientId) {
        MessageConsumerProvider c = new MessageConsumerProvider();
        c.setAppCode("qmq-rs-compat");
        c.setMetaServer(meta);
        if (clientId != null) {
            c.setClientIdProvider(() -> clientId);
        }
        c.init();
        return c;
    }

    private static ExecutorService pool() {
        return Executors.newFixedThreadPool(4, r -> {
            Thread t = new Thread(r, "compat-listener");
            t.setDaemon(true);
            return t;
        });
    }

    private void listen(String subject, String group, MessageListener l, SubscribeParam param) {
        listeners.add(param == null
                ? consumer.addListener(subject, group, l, pool())
                : consumer.addListener(subject, group, l, pool(), param));
    }

    private void stopListeners() {
        for (ListenerHolder h : listeners) {
            h.stopListen();
        }
        listeners.clear();
    }

    /**
     * Sends probes to {@code subject} (each decorated by {@code decorate}) one every 200 ms until
     * {@code ready} holds; false if it does not within {@link #PRIME_MS}.
     */
    private boolean prime(String subject, Consumer<Message> decorate, BooleanSupplier ready) throws InterruptedException {
        long deadline = System.currentTimeMillis() + PRIME_MS;
        while (!ready.getAsBoolean()) {
            if (System.currentTimeMillis() > deadline) {
                return false;
            }
            Message p = probe(subject);
            decorate.accept(p);
            producer.sendMessage(p);
            waitFor(ready, 200);
        }
        return true;
    }

    /** Sends every message and waits for the answers; returns how many were not stored. */
    private int sendAll(List<Message> batch) throws InterruptedException {
        CountDownLatch done = new CountDownLatch(batch.size());
        AtomicInteger failures = new AtomicInteger();
        MessageSendStateListener callback = new MessageSendStateListener() {
            @Override
            public void onSuccess(Message m) {
                done.countDown();
            }

            @Override
            public void onFailed(Message m) {
                failures.incrementAndGet();
                done.countDown();
            }
        };
        for (Message m : batch) {
            producer.sendMessage(m, callback);
        }
        if (!done.await(WAIT_MS, TimeUnit.MILLISECONDS)) {
            return failures.get() + (int) done.getCount();
        }
        return failures.get();
    }

    /** Polls {@code cond} until it holds or {@code timeoutMs} passed; returns its last value. */
    private static boolean waitFor(BooleanSupplier cond, long timeoutMs) throws InterruptedException {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (!cond.getAsBoolean()) {
            if (System.currentTimeMillis() >= deadline) {
                return false;
            }
            Thread.sleep(10);
        }
        return true;
    }
}
