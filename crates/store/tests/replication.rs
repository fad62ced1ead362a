//! Replication: a replica built with `read_log_chunk` → `append_replicated` has the master's
//! state; bad chunks are refused; only durable bytes ship with `SyncBeforeAck`; a former
//! master's unreplicated tail is cut by `truncate_logs`; `watch_log_end` wakes the sync server.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use qmq_store::{
    truncate_logs, ConsumerInfo, ConsumerKey, FlushPolicy, GroupInfo, LogStream, NewMessage,
    PullOptions, PullSpec, Pulled, ResetTo, Store, StoreConfig, StoreError, StoredMessage,
    SubjectInfo, TagFilter, TagMode,
};

mod common;
use common::{config, key};

const STREAMS: [LogStream; 2] = [LogStream::Message, LogStream::Action];

/// Everything a client can observe of a store.
#[derive(Debug, PartialEq)]
struct State {
    subjects: Vec<SubjectInfo>,
    messages: Vec<Vec<StoredMessage>>,
    groups: Vec<GroupInfo>,
    consumers: Vec<ConsumerInfo>,
    /// Per consumer: what it pulled and did not ack (redelivered first).
    unacked: Vec<Vec<Pulled>>,
    ends: Vec<u64>,
}

fn state(store: &Store) -> State {
    let subjects = store.subject_infos().unwrap();
    let messages = subjects
        .iter()
        .map(|s| store.read(&s.subject, 0, 100_000).unwrap())
        .collect();
    let consumers = store.consumers();
    let unacked = consumers
        .iter()
        .map(|c| {
            let p = store.progress(&c.key);
            assert_eq!(&p, c);
            store
                .pulled_since(&c.key, (c.acked + 1) as u64, 100_000)
                .unwrap()
        })
        .collect();
    State {
        subjects,
        messages,
        groups: store.groups(),
        consumers,
        unacked,
        ends: STREAMS.iter().map(|&s| store.log_end(s)).collect(),
    }
}

/// Copies what `replica` misses of `master`'s logs in chunks of at most `max_bytes`
/// (message log first, then the action log, as a slave's loops would). Returns the number of
/// chunks.
fn replicate(master: &Store, replica: &Store, max_bytes: usize) -> usize {
    let mut chunks = 0;
    for stream in STREAMS {
        loop {
            let from = replica.log_end(stream);
            let chunk = master.read_log_chunk(stream, from, max_bytes).unwrap();
            assert_eq!(chunk.start, from, "{stream}: the replica asks from its end");
            if chunk.bytes.is_empty() {
                break;
            }
            let end = replica
                .append_replicated(stream, chunk.start, &chunk.bytes)
                .unwrap();
            assert_eq!(end, from + chunk.bytes.len() as u64);
            chunks += 1;
        }
        assert_eq!(replica.log_end(stream), master.log_end(stream), "{stream}");
    }
    chunks
}

fn body(round: usize, i: usize) -> Bytes {
    Bytes::from(format!("r{round}-m{i:04}-{}", "p".repeat((i * 7) % 90)))
}

fn tags(i: usize) -> Vec<String> {
    match i % 3 {
        0 => vec!["red".into()],
        1 => vec!["blue".into(), "red".into()],
        _ => Vec::new(),
    }
}

/// Appends to three subjects with tags.
async fn append_round(store: &Store, round: usize, per_subject: usize) {
    for batch in (0..per_subject).collect::<Vec<_>>().chunks(5) {
        let messages: Vec<NewMessage> = batch
            .iter()
            .flat_map(|&i| {
                ["a", "b", "c"].map(|s| NewMessage {
                    subject: s.into(),
                    tags: tags(i),
                    body: body(round, i),
                })
            })
            .collect();
        for r in store.append_messages(&messages).await.unwrap() {
            r.unwrap();
        }
    }
}

fn pull_tagged(store: &Store, k: &ConsumerKey, broadcast: bool, max: usize) -> Vec<Pulled> {
    let filter = TagFilter::new(TagMode::Any, vec!["red".into()]);
    store
        .pull_matching(
            PullSpec {
                key: k,
                broadcast,
                max,
            },
            &filter,
        )
        .unwrap()
}

/// Appends, pulls (shared with a tag filter, broadcast, a new group starting at the latest),
/// acks (leaving some unacked) and a reset.
async fn workload(store: &Store, round: usize) {
    append_round(store, round, 40).await;
    let (a1, a2) = (key("a", "g1", "c1"), key("a", "g1", "c2"));
    let b1 = key("b", "g2", "c1");
    let (bb1, bb2) = (key("b", "bc", "x"), key("b", "bc", "y"));
    let pulled = pull_tagged(store, &a1, false, 7);
    assert!(!pulled.is_empty());
    let last = pulled.last().unwrap().pull_seq;
    store.ack(&a1, last - 2).unwrap();
    let pulled = pull_tagged(store, &a2, false, 5);
    store.ack(&a2, pulled.last().unwrap().pull_seq).unwrap();
    pull_tagged(store, &a1, false, 3);
    for k in [&bb1, &bb2] {
        let p = pull_tagged(store, k, true, 4 + round);
        store.ack(k, p[1].pull_seq).unwrap();
    }
    let p = pull_tagged(store, &b1, false, 10);
    store.ack(&b1, p.last().unwrap().pull_seq).unwrap();
    store.reset(&b1, false, ResetTo::Earliest).unwrap();
    pull_tagged(store, &b1, false, 2);
    // A group new to "c" starting at the latest message (a reset in the action log).
    let c1 = key("c", &format!("late{round}"), "z");
    let options = PullOptions {
        new_group: ResetTo::Latest,
        ..PullOptions::default()
    };
    let spec = PullSpec {
        key: &c1,
        broadcast: false,
        max: 5,
    };
    let filter = TagFilter::new(TagMode::Any, Vec::new());
    assert!(store.pull_with(spec, options, &filter).unwrap().is_empty());
    append_round(store, round + 100, 3).await;
}

fn small(dir: &Path) -> StoreConfig {
    let mut c = config(dir);
    // Small segments everywhere, so chunks stop at segment ends and indexes span segments.
    c.segment_size = 2048;
    c.action_segment_size = 512;
    c.index_segment_entries = 16;
    c
}

#[tokio::test]
async fn a_replica_built_from_chunks_has_the_masters_state_and_keeps_it_across_reopen() {
    let (mdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(small(mdir.path())).unwrap();
    // The replica checkpoints (and applies retention) all the while.
    let mut rcfg = small(rdir.path());
    rcfg.checkpoint_interval = Duration::from_millis(5);
    let replica = Store::open(rcfg).unwrap();
    replica.spawn_maintenance().unwrap();
    workload(&master, 0).await;
    assert!(
        master.log_end(LogStream::Message) > 3 * 2048,
        "spans segments"
    );
    let action_end = master.log_end(LogStream::Action);
    assert!(action_end > 512, "spans segments: {action_end}");
    let chunks = replicate(&master, &replica, 300);
    assert!(
        chunks as u64 > master.log_end(LogStream::Message) / 300,
        "chunks are split"
    );
    let expected = state(&master);
    assert!(expected.consumers.iter().any(|c| c.unacked() > 0));
    assert_eq!(state(&replica), expected);

    // Closed and reopened, the replica recovers the same state from its own files.
    replica.close().unwrap();
    drop(replica);
    let replica = Store::open(small(rdir.path())).unwrap();
    assert_eq!(state(&replica), expected);

    // The master goes on; the replica follows, a checkpoint in the middle of it.
    workload(&master, 1).await;
    replicate(&master, &replica, 1000);
    replica.checkpoint().unwrap();
    append_round(&master, 2, 10).await;
    replicate(&master, &replica, 64);
    let expected = state(&master);
    assert_eq!(state(&replica), expected);
    // New messages on the replica wake its subject watchers.
    let mut watch = replica.watch_subject("a");
    let len = *watch.borrow();
    append_round(&master, 3, 2).await;
    replicate(&master, &replica, 4096);
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*watch.borrow(), len + 2);
    drop(replica);
    let replica = Store::open(small(rdir.path())).unwrap();
    assert_eq!(state(&replica), state(&master));
}

#[tokio::test]
async fn bad_chunks_are_refused_whole_and_offsets_are_clamped_or_ahead() {
    let (mdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(small(mdir.path())).unwrap();
    let replica = Store::open(small(rdir.path())).unwrap();
    append_round(&master, 0, 6).await;
    let chunk = master
        .read_log_chunk(LogStream::Message, 0, 1 << 20)
        .unwrap();
    assert_eq!(chunk.start, 0);
    assert!(chunk.bytes.len() > 200);
    let nothing_written = |replica: &Store| {
        assert_eq!(replica.log_end(LogStream::Message), 0);
        assert!(replica.subject_infos().unwrap().is_empty());
    };

    // Not at the replica's end.
    match replica.append_replicated(LogStream::Message, 7, &chunk.bytes) {
        Err(StoreError::Diverged {
            stream: LogStream::Message,
            expected: 0,
            got: 7,
        }) => {}
        other => panic!("expected Diverged, got {other:?}"),
    }
    nothing_written(&replica);

    // A flipped byte in a later record: refused whole, the good records before it too.
    let first_len = u32::from_be_bytes(chunk.bytes[..4].try_into().unwrap()) as usize + 8;
    let mut flipped = chunk.bytes.to_vec();
    flipped[first_len + 12] ^= 0x40;
    match replica.append_replicated(LogStream::Message, 0, &flipped) {
        Err(StoreError::BadChunk {
            stream: LogStream::Message,
            offset,
            ..
        }) => assert_eq!(offset, first_len as u64),
        other => panic!("expected BadChunk, got {other:?}"),
    }
    nothing_written(&replica);
    // Cut mid-record (in the header and in the payload).
    for cut in [chunk.bytes.len() - 3, first_len + 5] {
        let r = replica.append_replicated(LogStream::Message, 0, &chunk.bytes[..cut]);
        assert!(matches!(r, Err(StoreError::BadChunk { .. })), "{r:?}");
        nothing_written(&replica);
    }
    // The intact chunk goes in.
    let end = replica
        .append_replicated(LogStream::Message, 0, &chunk.bytes)
        .unwrap();
    assert_eq!(end, chunk.bytes.len() as u64);
    assert_eq!(replica.subject_len("a"), master.subject_len("a"));

    // A record larger than max_bytes comes alone, whole.
    let one = master.read_log_chunk(LogStream::Message, 0, 1).unwrap();
    assert_eq!(one.bytes.len(), first_len);

    // Beyond the end: Ahead; at the end: nothing.
    for stream in STREAMS {
        let end = master.log_end(stream);
        match master.read_log_chunk(stream, end + 1, 100) {
            Err(StoreError::Ahead {
                stream: s,
                offset,
                end: e,
            }) => assert_eq!((s, offset, e), (stream, end + 1, end)),
            other => panic!("expected Ahead, got {other:?}"),
        }
        let at_end = master.read_log_chunk(stream, end, 100).unwrap();
        assert_eq!((at_end.start, at_end.bytes.len()), (end, 0));
    }

    // Below the log's start (retention deleted the head): raised to the start.
    let gdir = tempfile::tempdir().unwrap();
    let mut cfg = small(gdir.path());
    cfg.retention = Duration::ZERO;
    cfg.retention_deletes_unconsumed = true;
    let gone = Store::open(cfg).unwrap();
    append_round(&gone, 0, 40).await;
    let deleted = gone
        .apply_retention(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    assert!(deleted > 0);
    let start = gone.log_start(LogStream::Message);
    assert!(start > 0);
    let chunk = gone.read_log_chunk(LogStream::Message, 0, 500).unwrap();
    assert_eq!(chunk.start, start);
    assert!(!chunk.bytes.is_empty());
    // An empty replica cannot take it: its log ends at 0.
    let fresh = tempfile::tempdir().unwrap();
    let fresh = Store::open(small(fresh.path())).unwrap();
    let r = fresh.append_replicated(LogStream::Message, chunk.start, &chunk.bytes);
    assert!(matches!(r, Err(StoreError::Diverged { .. })), "{r:?}");

    // The action stream is checked the same way.
    let k = key("a", "g", "c");
    common::pull(&master, &k, 3);
    master.ack(&k, 1).unwrap();
    let actions = master
        .read_log_chunk(LogStream::Action, 0, 1 << 20)
        .unwrap();
    let mut flipped = actions.bytes.to_vec();
    let at = flipped.len() - 2;
    flipped[at] ^= 1;
    let r = replica.append_replicated(LogStream::Action, 0, &flipped);
    assert!(matches!(r, Err(StoreError::BadChunk { .. })), "{r:?}");
    let r = replica.append_replicated(LogStream::Action, 1, &actions.bytes);
    assert!(matches!(r, Err(StoreError::Diverged { .. })), "{r:?}");
    assert_eq!(replica.log_end(LogStream::Action), 0);
    assert!(replica.consumers().is_empty() && replica.groups().is_empty());
    replica
        .append_replicated(LogStream::Action, 0, &actions.bytes)
        .unwrap();
    assert_eq!(replica.progress(&k), master.progress(&k));
}

#[test]
fn with_sync_before_ack_only_durable_bytes_are_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let master = Store::open(small(dir.path())).unwrap();
    assert_eq!(master.config().flush, FlushPolicy::SyncBeforeAck);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, done) = (master.clone(), done.clone());
            rt.spawn(async move {
                for i in 0..150 {
                    let m = [(format!("s{w}"), body(w, i))];
                    store.append(m).await.unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            })
        })
        .collect();
    let pulls = {
        let store = master.clone();
        std::thread::spawn(move || {
            let k = key("s0", "g", "c");
            let deadline = Instant::now() + Duration::from_secs(30);
            while store.position(&k, false) < 150 && Instant::now() < deadline {
                common::pull(&store, &k, 3);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut shipped = [0u64; 2];
    let mut reads = 0;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::Acquire) == 4;
        for (i, stream) in STREAMS.into_iter().enumerate() {
            let chunk = master.read_log_chunk(stream, shipped[i], 1 << 16).unwrap();
            let end = chunk.start + chunk.bytes.len() as u64;
            // The durable mark only grows (no failures here): read after the chunk, it
            // must cover it. (The action log's durable mark is not public: its bytes are
            // checked against its end.)
            let limit = match stream {
                LogStream::Message => master.durable_offset(),
                LogStream::Action => master.log_end(LogStream::Action),
            };
            assert!(
                end <= limit,
                "{stream}: shipped up to {end}, durable {limit}"
            );
            shipped[i] = end;
            reads += 1;
        }
        if finished && shipped[0] == master.log_end(LogStream::Message) {
            break;
        }
        assert!(Instant::now() < deadline, "timed out");
    }
    for w in writers {
        rt.block_on(w).unwrap();
    }
    pulls.join().unwrap();
    assert!(reads > 10);
    assert_eq!(shipped[0], master.durable_offset());
}

#[tokio::test]
async fn watch_log_end_fires_after_appends_and_after_pulls_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small(dir.path())).unwrap();
    let mut messages = store.watch_log_end(LogStream::Message);
    let mut actions = store.watch_log_end(LogStream::Action);
    assert_eq!(*messages.borrow_and_update(), 0);
    assert_eq!(*actions.borrow_and_update(), 0);
    let wait = Duration::from_secs(5);

    store.append([("s", body(0, 1))]).await.unwrap();
    tokio::time::timeout(wait, messages.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *messages.borrow_and_update(),
        store.log_end(LogStream::Message)
    );
    assert!(!actions.has_changed().unwrap(), "appends are no actions");

    let k = key("s", "g", "c");
    assert_eq!(common::pull(&store, &k, 5).len(), 1);
    tokio::time::timeout(wait, actions.changed())
        .await
        .unwrap()
        .unwrap();
    let after_pull = *actions.borrow_and_update();
    assert_eq!(after_pull, store.log_end(LogStream::Action));
    assert!(after_pull > 0);
    store.ack(&k, 0).unwrap();
    tokio::time::timeout(wait, actions.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(*actions.borrow_and_update() > after_pull);
    store.reset(&k, false, ResetTo::Earliest).unwrap();
    tokio::time::timeout(wait, actions.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *actions.borrow_and_update(),
        store.log_end(LogStream::Action)
    );

    // A replica's watchers fire on replicated appends.
    let rdir = tempfile::tempdir().unwrap();
    let replica = Store::open(small(rdir.path())).unwrap();
    let mut rm = replica.watch_log_end(LogStream::Message);
    let mut ra = replica.watch_log_end(LogStream::Action);
    replicate(&store, &replica, 1 << 20);
    assert!(rm.has_changed().unwrap() && ra.has_changed().unwrap());
    assert_eq!(*rm.borrow_and_update(), store.log_end(LogStream::Message));
    assert_eq!(*ra.borrow_and_update(), store.log_end(LogStream::Action));
}

/// Every byte of `stream` from `from` to its end, read in chunks.
fn tail_bytes(store: &Store, stream: LogStream, mut from: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = store.read_log_chunk(stream, from, 1 << 20).unwrap();
        if chunk.bytes.is_empty() {
            return out;
        }
        from = chunk.start + chunk.bytes.len() as u64;
        out.extend_from_slice(&chunk.bytes);
    }
}

fn checkpoint_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn truncate_logs_cuts_a_former_masters_unreplicated_tail() {
    let (mdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut mcfg = small(mdir.path());
    mcfg.checkpoints_retained = 10;
    let master = Store::open(mcfg.clone()).unwrap();
    workload(&master, 0).await;
    master.checkpoint().unwrap();
    let replica = Store::open(small(rdir.path())).unwrap();
    replicate(&master, &replica, 500);
    let p = [
        replica.log_end(LogStream::Message),
        replica.log_end(LogStream::Action),
    ];
    let expected = state(&replica);
    assert!(
        expected.consumers.iter().any(|c| c.unacked() > 0),
        "the replica has pulled-but-unacked messages to redeliver"
    );
    let before_p = checkpoint_files(mdir.path());

    // The unreplicated tail: more messages, pulls, and acks of everything pulled.
    workload(&master, 1).await;
    master
        .append([("only-in-the-tail", body(9, 9))])
        .await
        .unwrap();
    for c in master.consumers() {
        if c.pulled > c.acked {
            master.ack(&c.key, c.pulled as u64).unwrap();
        }
    }
    assert!(master.consumers().iter().all(|c| c.unacked() == 0));
    master.checkpoint().unwrap();
    let after_p: Vec<_> = checkpoint_files(mdir.path())
        .into_iter()
        .filter(|f| !before_p.contains(f))
        .collect();
    assert!(!after_p.is_empty(), "a checkpoint taken after P");
    let tails = [
        tail_bytes(&master, LogStream::Message, p[0]),
        tail_bytes(&master, LogStream::Action, p[1]),
    ];
    assert!(!tails[0].is_empty() && !tails[1].is_empty());
    // Not while the store is open.
    assert!(matches!(
        truncate_logs(&mcfg, p[0], p[1]),
        Err(StoreError::Locked { .. })
    ));
    master.close().unwrap();
    drop(master);

    // Not at a record boundary: refused, nothing changed.
    let r = truncate_logs(&mcfg, p[0] + 1, p[1]);
    assert!(
        matches!(r, Err(StoreError::TruncateRefused { .. })),
        "{r:?}"
    );
    let r = truncate_logs(&mcfg, p[0], p[1] + 3);
    assert!(
        matches!(r, Err(StoreError::TruncateRefused { .. })),
        "{r:?}"
    );
    assert!(!mdir.path().join("truncated").exists());

    let cut = truncate_logs(&mcfg, p[0], p[1]).unwrap();
    assert_eq!(cut.message_bytes, tails[0].len() as u64);
    assert_eq!(cut.action_bytes, tails[1].len() as u64);
    assert_eq!(cut.side_files.len(), 2);
    for (file, (kind, tail)) in cut
        .side_files
        .iter()
        .zip(["messagelog", "actionlog"].iter().zip(&tails))
    {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(name.contains(kind) && name.ends_with(".bin"), "{name}");
        assert_eq!(&std::fs::read(file).unwrap(), tail, "{name}");
    }
    let kept = checkpoint_files(mdir.path());
    assert!(
        after_p.iter().all(|f| !kept.contains(f)),
        "later ones dropped"
    );
    assert!(!kept.is_empty(), "older ones kept");

    // Reopened, the former master is the replica at P.
    let old = Store::open(mcfg.clone()).unwrap();
    assert_eq!(state(&old), expected);
    // A second cut at the same point is a no-op.
    drop(old);
    let again = truncate_logs(&mcfg, p[0], p[1]).unwrap();
    assert_eq!((again.message_bytes, again.action_bytes), (0, 0));
    assert!(again.side_files.is_empty());

    // The promoted replica goes on; the former master follows it and stays equal.
    let old = Store::open(mcfg.clone()).unwrap();
    workload(&replica, 2).await;
    replicate(&replica, &old, 700);
    let expected = state(&replica);
    assert_eq!(state(&old), expected);
    drop(old);
    let old = Store::open(mcfg).unwrap();
    assert_eq!(state(&old), expected);
}

#[tokio::test]
async fn truncate_logs_refuses_a_cut_no_checkpoint_can_back_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(dir.path());
    cfg.retention = Duration::ZERO;
    cfg.retention_deletes_unconsumed = true;
    let store = Store::open(cfg.clone()).unwrap();
    append_round(&store, 0, 60).await;
    store.checkpoint().unwrap();
    store
        .apply_retention(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    let start = store.log_start(LogStream::Message);
    assert!(start > 0);
    append_round(&store, 1, 5).await;
    let ends = STREAMS.map(|s| store.log_end(s));
    drop(store); // no close: no checkpoint past the one above
                 // Every checkpoint vouches for messages past `start`, and the log no longer starts at 0.
    let r = truncate_logs(&cfg, start, ends[1]);
    assert!(
        matches!(r, Err(StoreError::TruncateRefused { .. })),
        "{r:?}"
    );
    assert!(!dir.path().join("truncated").exists());
    let store = Store::open(cfg).unwrap();
    assert_eq!(STREAMS.map(|s| store.log_end(s)), ends, "nothing cut");
}

/// A group created by a pull that hands out nothing (its subject empty) is in the action log
/// too: a promoted replica knows it and serves it what arrived afterwards, instead of treating
/// it as new and starting it at the latest message.
#[tokio::test]
async fn a_group_created_by_an_empty_pull_is_replicated() {
    let (m, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = Store::open(config(m.path())).unwrap();
    let replica = Store::open(config(r.path())).unwrap();
    let k = key("empty.first", "g", "c");
    let none = master
        .pull(
            PullSpec {
                key: &k,
                broadcast: false,
                max: 10,
            },
            |_| true,
        )
        .unwrap();
    assert!(none.is_empty());
    master
        .append([("empty.first", &b"later"[..])])
        .await
        .unwrap();
    replicate(&master, &replica, 1 << 20);
    assert_eq!(
        replica.groups(),
        master.groups(),
        "the group exists on the replica"
    );
    // Promoted: the group's next pull, asked to start a new group at the latest message,
    // still gets what arrived after its first pull.
    let got = replica
        .pull_with(
            PullSpec {
                key: &k,
                broadcast: false,
                max: 10,
            },
            PullOptions {
                new_group: ResetTo::Latest,
                ..PullOptions::default()
            },
            &qmq_store::BytesFilter(|_: &[u8]| true),
        )
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "the message sent after the group's first pull"
    );
}

/// Small segments; action segments large enough for a pull of 60 messages.
fn resync_cfg(dir: &Path) -> StoreConfig {
    let mut c = small(dir);
    c.action_segment_size = 2048;
    c
}

/// A master whose first message-log segments retention deleted, with consumers mid-way
/// (some pulled messages not acked), and with action-log segments trimmed too.
async fn master_past_retention(dir: &Path) -> Store {
    let mut cfg = resync_cfg(dir);
    cfg.retention = Duration::ZERO;
    let master = Store::open(cfg).unwrap();
    append_round(&master, 0, 60).await;
    let (a1, a2) = (key("a", "g1", "c1"), key("a", "g1", "c2"));
    let p = common::pull(&master, &a1, 50);
    master.ack(&a1, p.last().unwrap().pull_seq).unwrap();
    common::pull(&master, &a1, 5); // unacked
    let p = common::pull(&master, &a2, 3);
    master.ack(&a2, p[0].pull_seq).unwrap(); // two unacked
    let b = key("b", "g2", "c1");
    let p = common::pull(&master, &b, 60);
    master.ack(&b, p.last().unwrap().pull_seq).unwrap();
    let x = key("b", "bc", "x");
    let p = pull_tagged(&master, &x, true, 30);
    master.ack(&x, p[p.len() - 3].pull_seq).unwrap();
    let c = key("c", "g3", "c1");
    let p = common::pull(&master, &c, 45);
    master.ack(&c, p.last().unwrap().pull_seq).unwrap();
    append_round(&master, 1, 10).await;
    for _ in 0..3 {
        master.checkpoint().unwrap();
    }
    let deleted = master
        .apply_retention(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    assert!(deleted > 0, "retention deleted segments");
    assert!(master.log_start(LogStream::Message) > 0);
    assert!(
        master.log_start(LogStream::Action) > 0,
        "action log trimmed"
    );
    master
}

/// Pulls, acks and appends on the master after a snapshot, so copying has work to do.
async fn after_snapshot(master: &Store) {
    append_round(master, 2, 8).await;
    let a1 = key("a", "g1", "c1");
    let p = common::pull(master, &a1, 4);
    master.ack(&a1, p[0].pull_seq).unwrap();
    common::pull(master, &key("c", "g3", "c1"), 3);
}

#[tokio::test]
async fn a_replica_behind_retention_resyncs_from_a_snapshot_and_copies_to_the_masters_state() {
    let (mdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = master_past_retention(mdir.path()).await;
    let m0 = master.log_start(LogStream::Message);

    // An empty replica cannot copy: the master's log no longer starts at 0.
    let rcfg = resync_cfg(&rdir.path().join("store"));
    {
        let empty = tempfile::tempdir().unwrap();
        let replica = Store::open(resync_cfg(empty.path())).unwrap();
        let chunk = master.read_log_chunk(LogStream::Message, 0, 4096).unwrap();
        assert_eq!(chunk.start, m0);
        let r = replica.append_replicated(LogStream::Message, chunk.start, &chunk.bytes);
        assert!(matches!(r, Err(StoreError::Diverged { .. })), "{r:?}");
    }

    let snap = master.snapshot().unwrap();
    assert_eq!(snap.messages.start, m0);
    assert_eq!(snap.consumers.action_end, master.log_end(LogStream::Action));
    let unacked: usize = snap
        .consumers
        .consumers
        .iter()
        .map(|c| c.unacked.len())
        .sum();
    assert_eq!(unacked, 5 + 2 + 2, "{:?}", snap.consumers.consumers);
    assert!(snap.messages.subjects.iter().all(|s| s.first > 0));
    let (m, c) = snap.encode_parts().unwrap();
    let snap = qmq_store::Snapshot::decode_parts(&m, &c).unwrap();

    // Installed into a directory that does not exist yet: nothing to move aside.
    assert_eq!(Store::install_snapshot(&rcfg, &snap).unwrap(), None);
    let replica = Store::open(rcfg.clone()).unwrap();
    assert_eq!(replica.log_end(LogStream::Message), m0);
    assert_eq!(replica.log_start(LogStream::Message), m0);
    assert_eq!(
        replica.log_end(LogStream::Action),
        snap.consumers.action_end
    );
    // Positions and progress are the master's before a message is copied (not moved back).
    assert_eq!(replica.consumers(), master.consumers());
    for g in master.groups() {
        assert_eq!(replica.position(&g.key, !g.key.consumer.is_empty()), g.next);
    }

    after_snapshot(&master).await;
    replicate(&master, &replica, 300);
    let expected = state(&master);
    assert_eq!(state(&replica), expected);
    // The unacked messages are there to redeliver, with their bodies.
    let a1 = key("a", "g1", "c1");
    let p = replica.progress(&a1);
    let again = replica
        .pulled_since(&a1, (p.acked + 1) as u64, 100)
        .unwrap();
    assert_eq!(again.len() as i64, p.pulled - p.acked);
    assert_eq!(
        again,
        master.pulled_since(&a1, (p.acked + 1) as u64, 100).unwrap()
    );

    // Reopened (with a checkpoint in between, and without), it recovers the same state.
    replica.checkpoint().unwrap();
    drop(replica);
    let replica = Store::open(rcfg.clone()).unwrap();
    assert_eq!(state(&replica), expected);
    // Promoted, it hands out what the master would.
    let b = key("b", "g2", "c9");
    assert_eq!(
        common::pull(&replica, &b, 10),
        common::pull(&master, &b, 10)
    );
    let c = key("c", "g3", "c1");
    assert_eq!(
        common::pull(&replica, &c, 100),
        common::pull(&master, &c, 100)
    );
    replica.close().unwrap();
}

#[tokio::test]
async fn installing_a_snapshot_over_a_store_moves_its_data_aside() {
    let (mdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = master_past_retention(mdir.path()).await;
    let rcfg = resync_cfg(rdir.path());
    // A replica with data of its own the master never had.
    let old = Store::open(rcfg.clone()).unwrap();
    append_round(&old, 7, 5).await;
    let old_end = old.log_end(LogStream::Message);
    let snap = master.snapshot().unwrap();
    // Refused while a store has the directory open.
    let r = Store::install_snapshot(&rcfg, &snap);
    assert!(matches!(r, Err(StoreError::Locked { .. })), "{r:?}");
    old.close().unwrap();
    drop(old);
    let moved = Store::install_snapshot(&rcfg, &snap).unwrap().unwrap();
    assert!(moved.starts_with(rdir.path()));
    assert!(moved
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("resync-"));
    // The old data is intact where it was moved.
    let mut aside = resync_cfg(&moved);
    aside.dir = moved.clone();
    let old = Store::open(aside).unwrap();
    assert_eq!(old.log_end(LogStream::Message), old_end);
    assert_eq!(old.subject_len("a"), 5);
    drop(old);
    std::fs::remove_file(moved.join("LOCK")).ok();

    let replica = Store::open(rcfg.clone()).unwrap();
    after_snapshot(&master).await;
    replicate(&master, &replica, 1000);
    assert_eq!(state(&replica), state(&master));
    drop(replica);
    // A second install keeps the first one's directory and adds another.
    let again = Store::install_snapshot(&rcfg, &master.snapshot().unwrap())
        .unwrap()
        .unwrap();
    assert_ne!(again, moved);
    assert!(moved.exists());
}
