//! The index store on its own: records indexed and found by id and by subject and time range
//! (with paging), chunks applied exactly once, retention, and a reopened store that keeps
//! everything and its offsets.

use std::time::Duration;

use qmq_backup::{BackupError, IndexStore, RangeQuery, INDEX_STREAM};
use qmq_protocol::{SyncIndexChunk, SyncIndexRecord};

fn rec(sequence: i64, created_time: i64, subject: &str, id: &str) -> SyncIndexRecord {
    SyncIndexRecord {
        sequence,
        created_time,
        subject: subject.into(),
        message_id: id.into(),
    }
}

fn range(subject: &str, from: i64, to: i64, limit: usize, cursor: Option<Vec<u8>>) -> RangeQuery {
    let mut q = RangeQuery::new(subject, from, to, limit);
    q.cursor = cursor;
    q
}

#[test]
fn records_are_found_by_id_and_by_subject_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None).unwrap();
    let chunk = SyncIndexChunk {
        next: 300,
        records: vec![
            rec(0, 1_000, "orders", "o-1"),
            rec(0, 1_500, "pay", "p-1"),
            rec(1, 2_000, "orders", "o-2"),
            rec(2, 3_000, "orders", "o-3"),
            // A subject whose name starts like another's never shows up in its range.
            rec(0, 2_000, "orders2", "x-1"),
        ],
    };
    let applied = store.apply("g1", 0, &chunk).unwrap();
    assert_eq!(applied.indexed, 5);
    // Another group holds a message with the same id.
    let other = SyncIndexChunk {
        next: 10,
        records: vec![rec(7, 2_500, "orders", "o-2")],
    };
    store.apply("g2", 0, &other).unwrap();
    assert_eq!(store.len().unwrap(), 6);
    assert_eq!(store.offset("g1", INDEX_STREAM).unwrap(), Some(300));
    assert_eq!(store.offset("g2", INDEX_STREAM).unwrap(), Some(10));

    let found = store.by_id("o-2").unwrap();
    let places: Vec<_> = found
        .iter()
        .map(|e| {
            (
                e.broker_group.as_str(),
                e.subject.as_str(),
                e.sequence,
                e.created_time,
            )
        })
        .collect();
    assert_eq!(
        places,
        [("g1", "orders", 1, 2_000), ("g2", "orders", 7, 2_500)]
    );
    assert!(
        store.by_id("o-").unwrap().is_empty(),
        "ids are matched exactly"
    );
    assert_eq!(
        store.get("g1", "orders", 2).unwrap().unwrap().message_id,
        "o-3"
    );
    assert!(store.get("g1", "orders", 3).unwrap().is_none());

    // Oldest first, both ends inclusive, paged.
    let ids = |page: &qmq_backup::Page| -> Vec<String> {
        page.entries.iter().map(|e| e.message_id.clone()).collect()
    };
    let all = store
        .range(&range("orders", 1_000, 3_000, 10, None))
        .unwrap();
    assert_eq!(ids(&all), ["o-1", "o-2", "o-2", "o-3"]);
    assert!(all.next.is_none());
    let first = store
        .range(&range("orders", 1_500, 3_000, 2, None))
        .unwrap();
    assert_eq!(ids(&first), ["o-2", "o-2"]);
    let rest = store
        .range(&range("orders", 1_500, 3_000, 2, first.next.clone()))
        .unwrap();
    assert_eq!(ids(&rest), ["o-3"]);
    assert!(rest.next.is_none());
    assert!(store
        .range(&range("orders", 3_001, 9_000, 10, None))
        .unwrap()
        .entries
        .is_empty());
    // A cursor of another subject is refused.
    let mut foreign = store.range(&range("pay", 0, 9_000, 0, None)).unwrap();
    foreign.next = Some(b"\x00\x03pay".to_vec());
    assert!(matches!(
        store.range(&range("orders", 0, 9_000, 10, foreign.next)),
        Err(BackupError::BadCursor)
    ));
}

#[test]
fn a_chunk_applies_once_and_only_from_the_stored_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None).unwrap();
    let chunk = SyncIndexChunk {
        next: 100,
        records: vec![rec(0, 1, "s", "a")],
    };
    store.apply("g", 0, &chunk).unwrap();
    // Again from 0: refused, nothing changes.
    let err = store.apply("g", 0, &chunk).unwrap_err();
    assert!(
        matches!(
            err,
            BackupError::OffsetMismatch {
                stored: Some(100),
                from: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.len().unwrap(), 1);
    // The same record again from the right offset (a broker that re-sends): counted once.
    let again = SyncIndexChunk {
        next: 200,
        records: vec![rec(0, 1, "s", "a"), rec(1, 2, "s", "b")],
    };
    let applied = store.apply("g", 100, &again).unwrap();
    assert_eq!((applied.indexed, applied.duplicates), (1, 1));
    assert_eq!(store.by_id("a").unwrap().len(), 1);
    // An idle poll's empty answer changes nothing; from a wrong offset it is refused too.
    let idle = SyncIndexChunk {
        next: 200,
        records: vec![],
    };
    assert_eq!(store.apply("g", 200, &idle).unwrap(), Default::default());
    let stale = SyncIndexChunk {
        next: 100,
        records: vec![],
    };
    assert!(matches!(
        store.apply("g", 100, &stale),
        Err(BackupError::OffsetMismatch { .. })
    ));
    // A negative sequence is refused as a whole.
    let bad = SyncIndexChunk {
        next: 300,
        records: vec![rec(2, 3, "s", "c"), rec(-1, 3, "s", "d")],
    };
    assert!(matches!(
        store.apply("g", 200, &bad),
        Err(BackupError::BadRecord { .. })
    ));
    assert_eq!(store.offset("g", INDEX_STREAM).unwrap(), Some(200));
    assert!(store.by_id("c").unwrap().is_empty());
}

#[test]
fn a_reopened_store_keeps_its_entries_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.redb");
    {
        let store = IndexStore::open(&path, None).unwrap();
        let chunk = SyncIndexChunk {
            next: 42,
            records: (0..100)
                .map(|i| rec(i, 1_000 + i, "s", &format!("id-{i}")))
                .collect(),
        };
        store.apply("g", 0, &chunk).unwrap();
    }
    let store = IndexStore::open(&path, None).unwrap();
    assert_eq!(store.len().unwrap(), 100);
    assert_eq!(store.offset("g", INDEX_STREAM).unwrap(), Some(42));
    assert_eq!(store.offsets().unwrap(), [("g".to_string(), 42)]);
    assert_eq!(store.by_id("id-57").unwrap()[0].sequence, 57);
}

#[test]
fn retention_drops_old_entries_and_never_indexes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        IndexStore::open(&dir.path().join("i.redb"), Some(Duration::from_secs(3600))).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let chunk = SyncIndexChunk {
        next: 10,
        records: vec![
            rec(0, now - 7_200_000, "s", "too-old"),
            rec(1, now - 60_000, "s", "recent"),
        ],
    };
    let applied = store.apply("g", 0, &chunk).unwrap();
    assert_eq!((applied.indexed, applied.expired), (1, 1));
    assert!(store.by_id("too-old").unwrap().is_empty());

    // Entries that age out while stored go at the sweep, from every query path.
    let older = SyncIndexChunk {
        next: 20,
        records: (0..25)
            .map(|i| rec(2 + i, now - 30_000 + i, "s", &format!("o-{i}")))
            .collect(),
    };
    store.apply("g", 10, &older).unwrap();
    assert_eq!(store.len().unwrap(), 26);
    // Everything before now - 20 s: the "recent" one and the 25 others, in batches.
    assert_eq!(store.purge_before(now - 20_000, 10).unwrap(), 10);
    assert_eq!(store.purge_before(now - 20_000, 100).unwrap(), 16);
    assert_eq!(store.purge_before(now - 20_000, 100).unwrap(), 0);
    assert!(store.is_empty().unwrap());
    assert!(store.by_id("recent").unwrap().is_empty());
    assert!(store
        .range(&range("s", 0, now, 100, None))
        .unwrap()
        .entries
        .is_empty());
    assert_eq!(
        store.offset("g", INDEX_STREAM).unwrap(),
        Some(20),
        "offsets stay"
    );
    // With a 1-hour retention nothing stored now is expired yet.
    assert_eq!(store.purge_expired(100).unwrap(), 0);
}

fn action_record(action: &qmq_store::action::Action) -> Vec<u8> {
    let payload = action.encode();
    let mut r = Vec::new();
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    r.extend_from_slice(&payload);
    r
}

#[test]
fn record_retention_drops_old_records_and_pull_mappings() {
    use qmq_store::action::Action;
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None).unwrap();
    let key = qmq_store::ConsumerKey {
        subject: "s".into(),
        group: "cg".into(),
        consumer: "c".into(),
    };
    let pull = action_record(&Action::Pull {
        key: key.clone(),
        broadcast: false,
        first_pull: 0,
        seqs: vec![0, 1],
        next: 2,
    });
    let ack = action_record(&Action::Ack {
        key,
        first: 0,
        last: 1,
    });
    store.apply_actions("g", 0, 0, &pull, 100).unwrap();
    assert_eq!(store.records("g", "s", 0).unwrap().len(), 1);
    // Two records and two pull mappings seen at 100 go; nothing seen later would.
    assert_eq!(store.purge_records_before(150, 1000).unwrap(), 4);
    assert!(store.records("g", "s", 0).unwrap().is_empty());
    // An ack of pulls no longer mapped records nothing and is counted.
    let n = pull.len() as u64;
    let applied = store.apply_actions("g", n, n, &ack, 200).unwrap();
    assert_eq!((applied.records, applied.unmatched), (0, 2));
    assert_eq!(
        store.offset("g", qmq_backup::ACTION_STREAM).unwrap(),
        Some(n + ack.len() as u64)
    );
    // A chunk from the wrong offset is refused.
    let err = store.apply_actions("g", 0, 0, &pull, 300).unwrap_err();
    assert!(matches!(err, BackupError::OffsetMismatch { .. }), "{err}");
}
