//! The backup server's index (`read_index_chunk`): every message once, in log order, with its
//! subject, consume-log sequence and bytes; from any record, within the limits; nothing at
//! the end; an error beyond it; raised past retention.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use qmq_store::{Appended, IndexRecord, LogStream, NewMessage, Store, StoreConfig, StoreError};

mod common;
use common::config;

const SUBJECTS: [&str; 3] = ["a", "bb", "ccc"];

/// Small segments and consume-log segments, so reads cross both.
fn small(dir: &Path) -> StoreConfig {
    let mut c = config(dir);
    c.segment_size = 2048;
    c.index_segment_entries = 16;
    c
}

fn body(i: usize) -> Bytes {
    Bytes::from(format!("message {i:04} {}", "x".repeat(i % 50)))
}

/// Appends `n` messages round-robin over the subjects, in batches; returns, per message in
/// log order, its subject, body and where it went.
async fn fill(store: &Store, n: usize) -> Vec<(String, Bytes, Appended)> {
    let mut out = Vec::new();
    let all: Vec<usize> = (0..n).collect();
    for batch in all.chunks(7) {
        let messages: Vec<NewMessage> = batch
            .iter()
            .map(|&i| NewMessage {
                subject: SUBJECTS[i % SUBJECTS.len()].into(),
                tags: if i % 2 == 0 {
                    vec!["t".into()]
                } else {
                    Vec::new()
                },
                body: body(i),
            })
            .collect();
        let placed = store.append_messages(&messages).await.unwrap();
        for (m, r) in messages.into_iter().zip(placed) {
            out.push((m.subject, m.body, r.unwrap()));
        }
    }
    out
}

/// Reads the index from `from` to the log's end in chunks; checks the chunks follow each
/// other.
fn read_all(store: &Store, from: u64, max_records: usize, max_bytes: usize) -> Vec<IndexRecord> {
    let end = store.log_end(LogStream::Message);
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let chunk = store
            .read_index_chunk(next, max_records, max_bytes)
            .unwrap();
        assert!(chunk.records.len() <= max_records);
        if chunk.records.is_empty() {
            assert_eq!((chunk.start, chunk.next), (next, next), "nothing new");
            break;
        }
        assert_eq!(chunk.start, next);
        assert_eq!(chunk.records[0].offset, next, "no record is passed over");
        for pair in chunk.records.windows(2) {
            assert_eq!(pair[0].end, pair[1].offset, "records are back to back");
        }
        assert_eq!(chunk.records.last().unwrap().end, chunk.next);
        next = chunk.next;
        out.extend(chunk.records);
    }
    assert_eq!(next, end);
    out
}

fn check(records: &[IndexRecord], expected: &[(String, Bytes, Appended)]) {
    assert_eq!(records.len(), expected.len());
    for (r, (subject, body, placed)) in records.iter().zip(expected) {
        assert_eq!(&r.subject, subject);
        assert_eq!(&r.message, body);
        assert_eq!(r.offset, placed.offset);
        assert_eq!(r.sequence, placed.sequence);
        assert!(r.appended_at_ms > 0);
    }
}

#[tokio::test]
async fn every_message_once_in_log_order_with_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small(dir.path())).unwrap();
    let sent = fill(&store, 90).await;
    assert!(
        sent.last().unwrap().2.offset > 2 * 2048,
        "the log spans several segments"
    );
    // Sequences per subject are 0, 1, 2, ... in log order.
    for s in SUBJECTS {
        let seqs: Vec<u64> = sent
            .iter()
            .filter(|m| m.0 == s)
            .map(|m| m.2.sequence)
            .collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
    }
    check(&read_all(&store, 0, 5000, 1 << 20), &sent);
    // Small limits give the same records.
    check(&read_all(&store, 0, 4, 1 << 20), &sent);
    check(&read_all(&store, 0, 5000, 300), &sent);
    check(&read_all(&store, 0, 5000, 1), &sent);
}

#[tokio::test]
async fn from_a_record_in_the_middle_and_within_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small(dir.path())).unwrap();
    let sent = fill(&store, 60).await;
    // From the 41st message: the sequences are found without the records before.
    let from = sent[40].2.offset;
    check(&read_all(&store, from, 5000, 1 << 20), &sent[40..]);
    let chunk = store.read_index_chunk(from, 5000, 1 << 20).unwrap();
    assert_eq!(chunk.records[0].sequence, 13);

    // At most `max_records`.
    let chunk = store.read_index_chunk(0, 5, 1 << 20).unwrap();
    assert_eq!(chunk.records.len(), 5);
    assert_eq!(chunk.next, sent[5].2.offset);

    // At most `max_bytes` read, but always one record.
    let one = store.read_index_chunk(0, 5000, 1).unwrap();
    assert_eq!(one.records.len(), 1);
    assert_eq!(one.next, sent[1].2.offset);
    let two_records = usize::try_from(sent[2].2.offset).unwrap();
    let two = store.read_index_chunk(0, 5000, two_records).unwrap();
    assert_eq!(two.records.len(), 2);
    let short = store.read_index_chunk(0, 5000, two_records - 1).unwrap();
    assert_eq!(short.records.len(), 1);
}

#[tokio::test]
async fn nothing_at_the_end_and_an_error_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(small(dir.path())).unwrap();
    let empty = store.read_index_chunk(0, 5000, 1 << 20).unwrap();
    assert_eq!((empty.start, empty.next, empty.records.len()), (0, 0, 0));

    fill(&store, 10).await;
    let end = store.log_end(LogStream::Message);
    let at_end = store.read_index_chunk(end, 5000, 1 << 20).unwrap();
    assert_eq!((at_end.start, at_end.next), (end, end));
    assert!(at_end.records.is_empty());
    match store.read_index_chunk(end + 1, 5000, 1 << 20) {
        Err(StoreError::Ahead {
            stream,
            offset,
            end: e,
        }) => assert_eq!((stream, offset, e), (LogStream::Message, end + 1, end)),
        other => panic!("expected Ahead, got {other:?}"),
    }

    // A message appended later is there from the old end.
    let more = fill(&store, 1).await;
    let chunk = store.read_index_chunk(end, 5000, 1 << 20).unwrap();
    assert_eq!(chunk.records.len(), 1);
    assert_eq!(chunk.records[0].offset, more[0].2.offset);
    assert_eq!(chunk.records[0].sequence, more[0].2.sequence);
    assert_eq!(chunk.records[0].sequence, 4, "subject a had 4 messages");
}

#[tokio::test]
async fn below_the_retained_start_is_raised_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(dir.path());
    cfg.retention = Duration::ZERO;
    cfg.retention_deletes_unconsumed = true;
    let store = Store::open(cfg).unwrap();
    let sent = fill(&store, 90).await;
    let deleted = store
        .apply_retention(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    assert!(deleted > 0);
    let start = store.log_start(LogStream::Message);
    assert!(start > 0);
    let chunk = store.read_index_chunk(0, 5000, 1 << 20).unwrap();
    assert_eq!(chunk.start, start);
    let first = sent.iter().position(|m| m.2.offset == start).unwrap();
    check(&read_all(&store, start, 5000, 1 << 20), &sent[first..]);
}
