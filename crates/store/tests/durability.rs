//! Durability: what `SyncBeforeAck` acknowledges is fsynced and survives a simulated power loss
//! (everything after the durable mark cut or garbled); the async flusher catches up; damaged
//! action logs and checkpoints recover to consistent state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmq_store::{ConsumerKey, FlushPolicy, PullSpec, Store, StoreConfig};
use rand::{Rng, SeedableRng};

mod common;

fn config(dir: &Path, flush: FlushPolicy) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 8192;
    c.action_segment_size = 2048;
    c.index_segment_entries = 64;
    c.flush = flush;
    c
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut f: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    f.sort();
    f
}

fn body(subject: usize, i: usize) -> Bytes {
    Bytes::from(format!("s{subject}-{i:06}-{}", "y".repeat(i % 50)))
}

/// Simulates losing everything after message-log offset `durable` (and a torn write after it):
/// the segment holding it is cut there and garbage appended; later segments are deleted.
fn lose_after(dir: &Path, durable: u64, rng: &mut impl Rng) {
    for seg in files(&dir.join("messagelog")) {
        let base: u64 = seg.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        if base > durable {
            std::fs::remove_file(&seg).unwrap();
        } else if base + len > durable {
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(durable - base).unwrap();
            let garbage: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&garbage, durable - base).unwrap();
        }
    }
}

#[tokio::test]
async fn sync_before_ack_acknowledges_only_durable_messages_and_they_survive_power_loss() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), FlushPolicy::SyncBeforeAck)).unwrap();
        if round % 2 == 1 {
            store.checkpoint().unwrap();
        }
        let tasks: Vec<_> = (0..6)
            .map(|p| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for chunk in 0..20 {
                        let batch: Vec<(String, Bytes)> = (0..5)
                            .map(|i| (format!("s{p}"), body(p, chunk * 5 + i)))
                            .collect();
                        let appended = store.append(batch.clone()).await.unwrap();
                        let durable = store.durable_offset();
                        for (a, (_, b)) in appended.into_iter().zip(batch) {
                            assert!(
                                a.offset < durable,
                                "acked before fsync: {a:?} durable {durable}"
                            );
                            acked.push((a.sequence, b));
                        }
                    }
                    (p, acked)
                })
            })
            .collect();
        let mut acked = BTreeMap::new();
        for t in tasks {
            let (p, a) = t.await.unwrap();
            acked.insert(p, a);
        }
        let durable = store.durable_offset();
        drop(store);
        lose_after(dir.path(), durable, &mut rng);
        // The derived files may have lost their tails too (a subject whose entries were all
        // still in memory has no file yet).
        for sub in files(&dir.path().join("consumelog")) {
            // Segments only: the NAME file is written durably when the directory is made.
            let mut segments = files(&sub).into_iter().filter(|f| !f.ends_with("NAME"));
            let Some(last) = segments.next_back() else {
                continue;
            };
            let len = std::fs::metadata(&last).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&last)
                .unwrap()
                .set_len(rng.gen_range(0..=len))
                .unwrap();
        }
        let store = Store::open(config(dir.path(), FlushPolicy::SyncBeforeAck)).unwrap();
        for (p, messages) in acked {
            let subject = format!("s{p}");
            assert_eq!(
                store.subject_len(&subject),
                messages.len() as u64,
                "round {round}"
            );
            for (seq, b) in messages {
                let got = store.read(&subject, seq, 1).unwrap();
                assert_eq!(got[0].message, b, "round {round}: {subject}#{seq}");
            }
        }
    }
}

#[tokio::test]
async fn async_flush_makes_appends_durable_within_the_interval_and_loses_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let flush = FlushPolicy::Async {
        interval: Duration::from_millis(5),
    };
    let store = Store::open(config(dir.path(), flush)).unwrap();
    let mut appended = Vec::new();
    for i in 0..200 {
        let a = store.append(vec![("s", body(0, i))]).await.unwrap();
        appended.push((a[0], body(0, i)));
    }
    let end = appended.last().unwrap().0.offset;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.durable_offset() <= end {
        assert!(Instant::now() < deadline, "flusher never caught up");
        tokio::task::yield_now().await;
    }
    // Append more, then lose whatever the flusher had not made durable yet.
    for i in 200..400 {
        let a = store.append(vec![("s", body(0, i))]).await.unwrap();
        appended.push((a[0], body(0, i)));
    }
    let durable = store.durable_offset();
    drop(store);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    lose_after(dir.path(), durable, &mut rng);
    let store = Store::open(config(dir.path(), flush)).unwrap();
    let got = store.read("s", 0, 1000).unwrap();
    let kept: Vec<_> = appended
        .iter()
        .filter(|(a, _)| a.offset < durable)
        .collect();
    assert!(got.len() >= kept.len() && kept.len() >= 200);
    for (m, (a, b)) in got.iter().zip(&appended) {
        assert_eq!((m.sequence, &m.message), (a.sequence, b));
    }
}

fn key(c: usize) -> ConsumerKey {
    ConsumerKey {
        subject: "s".into(),
        group: "g".into(),
        consumer: format!("c{c}"),
    }
}

/// Appends, then pulls and acks with three consumers, checkpointing along the way.
async fn consumer_history(store: &Store) {
    let batch = (0..300).map(|i| ("s", body(0, i)));
    store.append(batch).await.unwrap();
    for round in 0..12 {
        for c in 0..3 {
            let k = key(c);
            let got = store
                .pull(
                    PullSpec {
                        key: &k,
                        broadcast: c == 2,
                        max: 7,
                    },
                    |_| true,
                )
                .unwrap();
            if let Some(last) = got.last() {
                if round % 3 != 2 {
                    store.ack(&k, last.pull_seq - (round as u64 % 2)).unwrap();
                }
            }
        }
        if round == 5 || round == 9 {
            store.checkpoint().unwrap();
        }
    }
}

fn assert_consistent(store: &Store, label: &str) {
    for c in 0..3 {
        let k = key(c);
        let p = store.progress(&k);
        assert!(p.acked <= p.pulled, "{label}: {p:?}");
        let again = store.pulled_since(&k, (p.acked + 1) as u64, 1000).unwrap();
        for m in again {
            let stored = store.read("s", m.sequence, 1).unwrap();
            assert_eq!(
                stored[0].message, m.message,
                "{label}: redelivery matches its sequence"
            );
        }
    }
}

#[tokio::test]
async fn damaged_action_logs_and_checkpoints_recover_to_consistent_state() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for round in 0..24 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), FlushPolicy::SyncBeforeAck);
        let before = {
            let store = Store::open(cfg.clone()).unwrap();
            consumer_history(&store).await;
            (0..3).map(|c| store.progress(&key(c))).collect::<Vec<_>>()
        };
        let actions = files(&dir.path().join("actionlog"));
        let victim = &actions[rng.gen_range(0..actions.len())];
        let mut bytes = std::fs::read(victim).unwrap();
        match round % 3 {
            0 => bytes.truncate(rng.gen_range(0..bytes.len())),
            1 => {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
            }
            _ => {
                let cps = files(&dir.path().join("checkpoint"));
                std::fs::remove_file(cps.last().unwrap()).unwrap();
            }
        }
        std::fs::write(victim, bytes).unwrap();
        let label = format!("round {round}");
        let store = Store::open(cfg.clone()).unwrap();
        assert_consistent(&store, &label);
        for (c, b) in before.iter().enumerate() {
            let p = store.progress(&key(c));
            assert!(
                p.pulled <= b.pulled && p.acked <= b.acked,
                "{label}: {p:?} after {b:?}"
            );
        }
        // Still works: pull the rest and ack it.
        let k = key(0);
        let rest = common::pull(&store, &k, 1000);
        if let Some(last) = rest.last() {
            store.ack(&k, last.pull_seq).unwrap();
        }
        assert_consistent(&store, &label);
    }
}

#[tokio::test]
async fn a_lost_newest_checkpoint_falls_back_without_losing_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FlushPolicy::SyncBeforeAck);
    let (progress, groups) = {
        let store = Store::open(cfg.clone()).unwrap();
        consumer_history(&store).await;
        store.close().unwrap();
        let p: Vec<_> = (0..3).map(|c| store.progress(&key(c))).collect();
        (p, store.groups())
    };
    assert_eq!(
        files(&dir.path().join("checkpoint")).len(),
        3,
        "retained count"
    );
    for damage in ["flip", "delete"] {
        let newest = files(&dir.path().join("checkpoint")).pop().unwrap();
        if damage == "flip" {
            let mut b = std::fs::read(&newest).unwrap();
            let at = b.len() / 2;
            b[at] ^= 0x01;
            std::fs::write(&newest, b).unwrap();
        } else {
            std::fs::remove_file(&newest).unwrap();
        }
        let store = Store::open(cfg.clone()).unwrap();
        let now: Vec<_> = (0..3).map(|c| store.progress(&key(c))).collect();
        assert_eq!(now, progress, "{damage}");
        assert_eq!(store.groups(), groups, "{damage}");
        assert_consistent(&store, damage);
    }
}

/// Every directory under `dir` (itself included) holding segment files, with their total size.
fn segment_dirs(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let mut size = 0;
    let mut segments = false;
    for path in files(dir) {
        if path.is_dir() {
            segment_dirs(&path, out);
        } else if path.file_name().unwrap().len() == 20 {
            segments = true;
            size += std::fs::metadata(&path).unwrap().len();
        }
    }
    if segments {
        out.push((dir.to_path_buf(), size));
    }
}

#[tokio::test]
async fn a_damaged_consume_log_entry_below_the_checkpoint_is_rebuilt_from_the_message_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), FlushPolicy::SyncBeforeAck);
    let store = Store::open(cfg()).unwrap();
    // Two subjects interleaved: rebuilding must pick the right one's records.
    for i in 0..100 {
        store
            .append(
                [("s", body(0, i)), ("t", body(1, i))]
                    .into_iter()
                    .take(1 + i % 2),
            )
            .await
            .unwrap();
    }
    store.close().unwrap();
    drop(store);
    // The consume log of `s` is the one with 100 entries (24 bytes each); damage entry 40.
    let mut dirs = Vec::new();
    segment_dirs(&dir.path().join("consumelog"), &mut dirs);
    let (s_dir, _) = dirs
        .iter()
        .find(|(_, size)| *size == 100 * 24)
        .unwrap_or_else(|| panic!("no consume log of 100 entries in {dirs:?}"));
    let first = files(s_dir).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40 * 24 + 5] ^= 0x40;
    std::fs::write(&first, bytes).unwrap();

    let store = Store::open(cfg()).unwrap();
    let expected: Vec<Bytes> = (0..100).map(|i| body(0, i)).collect();
    for group in ["g1", "g2"] {
        let k = ConsumerKey {
            subject: "s".into(),
            group: group.into(),
            consumer: "c".into(),
        };
        let got = common::pull(&store, &k, 1000);
        let got: Vec<Bytes> = got.into_iter().map(|p| p.message).collect();
        assert_eq!(got, expected, "{group}");
    }
    // Rebuilt once (and written back), not once per reader.
    assert_eq!(store.stats().index_entries_rebuilt, 1);
    let read: Vec<Bytes> = store
        .read("s", 0, 1000)
        .unwrap()
        .into_iter()
        .map(|m| m.message)
        .collect();
    assert_eq!(read, expected);
    store.close().unwrap();
}
