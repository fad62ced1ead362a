//! Replication primitives of the delay server: copying the message log chunk by chunk into an
//! empty replica (same schedule logs, same scheduled set), refusing bad chunks, cutting an
//! unreplicated tail to side files, and copying dispatch state.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{config, msg, Recorder};
use qmq_delay::replication::{cut_unreplicated, Replica, ReplicaError};
use qmq_delay::{DelayEngine, ManualClock, WalChunk};

const T0: i64 = 1_700_000_000_000;

/// Schedules `n` messages spread over several one-minute buckets (some due at once).
async fn fill(engine: &DelayEngine, n: usize, prefix: &str) {
    for i in 0..n {
        let due = T0 + (i as i64 % 5) * 45_000 + i as i64;
        engine
            .schedule_one(msg(&format!("{prefix}-{i}"), due))
            .await
            .unwrap();
    }
}

/// Copies everything the engine's message log holds after the replica's end, in chunks of at
/// most `max` bytes. Returns the number of chunks.
fn copy_all(engine: &DelayEngine, replica: &mut Replica, max: usize) -> usize {
    let mut chunks = 0;
    loop {
        match engine.read_wal_chunk(replica.wal_end(), max).unwrap() {
            WalChunk::Records { start, bytes } => {
                replica.append_wal(start, &bytes).unwrap();
                chunks += 1;
            }
            WalChunk::AtEnd => return chunks,
            WalChunk::Ahead { end } => panic!("replica ahead of the master ({end})"),
        }
    }
}

/// Every schedule log of a store: bucket file name -> bytes.
fn schedule_logs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("schedule_log"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sched"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn quiet_engine_clock() -> (Arc<ManualClock>, Arc<Recorder>) {
    // The clock never reaches the due times: nothing is dispatched on the master.
    let clock = Arc::new(ManualClock::new(T0 - 3_600_000));
    let rec = Recorder::new(clock.clone());
    (clock, rec)
}

#[tokio::test]
async fn a_replica_copied_chunk_by_chunk_holds_the_same_schedule() {
    let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (clock, rec) = quiet_engine_clock();
    let engine = DelayEngine::open(config(master_dir.path()), clock.clone(), rec.clone())
        .await
        .unwrap();
    fill(&engine, 200, "m").await;
    let mut replica = Replica::open(config(slave_dir.path())).unwrap();
    let chunks = copy_all(&engine, &mut replica, 700);
    assert!(chunks > 10, "small chunks: {chunks}");
    assert_eq!(replica.wal_end(), engine.wal_end());
    // More messages after a first copy land in the same files.
    fill(&engine, 50, "n").await;
    copy_all(&engine, &mut replica, 1 << 20);
    assert_eq!(replica.wal_end(), engine.wal_end());
    engine.flush().await.unwrap();
    replica.flush().unwrap();
    let (ours, theirs) = (
        schedule_logs(master_dir.path()),
        schedule_logs(slave_dir.path()),
    );
    assert!(ours.len() >= 4, "several buckets: {}", ours.len());
    assert_eq!(ours, theirs, "same bucket files, byte for byte");
    assert_eq!(replica.buckets().values().map(|(r, _)| r).sum::<u64>(), 250);
    engine.shutdown().await.unwrap();
    drop(replica);

    // Promoted: the replica's store opened as an engine delivers every message once, on time.
    let clock = Arc::new(ManualClock::new(T0 - 1000));
    let rec = Recorder::new(clock.clone());
    let promoted = DelayEngine::open(config(slave_dir.path()), clock.clone(), rec.clone())
        .await
        .unwrap();
    assert!(rec.count() == 0, "nothing due yet");
    clock.set(T0 + 5 * 60_000);
    rec.wait_for("all 250", |d| d.len() >= 250).await;
    let log = rec.log.lock().clone();
    for d in &log {
        assert!(d.at_ms >= d.due_ms, "{} delivered early", d.id);
    }
    common::assert_once(&rec.ids(), 250);
    promoted.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_chunks_are_never_appended() {
    let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (clock, rec) = quiet_engine_clock();
    let engine = DelayEngine::open(config(master_dir.path()), clock, rec)
        .await
        .unwrap();
    fill(&engine, 20, "m").await;
    let mut replica = Replica::open(config(slave_dir.path())).unwrap();
    let WalChunk::Records { start, bytes } = engine.read_wal_chunk(0, 1 << 20).unwrap() else {
        panic!("records expected");
    };
    assert_eq!(start, 0);
    // Not at the replica's end.
    let e = replica.append_wal(10, &bytes).unwrap_err();
    assert!(
        matches!(e, ReplicaError::Diverged { start: 10, end: 0 }),
        "{e}"
    );
    // A flipped byte.
    let mut bad = bytes.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let e = replica.append_wal(0, &bad).unwrap_err();
    assert!(matches!(e, ReplicaError::BadChunk { .. }), "{e}");
    // A torn chunk.
    let e = replica
        .append_wal(0, &bytes[..bytes.len() - 3])
        .unwrap_err();
    assert!(matches!(e, ReplicaError::BadChunk { .. }), "{e}");
    assert_eq!(replica.wal_end(), 0, "nothing appended");
    // Then the good chunk; and the same chunk again is refused.
    replica.append_wal(0, &bytes).unwrap();
    assert_eq!(replica.wal_end(), bytes.len() as u64);
    assert!(matches!(
        replica.append_wal(0, &bytes).unwrap_err(),
        ReplicaError::Diverged { .. }
    ));
    assert_eq!(
        replica
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    // Asking beyond the master's end.
    assert_eq!(
        engine.read_wal_chunk(engine.wal_end() + 1, 100).unwrap(),
        WalChunk::Ahead {
            end: engine.wal_end()
        }
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejoining_server_cuts_its_unreplicated_tail_to_side_files() {
    let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (clock, rec) = quiet_engine_clock();
    let engine = DelayEngine::open(config(master_dir.path()), clock.clone(), rec.clone())
        .await
        .unwrap();
    fill(&engine, 40, "a").await;
    let shared = engine.wal_end();
    // The "old master" (here: the replica's store) got 30 more records the new one never had.
    let mut replica = Replica::open(config(slave_dir.path())).unwrap();
    copy_all(&engine, &mut replica, 1 << 20);
    let other_dir = tempfile::tempdir().unwrap();
    {
        let other = DelayEngine::open(config(other_dir.path()), clock.clone(), rec.clone())
            .await
            .unwrap();
        fill(&other, 40, "a").await;
        fill(&other, 30, "lost").await;
        // Divergent: copy its tail into the replica as if this server had written it.
        let WalChunk::Records { start, bytes } = other.read_wal_chunk(shared, 1 << 20).unwrap()
        else {
            panic!("records expected");
        };
        replica.append_wal(start, &bytes).unwrap();
        other.shutdown().await.unwrap();
    }
    let diverged_end = replica.wal_end();
    replica.flush().unwrap();
    drop(replica);
    // Meanwhile the new master got other messages.
    fill(&engine, 25, "b").await;

    let report = cut_unreplicated(&config(slave_dir.path()), shared).unwrap();
    assert_eq!(report.wal_bytes, diverged_end - shared);
    assert_eq!(report.schedule_records, 30);
    let side_bytes: u64 = report
        .side_files
        .iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("message-log")
        })
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        side_bytes,
        diverged_end - shared,
        "the cut bytes are kept aside"
    );
    assert_eq!(
        cut_unreplicated(&config(slave_dir.path()), shared).unwrap(),
        Default::default(),
        "idempotent"
    );

    let mut replica = Replica::open(config(slave_dir.path())).unwrap();
    assert_eq!(replica.wal_end(), shared);
    copy_all(&engine, &mut replica, 1 << 20);
    engine.flush().await.unwrap();
    replica.flush().unwrap();
    assert_eq!(
        schedule_logs(master_dir.path()),
        schedule_logs(slave_dir.path()),
        "after the cut and a copy the replica equals the new master"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn dispatch_state_is_copied_so_a_promoted_replica_does_not_redeliver() {
    let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0 - 1000));
    let rec = Recorder::new(clock.clone());
    let engine = DelayEngine::open(config(master_dir.path()), clock.clone(), rec.clone())
        .await
        .unwrap();
    fill(&engine, 100, "m").await;
    // The first two buckets (T0, T0 + 45 s) fall due; the others do not.
    clock.set(T0 + 60_000);
    rec.wait_for("two buckets", |d| d.len() >= 40).await;
    engine.flush().await.unwrap();
    let delivered = rec.count();
    assert_eq!(delivered, 40);

    let mut replica = Replica::open(config(slave_dir.path())).unwrap();
    let chunk = engine
        .read_dispatch_chunk(replica.dispatch_cursors(), 1 << 20)
        .unwrap();
    assert!(
        !replica.apply_dispatch(&chunk).unwrap(),
        "not before the message log caught up"
    );
    copy_all(&engine, &mut replica, 1 << 20);
    assert!(replica.apply_dispatch(&chunk).unwrap());
    let again = engine
        .read_dispatch_chunk(replica.dispatch_cursors(), 1 << 20)
        .unwrap();
    assert!(again.parts.is_empty(), "cursors advanced: {again:?}");
    assert_eq!(
        replica.buckets().values().map(|(_, d)| d).sum::<u64>(),
        40,
        "dispatch state copied"
    );
    replica.flush().unwrap();
    drop(replica);
    engine.shutdown().await.unwrap();

    let rec2 = Recorder::new(clock.clone());
    let promoted = DelayEngine::open(config(slave_dir.path()), clock.clone(), rec2.clone())
        .await
        .unwrap();
    clock.set(T0 + 10 * 60_000);
    rec2.wait_for("the other 60", |d| d.len() >= 60).await;
    // Give a wrongly redelivered message a chance to show up: wait until the engine reports
    // everything dispatched.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while promoted.stats().dispatched < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            promoted.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids = rec2.ids();
    assert!(ids.iter().all(|id| !rec.ids().contains(id)), "redelivered");
    common::assert_once(&ids, 60);
    promoted.shutdown().await.unwrap();
}
