//! What a restart reads and in which order: damaged far-future schedule logs are found when
//! their bucket loads (rebuilt from the message log, or reported), a crash between recording
//! a dispatch and the checkpoint that settles the bucket skips nothing, the bucket holding
//! "now" is loaded first and a bucket that cannot be loaded holds nothing else up.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_once, config, msg, Recorder};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use qmq_delay::{
    Clock, DelayConfig, DelayEngine, DelayStats, DispatchError, Dispatcher, DueMessage,
    ManualClock, Outcome,
};

const MINUTE: i64 = 60_000;
/// A bucket start (one-minute buckets).
const B0: i64 = 1_700_000_040_000;

fn sched_log(dir: &Path, bucket: i64) -> PathBuf {
    dir.join("schedule_log").join(format!("{bucket}.sched"))
}

fn disp_log(dir: &Path, bucket: i64) -> PathBuf {
    dir.join("dispatch_log").join(format!("{bucket}.disp"))
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

/// Polls `engine.stats()` (bounded) until `cond` holds.
async fn stats_until(engine: &DelayEngine, what: &str, cond: impl Fn(&DelayStats) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = engine.stats();
        if cond(&s) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A dispatcher that notes, with every batch, what the engine had counted as damaged and
/// repaired by then: proof that damage was found before the bucket dispatched anything.
struct Witness {
    rec: Arc<Recorder>,
    engine: OnceLock<Weak<DelayEngine>>,
    seen: Mutex<Vec<(u64, u64)>>,
}

impl Dispatcher for Witness {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        if let Some(e) = self.engine.get().and_then(Weak::upgrade) {
            let s = e.stats();
            self.seen.lock().push((s.damaged, s.repaired));
        }
        self.rec.dispatch(batch)
    }
}

/// Schedules 200 messages due in the bucket 10 days after `now` (one every 10 ms), with
/// `cfg`; then more, due a day later, `filler` times (to roll the message log on); flushes
/// `flushes` times and shuts down. Returns the far bucket's start.
async fn far_future(cfg: DelayConfig, clock: &ManualClock, filler: usize, flushes: usize) -> i64 {
    let now = clock.now_ms();
    let far = (now + 10 * 24 * 3600 * 1000) / MINUTE * MINUTE;
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(cfg, Arc::new(clock.clone()), rec)
        .await
        .unwrap();
    let batch = (0..200)
        .map(|i| msg(&format!("far{i:03}"), far + i * 10))
        .collect();
    assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
    for f in 0..filler {
        let batch = (0..100)
            .map(|i| msg(&format!("later{f}-{i}"), far + 24 * 3600 * 1000 + i))
            .collect();
        assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
    }
    for _ in 0..flushes {
        engine.flush().await.unwrap();
    }
    engine.shutdown().await.unwrap();
    far
}

/// Opens the engine with a [`Witness`] dispatcher.
async fn open_witnessed(cfg: DelayConfig, clock: &ManualClock) -> (Arc<DelayEngine>, Arc<Witness>) {
    let witness = Arc::new(Witness {
        rec: Recorder::new(Arc::new(clock.clone())),
        engine: OnceLock::new(),
        seen: Mutex::new(Vec::new()),
    });
    let engine = Arc::new(
        DelayEngine::open(cfg, Arc::new(clock.clone()), witness.clone())
            .await
            .unwrap(),
    );
    witness.engine.set(Arc::downgrade(&engine)).unwrap();
    (engine, witness)
}

#[tokio::test]
async fn a_damaged_far_future_schedule_log_is_rebuilt_when_its_bucket_loads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(B0);
    let far = far_future(config(dir.path()), &clock, 0, 1).await;
    let path = sched_log(dir.path(), far);
    let intact = fs::read(&path).unwrap();
    // Bit rot in the part the checkpoint counts durable (the open no longer reads it).
    flip(&path, intact.len() / 2);

    let (engine, witness) = open_witnessed(config(dir.path()), &clock).await;
    let s = engine.stats();
    assert_eq!((s.scheduled, s.damaged, s.repaired), (200, 0, 0), "{s:?}");
    clock.set(far + 3_000);
    witness
        .rec
        .wait_for("every far message", |log| log.len() == 200)
        .await;
    let mut ids = witness.rec.ids();
    assert_once(&ids, 200);
    ids.sort();
    assert_eq!(ids[0], "far000");
    let s = engine.stats();
    assert_eq!(s.damaged, 0, "{s:?}");
    assert!(s.repaired >= 1, "{s:?}");
    // Found and rebuilt before the bucket dispatched anything.
    assert!(witness
        .seen
        .lock()
        .iter()
        .all(|&(_, repaired)| repaired >= 1));
    assert_eq!(fs::read(&path).unwrap(), intact, "rebuilt byte for byte");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_damaged_far_future_schedule_log_the_message_log_no_longer_holds_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // The engine's clock ahead of the files' times, so retention may delete message-log
    // segments at once.
    let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let clock = ManualClock::new((real.as_millis() as i64 + 3_600_000) / MINUTE * MINUTE);
    let cfg = || DelayConfig {
        wal_segment_bytes: 4096,
        wal_retention: Duration::ZERO,
        ..config(dir.path())
    };
    // Enough later messages that the far ones' segments are not the active one; three
    // checkpoints past them so retention may delete them.
    let far = far_future(cfg(), &clock, 10, 3).await;
    {
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = DelayEngine::open(cfg(), Arc::new(clock.clone()), rec)
            .await
            .unwrap();
        let report = engine.clean().await.unwrap();
        assert!(report.wal_segments >= 2, "{report:?}");
        engine.shutdown().await.unwrap();
    }
    let path = sched_log(dir.path(), far);
    let len = fs::metadata(&path).unwrap().len() as usize;
    flip(&path, len / 2);

    let (engine, witness) = open_witnessed(cfg(), &clock).await;
    assert_eq!(engine.stats().damaged, 0);
    clock.set(far + 3_000);
    stats_until(&engine, "damage found", |s| s.damaged > 0).await;
    let lost = engine.stats().damaged as usize;
    assert!(lost > 0 && lost < 200, "{lost}");
    witness
        .rec
        .wait_for("the records before the damage", |log| {
            log.len() == 200 - lost
        })
        .await;
    // The intact records before the damaged one, each once; reported before any dispatch.
    let mut ids = witness.rec.ids();
    assert_once(&ids, 200 - lost);
    ids.sort();
    let expected: Vec<String> = (0..200 - lost).map(|i| format!("far{i:03}")).collect();
    assert_eq!(ids, expected);
    assert!(witness.seen.lock().iter().all(|&(damaged, _)| damaged > 0));
    assert_eq!(engine.stats().repaired, 0);
    // The damaged bytes stay where they are, for whoever investigates.
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, len);
    engine.shutdown().await.unwrap();
}

/// 300 messages due in the bucket `B0 + MINUTE`, checkpointed before any is dispatched.
async fn one_bucket(dir: &Path, clock: &ManualClock) -> i64 {
    let b = B0 + MINUTE;
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir), Arc::new(clock.clone()), rec)
        .await
        .unwrap();
    let batch = (0..300)
        .map(|i| msg(&format!("m{i}"), b + i * 100))
        .collect();
    assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
    engine.shutdown().await.unwrap();
    b
}

/// A configuration that never checkpoints by itself.
fn no_checkpoints(dir: &Path) -> DelayConfig {
    DelayConfig {
        flush_interval: Duration::from_secs(3600),
        ..config(dir)
    }
}

/// Delivers all 300 messages of [`one_bucket`], waits until their dispatch records are
/// written, then crashes (no checkpoint after the dispatch).
async fn dispatch_then_crash(dir: &Path, clock: &ManualClock, b: i64) {
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(no_checkpoints(dir), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    clock.set(b + 40_000);
    rec.wait_for("all 300", |log| log.len() == 300).await;
    stats_until(&engine, "recorded", |s| s.dispatched == 300).await;
    drop(engine);
}

#[tokio::test]
async fn a_crash_between_dispatch_and_the_checkpoint_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(B0);
    let b = one_bucket(dir.path(), &clock).await;
    dispatch_then_crash(dir.path(), &clock, b).await;

    // The checkpoint still counts nothing dispatched: the bucket is loaded, its dispatch log
    // read, and nothing goes out again.
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    stats_until(&engine, "bucket loaded", |s| s.dispatched == 300).await;
    assert_eq!(engine.stats().wheel_entries, 0);
    assert_eq!(rec.count(), 0, "{:?}", rec.ids());
    engine.shutdown().await.unwrap();

    // Now the checkpoint settles it: nothing of it is read, nothing delivered.
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    let s = engine.stats();
    assert_eq!(
        (s.dispatched, s.loaded_buckets, s.wheel_entries),
        (300, 1, 0)
    );

    // A settled bucket that gains a record (due now) delivers it; so does a restart after a
    // crash before that record was dispatched.
    engine.shutdown().await.unwrap();
    let stuck = Recorder::build(Arc::new(clock.clone()), Some(0), 0, false);
    let engine = DelayEngine::open(
        no_checkpoints(dir.path()),
        Arc::new(clock.clone()),
        stuck.clone(),
    )
    .await
    .unwrap();
    let late = engine.schedule_one(msg("late", b)).await.unwrap();
    assert_eq!(late.due_ms / MINUTE * MINUTE, b, "same bucket");
    stuck.wait_calls(1).await;
    drop(engine);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    rec.wait_for("the late one", |log| log.len() == 1).await;
    assert_eq!(rec.ids(), ["late"]);
    stats_until(&engine, "all recorded", |s| s.dispatched == 301).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lost_dispatch_log_tail_is_delivered_again_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(B0);
    let b = one_bucket(dir.path(), &clock).await;
    dispatch_then_crash(dir.path(), &clock, b).await;
    // The page cache lost the dispatch log's unsynced tail (a power cut).
    let disp = disp_log(dir.path(), b);
    let len = fs::metadata(&disp).unwrap().len();
    assert_eq!(len, 300 * 12);
    fs::OpenOptions::new()
        .write(true)
        .open(&disp)
        .unwrap()
        .set_len(100 * 12)
        .unwrap();
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    rec.wait_for("the unrecorded 200", |log| log.len() == 200)
        .await;
    stats_until(&engine, "all recorded", |s| s.dispatched == 300).await;
    assert_once(&rec.ids(), 200);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bucket_that_cannot_be_loaded_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(B0);
    let next = B0 + MINUTE;
    {
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec)
            .await
            .unwrap();
        let now_ms = (0..10).map(|i| msg(&format!("now{i}"), B0 + 40_000 + i * 100));
        let next_ms = (0..10).map(|i| msg(&format!("next{i}"), next + i * 100));
        assert!(engine
            .schedule(now_ms.chain(next_ms).collect())
            .await
            .iter()
            .all(|r| r.is_ok()));
        engine.shutdown().await.unwrap();
    }
    clock.set(B0 + 1_000);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    // The bucket holding now loads; the next one is beyond the load-ahead (30 s) yet.
    stats_until(&engine, "now bucket loaded", |s| s.wheel_entries == 10).await;
    // The next bucket's dispatch log cannot be read: its load fails, again and again.
    let blocker = disp_log(dir.path(), next);
    fs::create_dir(&blocker).unwrap();
    // now0..now5 are due (B0 + 40 000 to B0 + 40 500).
    clock.set(B0 + 40_500);
    rec.wait_for("the due messages of the bucket holding now", |log| {
        log.len() == 6
    })
    .await;
    assert!(rec.ids().iter().all(|id| id.starts_with("now")));
    fs::remove_dir(&blocker).unwrap();
    clock.set(next + 1_000);
    rec.wait_for("everything once the next bucket loads", |log| {
        log.len() == 20
    })
    .await;
    assert_once(&rec.ids(), 20);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_bucket_holding_now_is_loaded_first() {
    const OLD: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(B0 - MINUTE);
    let now_bucket = B0 + 2 * MINUTE;
    {
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec)
            .await
            .unwrap();
        for part in 0..OLD / 1_000 {
            let batch = (0..1_000)
                .map(|i| {
                    let n = part * 1_000 + i;
                    msg(&format!("old{n}"), B0 + n)
                })
                .collect();
            assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
        }
        let batch = (0..5)
            .map(|i| msg(&format!("now{i}"), now_bucket + i))
            .collect();
        assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
        engine.shutdown().await.unwrap();
    }
    // A restart after an outage: the old bucket is overdue, the messages of the bucket
    // holding now are due.
    clock.set(now_bucket + 100);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = DelayEngine::open(config(dir.path()), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();
    rec.wait_for("everything", |log| log.len() == OLD as usize + 5)
        .await;
    let ids = rec.ids();
    // The bucket holding now is loaded first and dispatches while the big overdue bucket is
    // still being read: its messages come first (before, every bucket was loaded before
    // anything was dispatched, and the overdue ones, due earlier, came first).
    let first: Vec<_> = ids[..5].iter().map(String::as_str).collect();
    assert_eq!(first, ["now0", "now1", "now2", "now3", "now4"]);
    assert_once(&ids, OLD as usize + 5);
    engine.shutdown().await.unwrap();
}
