//! Delay tier replication and failover, process by process on loopback (issue #14, test 5): a
//! meta server, a plain broker receiving due messages, and the two members of a delay group.
//! Every wait has a deadline; none is a sleep standing in for a condition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qmq_client::{new_message, send_batch, Connection, PullConsumer};
use qmq_protocol::codes::command;
use qmq_protocol::{SyncHeartbeat, SyncLogRequest, SyncType};

mod common;
use common::{field, free_port, metrics_addr, qmq, sample, scrape, Member, Proc};

const TOKEN: &str = "delay-repl-token";
const GROUP: &str = "dg";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A meta server, a plain broker and a delay group of two rows (master role 5, slave role 6).
struct Cluster {
    _tmp: tempfile::TempDir,
    _meta: Proc,
    _broker: Proc,
    meta_tcp: String,
    /// The meta server's metrics endpoint.
    meta_metrics: String,
    broker: String,
    members: [Member; 2],
}

impl Cluster {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = qmq();
        cmd.args(["meta", "--meta-http-listen", "127.0.0.1:0"])
            .args(["--meta-tcp-listen", "127.0.0.1:0", "--admin-token", TOKEN])
            .args(["--advertised-host", "127.0.0.1", "--data-dir"])
            .arg(tmp.path().join("meta"))
            .args(["--metrics-listen", "127.0.0.1:0"]);
        let meta = Proc::spawn(cmd);
        let meta_metrics = metrics_addr(&meta);
        let ready = meta.wait_line("ready", 0, Duration::from_secs(30)).1;
        let meta_http = field(&ready, "http");
        let meta_tcp = field(&ready, "tcp");
        let broker_port = free_port();
        let broker = format!("127.0.0.1:{broker_port}");
        let mut cmd = qmq();
        cmd.args(["broker", "--listen", &broker, "--data-dir"])
            .arg(tmp.path().join("broker"));
        let plain = Proc::spawn(cmd);
        plain.wait_line("ready", 0, Duration::from_secs(30));
        let members = [0, 1].map(|i| Member {
            port: free_port(),
            sync: free_port(),
            dir: tmp.path().join(format!("delay{i}")),
        });
        for (role, m) in [("5", &members[0]), ("6", &members[1])] {
            let out = qmq()
                .args(["tools", "--metaserver", &meta_http, "--token", TOKEN])
                .args(["add-broker", "--broker-group", GROUP, "--role", role])
                .args(["--hostname", "127.0.0.1", "--ip", "127.0.0.1"])
                .args(["--serve-port", &m.port.to_string()])
                .args(["--sync-port", &m.sync.to_string()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "add-broker: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self {
            _tmp: tmp,
            _meta: meta,
            _broker: plain,
            meta_tcp,
            meta_metrics,
            broker,
            members,
        }
    }

    fn start(&self, i: usize, mode: &str, extra: &[&str]) -> Proc {
        let m = &self.members[i];
        let mut cmd = qmq();
        cmd.args(["delay", "--replication", mode])
            .args(["--delay-listen", &m.addr(), "--sync-listen", &m.sync_addr()])
            .args(["--hostname", "127.0.0.1", "--meta", &self.meta_tcp])
            .args(["--broker", &self.broker])
            .args(extra)
            .arg("--data-dir")
            .arg(&m.dir);
        Proc::spawn(cmd)
    }
}

/// The message-log end a delay sync port reports (master or slave).
async fn wal_end(sync_addr: &str) -> Option<i64> {
    let conn = Connection::connect(sync_addr).await.ok()?;
    let mut body = BytesMut::new();
    SyncLogRequest {
        sync_type: SyncType::Heartbeat,
        message_offset: 0,
        action_offset: 0,
    }
    .encode(&mut body);
    let resp = conn
        .request(
            command::SYNC_LOG_REQUEST,
            body.freeze(),
            Duration::from_secs(3),
        )
        .await
        .ok()?;
    Some(SyncHeartbeat::decode(&resp.body).ok()?.message_end)
}

/// Delayed messages `range` due `due_of(i)`, sent in batches of 10; returns per message
/// whether it was acknowledged.
async fn send_delayed(
    addr: &str,
    range: std::ops::Range<usize>,
    due_of: impl Fn(usize) -> i64,
) -> Vec<(usize, i64, bool)> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let all: Vec<_> = range
        .map(|i| {
            let mut m = new_message("dl");
            m.set_attr("body", i.to_string());
            m.flags = m.flags.with_delay(true);
            m.expire_or_schedule = due_of(i);
            (i, m.expire_or_schedule, m)
        })
        .collect();
    for chunk in all.chunks(10) {
        let ms: Vec<_> = chunk.iter().map(|(_, _, m)| m.clone()).collect();
        let results = send_batch(&conn, &ms, Duration::from_secs(10))
            .await
            .unwrap();
        for ((i, due, _), r) in chunk.iter().zip(results) {
            out.push((*i, *due, r.is_ok()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_delay_master_loses_no_acknowledged_delayed_message() {
    let c = Cluster::new();
    let mut master = c.start(0, "async", &[]);
    master.wait_line("qmq delay master epoch=", 0, Duration::from_secs(30));
    let slave = c.start(1, "async", &[]);
    slave.wait_line("qmq delay slave epoch=", 0, Duration::from_secs(30));

    // Consume continuously from the start, recording when each body was first seen.
    let seen: Arc<Mutex<HashMap<usize, (i64, usize)>>> = Arc::default();
    let (s2, broker) = (seen.clone(), c.broker.clone());
    let consumer = tokio::spawn(async move {
        let conn = Connection::connect(&broker).await.unwrap();
        let mut consumer = PullConsumer::new(conn, "dl", "g", "c1")
            .new_group_start(qmq_client::NewGroupStart::Earliest);
        loop {
            let Ok((first, ms)) = consumer.pull(100, Duration::from_millis(200)).await else {
                continue;
            };
            let now = now_ms();
            if ms.is_empty() {
                continue;
            }
            let _ = consumer.ack(first, first + ms.len() as i64 - 1).await;
            let mut s = s2.lock().unwrap();
            for m in &ms {
                let body: usize = m.attr("body").unwrap().parse().unwrap();
                s.entry(body).or_insert((now, 0)).1 += 1;
            }
        }
    });

    const N: usize = 200;
    let t0 = now_ms();
    let sent = send_delayed(&c.members[0].addr(), 0..N, |i| {
        t0 + 1500 + (i as i64 * 6500) / N as i64
    })
    .await;
    let acked: Vec<(usize, i64)> = sent
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(i, d, _)| (*i, *d))
        .collect();
    assert_eq!(acked.len(), N, "every send acknowledged by the master");

    // The slave caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = wal_end(&c.members[0].sync_addr()).await;
        let b = wal_end(&c.members[1].sync_addr()).await;
        if a.is_some() && a == b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slave did not catch up: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill the master once part of the messages was delivered (its dispatch state is
    // replicated: the promoted slave must not deliver all of those again), with the rest
    // still pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < N / 4 {
        assert!(Instant::now() < deadline, "nothing delivered by the master");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered_before = seen.lock().unwrap().len();
    let killed_at = now_ms();
    master.kill9();
    assert!(delivered_before < N, "messages still pending at the kill");
    let line = slave
        .wait_line("qmq delay master epoch=", 0, Duration::from_secs(60))
        .1;
    let promoted_at = now_ms();
    let m = scrape(&c.meta_metrics).await;
    assert_eq!(
        sample(
            &m,
            "qmq_meta_failovers_total",
            &[("trigger", "lease_expired")]
        ),
        Some(1.0),
        "the meta server counted the promotion"
    );

    // Every acknowledged message is delivered, none before its time.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = seen.lock().unwrap().len();
        if n >= N {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of {N} delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.abort();
    let seen = seen.lock().unwrap().clone();
    for (i, due) in &acked {
        let (at, _) = seen[i];
        assert!(at >= *due, "message {i} consumed {} ms early", due - at);
    }
    let duplicates: usize = seen.values().map(|(_, n)| n - 1).sum();
    println!(
        "delay failover: killed at +{} ms with {delivered_before} delivered, promoted after {} ms ({line}); {N} delivered, {duplicates} duplicates",
        killed_at - t0,
        promoted_at - killed_at
    );
    assert!(
        duplicates < delivered_before,
        "the promoted slave knew what the old master delivered: {duplicates} duplicates of {delivered_before}"
    );

    // The old master comes back as the new master's slave and catches up.
    let old = c.start(0, "async", &[]);
    old.wait_line("qmq delay slave epoch=2", 0, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = wal_end(&c.members[1].sync_addr()).await;
        let b = wal_end(&c.members[0].sync_addr()).await;
        if a.is_some() && a == b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old master did not catch up: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replication_without_a_slave_fails_sends_after_the_timeout() {
    let c = Cluster::new();
    let with_metrics = ["--metrics-listen", "127.0.0.1:0"];
    let master = c.start(
        0,
        "sync",
        &[
            "--replication-timeout-ms",
            "800",
            with_metrics[0],
            with_metrics[1],
        ],
    );
    let master_metrics = metrics_addr(&master);
    master.wait_line("qmq delay master epoch=", 0, Duration::from_secs(30));
    let due = now_ms() + 60_000;
    let started = Instant::now();
    let sent = send_delayed(&c.members[0].addr(), 0..1, |_| due).await;
    assert!(!sent[0].2, "not acknowledged without the slave");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "waited for the slave"
    );
    // `qmq delay --metrics-listen`: the timeout and the refusal are counted, the role shown.
    let m = scrape(&master_metrics).await;
    assert_eq!(
        sample(&m, "qmq_delay_replication_sync_timeouts_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "qmq_delay_send_failed_total",
            &[("reason", "not_replicated")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "qmq_delay_role", &[("role", "master")]),
        Some(1.0)
    );
    assert_eq!(sample(&m, "qmq_delay_epoch", &[]), Some(1.0));
    // With the slave up, sends are acknowledged once it wrote them.
    let slave = c.start(1, "sync", &with_metrics);
    let slave_metrics = metrics_addr(&slave);
    slave.wait_line("qmq delay slave epoch=", 0, Duration::from_secs(30));
    let s = scrape(&slave_metrics).await;
    assert_eq!(
        sample(&s, "qmq_delay_role", &[("role", "slave")]),
        Some(1.0)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sent = send_delayed(&c.members[0].addr(), 1..2, |_| due).await;
        if sent[0].2 {
            break;
        }
        assert!(Instant::now() < deadline, "sync sends never acknowledged");
    }
    let m = wal_end(&c.members[0].sync_addr()).await.unwrap();
    let s = wal_end(&c.members[1].sync_addr()).await.unwrap();
    assert_eq!(m, s, "the acknowledged message is on the slave");
}
