//! Fault injection at the delay server's disk sites (message log, schedule logs, dispatch logs,
//! checkpoints): each injected failure is reported as an error, nothing acknowledged is lost,
//! and a reopen recovers. Run with `cargo test -p qmq-delay --features failpoints --test
//! failpoints`; the tests share the failpoint registry, so they run one at a time.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{assert_once, config, msg, Recorder};
use qmq_delay::{DelayConfig, DelayEngine, ManualClock, ScheduleError};

const T0: i64 = 1_700_000_000_000;

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the test lock and a clean failpoint registry for one test.
struct Faults<'a> {
    _serial: MutexGuard<'static, ()>,
    scenario: Option<fail::FailScenario<'a>>,
}

impl Faults<'_> {
    fn new() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Self {
            _serial: serial,
            scenario: Some(fail::FailScenario::setup()),
        }
    }
}

impl Drop for Faults<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.scenario.take() {
            s.teardown();
        }
    }
}

/// Flushes only when asked: a drop is then a crash with everything since the last flush
/// unconfirmed.
fn cfg(dir: &std::path::Path) -> DelayConfig {
    DelayConfig {
        flush_interval: Duration::from_secs(3600),
        ..config(dir)
    }
}

async fn open(dir: &std::path::Path, clock: &ManualClock, rec: &Arc<Recorder>) -> DelayEngine {
    DelayEngine::open(cfg(dir), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap()
}

/// Waits (bounded) until the engine has recorded `n` messages as dispatched: recording follows
/// the dispatcher's answer on a blocking thread.
async fn wait_recorded(engine: &DelayEngine, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.stats().dispatched < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} never recorded: {:?}",
            engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn schedule_ok(engine: &DelayEngine, prefix: &str, n: usize, due: i64) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let batch = ids.iter().map(|id| msg(id, due)).collect();
    for r in engine.schedule(batch).await {
        r.unwrap();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_log_write_and_fsync_failures_refuse_the_batch_and_store_none_of_it() {
    for fp in ["delay::wal::write", "delay::wal::fsync"] {
        let _faults = Faults::new();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec).await;
        let mut acked = schedule_ok(&engine, "a", 10, T0 + 1_000).await;
        fail::cfg(fp, "return").unwrap();
        let refused: Vec<_> = (0..10).map(|i| msg(&format!("b{i}"), T0 + 1_000)).collect();
        for r in engine.schedule(refused).await {
            assert!(matches!(r, Err(ScheduleError::Store(_))), "{fp}: {r:?}");
        }
        fail::remove(fp);
        acked.extend(schedule_ok(&engine, "c", 10, T0 + 1_000).await);
        clock.set(T0 + 2_000);
        rec.wait_for("the acknowledged messages", |l| l.len() >= 20)
            .await;
        wait_recorded(&engine, 20).await;
        // Crash before any flush: the reopen replays the whole message log.
        drop(engine);
        let rec2 = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec2).await;
        engine.flush().await.unwrap();
        let stats = engine.stats();
        assert_eq!(stats.scheduled, 20, "{fp}: a refused batch is not stored");
        let mut all = rec.ids();
        all.extend(rec2.ids());
        assert_once(&all, 20);
        let got: HashSet<String> = all.into_iter().collect();
        assert_eq!(got, acked.into_iter().collect::<HashSet<_>>(), "{fp}");
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_log_write_failure_is_an_error_and_loses_nothing() {
    let _faults = Faults::new();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;
    let mut acked = schedule_ok(&engine, "a", 10, T0 + 1_000).await;
    fail::cfg("delay::schedule::write", "return").unwrap();
    let batch: Vec<_> = (0..10).map(|i| msg(&format!("b{i}"), T0 + 1_000)).collect();
    for r in engine.schedule(batch).await {
        assert!(matches!(r, Err(ScheduleError::Store(_))), "{r:?}");
    }
    fail::remove("delay::schedule::write");
    acked.extend(schedule_ok(&engine, "c", 10, T0 + 1_000).await);
    clock.set(T0 + 2_000);
    rec.wait_for("the acknowledged messages", |l| l.len() >= 20)
        .await;
    wait_recorded(&engine, 20).await;
    drop(engine);
    // The refused batch reached the message log but not its schedule log: its senders were
    // told "store error" (outcome unknown: a replay may still deliver it). Every acknowledged
    // message is delivered exactly once, and the reopen recovers.
    let rec2 = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec2).await;
    engine.flush().await.unwrap();
    // The bucket's dispatched count is known once the loader has read its dispatch log.
    wait_recorded(&engine, engine.stats().scheduled).await;
    let stats = engine.stats();
    assert_eq!(stats.dispatched, stats.scheduled, "{stats:?}");
    engine.shutdown().await.unwrap();
    let mut all = rec.ids();
    all.extend(rec2.ids());
    let got: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(got.len(), all.len(), "nothing twice: {all:?}");
    assert!(
        acked.iter().all(|id| got.contains(id)),
        "nothing acknowledged lost"
    );
    assert!(got
        .iter()
        .all(|id| acked.contains(id) || id.starts_with('b')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_and_checkpoint_failures_fail_the_flush_and_a_reopen_recovers() {
    for fp in [
        "delay::schedule::fsync",
        "delay::dispatch::fsync",
        "delay::log::dir_fsync",
        "delay::checkpoint::write",
        "delay::checkpoint::fsync",
        "delay::checkpoint::rename",
    ] {
        let _faults = Faults::new();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec).await;
        let mut acked = schedule_ok(&engine, "a", 10, T0 + 1_000).await;
        clock.set(T0 + 2_000);
        rec.wait_for("the first messages", |l| l.len() >= 10).await;
        wait_recorded(&engine, 10).await;
        fail::cfg(fp, "return").unwrap();
        // A new bucket (new schedule log) besides the new dispatch log: every site has work.
        acked.extend(schedule_ok(&engine, "b", 10, T0 + 180_000).await);
        let err = engine.flush().await;
        assert!(err.is_err(), "{fp}: the flush reports the failure");
        fail::remove(fp);
        engine.flush().await.unwrap();
        acked.extend(schedule_ok(&engine, "c", 10, T0 + 180_000).await);
        drop(engine);
        let rec2 = Recorder::new(Arc::new(clock.clone()));
        clock.set(T0 + 240_000);
        let engine = open(dir.path(), &clock, &rec2).await;
        rec2.wait_for("the later messages", |l| l.len() >= 20).await;
        wait_recorded(&engine, 30).await;
        engine.flush().await.unwrap();
        let mut all = rec.ids();
        all.extend(rec2.ids());
        assert_once(&all, 30);
        let got: HashSet<String> = all.into_iter().collect();
        assert_eq!(got, acked.into_iter().collect::<HashSet<_>>(), "{fp}");
        assert_eq!(engine.stats().dispatched, 30, "{fp}");
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_failures_at_open_are_errors_and_the_next_open_recovers() {
    // Dispatch logs are read when their bucket loads, not at open: a failure there is retried
    // (`read_failures_while_running_are_retried_and_lose_nothing`).
    for fp in ["delay::wal::read", "delay::checkpoint::read"] {
        let _faults = Faults::new();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec).await;
        let acked = schedule_ok(&engine, "a", 10, T0 + 1_000).await;
        clock.set(T0 + 2_000);
        rec.wait_for("half of them", |l| l.len() >= 10).await;
        wait_recorded(&engine, 10).await;
        let more = schedule_ok(&engine, "b", 10, T0 + 60_000).await;
        // Crash: the reopen must read the message log and the checkpoint.
        drop(engine);
        fail::cfg(fp, "return").unwrap();
        let failed = DelayEngine::open(cfg(dir.path()), Arc::new(clock.clone()), rec.clone()).await;
        assert!(failed.is_err(), "{fp}: the open reports the failure");
        fail::remove(fp);
        let rec2 = Recorder::new(Arc::new(clock.clone()));
        clock.set(T0 + 120_000);
        let engine = open(dir.path(), &clock, &rec2).await;
        rec2.wait_for("the rest", |l| l.len() >= 10).await;
        engine.flush().await.unwrap();
        let mut all = rec.ids();
        all.extend(rec2.ids());
        assert_once(&all, 20);
        let expected: HashSet<String> = acked.into_iter().chain(more).collect();
        assert_eq!(all.into_iter().collect::<HashSet<_>>(), expected, "{fp}");
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_failures_while_running_are_retried_and_lose_nothing() {
    for fp in ["delay::schedule::read", "delay::dispatch::read"] {
        let _faults = Faults::new();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec).await;
        // Two buckets: one loaded at once, one loaded later (while the fault is active).
        let mut acked = schedule_ok(&engine, "a", 10, T0 + 1_000).await;
        acked.extend(schedule_ok(&engine, "b", 10, T0 + 120_000).await);
        fail::cfg(fp, "3*return").unwrap();
        clock.set(T0 + 2_000);
        clock.set(T0 + 180_000);
        rec.wait_for("every message", |l| l.len() >= 20).await;
        assert_once(&rec.ids(), 20);
        assert_eq!(
            rec.ids().into_iter().collect::<HashSet<_>>(),
            acked.into_iter().collect::<HashSet<_>>(),
            "{fp}"
        );
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_log_write_failure_may_repeat_those_messages_but_not_later_ones() {
    let _faults = Faults::new();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;
    let first = schedule_ok(&engine, "a", 10, T0 + 1_000).await;
    let later = schedule_ok(&engine, "b", 10, T0 + 3_000).await;
    fail::cfg("delay::dispatch::write", "return").unwrap();
    clock.set(T0 + 2_000);
    rec.wait_for("the first messages", |l| l.len() >= 10).await;
    wait_recorded(&engine, 10).await;
    fail::remove("delay::dispatch::write");
    clock.set(T0 + 4_000);
    rec.wait_for("the later messages", |l| l.len() >= 20).await;
    engine.shutdown().await.unwrap();
    let rec2 = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec2).await;
    // Not recorded: offered again (at least once, never lost).
    rec2.wait_for("the unrecorded messages again", |l| l.len() >= 10)
        .await;
    engine.flush().await.unwrap();
    let again: HashSet<String> = rec2.ids().into_iter().collect();
    assert_eq!(again, first.into_iter().collect::<HashSet<_>>());
    // Recorded after the fault was gone, on a record boundary: not offered again.
    assert!(later.iter().all(|id| !again.contains(id)));
    engine.shutdown().await.unwrap();
}

/// A current-thread runtime runs the engine's tasks on the test's own thread: no disk site may
/// be reached from it (they belong on the writer thread or in `spawn_blocking`).
#[tokio::test]
async fn disk_work_never_runs_on_the_async_runtime() {
    let _faults = Faults::new();
    let runtime_thread = std::thread::current().id();
    let sites = [
        "delay::schedule::read",
        "delay::dispatch::read",
        "delay::dispatch::write",
        "delay::schedule::fsync",
        "delay::dispatch::fsync",
        "delay::log::dir_fsync",
        "delay::checkpoint::write",
    ];
    let hits: Arc<parking_lot::Mutex<Vec<(&'static str, bool)>>> = Arc::default();
    for site in sites {
        let hits = hits.clone();
        fail::cfg_callback(site, move || {
            hits.lock()
                .push((site, std::thread::current().id() == runtime_thread));
        })
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;
    schedule_ok(&engine, "a", 10, T0 + 1_000).await;
    schedule_ok(&engine, "b", 10, T0 + 120_000).await;
    clock.set(T0 + 2_000);
    rec.wait_for("the first bucket", |l| l.len() >= 10).await;
    wait_recorded(&engine, 10).await;
    clock.set(T0 + 180_000);
    rec.wait_for("the second bucket", |l| l.len() >= 20).await;
    wait_recorded(&engine, 20).await;
    engine.flush().await.unwrap();
    engine.shutdown().await.unwrap();
    let hits = hits.lock().clone();
    for site in sites {
        assert!(
            hits.iter().any(|(s, _)| *s == site),
            "{site} reached: {hits:?}"
        );
    }
    let on_runtime: Vec<_> = hits.iter().filter(|(_, on)| *on).collect();
    assert!(
        on_runtime.is_empty(),
        "disk work on the runtime thread: {on_runtime:?}"
    );
}
