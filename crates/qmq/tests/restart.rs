//! A `qmq standalone` killed and started again on the same data directory and ports, while a
//! `Producer` sends realtime and delayed messages without pause: the restart (well under the
//! client's 5 s send timeout) costs no send (no failed callback), and every message sent is
//! consumed.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use qmq_client::{
    new_message, Connection, MessageExt, MetaRouter, MetaRouterConfig, NewGroupStart, Producer,
    ProducerConfig, PullConsumer, SendError,
};
use std::sync::Mutex;

mod common;
use common::Proc;

/// `qmq standalone` on `dir`: broker on `port`, delay server on the next, meta server on the
/// given HTTP and TCP ports (fixed, so clients find it again after the restart).
fn standalone(dir: &std::path::Path, port: u16, http: u16, tcp: u16) -> Proc {
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
    .arg("--meta-http-listen")
    .arg(format!("127.0.0.1:{http}"))
    .arg("--meta-tcp-listen")
    .arg(format!("127.0.0.1:{tcp}"))
    .args(["--admin-token", "secret", "--delay-listen"])
    .arg(format!("127.0.0.1:{}", port + 1))
    .arg("--data-dir")
    .arg(dir);
    let server = Proc::spawn(cmd);
    server.wait_line("ready", 0, Duration::from_secs(60));
    server
}

/// What the callbacks saw.
#[derive(Default)]
struct Sent {
    /// Woken by every callback.
    progress: Arc<tokio::sync::Notify>,
    /// Ids stored, by subject.
    realtime: HashSet<String>,
    delayed: HashSet<String>,
    failed: Vec<String>,
    /// The most tries a stored message took.
    max_tries: u32,
}

/// Sends one realtime and one delayed (1 s) message every 10 ms until `stop` is set.
async fn send_until(
    producer: Arc<Producer>,
    sent: Arc<Mutex<Sent>>,
    stop: Arc<tokio::sync::Notify>,
) -> usize {
    let mut n = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.notified() => return n,
            _ = tick.tick() => {}
        }
        for delayed in [false, true] {
            let mut m = new_message(if delayed {
                "restart.delay"
            } else {
                "restart.rt"
            });
            if delayed {
                m.set_delay(Duration::from_secs(1));
            }
            let id = m.message_id.clone();
            let s = sent.clone();
            let queued = producer.send_with_callback(m, move |r: Result<_, SendError>| {
                let mut s = s.lock().unwrap();
                s.progress.notify_waiters();
                if let Ok(receipt) = &r {
                    s.max_tries = s.max_tries.max(receipt.tries);
                }
                match r {
                    Ok(_) if delayed => {
                        s.delayed.insert(id);
                    }
                    Ok(_) => {
                        s.realtime.insert(id);
                    }
                    Err(e) => s.failed.push(format!("{id}: {e}")),
                }
            });
            if let Err(e) = queued {
                sent.lock().unwrap().failed.push(format!("not queued: {e}"));
            }
            n += 1;
        }
    }
}

/// Pulls `subject` as a new group from the start until every id of `want` was seen.
async fn consume_all(broker: &str, subject: &str, want: &HashSet<String>) {
    let conn = Connection::connect(broker).await.unwrap();
    let mut consumer = PullConsumer::new(conn, subject, "restart-check", "c1")
        .new_group_start(NewGroupStart::Earliest);
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{subject}: {} of {} sent messages consumed",
            want.intersection(&seen).count(),
            want.len()
        );
        let (first, ms) = consumer.pull(500, Duration::from_secs(1)).await.unwrap();
        if ms.is_empty() {
            continue;
        }
        consumer
            .ack(first, first + ms.len() as i64 - 1)
            .await
            .unwrap();
        seen.extend(ms.into_iter().map(|m| m.message_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_restart_under_load_costs_no_send() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port_pair();
    let (http, tcp) = (common::free_port(), common::free_port());
    let broker = format!("127.0.0.1:{port}");
    let mut server = standalone(dir.path(), port, http, tcp);

    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(
        &format!("127.0.0.1:{http}"),
        "restart-test",
    )));
    let config = ProducerConfig::default();
    let producer = Arc::new(Producer::new(router, config.clone()));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let sender = tokio::spawn(send_until(producer.clone(), sent.clone(), stop.clone()));

    // Sending runs; then the server dies (SIGKILL: no flush, no goodbye) and comes back on the
    // same directory and ports.
    let wait_stored = |n: usize| {
        let sent = sent.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let progress = sent.lock().unwrap().progress.clone();
                let notified = progress.notified();
                {
                    let s = sent.lock().unwrap();
                    if s.realtime.len() >= n && s.delayed.len() >= n {
                        return;
                    }
                }
                tokio::time::timeout_at(deadline, notified)
                    .await
                    .expect("sends stalled");
            }
        }
    };
    wait_stored(100).await;
    server.kill9();
    let down = std::time::Instant::now();
    let server = standalone(dir.path(), port, http, tcp);
    let outage = down.elapsed();
    assert!(
        outage < config.send_timeout,
        "the restart took {outage:?}: longer than the send timeout, out of this test's scope"
    );
    // Sends made after the restart are stored as well.
    let before = {
        let s = sent.lock().unwrap();
        s.realtime.len().max(s.delayed.len())
    };
    wait_stored(before + 300).await;
    stop.notify_one();
    let queued = sender.await.unwrap();
    producer.close().await;

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert!(
        sent.failed.is_empty(),
        "{} of {queued} sends failed across a {outage:?} restart: {:?}",
        sent.failed.len(),
        &sent.failed[..sent.failed.len().min(5)]
    );
    assert_eq!(sent.realtime.len() + sent.delayed.len(), queued);
    eprintln!(
        "{queued} sends across a {outage:?} restart: none failed, at most {} tries",
        sent.max_tries
    );
    consume_all(&broker, "restart.rt", &sent.realtime).await;
    consume_all(&broker, "restart.delay", &sent.delayed).await;
    drop(server);
}
