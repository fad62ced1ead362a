//! Fault injection (needs `cargo test -p qmq-store --features failpoints`): an I/O error at
//! each write, fsync, read and rename site of the store gives an error, loses nothing
//! acknowledged, and the store recovers, by itself once the disk works again or by a reopen.
//!
//! Failpoints are process-global: every test holds a [`FailScenario`], which owns the
//! registry's global lock for its lifetime, so the tests of this file run one at a time, and
//! its teardown removes whatever a test configured (also when it panics).

#![cfg(feature = "failpoints")]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fail::FailScenario;
use qmq_store::{ConsumerKey, FlushPolicy, PullSpec, Pulled, Store, StoreConfig, StoreError};

fn config(dir: &Path, flush: FlushPolicy) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 4096;
    c.action_segment_size = 4096;
    c.flush = flush;
    c
}

const ASYNC: FlushPolicy = FlushPolicy::Async {
    interval: Duration::from_millis(5),
};

fn body(i: usize) -> Bytes {
    Bytes::from(format!("message-{i:05}"))
}

fn key() -> ConsumerKey {
    ConsumerKey {
        subject: "s".into(),
        group: "g".into(),
        consumer: "c".into(),
    }
}

fn pull(store: &Store, max: usize) -> Result<Vec<Pulled>, StoreError> {
    store.pull(
        PullSpec {
            key: &key(),
            broadcast: false,
            max,
        },
        |_| true,
    )
}

/// Every stored message of subject `s`, in order.
fn stored(store: &Store) -> Vec<Bytes> {
    let read = store.read("s", 0, 100_000).unwrap();
    read.into_iter().map(|m| m.message).collect()
}

fn bodies(range: impl IntoIterator<Item = usize>) -> Vec<Bytes> {
    range.into_iter().map(body).collect()
}

fn is_not_stored(r: &Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(r, Err(StoreError::Failed { .. }))
}

#[tokio::test]
async fn a_read_error_at_open_fails_the_open_and_truncates_nothing() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), FlushPolicy::SyncBeforeAck)).unwrap();
    for i in 0..20 {
        store.append([("s", body(i))]).await.unwrap();
    }
    // No close: no checkpoint, so the next open reads every record back.
    drop(store);
    fail::cfg("message-log.read", "return").unwrap();
    let opened = Store::open(config(dir.path(), FlushPolicy::SyncBeforeAck));
    assert!(
        matches!(opened, Err(StoreError::Io { op: "read", .. })),
        "{:?}",
        opened.map(|_| ())
    );
    fail::remove("message-log.read");
    let store = Store::open(config(dir.path(), FlushPolicy::SyncBeforeAck)).unwrap();
    assert_eq!(stored(&store), bodies(0..20));
    store.close().unwrap();
    scenario.teardown();
}

/// A write or fsync failure of the message log under either flush policy: the batch is
/// refused and not stored, appends fail while the disk does, and resume without a reopen.
#[tokio::test]
async fn a_failed_message_log_write_or_fsync_is_not_stored_and_appends_resume() {
    let scenario = FailScenario::setup();
    for (site, flush) in [
        ("message-log.write", FlushPolicy::SyncBeforeAck),
        ("message-log.write", ASYNC),
        ("message-log.fsync", FlushPolicy::SyncBeforeAck),
    ] {
        let label = format!("{site} {flush:?}");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), flush)).unwrap();
        for i in 0..5 {
            store.append([("s", body(i))]).await.unwrap();
        }
        fail::cfg(site, "return(enospc)").unwrap();
        for i in 5..7 {
            let r = store.append([("s", body(i))]).await;
            assert!(is_not_stored(&r), "{label}: {r:?}");
        }
        fail::remove(site);
        for i in 7..10 {
            let r = store.append([("s", body(i))]).await;
            assert_eq!(r.unwrap()[0].sequence, i as u64 - 2, "{label}");
        }
        let expected: Vec<Bytes> = bodies((0..5).chain(7..10));
        assert_eq!(stored(&store), expected, "{label}");
        store.close().unwrap();
        drop(store);
        let store = Store::open(config(dir.path(), flush)).unwrap();
        assert_eq!(stored(&store), expected, "{label}: after reopen");
        store.close().unwrap();
    }
    scenario.teardown();
}

#[tokio::test]
async fn a_failed_async_flush_refuses_appends_until_the_disk_works_again() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), ASYNC)).unwrap();
    fail::cfg("message-log.fsync", "return").unwrap();
    // Acknowledged (written, not yet durable) until the flusher's fsync fails.
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "the failed fsync never refused an append"
        );
        match store.append([("s", body(i))]).await {
            Ok(_) => acked.push(body(i)),
            Err(e) => {
                assert!(matches!(e, StoreError::Failed { .. }), "{e:?}");
                break;
            }
        }
    }
    // Still refused while the disk fails.
    assert!(is_not_stored(&store.append([("s", body(90_000))]).await));
    fail::remove("message-log.fsync");
    store.append([("s", body(90_001))]).await.unwrap();
    acked.push(body(90_001));
    assert_eq!(stored(&store), acked);
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(dir.path(), ASYNC)).unwrap();
    assert_eq!(stored(&store), acked);
    store.close().unwrap();
    scenario.teardown();
}

#[tokio::test]
async fn a_failed_action_log_write_or_fsync_fails_pulls_and_acks_until_it_works_again() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let flush = FlushPolicy::SyncBeforeAck;
    let store = Store::open(config(dir.path(), flush)).unwrap();
    for i in 0..20 {
        store.append([("s", body(i))]).await.unwrap();
    }
    // A failed write changes nothing.
    fail::cfg("action-log.write", "return").unwrap();
    assert!(is_not_stored(&pull(&store, 3)));
    assert!(is_not_stored(&pull(&store, 3)));
    fail::remove("action-log.write");
    let got = pull(&store, 3).unwrap();
    assert_eq!(
        got.iter().map(|p| p.sequence).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // A failed fsync: the pull fails, and so does everything after it until the disk works.
    fail::cfg("action-log.fsync", "return").unwrap();
    assert!(pull(&store, 3).is_err());
    assert!(pull(&store, 3).is_err());
    assert!(store.ack(&key(), 2).is_err());
    fail::remove("action-log.fsync");
    // The failed pull may have been recorded: its messages come back as unacked ones.
    let progress = store.progress(&key());
    let next = pull(&store, 3).unwrap();
    assert_eq!(next.len(), 3);
    let redelivered = store.pulled_since(&key(), 3, 100).unwrap();
    let mut seen: Vec<u64> = got.iter().map(|p| p.sequence).collect();
    seen.extend(redelivered.iter().map(|p| p.sequence));
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "no message skipped (progress before: {progress:?})"
    );
    let last = store.progress(&key()).pulled as u64;
    store.ack(&key(), last).unwrap();
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(dir.path(), flush)).unwrap();
    let p = store.progress(&key());
    assert_eq!((p.pulled, p.acked), (last as i64, last as i64));
    assert_eq!(
        pull(&store, 100).unwrap().first().map(|p| p.sequence),
        Some(seen.len() as u64)
    );
    store.close().unwrap();
    scenario.teardown();
}

/// With async flush the action log is fsynced by the flusher; its failure poisons the
/// consumer side as a failed write does, until an fsync works again.
#[tokio::test]
async fn a_failed_async_action_log_fsync_fails_pulls_until_it_works_again() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), ASYNC)).unwrap();
    for i in 0..300 {
        store.append([("s", body(i))]).await.unwrap();
    }
    fail::cfg("action-log.fsync", "return").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pulled = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the failed fsync never failed a pull"
        );
        match pull(&store, 1) {
            Ok(got) => {
                assert_eq!(got.len(), 1, "ran out of messages");
                pulled += 1;
            }
            Err(e) => {
                assert!(matches!(e, StoreError::Failed { .. }), "{e:?}");
                break;
            }
        }
    }
    assert!(pull(&store, 1).is_err());
    fail::remove("action-log.fsync");
    assert_eq!(pull(&store, 1).unwrap()[0].sequence, pulled);
    store.ack(&key(), pulled).unwrap();
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(dir.path(), ASYNC)).unwrap();
    let p = store.progress(&key());
    assert_eq!((p.pulled, p.acked), (pulled as i64, pulled as i64));
    store.close().unwrap();
    scenario.teardown();
}

/// Consume logs are derived data: a failed write of one keeps its entries in memory (and
/// readable) and fails no append; a reopen re-indexes from the message log.
#[tokio::test]
async fn a_failed_consume_log_write_fails_no_append() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), ASYNC)).unwrap();
    fail::cfg("consume-log.write", "return").unwrap();
    // More than a consume log keeps in memory before it writes them itself.
    let n = qmq_store::consume_log::TAIL_LIMIT + 100;
    let batch: Vec<(&str, Bytes)> = (0..n).map(|i| ("s", body(i))).collect();
    store.append(batch).await.unwrap();
    store.append([("s", body(n))]).await.unwrap();
    assert_eq!(stored(&store), bodies(0..=n));
    // A checkpoint cannot vouch for the unwritten entries.
    assert!(store.checkpoint().is_err());
    drop(store);
    fail::remove("consume-log.write");
    let store = Store::open(config(dir.path(), ASYNC)).unwrap();
    assert_eq!(stored(&store), bodies(0..=n));
    store.close().unwrap();
    scenario.teardown();
}

#[tokio::test]
async fn a_failed_checkpoint_write_fsync_or_rename_loses_nothing() {
    let scenario = FailScenario::setup();
    for site in ["checkpoint.write", "checkpoint.fsync", "checkpoint.rename"] {
        let dir = tempfile::tempdir().unwrap();
        let flush = FlushPolicy::SyncBeforeAck;
        let store = Store::open(config(dir.path(), flush)).unwrap();
        for i in 0..10 {
            store.append([("s", body(i))]).await.unwrap();
        }
        assert_eq!(pull(&store, 4).unwrap().len(), 4);
        store.checkpoint().unwrap();
        store.ack(&key(), 1).unwrap();
        fail::cfg(site, "return").unwrap();
        assert!(store.checkpoint().is_err(), "{site}");
        store.append([("s", body(10))]).await.unwrap();
        store.ack(&key(), 3).unwrap();
        assert!(store.close().is_err(), "{site}: close checkpoints");
        drop(store);
        fail::remove(site);
        let store = Store::open(config(dir.path(), flush)).unwrap();
        assert_eq!(stored(&store), bodies(0..11), "{site}");
        let p = store.progress(&key());
        assert_eq!((p.pulled, p.acked), (3, 3), "{site}");
        assert_eq!(pull(&store, 100).unwrap().len(), 7, "{site}");
        store.close().unwrap();
    }
    scenario.teardown();
}

/// Rolling to a new segment fsyncs the full one; readers must not wait for that fsync. The
/// writer is held inside it (a failpoint callback) while another thread reads.
#[tokio::test]
async fn readers_do_not_wait_for_a_segment_fsync() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), FlushPolicy::SyncBeforeAck)).unwrap();
    store.append([("s", body(0))]).await.unwrap();
    let record = store.durable_offset();
    let mut n = 1;
    // Fill the first segment exactly: the next append rolls.
    while store.durable_offset() + record <= 4096 {
        store.append([("s", body(n))]).await.unwrap();
        n += 1;
    }
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let armed = Arc::new(AtomicBool::new(true));
    let arm = armed.clone();
    fail::cfg_callback("message-log.fsync", move || {
        let writer = std::thread::current().name() == Some("qmq-store-writer");
        if writer && arm.swap(false, Ordering::AcqRel) {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = release_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(30));
        }
    })
    .unwrap();
    let pending = store.append([("s", body(n))]);
    entered
        .recv_timeout(Duration::from_secs(20))
        .expect("the writer reached the fsync");
    let (read_tx, read) = mpsc::channel();
    let reader = store.clone();
    std::thread::spawn(move || {
        let _ = read_tx.send(reader.read("s", 0, 1000).map(|m| m.len()));
    });
    let got = read.recv_timeout(Duration::from_secs(10));
    release.send(()).unwrap();
    assert_eq!(
        got.ok().map(|r| r.unwrap()),
        Some(n),
        "a read waited for the writer's fsync"
    );
    pending.await.unwrap();
    fail::remove("message-log.fsync");
    assert_eq!(stored(&store), bodies(0..=n));
    store.close().unwrap();
    scenario.teardown();
}
