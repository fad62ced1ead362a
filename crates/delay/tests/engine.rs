//! Engine behaviour with an injected clock: timing, ordering, restarts, retention.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_once, config, msg, Recorder};
use qmq_delay::{Clock, DelayEngine, DelayError, ManualClock, ScheduleError};
use rand::{Rng, SeedableRng};

const T0: i64 = 1_700_000_000_000;

async fn open(dir: &std::path::Path, clock: &ManualClock, rec: &Arc<Recorder>) -> DelayEngine {
    DelayEngine::open(config(dir), Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_each_delivered_once_in_time_order_never_early() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;

    const N: usize = 100_000;
    const SPAN_S: i64 = 600;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut due: Vec<i64> = (0..N)
        .map(|_| T0 + 1 + rng.gen_range(0..SPAN_S * 1000))
        .collect();
    for (chunk_no, chunk) in due.chunks(2000).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, &t)| msg(&format!("m{}", chunk_no * 2000 + i), t))
            .collect();
        for r in engine.schedule(batch).await {
            r.unwrap();
        }
    }
    // Ten minutes ahead with one-minute buckets: most are on disk, not in the wheel.
    let stats = engine.stats();
    assert_eq!(stats.scheduled, N as u64);
    assert!(stats.wheel_entries < N / 2, "{stats:?}");
    assert_eq!(rec.count(), 0, "nothing is due yet");

    due.sort_unstable();
    for step in 1..=SPAN_S + 1 {
        let now = T0 + step * 1000;
        clock.set(now);
        let expect = due.partition_point(|&t| t <= now);
        rec.wait_for("messages due so far", |log| log.len() >= expect)
            .await;
        assert_eq!(rec.count(), expect, "nothing early at step {step}");
    }
    let log = rec.log.lock().clone();
    assert_once(&rec.ids(), N);
    for d in &log {
        assert!(d.at_ms >= d.due_ms, "{} delivered early", d.id);
        assert!(d.at_ms - d.due_ms <= 1000, "{} a step late at most", d.id);
        assert_eq!(d.message, format!("body of {}", d.id).as_bytes());
    }
    assert!(
        log.windows(2).all(|w| w[0].due_ms <= w[1].due_ms),
        "delivered in due-time order"
    );
    let stats = engine.stats();
    assert_eq!(stats.dispatched, N as u64);
    assert_eq!(stats.wheel_entries, 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn past_and_present_are_immediate_and_too_far_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;
    let two_years = 730 * 24 * 3600 * 1000i64;
    let results = engine
        .schedule(vec![
            msg("past", T0 - 3_600_000),
            msg("now", T0),
            msg("max", T0 + two_years),
            msg("too-far", T0 + two_years + 1),
        ])
        .await;
    assert_eq!(results[0].as_ref().unwrap().due_ms, T0);
    assert_eq!(results[1].as_ref().unwrap().due_ms, T0);
    assert_eq!(results[2].as_ref().unwrap().due_ms, T0 + two_years);
    let err = results[3].clone().unwrap_err();
    assert!(matches!(err, ScheduleError::TooFarAhead { max_ms, .. } if max_ms == T0 + two_years));
    assert!(err.to_string().contains("730 days"), "{err}");
    rec.wait_for("past and now", |log| log.len() == 2).await;
    let mut ids = rec.ids();
    ids.sort();
    assert_eq!(ids, ["now", "past"]);
    assert!(matches!(
        engine.schedule_one(msg("", T0)).await,
        Err(ScheduleError::Invalid { .. })
    ));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_during_dispatch_delivers_the_rest_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    const N: usize = 5_000;
    {
        // The broker accepts 4 batches, then hangs on the 5th.
        let rec = Recorder::build(Arc::new(clock.clone()), Some(4), 0, false);
        let engine = open(dir.path(), &clock, &rec).await;
        let batch = (0..N)
            .map(|i| msg(&format!("m{i}"), T0 + 10_000 + i as i64))
            .collect();
        assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
        clock.set(T0 + 20_000);
        rec.wait_calls(5).await;
        assert_eq!(rec.count(), 4 * 256);
        engine.shutdown().await.unwrap();
        assert_eq!(rec.count(), 4 * 256, "the hung batch was not accepted");
        let first = rec.ids();
        // Second run: crash (drop without shutdown) after some more batches.
        let rec2 = Recorder::build(Arc::new(clock.clone()), Some(3), 0, false);
        let engine = open(dir.path(), &clock, &rec2).await;
        rec2.wait_calls(4).await;
        drop(engine);
        let rec3 = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec3).await;
        rec3.wait_for("the rest", |log| {
            first.len() + rec2.count() + log.len() >= N
        })
        .await;
        let mut all = first;
        all.extend(rec2.ids());
        all.extend(rec3.ids());
        assert_once(&all, N);
        engine.shutdown().await.unwrap();
        assert_eq!(engine.stats().dispatched, N as u64);
    }
}

#[tokio::test]
async fn failed_and_refused_dispatches_are_retried_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::build(Arc::new(clock.clone()), None, 3, true);
    let engine = open(dir.path(), &clock, &rec).await;
    let batch = (0..1000)
        .map(|i| msg(&format!("m{i}"), T0 + 1000))
        .collect();
    assert!(engine.schedule(batch).await.iter().all(|r| r.is_ok()));
    clock.set(T0 + 1000);
    rec.wait_for("all", |log| log.len() >= 1000).await;
    assert_once(&rec.ids(), 1000);
    engine.shutdown().await.unwrap();
    let rec2 = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec2).await;
    clock.advance(Duration::from_secs(60));
    engine.flush().await.unwrap();
    assert_eq!(rec2.count(), 0, "dispatch log remembers them");
    assert_eq!(engine.stats().dispatched, 1000);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn far_future_messages_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let year = 365 * 24 * 3600 * 1000i64;
    let times = [
        T0 + year,
        T0 + year + 1,
        T0 + 2 * year - 1000,
        T0 + 90 * 24 * 3600 * 1000,
    ];
    {
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec).await;
        for (i, t) in times.iter().enumerate() {
            engine
                .schedule_one(msg(&format!("f{i}"), *t))
                .await
                .unwrap();
        }
        assert_eq!(engine.stats().wheel_entries, 0, "far future stays on disk");
        drop(engine); // no clean shutdown
    }
    for _ in 0..2 {
        let rec = Recorder::new(Arc::new(clock.clone()));
        let engine = open(dir.path(), &clock, &rec).await;
        assert_eq!(engine.stats().scheduled, 4);
        clock.advance(Duration::from_secs(24 * 3600));
        engine.shutdown().await.unwrap();
        assert_eq!(rec.count(), 0);
    }
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;
    // Due times fire at the next 10 ms tick.
    clock.set(T0 + year + 10);
    rec.wait_for("one year", |log| log.len() == 3).await;
    clock.set(T0 + 2 * year);
    rec.wait_for("two years", |log| log.len() == 4).await;
    let log = rec.log.lock().clone();
    let ids: Vec<_> = log.iter().map(|d| d.id.as_str()).collect();
    // After the restart the bucket holding "now" (f0, f1) is loaded first and the overdue one
    // (f3) right after it: f3 comes before, between or after them, depending on whether its
    // load beat the first dispatch; within a bucket, due order.
    let mut first: Vec<_> = ids[..3].to_vec();
    first.sort_unstable();
    assert_eq!(first, ["f0", "f1", "f3"]);
    let f0 = ids.iter().position(|&i| i == "f0");
    assert!(f0 < ids.iter().position(|&i| i == "f1"), "{ids:?}");
    assert_eq!(ids[3], "f2");
    assert!(log.iter().all(|d| d.at_ms >= d.due_ms));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_deletes_fully_delivered_logs_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec).await;
    let hour = 3_600_000;
    engine.schedule_one(msg("soon", T0 + 5_000)).await.unwrap();
    engine
        .schedule_one(msg("later", T0 + 100 * hour))
        .await
        .unwrap();
    clock.set(T0 + 10_000);
    rec.wait_for("soon", |log| log.len() == 1).await;
    engine.flush().await.unwrap();
    let sched = dir.path().join("schedule_log");
    let count = || std::fs::read_dir(&sched).unwrap().count();
    assert_eq!(count(), 2);
    // Retention is 72 h after the bucket's end: nothing goes before.
    clock.set(T0 + 71 * hour);
    assert_eq!(engine.clean().await.unwrap().buckets, 0);
    clock.set(T0 + 73 * hour);
    let report = engine.clean().await.unwrap();
    assert_eq!(report.buckets, 1);
    assert_eq!(count(), 1, "the undelivered bucket stays");
    assert_eq!(
        std::fs::read_dir(dir.path().join("dispatch_log"))
            .unwrap()
            .count(),
        0
    );
    // Message-log segments holding only checkpointed records are deleted too.
    assert_eq!(
        report.wal_segments, 0,
        "the active segment is never deleted"
    );
    engine.shutdown().await.unwrap();
    // Deleted buckets are not resurrected from the message log on restart.
    let rec2 = Recorder::new(Arc::new(clock.clone()));
    let engine = open(dir.path(), &clock, &rec2).await;
    clock.set(T0 + 100 * hour);
    rec2.wait_for("later", |log| log.len() == 1).await;
    assert_eq!(rec2.ids(), ["later"]);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_bucket_width_is_fixed_once_created() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    open(dir.path(), &clock, &rec)
        .await
        .shutdown()
        .await
        .unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_scale_minutes = 60;
    let err = DelayEngine::open(cfg, Arc::new(clock.clone()), rec.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        DelayError::ScaleMismatch {
            stored: 1,
            configured: 60,
            ..
        }
    ));
    let _ = clock.now_ms();
}
