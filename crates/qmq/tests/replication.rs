//! Replication and automatic failover, process by process on loopback: a meta server and the
//! two members of a broker group, killed (SIGKILL), frozen (SIGSTOP) and restarted while
//! producers and consumers run. Every wait has a deadline; none is a sleep standing in for a
//! condition.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qmq_client::{new_message, send_batch, Connection, PullConsumer};
use qmq_protocol::codes::command;
use qmq_protocol::{SyncHeartbeat, SyncLogRequest, SyncType};

mod common;
use common::{
    dashboard_names, exposed_names, field, free_port, metrics_addr, qmq, sample, scrape, Member,
    Proc,
};

const TOKEN: &str = "repl-token";
const GROUP: &str = "rg";

/// A meta server and a two-member group.
struct Cluster {
    _tmp: tempfile::TempDir,
    /// The meta servers (the first one is the one members and tools talk to).
    metas: Vec<Proc>,
    meta_tcp: String,
    meta_http: String,
    members: [Member; 2],
    mode: &'static str,
}

/// Starts a meta server on `database` (None: its own SQLite under `dir`); returns it and its
/// HTTP and TCP addresses.
fn start_meta(dir: &Path, database: Option<&str>) -> (Proc, String, String) {
    let mut cmd = qmq();
    cmd.args([
        "meta",
        "--meta-http-listen",
        "127.0.0.1:0",
        "--meta-tcp-listen",
        "127.0.0.1:0",
        "--admin-token",
        TOKEN,
        "--advertised-host",
        "127.0.0.1",
        "--data-dir",
    ])
    .arg(dir);
    if let Some(url) = database {
        cmd.args(["--database-url", url]);
    }
    let meta = Proc::spawn(cmd);
    let (_, ready) = meta.wait_line("ready", 0, Duration::from_secs(30));
    let (http, tcp) = (field(&ready, "http"), field(&ready, "tcp"));
    (meta, http, tcp)
}

impl Cluster {
    /// Starts a meta server and registers the two members: the first as master, the second as
    /// slave.
    fn new(mode: &'static str) -> Self {
        Self::with_metas(mode, None, 1)
    }

    /// As [`Cluster::new`], with `metas` meta servers sharing `database` (None: one SQLite).
    fn with_metas(mode: &'static str, database: Option<&str>, metas: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let started: Vec<_> = (0..metas)
            .map(|i| start_meta(&tmp.path().join(format!("meta{i}")), database))
            .collect();
        let meta_http = started[0].1.clone();
        let meta_tcp = started[0].2.clone();
        let metas: Vec<Proc> = started.into_iter().map(|(p, _, _)| p).collect();
        let members = [0, 1].map(|i| Member {
            port: free_port(),
            sync: free_port(),
            dir: tmp.path().join(format!("node{i}")),
        });
        for (role, m) in [("0", &members[0]), ("1", &members[1])] {
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
            metas,
            meta_tcp,
            meta_http,
            members,
            mode,
        }
    }

    /// Starts member `i` (`--flush sync`).
    fn start(&self, i: usize) -> Proc {
        self.start_with(i, &[])
    }

    /// Starts member `i` (`--flush sync`) with `extra` arguments.
    fn start_with(&self, i: usize, extra: &[&str]) -> Proc {
        let m = &self.members[i];
        let mut cmd = qmq();
        cmd.args(["broker", "--flush", "sync", "--group", GROUP])
            .args(extra)
            .args(["--replication", self.mode])
            .args(["--listen", &m.addr(), "--sync-listen", &m.sync_addr()])
            .args(["--hostname", "127.0.0.1", "--meta", &self.meta_tcp])
            .arg("--data-dir")
            .arg(&m.dir);
        Proc::spawn(cmd)
    }
}

/// The (message, action) log ends a sync port reports.
async fn log_ends(sync_addr: &str) -> Option<(i64, i64)> {
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
    let hb = SyncHeartbeat::decode(&resp.body).ok()?;
    Some((hb.message_end, hb.action_end))
}

/// Waits until both members' logs end at the same offsets (the slave caught up).
async fn caught_up(c: &Cluster, within: Duration) -> (i64, i64) {
    let deadline = Instant::now() + within;
    loop {
        let a = log_ends(&c.members[0].sync_addr()).await;
        let b = log_ends(&c.members[1].sync_addr()).await;
        if let (Some(a), Some(b)) = (a, b) {
            if a == b {
                return a;
            }
        }
        assert!(
            Instant::now() < deadline,
            "slave did not catch up: {a:?} vs {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `bodies` to `addr` in batches of 20; every message must be acknowledged.
async fn send_all(addr: &str, subject: &str, bodies: std::ops::Range<usize>) {
    let conn = Connection::connect(addr).await.unwrap();
    let all: Vec<_> = bodies
        .map(|i| {
            let mut m = new_message(subject);
            m.set_attr("body", i.to_string());
            m
        })
        .collect();
    for chunk in all.chunks(20) {
        for r in send_batch(&conn, chunk, Duration::from_secs(10))
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
}

/// Pulls (and acks) up to `n` messages of `subject` for `group` from `addr`; returns their
/// bodies. Stops early when a pull comes back empty.
async fn consume(addr: &str, subject: &str, group: &str, n: usize) -> Vec<usize> {
    let conn = Connection::connect(addr).await.unwrap();
    let mut consumer = PullConsumer::new(conn, subject, group, "c1")
        .new_group_start(qmq_client::NewGroupStart::Earliest);
    let mut got = Vec::new();
    while got.len() < n {
        let want = (n - got.len()).min(100) as i32;
        let (first, ms) = consumer.pull(want, Duration::from_secs(2)).await.unwrap();
        if ms.is_empty() {
            break;
        }
        consumer
            .ack(first, first + ms.len() as i64 - 1)
            .await
            .unwrap();
        got.extend(
            ms.iter()
                .map(|m| m.attr("body").unwrap().parse::<usize>().unwrap()),
        );
    }
    got
}

/// What a store holds, for comparing master and slave offline.
#[derive(Debug, PartialEq)]
struct Snapshot {
    subjects: Vec<qmq_store::SubjectInfo>,
    messages: Vec<(String, u64, Vec<u8>)>,
    groups: Vec<String>,
    consumers: Vec<String>,
}

fn snapshot(dir: &Path) -> Snapshot {
    let store = qmq_store::Store::open(qmq_store::StoreConfig::new(dir.join("broker"))).unwrap();
    let subjects = store.subject_infos().unwrap();
    let mut messages = Vec::new();
    for s in &subjects {
        for m in store.read(&s.subject, s.first, 1_000_000).unwrap() {
            messages.push((s.subject.clone(), m.sequence, m.message.to_vec()));
        }
    }
    let mut groups: Vec<String> = store.groups().iter().map(|g| format!("{g:?}")).collect();
    groups.sort();
    let mut consumers: Vec<String> = store.consumers().iter().map(|c| format!("{c:?}")).collect();
    consumers.sort();
    store.close().unwrap();
    Snapshot {
        subjects,
        messages,
        groups,
        consumers,
    }
}

/// Test 3: a slave that was down while messages arrived and were consumed catches up after
/// its restart; its message log and consumer state equal the master's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_slave_catches_up_with_log_and_consumer_state() {
    let c = Cluster::new("async");
    let mut master = c.start(0);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let mut slave = c.start(1);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    send_all(&c.members[0].addr(), "catch.up", 0..200).await;
    caught_up(&c, Duration::from_secs(30)).await;

    slave.kill9();
    send_all(&c.members[0].addr(), "catch.up", 200..1200).await;
    send_all(&c.members[0].addr(), "catch.other", 0..100).await;
    let got = consume(&c.members[0].addr(), "catch.up", "g1", 700).await;
    assert_eq!(got.len(), 700);

    let slave = c.start(1);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    let ends = caught_up(&c, Duration::from_secs(60)).await;
    assert!(ends.0 > 0 && ends.1 > 0, "{ends:?}");

    master.terminate();
    let mut slave = slave;
    slave.terminate();
    let a = snapshot(&c.members[0].dir);
    let b = snapshot(&c.members[1].dir);
    assert_eq!(a.messages.len(), 1300);
    assert_eq!(a, b, "slave state differs from the master's");
}

/// Test 4: a consumer group keeps its position across a failover: the promoted slave serves
/// what the group had not consumed, not the whole subject again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_keep_their_position_across_failover() {
    let c = Cluster::new("sync");
    let mut master = c.start(0);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let slave = c.start(1);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    send_all(&c.members[0].addr(), "pos", 0..300).await;
    let first = consume(&c.members[0].addr(), "pos", "g1", 100).await;
    assert_eq!(first, (0..100).collect::<Vec<_>>());
    caught_up(&c, Duration::from_secs(30)).await;

    let killed = Instant::now();
    master.kill9();
    slave.wait_line("master epoch=2", 0, Duration::from_secs(30));
    eprintln!("promoted {:?} after the kill", killed.elapsed());
    let rest = consume(&c.members[1].addr(), "pos", "g1", 1000).await;
    assert_eq!(
        rest,
        (100..300).collect::<Vec<_>>(),
        "group rewound or lost"
    );
}

/// Metrics of a replicated pair (`--metrics-listen`): each member's role and epoch, the
/// master's view of its slave's lag, which reaches 0 once the slave has caught up, and no
/// replication incident counted on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_roles_and_the_slave_catching_up() {
    let c = Cluster::new("sync");
    let with_metrics = ["--metrics-listen", "127.0.0.1:0"];
    let master = c.start_with(0, &with_metrics);
    let master_metrics = metrics_addr(&master);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let slave = c.start_with(1, &with_metrics);
    let slave_metrics = metrics_addr(&slave);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    send_all(&c.members[0].addr(), "metrics.repl", 0..100).await;
    assert_eq!(
        consume(&c.members[0].addr(), "metrics.repl", "g1", 40)
            .await
            .len(),
        40
    );
    caught_up(&c, Duration::from_secs(30)).await;

    // The master learns how far the slave is from its heartbeats (every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape(&master_metrics).await;
        let lag = |log| sample(&m, "qmq_replication_slave_lag_bytes", &[("log", log)]);
        let (message, action) = (lag("message"), lag("action"));
        if message == Some(0.0) && action == Some(0.0) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "slave lag still {message:?} / {action:?} after catching up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = scrape(&slave_metrics).await;
    for (scraped, role) in [(&m, "master"), (&s, "slave")] {
        for r in ["master", "slave", "starting"] {
            let want = if r == role { 1.0 } else { 0.0 };
            assert_eq!(
                sample(scraped, "qmq_broker_role", &[("role", r)]),
                Some(want),
                "{role}: role {r}"
            );
        }
        assert_eq!(
            sample(scraped, "qmq_broker_epoch", &[]),
            Some(1.0),
            "{role}"
        );
        for counter in [
            "qmq_replication_sync_timeouts_total",
            "qmq_replication_async_fallbacks_total",
            "qmq_replication_truncated_bytes_total",
            "qmq_replication_resyncs_total",
            "qmq_replication_diverged_total",
        ] {
            assert_eq!(
                sample(scraped, counter, &[]),
                Some(0.0),
                "{role}: {counter}"
            );
        }
    }
    assert_eq!(
        sample(
            &m,
            "qmq_received_messages_total",
            &[("subject", "metrics.repl")]
        ),
        Some(100.0)
    );
    let group = [("subject", "metrics.repl"), ("group", "g1")];
    assert_eq!(sample(&m, "qmq_acked_messages_total", &group), Some(40.0));
    // The Grafana dashboard's replication queries (tests/dashboard.rs checks the rest).
    let exposed = exposed_names(&qmq_metrics::scrape(&master_metrics).await.unwrap().text);
    let missing: Vec<_> = dashboard_names()
        .into_iter()
        .filter(|n| n.starts_with("qmq_replication_") || n == "qmq_broker_epoch")
        .filter(|n| !exposed.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries missing on a master: {missing:?}"
    );
    // The slave replays the group's progress: the same lag on both.
    assert_eq!(sample(&m, "qmq_consumer_lag_messages", &group), Some(60.0));
    assert_eq!(sample(&s, "qmq_consumer_lag_messages", &group), Some(60.0));
}

/// A slave promoted in sync mode with `--on-replication-timeout async` does not make its first
/// sends wait the replication timeout for a slave that cannot be there (its old master was just
/// killed): they are acknowledged without one (counted as fallbacks, not timeouts) until the
/// restarted member copies again; from then on sends wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_sync_master_with_policy_async_does_not_wait_for_an_absent_slave() {
    let c = Cluster::new("sync");
    let extra = [
        "--on-replication-timeout",
        "async",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let mut master = c.start_with(0, &extra);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let slave = c.start_with(1, &extra);
    let slave_metrics = metrics_addr(&slave);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    send_all(&c.members[0].addr(), "promoted.async", 0..20).await;
    caught_up(&c, Duration::from_secs(30)).await;

    master.kill9();
    slave.wait_line("master epoch=2", 0, Duration::from_secs(30));
    send_all(&c.members[1].addr(), "promoted.async", 20..40).await;
    let counter = |m: &prometheus_parse::Scrape, name| sample(m, name, &[]).unwrap();
    let m = scrape(&slave_metrics).await;
    assert_eq!(
        counter(&m, "qmq_replication_sync_timeouts_total"),
        0.0,
        "a send waited for a slave that was known to be absent"
    );
    let fallbacks = counter(&m, "qmq_replication_async_fallbacks_total");
    assert!(fallbacks >= 1.0, "fallbacks {fallbacks}");

    let back = c.start_with(0, &extra);
    back.wait_line("slave epoch=2", 0, Duration::from_secs(60));
    caught_up(&c, Duration::from_secs(30)).await;
    send_all(&c.members[1].addr(), "promoted.async", 40..60).await;
    let m = scrape(&slave_metrics).await;
    assert_eq!(counter(&m, "qmq_replication_sync_timeouts_total"), 0.0);
    assert_eq!(
        counter(&m, "qmq_replication_async_fallbacks_total"),
        fallbacks,
        "with a slave copying again, sends wait for it"
    );
    assert_eq!(
        consume(&c.members[1].addr(), "promoted.async", "g1", 100).await,
        (0..60).collect::<Vec<_>>()
    );
}

/// Test 1: synchronous replication with fsync on both sides; the master is killed five times
/// in a row (each time the other member), while a producer sends and records every
/// acknowledged message: all of them are consumed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_master_five_times_loses_no_acknowledged_message() {
    let c = Cluster::new("sync");
    let mut procs = [Some(c.start(0)), None];
    procs[0]
        .as_ref()
        .unwrap()
        .wait_line("master epoch=1", 0, Duration::from_secs(30));
    procs[1] = Some(c.start(1));
    procs[1]
        .as_ref()
        .unwrap()
        .wait_line("slave epoch=1", 0, Duration::from_secs(30));

    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let master_now = Arc::new(Mutex::new(c.members[0].addr()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (acked, master_now, stop) = (acked.clone(), master_now.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            let mut conn: Option<(String, Connection)> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let addr = master_now.lock().unwrap().clone();
                if conn.as_ref().is_none_or(|(a, _)| *a != addr) {
                    conn = Connection::connect(&addr)
                        .await
                        .ok()
                        .map(|c| (addr.clone(), c));
                }
                let Some((_, cn)) = &conn else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let batch: Vec<_> = (next..next + 5)
                    .map(|i| {
                        let mut m = new_message("k9.sync");
                        m.set_attr("body", i.to_string());
                        m
                    })
                    .collect();
                match send_batch(cn, &batch, Duration::from_secs(5)).await {
                    Ok(results) => {
                        let mut a = acked.lock().unwrap();
                        for (i, r) in results.iter().enumerate() {
                            if r.is_ok() {
                                a.push(next + i);
                            }
                        }
                        next += 5;
                    }
                    Err(_) => {
                        conn = None;
                        next += 5;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };

    let mut master = 0usize;
    for round in 0..5u64 {
        let epoch = round + 1;
        // Let the producer get acknowledgements from this master.
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 50 {
            assert!(Instant::now() < deadline, "no progress in round {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let slave = 1 - master;
        let skip = procs[slave].as_ref().unwrap().line_count();
        procs[master].take().unwrap().kill9();
        let killed = Instant::now();
        procs[slave].as_ref().unwrap().wait_line(
            &format!("master epoch={}", epoch + 1),
            skip,
            Duration::from_secs(30),
        );
        *master_now.lock().unwrap() = c.members[slave].addr();
        eprintln!("round {round}: promoted after {:?}", killed.elapsed());
        // Bring the killed member back: it rejoins as the slave.
        let back = c.start(master);
        back.wait_line(
            &format!("slave epoch={}", epoch + 1),
            0,
            Duration::from_secs(60),
        );
        procs[master] = Some(back);
        master = slave;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 250, "{} acknowledged", acked.len());
    let got = consume(&c.members[master].addr(), "k9.sync", "check", usize::MAX).await;
    let mut seen = std::collections::HashMap::<usize, usize>::new();
    for b in &got {
        *seen.entry(*b).or_default() += 1;
    }
    let lost: Vec<_> = acked.iter().filter(|i| !seen.contains_key(i)).collect();
    let duplicates = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "acknowledged {}, consumed {}, duplicates {duplicates}",
        acked.len(),
        got.len()
    );
    assert!(lost.is_empty(), "lost acknowledged messages: {lost:?}");
}

/// Test 2: the master is frozen (SIGSTOP) past its lease; the slave is promoted; the old
/// master, resumed, acknowledges nothing any more and rejoins as a slave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_never_acknowledges_after_its_replacement_is_promoted() {
    let c = Cluster::new("async");
    let old = c.start(0);
    old.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let new = c.start(1);
    new.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    send_all(&c.members[0].addr(), "frozen", 0..50).await;

    // Requests in flight while the old master is frozen: sent with a long client timeout so
    // a late answer would still be seen.
    let conn = Connection::connect(&c.members[0].addr()).await.unwrap();
    old.signal("STOP");
    let pending: Vec<_> = (0..5)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut m = new_message("frozen");
                m.set_attr("body", (1000 + i).to_string());
                send_batch(&conn, &[m], Duration::from_secs(60)).await
            })
        })
        .collect();
    new.wait_line("master epoch=2", 0, Duration::from_secs(30));
    old.signal("CONT");
    for p in pending {
        // An error (refused, connection closed) is no acknowledgement either.
        if let Ok(results) = p.await.unwrap() {
            assert!(
                results.iter().all(|r| r.is_err()),
                "the old master acknowledged a write after the promotion: {results:?}"
            );
        }
    }
    // And a fresh send to the old master is refused.
    let fresh = Connection::connect(&c.members[0].addr()).await;
    if let Ok(fresh) = fresh {
        let mut m = new_message("frozen");
        m.set_attr("body", "2000");
        if let Ok(results) = send_batch(&fresh, &[m], Duration::from_secs(10)).await {
            assert!(results.iter().all(|r| r.is_err()), "{results:?}");
        }
    }
    old.wait_line("slave epoch=2", 0, Duration::from_secs(60));
}

/// The Rust client through the meta server, across a real failover: a producer and a listener
/// know only the meta server; the master is killed (SIGKILL) and restarted (it rejoins as the
/// slave); without a restart of the clients the producer moves to the promoted slave and the
/// listener consumes every message the producer reported acknowledged, before and after the
/// failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_producer_and_listener_follow_a_real_failover() {
    use qmq_client::{
        Consumer, ConsumerConfig, MetaRouter, MetaRouterConfig, NewGroupStart, Producer,
        ProducerConfig, ReceivedMessage, SubscribeOptions,
    };
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    const SUBJECT: &str = "follow.failover";
    let c = Cluster::new("sync");
    let mut master = c.start(0);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let slave = c.start(1);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));

    let router = || Arc::new(MetaRouter::new(MetaRouterConfig::new(&c.meta_http, "test")));
    let producer = Arc::new(Producer::new(
        router(),
        ProducerConfig {
            retry_backoff: Duration::from_millis(100),
            ..ProducerConfig::default()
        },
    ));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = producer.send(new_message(SUBJECT)).await {
                    acked.lock().unwrap().push((r.message_id, r.broker));
                }
            }
        })
    };
    let consumed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let consumer = Consumer::new(
        router(),
        ConsumerConfig {
            pull_wait: Duration::from_millis(200),
            backoff: Duration::from_millis(20),
            ..ConsumerConfig::default()
        },
    );
    let seen = consumed.clone();
    consumer
        .subscribe(
            SUBJECT,
            "follower",
            move |m: ReceivedMessage| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().insert(m.message_id.clone());
                    Ok(())
                }
            },
            SubscribeOptions {
                new_group_start: NewGroupStart::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    let on = |addr: &str| {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b == addr)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while on(&c.members[0].addr()) < 50 {
        assert!(
            Instant::now() < deadline,
            "no sends through the first master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.kill9();
    slave.wait_line("master epoch=2", 0, Duration::from_secs(30));
    // Synchronous replication needs a slave: the killed member comes back as one (as a
    // supervisor restarts it); until then sends fail after the replication timeout and are
    // retried by the producer.
    let back = c.start(0);
    back.wait_line("slave epoch=2", 0, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while on(&c.members[1].addr()) < 50 {
        assert!(
            Instant::now() < deadline,
            "the producer did not move to the new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .unwrap()
        .unwrap();
    producer.close().await;
    let acked: HashSet<String> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = acked.difference(&consumed.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged messages never consumed",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
}

/// The group's replication view from the meta server at `http` (`qmq tools
/// list-broker-groups`): its epoch, its epochs' numbers and its members' roles.
fn group_view(http: &str) -> (i64, Vec<i64>, Vec<i64>) {
    let out = qmq()
        .args([
            "tools",
            "--metaserver",
            http,
            "--token",
            TOKEN,
            "list-broker-groups",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = v
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == GROUP)
        .unwrap();
    let epochs = g["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_i64().unwrap())
        .collect();
    let roles = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_i64().unwrap())
        .collect();
    (g["epoch"].as_i64().unwrap(), epochs, roles)
}

/// Test 6: two meta server processes on one PostgreSQL database both run the failover checker
/// against the same expired master, three failovers in a row: each makes exactly one promotion
/// (one new epoch, one master), whichever meta server wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meta_servers_on_one_postgres_promote_once_per_failover() {
    const TEST: &str = "two_meta_servers_on_one_postgres_promote_once_per_failover";
    let Some(admin) = qmq_testkit::require(&qmq_testkit::POSTGRES, TEST) else {
        return;
    };
    let name = format!("qmqrepl_{:016x}", rand::random::<u64>());
    let exec = |sql: String| {
        let admin = admin.clone();
        async move {
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
                .await
                .unwrap();
            sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
        }
    };
    exec(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    exec(format!("CREATE DATABASE {name}")).await;
    let url = qmq_testkit::with_database(&admin, &name);
    {
        let c = Cluster::with_metas("async", Some(&url), 2);
        let second_http = {
            // The second meta server's HTTP address, for reading the outcome from it too.
            let lines = c.metas[1].lines.lock().unwrap();
            field(lines.iter().find(|l| l.contains("ready")).unwrap(), "http")
        };
        let mut procs = [Some(c.start(0)), None];
        procs[0]
            .as_ref()
            .unwrap()
            .wait_line("master epoch=1", 0, Duration::from_secs(30));
        procs[1] = Some(c.start(1));
        procs[1]
            .as_ref()
            .unwrap()
            .wait_line("slave epoch=1", 0, Duration::from_secs(30));
        let mut master = 0;
        for round in 1..=3i64 {
            let slave = 1 - master;
            let skip = procs[slave].as_ref().unwrap().line_count();
            procs[master].take().unwrap().kill9();
            procs[slave].as_ref().unwrap().wait_line(
                &format!("master epoch={}", round + 1),
                skip,
                Duration::from_secs(30),
            );
            for http in [&c.meta_http, &second_http] {
                let (epoch, epochs, roles) = group_view(http);
                assert_eq!(epoch, round + 1, "one promotion per failover");
                assert_eq!(epochs, (1..=round + 1).collect::<Vec<_>>());
                let mut roles = roles;
                roles.sort();
                assert_eq!(roles, vec![0, 1], "exactly one master");
            }
            let back = c.start(master);
            back.wait_line(
                &format!("slave epoch={}", round + 1),
                0,
                Duration::from_secs(60),
            );
            procs[master] = Some(back);
            master = slave;
        }
    }
    exec(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

/// Whether the message log in member `m`'s store still has its first segment (offset 0).
fn has_first_segment(m: &Member) -> bool {
    m.dir
        .join("broker/messagelog")
        .join(format!("{:020}", 0))
        .exists()
}

/// Directories a resync moved replaced data into, in member `m`'s store.
fn resync_dirs(m: &Member) -> Vec<PathBuf> {
    match std::fs::read_dir(m.dir.join("broker")) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("resync-"))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Test 6: a slave started only after the master's retention deleted its first message-log
/// segments cannot copy from offset 0: it resyncs from the master's snapshot by itself,
/// catches up, and after a failover the group goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_behind_the_masters_retention_resyncs_by_itself() {
    // Tiny segments, one-second retention, retention passes every 200 ms (hidden test flags).
    const TINY: [&str; 6] = [
        "--test-segment-bytes",
        "4096",
        "--test-retention-secs",
        "1",
        "--test-checkpoint-interval-ms",
        "200",
    ];
    let c = Cluster::new("async");
    let mut master = c.start_with(0, &TINY);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    send_all(&c.members[0].addr(), "resync", 0..400).await;
    // The group consumes (and acks) the first 150: retention may delete what lies before.
    let got = consume(&c.members[0].addr(), "resync", "g1", 150).await;
    assert_eq!(got, (0..150).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(30);
    while has_first_segment(&c.members[0]) {
        assert!(Instant::now() < deadline, "retention deleted nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let slave = c.start_with(1, &TINY);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    caught_up(&c, Duration::from_secs(60)).await;
    assert_eq!(
        resync_dirs(&c.members[1]).len(),
        1,
        "the slave resynced once"
    );
    assert!(!has_first_segment(&c.members[1]));

    // Copying goes on: more messages and consumption, then the master dies.
    send_all(&c.members[0].addr(), "resync", 400..450).await;
    let got = consume(&c.members[0].addr(), "resync", "g1", 50).await;
    assert_eq!(got, (150..200).collect::<Vec<_>>());
    caught_up(&c, Duration::from_secs(30)).await;
    master.kill9();
    slave.wait_line("master epoch=2", 0, Duration::from_secs(30));
    let rest = consume(&c.members[1].addr(), "resync", "g1", 1000).await;
    assert_eq!(
        rest,
        (200..450).collect::<Vec<_>>(),
        "group rewound or lost after the failover"
    );
    let mut slave = slave;
    slave.terminate();
}

/// The duplicate window across a failover: the ids the old master stored (and the slave
/// copied) are answered DUPLICATE by the promoted slave, which rebuilt its window from the
/// copied log, and each message stays stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_slave_answers_the_old_masters_ids_as_duplicates() {
    use qmq_client::SendError;
    use qmq_protocol::ProducerCode;

    const SUBJECT: &str = "dup.failover";
    let c = Cluster::new("sync");
    let mut master = c.start(0);
    master.wait_line("master epoch=1", 0, Duration::from_secs(30));
    let slave = c.start(1);
    slave.wait_line("slave epoch=1", 0, Duration::from_secs(30));
    let sent: Vec<_> = (0..100)
        .map(|i| {
            let mut m = new_message(SUBJECT);
            m.message_id = format!("f-{i}");
            m.set_attr("body", i.to_string());
            m
        })
        .collect();
    let conn = Connection::connect(&c.members[0].addr()).await.unwrap();
    for chunk in sent.chunks(20) {
        for r in send_batch(&conn, chunk, Duration::from_secs(10))
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
    caught_up(&c, Duration::from_secs(30)).await;
    master.kill9();
    slave.wait_line("master epoch=2", 0, Duration::from_secs(30));

    // The new master answers once its lease runs; until then it refuses whole frames.
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn = Connection::connect(&c.members[1].addr()).await.unwrap();
    let mut answers = Vec::new();
    for chunk in sent.chunks(20) {
        loop {
            match send_batch(&conn, chunk, Duration::from_secs(10)).await {
                Ok(results) => {
                    answers.extend(results);
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the new master never served: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    assert_eq!(answers.len(), 100);
    for a in &answers {
        assert!(
            matches!(
                a,
                Err(SendError::Refused {
                    code: ProducerCode::Duplicate,
                    ..
                })
            ),
            "{a:?}"
        );
    }
    let got = consume(&c.members[1].addr(), SUBJECT, "fresh", 1000).await;
    assert_eq!(
        got,
        (0..100).collect::<Vec<_>>(),
        "each message stored once"
    );
}
