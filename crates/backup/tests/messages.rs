//! The index store fed with sync type-6 chunks (stored messages): details (tags, application,
//! delivery time, properties) read back through every query path, property queries paged
//! with their own cursors, delay messages only, unreadable messages passed over, retention
//! and re-used places dropping everything a message added, and dead letters listed group by
//! group with pages that split anywhere without losing or repeating a letter.

use bytes::Bytes;
use qmq_backup::dead::DeadQuery;
use qmq_backup::{BackupError, Details, IndexEntry, IndexStore, Page, RangeQuery, INDEX_STREAM};
use qmq_protocol::{Message, MessageFlags, StoredRecord, SyncMessagesChunk};

const T0: i64 = 1_700_000_000_000;

/// A message of `subject` created at `created` with attributes `attrs`.
fn message(subject: &str, id: &str, created: i64, attrs: &[(&str, &str)]) -> Message {
    Message {
        flags: MessageFlags::default(),
        created_time: created,
        expire_or_schedule: created + 60_000,
        subject: subject.into(),
        message_id: id.into(),
        tags: vec![],
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// The type-6 record of `m` stored at `sequence` of `subject`.
fn stored(sequence: i64, subject: &str, m: &Message) -> StoredRecord {
    StoredRecord {
        sequence,
        subject: subject.into(),
        stored: m.to_stored().unwrap(),
    }
}

fn chunk(next: i64, records: Vec<StoredRecord>) -> SyncMessagesChunk {
    SyncMessagesChunk { next, records }
}

fn open() -> (tempfile::TempDir, IndexStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None).unwrap();
    (dir, store)
}

fn ids(page: &Page) -> Vec<String> {
    page.entries.iter().map(|e| e.message_id.clone()).collect()
}

fn by_property(
    subject: &str,
    k: &str,
    v: &str,
    limit: usize,
    cursor: Option<Vec<u8>>,
) -> RangeQuery {
    let mut q = RangeQuery::new(subject, 0, T0 * 2, limit);
    q.property = Some((k.into(), v.into()));
    q.cursor = cursor;
    q
}

/// Every page of `q` (following `next`), checking that none is larger than its limit.
fn all_pages(store: &IndexStore, mut q: RangeQuery) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = store.range(&q).unwrap();
        assert!(page.entries.len() <= q.limit);
        out.extend(ids(&page));
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

#[test]
fn a_type_6_chunk_indexes_tags_app_delivery_time_and_properties() {
    let (_dir, store) = open();
    let mut tagged = message(
        "orders",
        "o-1",
        T0,
        &[
            ("qmq_appCode", "shop"),
            ("qmq_scheduleReceiveTime", "1700000090000"),
            ("qtrace_traceparent", "00-ab"),
            ("order", "42"),
            ("body", "hello"),
            ("city", "bj"),
        ],
    );
    tagged.flags = tagged.flags.with_tags(true);
    tagged.tags = vec!["red".into(), "big".into()];
    let plain = message("orders", "o-2", T0 + 1, &[("body", "x")]);
    let applied = store
        .apply_messages(
            "g",
            0,
            &chunk(
                500,
                vec![stored(0, "orders", &tagged), stored(1, "orders", &plain)],
            ),
            false,
        )
        .unwrap();
    assert_eq!(applied.indexed, 2);
    assert_eq!(store.offset("g", INDEX_STREAM).unwrap(), Some(500));

    let expected = Details {
        tags: vec!["red".into(), "big".into()],
        app_code: Some("shop".into()),
        delayed_until: Some(1_700_000_090_000),
        times: None,
        properties: vec![("order".into(), "42".into()), ("city".into(), "bj".into())],
        held: false,
    };
    let entry = IndexEntry {
        subject: "orders".into(),
        message_id: "o-1".into(),
        sequence: 0,
        created_time: T0,
        broker_group: "g".into(),
        details: Some(expected.clone()),
    };
    assert_eq!(store.get("g", "orders", 0).unwrap(), Some(entry.clone()));
    assert_eq!(store.by_id("o-1").unwrap(), vec![entry.clone()]);
    assert_eq!(
        store.details("g", "orders", 0).unwrap(),
        Some(expected.clone())
    );
    let page = store
        .range(&RangeQuery::new("orders", 0, T0 * 2, 10))
        .unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.entries[0], entry);
    // A message with nothing to keep has no details.
    assert_eq!(page.entries[1].message_id, "o-2");
    assert_eq!(page.entries[1].details, None);
    assert_eq!(store.details("g", "orders", 1).unwrap(), None);
    // Not a dead letter: no copy kept.
    assert_eq!(store.dead_letter("g", "orders", 0).unwrap(), None);

    // Delay messages only: by the schedule attribute or by the delay flag.
    let mut flagged = message("orders", "o-3", T0 + 2, &[]);
    flagged.flags = flagged.flags.with_delay(true);
    flagged.expire_or_schedule = T0 + 99_000;
    store
        .apply_messages(
            "g",
            500,
            &chunk(600, vec![stored(2, "orders", &flagged)]),
            false,
        )
        .unwrap();
    let mut q = RangeQuery::new("orders", 0, T0 * 2, 10);
    q.delayed_only = true;
    assert_eq!(ids(&store.range(&q).unwrap()), ["o-1", "o-3"]);
    assert_eq!(
        store
            .get("g", "orders", 2)
            .unwrap()
            .unwrap()
            .details
            .unwrap()
            .delayed_until,
        Some(T0 + 99_000)
    );
    // Paged one at a time, the plain message in between is skipped on the way.
    q.limit = 1;
    assert_eq!(all_pages(&store, q), ["o-1", "o-3"]);
}

#[test]
fn a_property_query_finds_exactly_the_matching_messages_page_by_page() {
    let (_dir, store) = open();
    // order=42 on sequences 0, 2, 3, 5, 6; another value, no property, another subject and
    // a key that is a prefix of another around them.
    let values = ["42", "43", "42", "42", "", "42", "42", "4"];
    let mut records: Vec<StoredRecord> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let attrs: Vec<(&str, &str)> = if v.is_empty() {
                vec![("body", "b")]
            } else {
                vec![("order", v), ("body", "b")]
            };
            stored(
                i as i64,
                "orders",
                &message("orders", &format!("o-{i}"), T0 + i as i64, &attrs),
            )
        })
        .collect();
    records.push(stored(
        0,
        "pay",
        &message("pay", "p-0", T0, &[("order", "42")]),
    ));
    records.push(stored(
        8,
        "orders",
        &message("orders", "o-8", T0 + 8, &[("orderx", "42")]),
    ));
    store
        .apply_messages("g", 0, &chunk(100, records), false)
        .unwrap();

    let expected = ["o-0", "o-2", "o-3", "o-5", "o-6"];
    for limit in 1..=6 {
        assert_eq!(
            all_pages(&store, by_property("orders", "order", "42", limit, None)),
            expected,
            "limit {limit}"
        );
    }
    let first = store
        .range(&by_property("orders", "order", "42", 2, None))
        .unwrap();
    assert_eq!(ids(&first), ["o-0", "o-2"]);
    let next = first.next.clone().unwrap();
    let second = store
        .range(&by_property("orders", "order", "42", 2, Some(next.clone())))
        .unwrap();
    assert_eq!(ids(&second), ["o-3", "o-5"]);
    assert_eq!(
        all_pages(&store, by_property("orders", "order", "43", 10, None)),
        ["o-1"]
    );
    assert_eq!(
        all_pages(&store, by_property("orders", "order", "4", 10, None)),
        ["o-7"]
    );
    assert_eq!(
        all_pages(&store, by_property("pay", "order", "42", 10, None)),
        ["p-0"]
    );
    assert!(all_pages(&store, by_property("orders", "none", "42", 10, None)).is_empty());

    // The cursor belongs to its subject and property.
    for foreign in [
        by_property("orders", "order", "43", 2, Some(next.clone())),
        by_property("orders", "order", "4", 2, Some(next.clone())),
        by_property("pay", "order", "42", 2, Some(next.clone())),
        by_property("orders", "orderx", "42", 2, Some(next.clone())),
    ] {
        assert!(
            matches!(store.range(&foreign), Err(BackupError::BadCursor)),
            "{foreign:?}"
        );
    }
    let mut plain = RangeQuery::new("orders", 0, T0 * 2, 2);
    plain.cursor = Some(next);
    assert!(
        matches!(store.range(&plain), Err(BackupError::BadCursor)),
        "a property query's cursor in a plain query"
    );
    // And a plain query's cursor is not a property query's.
    let plain_page = store
        .range(&RangeQuery::new("orders", 0, T0 * 2, 2))
        .unwrap();
    assert!(matches!(
        store.range(&by_property("orders", "order", "42", 2, plain_page.next)),
        Err(BackupError::BadCursor)
    ));
}

#[test]
fn an_unreadable_message_is_passed_over_and_the_offset_moves() {
    let (_dir, store) = open();
    let records = vec![
        stored(0, "s", &message("s", "a", T0, &[("k", "v")])),
        StoredRecord {
            sequence: 1,
            subject: "s".into(),
            stored: Bytes::from_static(b"\x00\x01garbage"),
        },
        stored(2, "s", &message("s", "", T0 + 1, &[("k", "v")])),
        stored(3, "s", &message("s", "c", T0 + 2, &[("k", "v")])),
    ];
    let applied = store
        .apply_messages("g", 0, &chunk(700, records), false)
        .unwrap();
    assert_eq!((applied.indexed, applied.duplicates), (2, 0));
    assert_eq!(store.offset("g", INDEX_STREAM).unwrap(), Some(700));
    assert_eq!(store.len().unwrap(), 2);
    assert!(store.get("g", "s", 1).unwrap().is_none());
    assert!(store.get("g", "s", 2).unwrap().is_none());
    assert_eq!(
        all_pages(&store, by_property("s", "k", "v", 10, None)),
        ["a", "c"]
    );
    // The next chunk continues from there.
    store
        .apply_messages(
            "g",
            700,
            &chunk(800, vec![stored(4, "s", &message("s", "d", T0 + 3, &[]))]),
            false,
        )
        .unwrap();
    assert_eq!(store.len().unwrap(), 3);
}

#[test]
fn retention_drops_details_properties_and_dead_letter_copies() {
    let (_dir, store) = open();
    let old_dead = message("orders", "d-old", T0, &[("order", "1"), ("qmq_times", "3")]);
    let old_live = message("orders", "o-old", T0 + 1, &[("order", "1")]);
    let new_dead = message("orders", "d-new", T0 + 10_000, &[("order", "1")]);
    store
        .apply_messages(
            "g",
            0,
            &chunk(
                100,
                vec![
                    stored(0, "%DEAD_RETRY%orders%cg", &old_dead),
                    stored(0, "orders", &old_live),
                    stored(1, "%DEAD_RETRY%orders%cg", &new_dead),
                ],
            ),
            false,
        )
        .unwrap();
    assert_eq!(
        store.dead_letter("g", "%DEAD_RETRY%orders%cg", 0).unwrap(),
        Some(old_dead.to_stored().unwrap())
    );
    assert_eq!(
        store
            .details("g", "%DEAD_RETRY%orders%cg", 0)
            .unwrap()
            .unwrap()
            .times,
        Some(3)
    );
    assert_eq!(
        all_pages(
            &store,
            by_property("%DEAD_RETRY%orders%cg", "order", "1", 10, None)
        ),
        ["d-old", "d-new"]
    );

    assert_eq!(store.purge_before(T0 + 5_000, 100).unwrap(), 2);
    assert_eq!(
        store.details("g", "%DEAD_RETRY%orders%cg", 0).unwrap(),
        None
    );
    assert_eq!(store.details("g", "orders", 0).unwrap(), None);
    assert_eq!(
        store.dead_letter("g", "%DEAD_RETRY%orders%cg", 0).unwrap(),
        None
    );
    assert!(all_pages(&store, by_property("orders", "order", "1", 10, None)).is_empty());
    assert_eq!(
        all_pages(
            &store,
            by_property("%DEAD_RETRY%orders%cg", "order", "1", 10, None)
        ),
        ["d-new"]
    );
    // The newer letter keeps everything.
    assert_eq!(
        store.dead_letter("g", "%DEAD_RETRY%orders%cg", 1).unwrap(),
        Some(new_dead.to_stored().unwrap())
    );
    let dead = store
        .dead_letters(&DeadQuery {
            subject: "orders".into(),
            group: None,
            from: 0,
            to: T0 * 2,
            limit: 10,
            cursor: None,
        })
        .unwrap();
    assert_eq!(ids(&dead), ["d-new"]);
}

#[test]
fn a_reused_place_drops_the_old_messages_properties_and_copy() {
    let (_dir, store) = open();
    let dead = "%DEAD_RETRY%orders%cg";
    store
        .apply_messages(
            "g",
            0,
            &chunk(
                100,
                vec![
                    stored(0, "orders", &message("orders", "a", T0, &[("order", "1")])),
                    stored(
                        1,
                        "orders",
                        &message("orders", "b", T0 + 1, &[("order", "1")]),
                    ),
                    stored(0, dead, &message("orders", "c", T0 + 2, &[("order", "1")])),
                ],
            ),
            false,
        )
        .unwrap();
    // The broker started over: the same places hold other messages; one has no details.
    let replaced_live = message("orders", "x", T0 + 100, &[("order", "2")]);
    let replaced_dead = message("orders", "z", T0 + 102, &[]);
    let applied = store
        .apply_messages(
            "g",
            100,
            &chunk(
                200,
                vec![
                    stored(0, "orders", &replaced_live),
                    stored(1, "orders", &message("orders", "y", T0 + 101, &[])),
                    stored(0, dead, &replaced_dead),
                ],
            ),
            false,
        )
        .unwrap();
    assert_eq!((applied.indexed, applied.duplicates), (3, 0));
    assert_eq!(store.len().unwrap(), 3);
    assert!(all_pages(&store, by_property("orders", "order", "1", 10, None)).is_empty());
    assert!(all_pages(&store, by_property(dead, "order", "1", 10, None)).is_empty());
    assert_eq!(
        all_pages(&store, by_property("orders", "order", "2", 10, None)),
        ["x"]
    );
    for gone in ["a", "b", "c"] {
        assert!(store.by_id(gone).unwrap().is_empty(), "{gone}");
    }
    assert_eq!(store.details("g", "orders", 1).unwrap(), None);
    assert_eq!(store.details("g", dead, 0).unwrap(), None);
    assert_eq!(
        store.dead_letter("g", dead, 0).unwrap(),
        Some(replaced_dead.to_stored().unwrap()),
        "the new letter's copy, not the old one's"
    );
    assert_eq!(
        all_pages(&store, RangeQuery::new("orders", 0, T0 * 2, 10)),
        ["x", "y"]
    );
}

/// Dead letters of `orders`: three for consumer group g1 (broker groups b1 and b2), two for
/// g2, and around them another subject's letter and a retry copy.
fn dead_store() -> (tempfile::TempDir, IndexStore) {
    let (dir, store) = open();
    let letter = |seq: i64, group: &str, id: &str, t: i64| {
        stored(
            seq,
            &format!("%DEAD_RETRY%orders%{group}"),
            &message("orders", id, t, &[("body", id)]),
        )
    };
    store
        .apply_messages(
            "b1",
            0,
            &chunk(
                100,
                vec![
                    letter(0, "g2", "g2-a", T0 + 1),
                    letter(0, "g1", "g1-a", T0 + 2),
                    letter(1, "g1", "g1-c", T0 + 6),
                    letter(1, "g2", "g2-b", T0 + 7),
                    stored(0, "%DEAD_RETRY%pay%g1", &message("pay", "p", T0, &[])),
                    stored(0, "%RETRY%orders%g1", &message("orders", "r", T0, &[])),
                ],
            ),
            false,
        )
        .unwrap();
    store
        .apply_messages(
            "b2",
            0,
            &chunk(50, vec![letter(0, "g1", "g1-b", T0 + 4)]),
            false,
        )
        .unwrap();
    (dir, store)
}

fn dead_query(group: Option<&str>, limit: usize, cursor: Option<Vec<u8>>) -> DeadQuery {
    DeadQuery {
        subject: "orders".into(),
        group: group.map(str::to_owned),
        from: 0,
        to: T0 * 2,
        limit,
        cursor,
    }
}

/// Every page of dead letters, each page's ids.
fn dead_pages(store: &IndexStore, group: Option<&str>, limit: usize) -> Vec<Vec<String>> {
    let mut q = dead_query(group, limit, None);
    let mut pages = Vec::new();
    for _ in 0..100 {
        let page = store.dead_letters(&q).unwrap();
        assert!(page.entries.len() <= limit);
        pages.push(ids(&page));
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return pages,
        }
    }
    panic!("more than 100 pages");
}

#[test]
fn dead_letters_are_listed_group_by_group_across_pages() {
    let (_dir, store) = dead_store();
    assert_eq!(store.dead_groups("orders").unwrap(), ["g1", "g2"]);
    assert_eq!(store.dead_groups("pay").unwrap(), ["g1"]);
    let all = ["g1-a", "g1-b", "g1-c", "g2-a", "g2-b"];
    let first = store.dead_letters(&dead_query(None, 10, None)).unwrap();
    assert_eq!(ids(&first), all);
    assert_eq!(first.next, None);
    let places: Vec<(&str, &str, u64)> = first
        .entries
        .iter()
        .map(|e| (e.subject.as_str(), e.broker_group.as_str(), e.sequence))
        .collect();
    assert_eq!(
        places,
        [
            ("%DEAD_RETRY%orders%g1", "b1", 0),
            ("%DEAD_RETRY%orders%g1", "b2", 0),
            ("%DEAD_RETRY%orders%g1", "b1", 1),
            ("%DEAD_RETRY%orders%g2", "b1", 0),
            ("%DEAD_RETRY%orders%g2", "b1", 1),
        ]
    );
    // Every page size: nothing lost, nothing repeated.
    for limit in 1..=6 {
        let pages = dead_pages(&store, None, limit);
        let flat: Vec<String> = pages.concat();
        assert_eq!(flat, all, "limit {limit}: {pages:?}");
    }
    // Split inside a group (2: g1 has 3) and across the boundary within a page.
    assert_eq!(
        dead_pages(&store, None, 2),
        [vec!["g1-a", "g1-b"], vec!["g1-c", "g2-a"], vec!["g2-b"]]
    );
    // Full exactly at the group boundary (3): the next page starts with g2.
    let at_boundary = store.dead_letters(&dead_query(None, 3, None)).unwrap();
    assert_eq!(ids(&at_boundary), ["g1-a", "g1-b", "g1-c"]);
    let next = at_boundary.next.expect("g2 is still to come");
    let rest = store
        .dead_letters(&dead_query(None, 3, Some(next.clone())))
        .unwrap();
    assert_eq!(ids(&rest), ["g2-a", "g2-b"]);
    assert_eq!(rest.next, None);

    // One group only; another group's cursor is refused there.
    assert_eq!(
        dead_pages(&store, Some("g2"), 1),
        [vec!["g2-a"], vec!["g2-b"]]
    );
    assert_eq!(
        dead_pages(&store, Some("g1"), 2).concat(),
        ["g1-a", "g1-b", "g1-c"]
    );
    assert!(matches!(
        store.dead_letters(&dead_query(Some("g1"), 3, Some(next))),
        Err(BackupError::BadCursor)
    ));
    assert!(dead_pages(&store, Some("nobody"), 3).concat().is_empty());

    // The stored bytes, as the broker had them.
    let expected = message("orders", "g1-b", T0 + 4, &[("body", "g1-b")])
        .to_stored()
        .unwrap();
    assert_eq!(
        store.dead_letter("b2", "%DEAD_RETRY%orders%g1", 0).unwrap(),
        Some(expected)
    );
    assert_eq!(
        store.dead_letter("b1", "%RETRY%orders%g1", 0).unwrap(),
        None,
        "a retry copy is not a dead letter"
    );
}

#[test]
fn only_the_chosen_properties_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None)
        .unwrap()
        .with_property_index("order".parse().unwrap());
    let m = message("s", "a", T0, &[("order", "1"), ("city", "bj")]);
    store
        .apply_messages("g", 0, &chunk(10, vec![stored(0, "s", &m)]), false)
        .unwrap();
    assert_eq!(
        ids(&store
            .range(&by_property("s", "order", "1", 10, None))
            .unwrap()),
        ["a"]
    );
    assert!(matches!(
        store.range(&by_property("s", "city", "bj", 10, None)),
        Err(BackupError::Invalid(_))
    ));
    // Kept with the message all the same.
    let details = store.details("g", "s", 0).unwrap().unwrap();
    assert_eq!(details.properties.len(), 2);
}
