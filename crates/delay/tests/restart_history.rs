//! A restart with 1,000,000 dispatched messages kept for retention costs what a fresh start
//! costs: a message due 100 ms after the engine is open is dispatched within 50 ms of its
//! time, and the process keeps (and peaks at) no more than 10 MB more memory than one opened
//! on an empty store.
//!
//! The history is written through the engine (scheduled, then dispatched to an in-process
//! dispatcher, then checkpointed by a clean shutdown); each restart runs in a child process
//! (this test binary, running [`child_restart`]) so its memory is its own: one on an empty
//! store (the baseline), one on the store with the history.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use qmq_delay::{
    Clock, DelayConfig, DelayEngine, DispatchError, Dispatcher, DueMessage, ManualClock,
    NewMessage, Outcome, SystemClock,
};
use tokio::sync::Notify;

const HISTORY: u64 = 1_000_000;
const HOUR: i64 = 3_600_000;
/// The child's data directory (set only when this binary runs as the child).
const DIR_VAR: &str = "QMQ_DELAY_RESTART_CHILD_DIR";

/// Counts what it is handed (all stored); keeps the delivery time of the message named
/// "probe".
#[derive(Default)]
struct Counter {
    n: AtomicU64,
    probe: Mutex<Option<i64>>,
    notify: Notify,
}

impl Dispatcher for Counter {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        Box::pin(async move {
            let at = SystemClock.now_ms();
            if let Some(p) = batch.iter().find(|m| m.message_id == "probe") {
                *self.probe.lock() = Some(at - p.due_ms);
            }
            self.n.fetch_add(batch.len() as u64, Ordering::SeqCst);
            self.notify.notify_waiters();
            Ok(vec![Outcome::Stored; batch.len()])
        })
    }
}

fn config(dir: &std::path::Path) -> DelayConfig {
    // Production bucket width (60 min); large dispatch batches only to write the history fast.
    DelayConfig {
        dispatch_batch: 4096,
        ..DelayConfig::new(dir)
    }
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One restart, as the child process: opens the engine on `$QMQ_DELAY_RESTART_CHILD_DIR`
/// with the real clock, schedules a message due 100 ms after the open returned ("ready"),
/// waits for it, and prints `RESULT open_ms=… late_ms=… rss_kb=… hwm_kb=…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by restart_with_a_million_dispatched_messages_in_retention as its child"]
async fn child_restart() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let counter = Arc::new(Counter::default());
    let read_before = io_read_bytes();
    let started = Instant::now();
    let engine = DelayEngine::open(config(dir.as_ref()), Arc::new(SystemClock), counter.clone())
        .await
        .unwrap();
    let open_ms = started.elapsed().as_millis();
    let open_read = io_read_bytes() - read_before;
    let ready = SystemClock.now_ms();
    let probe = NewMessage {
        subject: "history.probe".into(),
        message_id: "probe".into(),
        schedule_ms: ready + 100,
        message: Bytes::from_static(b"probe"),
    };
    engine.schedule_one(probe).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let late_ms = loop {
        let notified = counter.notify.notified();
        if let Some(late) = *counter.probe.lock() {
            break late;
        }
        tokio::time::timeout_at(deadline, notified)
            .await
            .expect("the probe was never dispatched");
    };
    let (rss, hwm) = (status_kb("VmRSS:"), status_kb("VmHWM:"));
    println!(
        "RESULT open_ms={open_ms} late_ms={late_ms} rss_kb={rss} hwm_kb={hwm} open_read={open_read}"
    );
    engine.shutdown().await.unwrap();
}

/// Bytes this process has read through read(2) and the like so far (`rchar`).
fn io_read_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// What one child reported.
#[derive(Debug)]
struct Restart {
    open_ms: u64,
    late_ms: i64,
    rss_kb: u64,
    hwm_kb: u64,
    /// Bytes read while the engine opened.
    open_read: u64,
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open {} ms, read {} bytes at open, probe {} ms late, RSS {} kB (peak {} kB)",
            self.open_ms, self.open_read, self.late_ms, self.rss_kb, self.hwm_kb
        )
    }
}

fn restart(dir: &std::path::Path) -> Restart {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_restart", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(DIR_VAR, dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line, before it.
    let line = stdout
        .lines()
        .find_map(|l| l.find("RESULT ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"));
    let field = |k: &str| -> i64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    Restart {
        open_ms: field("open_ms") as u64,
        late_ms: field("late_ms"),
        rss_kb: field("rss_kb") as u64,
        hwm_kb: field("hwm_kb") as u64,
        open_read: field("open_read") as u64,
    }
}

/// Schedules `HISTORY` messages of 16 bytes (ids `<prefix><n>`) due evenly over the hour from
/// `first_due`, in batches of 10,000.
async fn schedule_an_hour(engine: &DelayEngine, prefix: &str, first_due: i64) {
    let body = Bytes::from_static(b"sixteen bytes!!!");
    const BATCH: u64 = 10_000;
    for b in 0..HISTORY / BATCH {
        let batch = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                NewMessage {
                    subject: "history".into(),
                    message_id: format!("{prefix}{n}"),
                    schedule_ms: first_due + (n as i64 * HOUR) / HISTORY as i64,
                    message: body.clone(),
                }
            })
            .collect();
        assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
    }
}

/// Schedules `HISTORY` messages due 3 to 2 hours ago (two buckets, well within the 72 h
/// retention), dispatches them all and shuts down cleanly.
async fn write_history(dir: &std::path::Path) {
    let now = SystemClock.now_ms();
    let clock = ManualClock::new(now - 4 * HOUR);
    let counter = Arc::new(Counter::default());
    let engine = DelayEngine::open(config(dir), Arc::new(clock.clone()), counter.clone())
        .await
        .unwrap();
    schedule_an_hour(&engine, "h", now - 3 * HOUR).await;
    clock.set(now - HOUR);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while engine.stats().dispatched < HISTORY {
        let notified = counter.notify.notified();
        if engine.stats().dispatched >= HISTORY {
            break;
        }
        // Dispatch records are written after the dispatcher's answer: wake at least every
        // 50 ms to look again once the last batch is answered.
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            engine.stats()
        );
    }
    assert_eq!(counter.n.load(Ordering::SeqCst), HISTORY);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_million_dispatched_messages_in_retention() {
    let fresh_dir = tempfile::tempdir().unwrap();
    let history_dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    write_history(history_dir.path()).await;
    eprintln!(
        "history of {HISTORY} dispatched messages written in {:?}",
        t.elapsed()
    );
    let fresh = restart(fresh_dir.path());
    let history = restart(history_dir.path());
    eprintln!("fresh store: {fresh}\nwith history: {history}");
    // The issue's acceptance figures. Lateness guards "dispatch does not wait for history to
    // load" (before: up to ~400 ms per million dispatched messages kept, more on a debug
    // build); on a loaded 2-core machine a scheduling hiccup of the child could still exceed
    // 50 ms without any history at all, which the fresh baseline shows if it happens.
    assert!(
        history.late_ms <= 50,
        "probe {} ms late after a restart with history (fresh: {} ms)",
        history.late_ms,
        fresh.late_ms
    );
    // Memory kept, and at its peak: before, the open and the loads read every schedule and
    // dispatch log of the history (peak +22 MB per million on this test, up to +30 MB kept in
    // a long-running server).
    assert!(
        history.rss_kb <= fresh.rss_kb + 10 * 1024,
        "RSS {} kB with history, {} kB fresh",
        history.rss_kb,
        fresh.rss_kb
    );
    assert!(
        history.hwm_kb <= fresh.hwm_kb + 10 * 1024,
        "peak RSS {} kB with history, {} kB fresh",
        history.hwm_kb,
        fresh.hwm_kb
    );
}

/// Schedules `HISTORY` messages due in 48 to 49 hours (kept on disk, not in the wheel) and
/// shuts down cleanly.
async fn write_far_future(dir: &std::path::Path) {
    let now = SystemClock.now_ms();
    let engine = DelayEngine::open(
        config(dir),
        Arc::new(ManualClock::new(now)),
        Arc::new(Counter::default()),
    )
    .await
    .unwrap();
    schedule_an_hour(&engine, "f", now + 48 * HOUR).await;
    engine.shutdown().await.unwrap();
}

/// A restart with 1,000,000 messages pending two days ahead reads none of their schedule log
/// (verified when its bucket loads, two days later), so it opens as a fresh store does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_million_far_future_messages_pending() {
    let fresh_dir = tempfile::tempdir().unwrap();
    let far_dir = tempfile::tempdir().unwrap();
    write_far_future(far_dir.path()).await;
    let logs: u64 = walk_bytes(far_dir.path());
    let fresh = restart(fresh_dir.path());
    let far = restart(far_dir.path());
    eprintln!("fresh store: {fresh}\n1M far-future pending: {far}");
    eprintln!("the store holds {logs} bytes");
    // Before: every schedule log was read and CRC-checked at open (the whole store here).
    assert!(
        far.open_read < logs / 100,
        "read {} of {logs} bytes at open",
        far.open_read
    );
    assert!(
        far.hwm_kb <= fresh.hwm_kb + 10 * 1024,
        "peak RSS {} kB with far-future messages pending, {} kB fresh",
        far.hwm_kb,
        fresh.hwm_kb
    );
}

/// Bytes of the files under `dir`.
fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}
