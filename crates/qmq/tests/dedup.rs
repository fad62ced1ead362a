//! The broker's duplicate window across `kill -9`: ids acknowledged before the kill are
//! answered DUPLICATE after the restart and stored once; `qmq send --message-id` replays by hand;
//! a delay server killed in the middle of a dispatch spike re-dispatches what it had not
//! recorded, and a fresh consumer group finds every message stored once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, Message, PullConsumer, SendError};
use qmq_protocol::ProducerCode;

mod common;
use common::{metrics_addr, scrape, Proc};

/// Starts `qmq standalone` on `dir` (broker on `port`, delay server on the next) and waits
/// for its "ready" line.
fn start(dir: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args([
            "standalone",
            "--backup-http-listen",
            "127.0.0.1:0",
            "--flush",
            "sync",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--meta-http-listen",
            "127.0.0.1:0",
            "--meta-tcp-listen",
            "127.0.0.1:0",
            "--admin-token",
            "secret",
            "--delay-listen",
        ])
        .arg(format!("127.0.0.1:{}", port + 1))
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "unexpected first line {line:?}");
    child
}

fn messages(subject: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut m = new_message(subject);
            m.message_id = format!("k9-{i}");
            m.set_attr("body", format!("m{i}"));
            m
        })
        .collect()
}

/// Sends `ms` in batches of 30; returns each message's answer code (0: stored).
async fn send_codes(addr: &str, ms: &[Message]) -> Vec<i32> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut codes = Vec::new();
    for chunk in ms.chunks(30) {
        for r in send_batch(&conn, chunk, Duration::from_secs(10))
            .await
            .unwrap()
        {
            codes.push(match r {
                Ok(()) => 0,
                Err(SendError::Refused { code, .. }) => code.code(),
                Err(e) => panic!("{e}"),
            });
        }
    }
    codes
}

/// `qmq send --message-id <id>` to the broker at `addr`; returns its standard output.
fn cli_send(addr: &str, subject: &str, id: &str, body: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_qmq"))
        .args([
            "send",
            "--broker",
            addr,
            "-s",
            subject,
            "--message-id",
            id,
            body,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The bodies stored on `subject` up to the message whose body is `end`, read by a consumer
/// group never seen before (what was stored, not redeliveries).
async fn stored_until(addr: &str, subject: &str, end: &str) -> Vec<String> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut consumer = PullConsumer::new(conn, subject, "fresh", "c1")
        .new_group_start(qmq_client::NewGroupStart::Earliest);
    let mut got = Vec::new();
    loop {
        let (first, ms) = consumer.pull(100, Duration::from_secs(5)).await.unwrap();
        assert!(!ms.is_empty(), "no {end:?} after {} messages", got.len());
        consumer
            .ack(first, first + ms.len() as i64 - 1)
            .await
            .unwrap();
        for m in ms {
            let body = m.attr("body").unwrap().to_owned();
            if body == end {
                return got;
            }
            got.push(body);
        }
    }
}

#[tokio::test]
async fn ids_acknowledged_before_a_kill_9_are_duplicates_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let addr = format!("127.0.0.1:{port}");
    let mut server = start(dir.path(), port);
    let sent = messages("dedup.k9", 300);
    assert!(send_codes(&addr, &sent).await.iter().all(|&c| c == 0));
    let out = cli_send(&addr, "dedup.k9", "by-hand", "replayed");
    assert_eq!(out.trim(), "sent by-hand");
    server.kill().unwrap(); // SIGKILL: no flush, no checkpoint
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    let again = send_codes(&addr, &sent).await;
    let duplicate = ProducerCode::Duplicate.code();
    assert!(
        again.iter().all(|&c| c == duplicate),
        "every id acknowledged before the kill is a duplicate: {again:?}"
    );
    let out = cli_send(&addr, "dedup.k9", "by-hand", "replayed again");
    assert_eq!(out.trim(), "sent by-hand (duplicate: already stored)");
    assert!(send_codes(&addr, &[with_body("end")]).await == [0]);
    let got = stored_until(&addr, "dedup.k9", "end").await;
    let mut expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    expected.push("replayed".into());
    assert_eq!(got, expected, "each message stored once");
    server.kill().unwrap();
    server.wait().unwrap();
}

fn with_body(body: &str) -> Message {
    let mut m = new_message("dedup.k9");
    m.set_attr("body", body);
    m
}

/// `qmq standalone` on `dir` (broker on `port`, delay server on the next) with metrics on;
/// returns it once ready, and its metrics address.
fn start_watched(dir: &std::path::Path, port: u16) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qmq"));
    cmd.args([
        "standalone",
        "--backup-http-listen",
        "127.0.0.1:0",
        "--flush",
        "sync",
        "--listen",
    ])
    .arg(format!("127.0.0.1:{port}"))
    .args(["--meta-http-listen", "127.0.0.1:0"])
    .args(["--meta-tcp-listen", "127.0.0.1:0"])
    .args(["--admin-token", "secret", "--metrics-listen", "127.0.0.1:0"])
    .arg("--delay-listen")
    .arg(format!("127.0.0.1:{}", port + 1))
    .arg("--data-dir")
    .arg(dir);
    let server = Proc::spawn(cmd);
    let metrics = metrics_addr(&server);
    server.wait_line("ready", 0, Duration::from_secs(60));
    (server, metrics)
}

/// The sum of every sample of the metric family `name` (any labels, `_total` or not).
async fn metric_sum(addr: &str, name: &str) -> f64 {
    let s = scrape(addr).await;
    s.samples
        .iter()
        .filter(|x| x.metric == name || x.metric == format!("{name}_total"))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `kill -9` of `qmq standalone` once its delay server has begun a dispatch spike: whatever
/// the moment the kill lands (between a batch stored on the broker and recorded as dispatched,
/// or not: the deterministic variant is `a_batch_redispatched_after_a_delay_server_crash_…`),
/// a fresh consumer group finds every message stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_server_killed_mid_dispatch_stores_nothing_twice() {
    const N: usize = 10_000;
    const SUBJECT: &str = "dedup.spike";
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let (broker, delay) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
    );
    let (mut server, metrics) = start_watched(dir.path(), port);
    // N messages all due at one moment: a dispatch spike.
    let due = qmq_broker::dedup::now_ms() as i64 + 4000;
    let conn = Connection::connect(&delay).await.unwrap();
    let all: Vec<Message> = (0..N)
        .map(|i| {
            let mut m = new_message(SUBJECT);
            m.set_attr("body", i.to_string());
            m.flags = m.flags.with_delay(true);
            m.expire_or_schedule = due;
            m
        })
        .collect();
    for chunk in all.chunks(100) {
        for r in send_batch(&conn, chunk, Duration::from_secs(30))
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
    // Kill it once dispatching has begun (not timed: the delay server's own counter says so).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let dispatched = loop {
        let d = metric_sum(&metrics, "qmq_delay_dispatched_messages").await;
        if d > 0.0 {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "nothing dispatched");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.kill9();
    eprintln!("killed after {dispatched} of {N} dispatched");

    let (mut server, metrics) = start_watched(dir.path(), port);
    // Everything recorded as dispatched after the restart: the re-dispatch is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while metric_sum(&metrics, "qmq_delay_pending_messages").await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "dispatch did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redispatched = metric_sum(&metrics, "qmq_delay_dispatched_messages").await;
    let duplicates = metric_sum(&metrics, "qmq_send_duplicates").await;
    eprintln!("{redispatched} dispatched after the restart, {duplicates} answered DUPLICATE");
    assert_eq!(send_codes(&broker, &[spike_end()]).await, [0]);
    let got = stored_until(&broker, SUBJECT, "end").await;
    let mut bodies: Vec<usize> = got.iter().map(|b| b.parse().unwrap()).collect();
    let stored = bodies.len();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), N, "every message stored");
    assert_eq!(stored, N, "{} stored twice", stored - N);
    server.kill9();
}

fn spike_end() -> Message {
    let mut m = new_message("dedup.spike");
    m.set_attr("body", "end");
    m
}

/// Forwards through a [`qmq_delay::BrokerForwarder`]; the first batch, once the broker has
/// stored it, is never answered: the engine is then shut down with that batch stored but not
/// recorded as dispatched, which is what a `kill -9` between the two leaves.
struct StallFirst {
    inner: qmq_delay::BrokerForwarder,
    stalled: std::sync::atomic::AtomicBool,
    forwarded: tokio::sync::watch::Sender<usize>,
}

impl qmq_delay::Dispatcher for StallFirst {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [qmq_delay::DueMessage],
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<qmq_delay::Outcome>, qmq_delay::DispatchError>,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let outcomes = self.inner.dispatch(batch).await?;
            if !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                assert!(outcomes.iter().all(|o| o.is_stored()), "{outcomes:?}");
                self.forwarded.send_replace(batch.len());
                std::future::pending::<()>().await;
            }
            Ok(outcomes)
        })
    }
}

/// Delay engine → in-process broker; the engine "crashes" after the broker stored its first
/// batch and before it recorded it; after the restart it offers that batch again. Returns
/// how many copies the broker stored of `n` messages, and the size of the re-offered batch.
async fn redispatch_after_a_crash(window: Duration, n: usize) -> (u64, usize) {
    use qmq_delay::{BrokerForwarder, DelayConfig, DelayEngine, ManualClock, NewMessage};
    const SUBJECT: &str = "dedup.redispatch";
    const T0: i64 = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut store = qmq_store::StoreConfig::new(dir.path().join("broker"));
    store.flush = qmq_store::FlushPolicy::SyncBeforeAck;
    let mut config = qmq_broker::BrokerConfig::new(store);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.dedup_window = window;
    let registry = qmq_metrics::Registry::new();
    config.metrics = Some(qmq_broker::BrokerMetrics::new(&registry));
    let broker = qmq_broker::serve(config).await.unwrap();
    let addr = broker.addr().to_string();
    let delay_config = || DelayConfig {
        segment_scale_minutes: 1,
        dispatch_batch: 50,
        ..DelayConfig::new(dir.path().join("delay"))
    };
    let clock = ManualClock::new(T0);

    let (forwarded, mut first_batch) = tokio::sync::watch::channel(0);
    let stalling = Arc::new(StallFirst {
        inner: BrokerForwarder::new(addr.clone()),
        stalled: Default::default(),
        forwarded,
    });
    let engine = DelayEngine::open(delay_config(), Arc::new(clock.clone()), stalling)
        .await
        .unwrap();
    let messages = (0..n)
        .map(|i| {
            let mut m = new_message(SUBJECT);
            m.message_id = format!("r-{i}");
            m.set_attr("body", i.to_string());
            NewMessage {
                subject: SUBJECT.into(),
                message_id: m.message_id.clone(),
                schedule_ms: T0 + 1_000,
                message: m.to_stored().unwrap(),
            }
        })
        .collect();
    for r in engine.schedule(messages).await {
        r.unwrap();
    }
    engine.flush().await.unwrap();
    clock.set(T0 + 2_000);
    let batch = *first_batch.wait_for(|&n| n > 0).await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);

    let engine = DelayEngine::open(
        delay_config(),
        Arc::new(clock.clone()),
        Arc::new(BrokerForwarder::new(addr)),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.stats().dispatched < n as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "not all dispatched: {:?}",
            engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.shutdown().await.unwrap();
    let stored = broker.store().subject_len(SUBJECT);
    broker.shutdown().await.unwrap();
    // The broker counted what it answered DUPLICATE.
    let text = registry.encode().unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let duplicates: f64 = scrape
        .samples
        .iter()
        .filter(|x| x.metric == "qmq_send_duplicates_total")
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    // Every message offered again was either stored again or answered DUPLICATE.
    assert_eq!(
        duplicates as u64 + stored,
        (n + batch) as u64,
        "{duplicates}"
    );
    (stored, batch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_redispatched_after_a_delay_server_crash_is_stored_once() {
    let (stored, batch) = redispatch_after_a_crash(Duration::from_secs(120), 200).await;
    assert!(batch > 0);
    assert_eq!(
        stored, 200,
        "the re-offered batch of {batch} was stored again"
    );
    // The same crash without the window: the batch is stored twice (what the window prevents).
    let (stored, batch) = redispatch_after_a_crash(Duration::ZERO, 200).await;
    assert_eq!(stored, 200 + batch as u64);
}
