//! Store behaviour: durability across reopen, shared group consumption, redelivery, recovery
//! from damaged files, retention.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use qmq_store::{
    FlushPolicy, NewMessage, PullSpec, ResetTo, Store, StoreError, TagFilter, TagMode,
};
use rand::{Rng, SeedableRng};

mod common;
use common::{config, key, pull};

fn msg(i: usize) -> Bytes {
    Bytes::from(format!("message-{i:05}-{}", "x".repeat(i % 97)))
}

async fn append_n(store: &Store, subject: &str, range: std::ops::Range<usize>) {
    for chunk in range.collect::<Vec<_>>().chunks(7) {
        let batch = chunk.iter().map(|&i| (subject, msg(i)));
        store.append(batch).await.unwrap();
    }
}

/// The last segment file in `dir` (its `NAME` file aside).
fn last_file(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("NAME"))
        .collect();
    files.sort();
    files.pop()
}

/// The directory of `subject`'s consume log (named by a hash, with the name in its `NAME`).
fn consume_dir(root: &std::path::Path, subject: &str) -> std::path::PathBuf {
    let want = serde_json::to_vec(&[subject]).unwrap();
    std::fs::read_dir(root.join("consumelog"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p.join("NAME")).is_ok_and(|n| n == want))
        .unwrap_or_else(|| root.join("consumelog").join("none"))
}

#[tokio::test]
async fn appended_messages_survive_reopen_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(config(dir.path())).unwrap();
        append_n(&store, "a", 0..300).await;
        append_n(&store, "b", 0..50).await;
        // No checkpoint, no close: only what the fsync'd appends left on disk.
    }
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.subject_len("a"), 300);
    assert_eq!(store.subject_len("b"), 50);
    let all = store.read("a", 0, 1000).unwrap();
    assert_eq!(all.len(), 300);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.sequence, i as u64);
        assert_eq!(m.message, msg(i));
    }
    assert!(
        std::fs::read_dir(dir.path().join("messagelog"))
            .unwrap()
            .count()
            > 3,
        "test must span several segments"
    );
}

#[tokio::test]
async fn consumers_share_one_group_position_and_a_new_one_joins_without_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    append_n(&store, "s", 0..100).await;
    let c1 = key("s", "g", "c1");
    let c2 = key("s", "g", "c2");
    let a = pull(&store, &c1, 30);
    let b = pull(&store, &c2, 30);
    let c = pull(&store, &c1, 100);
    let seqs: Vec<u64> = a.iter().chain(&b).chain(&c).map(|p| p.sequence).collect();
    assert_eq!(
        seqs,
        (0..100).collect::<Vec<_>>(),
        "each message once, in order"
    );
    assert_eq!(a[0].pull_seq, 0);
    assert_eq!(c[0].pull_seq, 30, "c1's pull log continues");
    assert_eq!(b[0].pull_seq, 0, "c2 has its own pull log");
    // Another group sees everything again.
    assert_eq!(pull(&store, &key("s", "other", "x"), 1000).len(), 100);
    // A broadcast consumer too, and independently of a second broadcast consumer.
    for id in ["b1", "b2"] {
        let k = key("s", "bc", id);
        let got = store
            .pull(
                PullSpec {
                    key: &k,
                    broadcast: true,
                    max: 1000,
                },
                |_| true,
            )
            .unwrap();
        assert_eq!(got.len(), 100);
    }
}

#[tokio::test]
async fn unacked_messages_are_redelivered_and_progress_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = key("s", "g", "c1");
    {
        let store = Store::open(config(dir.path())).unwrap();
        append_n(&store, "s", 0..20).await;
        let got = pull(&store, &c1, 10);
        assert_eq!(got.len(), 10);
        store.ack(&c1, 3).unwrap();
        // Acks below what is acked are ignored, acks beyond what was pulled refused.
        store.ack(&c1, 1).unwrap();
        assert!(store.ack(&c1, 10).is_err());
        store.close().unwrap();
    }
    let store = Store::open(config(dir.path())).unwrap();
    let p = store.progress(&c1);
    assert_eq!((p.pulled, p.acked), (9, 3));
    let again = store.pulled_since(&c1, (p.acked + 1) as u64, 100).unwrap();
    assert_eq!(again.len(), 6);
    assert_eq!(again[0].pull_seq, 4);
    assert_eq!(again[0].message, msg(4));
    // The group's position survived: the next pull starts at 10.
    assert_eq!(pull(&store, &key("s", "g", "c2"), 100)[0].sequence, 10);
}

#[tokio::test]
async fn filtered_messages_count_as_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    append_n(&store, "s", 0..50).await;
    let k = key("s", "g", "c");
    let even = |m: &[u8]| {
        let s = std::str::from_utf8(m).unwrap();
        s[8..13].parse::<usize>().unwrap() % 2 == 0
    };
    let got = store
        .pull(
            PullSpec {
                key: &k,
                broadcast: false,
                max: 100,
            },
            even,
        )
        .unwrap();
    assert_eq!(got.len(), 25);
    assert!(got.iter().all(|p| p.sequence % 2 == 0));
    assert!(store
        .pull(
            PullSpec {
                key: &k,
                broadcast: false,
                max: 100
            },
            |_| true
        )
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn reset_moves_the_group_to_either_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    append_n(&store, "s", 0..10).await;
    let k = key("s", "g", "c");
    assert_eq!(pull(&store, &k, 4).len(), 4);
    assert_eq!(store.reset(&k, false, ResetTo::Latest).unwrap(), 10);
    assert!(pull(&store, &k, 100).is_empty());
    assert_eq!(store.reset(&k, false, ResetTo::Earliest).unwrap(), 0);
    assert_eq!(pull(&store, &k, 100).len(), 10);
}

/// Cuts, flips and deletes files at random, then reopens: no panic, no corrupt message ever
/// returned, and every message fully written before the damage point still there.
#[tokio::test]
async fn damaged_files_recover_without_losing_intact_records() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let k = key("s", "g", "c");
        {
            let store = Store::open(config(dir.path())).unwrap();
            append_n(&store, "s", 0..120).await;
            if round % 2 == 0 {
                store.checkpoint().unwrap();
            }
            append_n(&store, "s", 120..200).await;
            pull(&store, &k, 50);
            store.ack(&k, 20).unwrap();
        }
        // The newest message-log segment, cut at a random byte.
        let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("messagelog"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segs.sort();
        let last = segs.last().unwrap();
        let len = std::fs::metadata(last).unwrap().len();
        let cut = rng.gen_range(0..len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(last)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // A flipped byte somewhere in an older segment.
        let victim = &segs[rng.gen_range(0..segs.len() - 1)];
        let mut bytes = std::fs::read(victim).unwrap();
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 0x5a;
        std::fs::write(victim, bytes).unwrap();
        // A consume log cut short (it is on disk at least up to the checkpoint; without one,
        // its entries may still have been in memory), and sometimes every checkpoint deleted.
        if let Some(clog) = last_file(&consume_dir(dir.path(), "s")) {
            let clen = std::fs::metadata(&clog).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&clog)
                .unwrap()
                .set_len(rng.gen_range(0..=clen))
                .unwrap();
        } else {
            assert!(round % 2 == 1, "a checkpoint writes the consume log");
        }
        if round % 3 == 0 {
            std::fs::remove_dir_all(dir.path().join("checkpoint")).unwrap();
        }

        let store = Store::open(config(dir.path())).unwrap();
        let got = store.read("s", 0, 1000).unwrap_or_default();
        // Every returned message is exactly one that was written, in order, no duplicates.
        let mut last_i = None;
        for m in &got {
            let m = &m.message;
            let s = std::str::from_utf8(m).unwrap();
            let i: usize = s[8..13].parse().unwrap();
            assert_eq!(m, &msg(i), "round {round}: corrupt message returned");
            assert!(last_i.is_none_or(|l| i > l), "round {round}: order");
            last_i = Some(i);
        }
        // At most the records in the cut segment and the one damaged record are gone.
        let per_segment = 4096 / 20;
        assert!(
            got.len() + per_segment + 1 >= 200,
            "round {round}: lost {}",
            200 - got.len()
        );
        // The store keeps working.
        store.append(vec![("s", msg(999))]).await.unwrap();
        assert_eq!(
            store.read("s", store.subject_len("s") - 1, 1).unwrap()[0].message,
            msg(999)
        );
    }
}

#[tokio::test]
async fn retention_deletes_old_segments_but_spares_unconsumed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = Duration::from_secs(3600);
    let store = Store::open(cfg.clone()).unwrap();
    append_n(&store, "s", 0..300).await;
    let k = key("s", "g", "c");
    let segments = || {
        std::fs::read_dir(dir.path().join("messagelog"))
            .unwrap()
            .count()
    };
    let before = segments();
    let later = SystemTime::now() + Duration::from_secs(7200);
    // The group has consumed nothing: nothing may go.
    assert_eq!(pull(&store, &k, 0).len(), 0);
    store.reset(&k, false, ResetTo::Earliest).unwrap();
    assert_eq!(store.apply_retention(later).unwrap(), 0);
    // Young segments stay even when consumed.
    let all = pull(&store, &k, 1000);
    store.ack(&k, all.last().unwrap().pull_seq).unwrap();
    assert_eq!(store.apply_retention(SystemTime::now()).unwrap(), 0);
    // Old and consumed: all but the active segment go.
    let deleted = store.apply_retention(later).unwrap();
    assert_eq!(deleted, before - 1);
    assert!(store.read("s", 0, 10).unwrap().is_empty());
    assert_eq!(
        store.reset(&k, false, ResetTo::Earliest).unwrap(),
        store.subject_len("s") - store.read("s", 0, 1000).unwrap().len() as u64
    );
}

fn tagged(subject: &str, i: usize, tags: &[&str]) -> NewMessage {
    NewMessage {
        subject: subject.into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        body: msg(i),
    }
}

#[tokio::test]
async fn tag_filters_hand_out_matching_messages_and_consume_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let tag_sets: [&[&str]; 4] = [&["red"], &["blue"], &["red", "blue"], &[]];
    let batch: Vec<_> = (0..40).map(|i| tagged("s", i, tag_sets[i % 4])).collect();
    for r in store.append_messages(&batch).await.unwrap() {
        r.unwrap();
    }
    let spec = |k| PullSpec {
        key: k,
        broadcast: false,
        max: 100,
    };
    let red = key("s", "g-red", "c");
    let got = store
        .pull_matching(
            spec(&red),
            &TagFilter::new(TagMode::Any, vec!["red".into()]),
        )
        .unwrap();
    let seqs: Vec<u64> = got.iter().map(|p| p.sequence).collect();
    assert_eq!(
        seqs,
        (0..40)
            .filter(|i| i % 4 == 0 || i % 4 == 2)
            .collect::<Vec<_>>()
    );
    assert!(got.iter().all(|p| p.tags.contains(&"red".to_owned())));
    assert_eq!(got[3].message, msg(6));
    // What the filter rejected counts as consumed: the group is at the end.
    assert_eq!(store.position(&red, false), 40);
    let both = key("s", "g-both", "c");
    let all = TagFilter::new(TagMode::All, vec!["red".into(), "blue".into()]);
    let got = store.pull_matching(spec(&both), &all).unwrap();
    assert_eq!(
        got.iter().map(|p| p.sequence).collect::<Vec<_>>(),
        (0..40).filter(|i| i % 4 == 2).collect::<Vec<_>>()
    );
    // No tags: everything.
    let any = key("s", "g-any", "c");
    let got = store
        .pull_matching(spec(&any), &TagFilter::new(TagMode::Any, vec![]))
        .unwrap();
    assert_eq!(got.len(), 40);
}

#[tokio::test]
async fn a_bad_message_fails_alone_and_plain_append_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let huge = NewMessage {
        subject: "s".into(),
        tags: vec![],
        body: Bytes::from(vec![0u8; 5000]),
    };
    let results = store
        .append_messages(&[
            tagged("s", 0, &[]),
            huge.clone(),
            tagged("", 1, &[]),
            tagged("s", 2, &[]),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().sequence, 0);
    assert!(matches!(results[1], Err(StoreError::TooLarge { .. })));
    assert!(matches!(results[2], Err(StoreError::InvalidName { .. })));
    assert_eq!(results[3].as_ref().unwrap().sequence, 1);
    let err = store.append(vec![("s", msg(3)), ("s", huge.body)]).await;
    assert!(err.is_err());
    assert_eq!(
        store.subject_len("s"),
        2,
        "nothing of the refused batch stored"
    );
    store.close().unwrap();
    assert!(matches!(
        store.append(vec![("s", msg(4))]).await,
        Err(StoreError::Closed)
    ));
}

#[tokio::test]
async fn watchers_wake_on_appends_to_their_subject() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    append_n(&store, "s", 0..3).await;
    let mut rx = store.watch_subject("s");
    let mut other = store.watch_subject("t");
    assert_eq!(*rx.borrow_and_update(), 3);
    let waiter = tokio::spawn(async move {
        rx.changed().await.unwrap();
        *rx.borrow_and_update()
    });
    store.append(vec![("s", msg(3))]).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(seen, 4);
    assert!(!other.has_changed().unwrap(), "other subjects stay quiet");
    store.append(vec![("t", msg(0))]).await.unwrap();
    assert!(other.has_changed().unwrap());
    assert_eq!(*other.borrow_and_update(), 1);
}

#[tokio::test]
async fn concurrent_pulls_of_one_group_hand_out_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    append_n(&store, "s", 0..2000).await;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let k = key("s", "g", &format!("c{t}"));
                let mut got = Vec::new();
                loop {
                    let p = pull(&store, &k, 7);
                    if p.is_empty() {
                        break got;
                    }
                    // Each consumer's pull-log sequences are dense.
                    assert_eq!(p[0].pull_seq, got.len() as u64);
                    got.extend(p.into_iter().map(|p| p.sequence));
                }
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..2000).collect::<Vec<_>>());
}

#[tokio::test]
async fn listings_show_positions_lag_and_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    append_n(&store, "s", 0..10).await;
    append_n(&store, "t", 0..4).await;
    let c = key("s", "g", "c");
    pull(&store, &c, 6);
    store.ack(&c, 1).unwrap();
    let groups = store.groups();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].next, groups[0].lag()), (6, 4));
    let consumers = store.consumers();
    assert_eq!(consumers[0].unacked(), 4);
    let subjects = store.subject_infos().unwrap();
    assert_eq!(
        subjects
            .iter()
            .map(|s| (s.subject.as_str(), s.first, s.len))
            .collect::<Vec<_>>(),
        [("s", 0, 10), ("t", 0, 4)]
    );
}

#[tokio::test]
async fn retention_also_drops_index_and_pull_log_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = Duration::from_secs(3600);
    cfg.index_segment_entries = 16;
    let store = Store::open(cfg.clone()).unwrap();
    append_n(&store, "s", 0..300).await;
    let k = key("s", "g", "c");
    let files = |sub: &str| walk(&dir.path().join(sub));
    let all = pull(&store, &k, 1000);
    assert_eq!(all.len(), 300);
    // Index entries reach their files in the background; a checkpoint writes them all, so the
    // counts below compare settled directories.
    store.checkpoint().unwrap();
    let (clog_before, plog_before) = (files("consumelog"), files("pulllog"));
    store.ack(&k, 149).unwrap();
    let later = SystemTime::now() + Duration::from_secs(7200);
    let deleted = store.apply_retention(later).unwrap();
    assert!(deleted > 0);
    assert!(
        files("consumelog") < clog_before,
        "consume-log segments deleted"
    );
    assert!(
        files("pulllog") < plog_before,
        "acked pull-log segments deleted"
    );
    // Unacked messages are still there for redelivery, and survive a reopen.
    let again = store.pulled_since(&k, 150, 1000).unwrap();
    assert_eq!(again.len(), 150);
    assert_eq!(again[0].message, msg(150));
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.pulled_since(&k, 150, 1000).unwrap().len(), 150);
    let first = store.subject_infos().unwrap()[0].first;
    assert!(first > 0 && first <= 150, "first stored sequence {first}");
    assert_eq!(
        store.read("s", first, 1).unwrap()[0].message,
        msg(first as usize)
    );
}

fn walk(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() { walk(&p) } else { 1 };
    }
    n
}

#[tokio::test]
async fn the_flusher_writes_index_entries_within_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.flush = FlushPolicy::Async {
        interval: Duration::from_millis(10),
    };
    let store = Store::open(c).unwrap();
    append_n(&store, "s", 0..5).await;
    // The entries are served from memory at once ...
    assert_eq!(store.read("s", 0, 10).unwrap().len(), 5);
    // ... and reach the consume-log file by the next flush, without a checkpoint.
    let on_disk = || {
        last_file(&consume_dir(dir.path(), "s")).map_or(0, |f| std::fs::metadata(f).unwrap().len())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while on_disk() < 5 * 24 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never wrote the consume log"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(on_disk(), 5 * 24);
    store.close().unwrap();
}

#[tokio::test]
async fn close_stores_what_was_handed_over_then_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    // Handed to the writer by the call itself, before anything awaits it.
    let first = store.append([("s", &b"one"[..])]);
    let second = store.append([("s", &b"two"[..])]);
    store.close().unwrap();
    assert_eq!(first.await.unwrap()[0].sequence, 0);
    assert_eq!(second.await.unwrap()[0].sequence, 1);
    assert!(matches!(
        store.append([("s", &b"three"[..])]).await,
        Err(StoreError::Closed)
    ));
    // A second close (another handle's, say) is harmless.
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).unwrap();
    let read = store.read("s", 0, 10).unwrap();
    let bodies: Vec<&[u8]> = read.iter().map(|m| &m.message[..]).collect();
    assert_eq!(bodies, [&b"one"[..], &b"two"[..]]);
    store.close().unwrap();
}

#[tokio::test]
async fn a_data_directory_is_open_in_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.spawn_maintenance().unwrap();
    let clone = store.clone();
    append_n(&store, "s", 0..3).await;
    assert!(matches!(
        Store::open(config(dir.path())),
        Err(StoreError::Locked { .. })
    ));
    // One handle going is not the store going.
    drop(store);
    assert!(matches!(
        Store::open(config(dir.path())),
        Err(StoreError::Locked { .. })
    ));
    append_n(&clone, "s", 3..5).await;
    // The last handle dropped without close (as a crash would leave it): its threads, the
    // maintenance thread too, are gone with it, the directory is free, and what was appended
    // is there.
    drop(clone);
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.subject_len("s"), 5);
    store.close().unwrap();
    // A closed store keeps the directory until its handles go.
    assert!(matches!(
        Store::open(config(dir.path())),
        Err(StoreError::Locked { .. })
    ));
    drop(store);
    Store::open(config(dir.path())).unwrap().close().unwrap();
}

#[tokio::test]
async fn a_failed_write_is_not_stored_and_appends_resume_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    // Same-size messages: the first segment (4096 bytes) rolls at a known offset.
    let body = |i: usize| Bytes::from(format!("message-{i:05}"));
    let mut acked = 0;
    let record = {
        store.append([("s", body(0))]).await.unwrap();
        acked += 1;
        store.durable_offset()
    };
    let roll_at = 4096 / record * record;
    // The next segment is a disk that is full.
    std::os::unix::fs::symlink(
        "/dev/full",
        dir.path().join(format!("messagelog/{roll_at:020}")),
    )
    .unwrap();
    while store.durable_offset() + record <= roll_at {
        store.append([("s", body(acked))]).await.unwrap();
        acked += 1;
    }
    // The same size as the others, so it goes to the full segment too.
    let refused = || Bytes::from_static(b"refused-99999");
    let failed = store.append([("s", refused())]).await;
    assert!(
        matches!(failed, Err(StoreError::Failed { .. })),
        "{failed:?}"
    );
    // The disk is still full (the cut removed the failed segment: put it back): refused again.
    let full = dir.path().join(format!("messagelog/{roll_at:020}"));
    if std::fs::symlink_metadata(&full).is_err() {
        std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    }
    assert!(matches!(
        store.append([("s", refused())]).await,
        Err(StoreError::Failed { .. })
    ));
    // Space comes back: appends resume with no reopen, right after the last acknowledged one.
    if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&full).unwrap();
    }
    for _ in 0..3 {
        let next = store.append([("s", body(acked))]).await.unwrap();
        assert_eq!(next[0].sequence, acked as u64);
        acked += 1;
    }
    // Nothing is left to refuse a checkpoint.
    store.close().unwrap();
    drop(store);
    // Every acknowledged message is there, the refused ones are not.
    let store = Store::open(config(dir.path())).unwrap();
    let read = store.read("s", 0, 1000).unwrap();
    assert_eq!(read.len(), acked);
    for (i, m) in read.iter().enumerate() {
        assert_eq!(m.message, body(i));
    }
    let next = store.append([("s", body(acked))]).await.unwrap();
    assert_eq!(next[0].sequence, acked as u64);
    store.close().unwrap();
}
