//! The storage measurement behind the backup's choice of store (README, "Backup"): 1,000,000
//! index entries written in sync-sized batches (5,000 records, one durable transaction each),
//! then one message id looked up and one subject/time range read, with redb (the
//! [`IndexStore`] itself) and, with `--features bench-fjall`, fjall holding the same keys.
//! A second redb run writes what a sync type-6 chunk brings instead (each entry with 2 tags, an
//! application and 3 indexed properties, through [`IndexStore::apply_indexed`]), so its
//! insert rate and disk size stand next to the plain index's; a third the same entries with no
//! property indexed (`--index-properties none`).
//!
//! `cargo run --release -p qmq-backup --example store_bench --features bench-fjall [-- N]`

use std::time::{Duration, Instant};

use qmq_backup::details::PropertyIndex;
use qmq_backup::{Details, IndexStore, Indexed, RangeQuery};
use qmq_protocol::{SyncIndexChunk, SyncIndexRecord};

const BATCH: usize = 5_000;
const SUBJECTS: usize = 20;
/// Creation times 1 ms apart per message: 1,000,000 messages span ~17 minutes.
const T0: i64 = 1_700_000_000_000;
const GROUP: &str = "broker-0";

fn record(i: usize) -> SyncIndexRecord {
    SyncIndexRecord {
        sequence: (i / SUBJECTS) as i64,
        created_time: T0 + i as i64,
        subject: format!("subject.{:02}", i % SUBJECTS),
        message_id: format!("260101.101500.10.0.0.1.{}.{i}", 4000 + i % 7),
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    name: &str,
    n: usize,
    write: Duration,
    id: Duration,
    range_kind: &str,
    range: Duration,
    rows: usize,
    bytes: u64,
) {
    println!(
        "{name:6} insert {n} in {:.2} s ({:.0}/s) | by id: {:.1} µs | {range_kind} range ({rows} rows): {:.1} µs | on disk {:.0} MiB",
        write.as_secs_f64(),
        n as f64 / write.as_secs_f64(),
        id.as_secs_f64() * 1e6,
        range.as_secs_f64() * 1e6,
        bytes as f64 / (1024.0 * 1024.0),
    );
}

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total += if meta.is_dir() {
                dir_size(&e.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

/// Ids and ranges probed: spread over the data set.
fn probes(n: usize) -> Vec<usize> {
    (0..1000).map(|k| (k * 7919 * 13) % n).collect()
}

fn bench_redb(n: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = IndexStore::open(&dir.path().join("index.redb"), None).expect("open");
    let started = Instant::now();
    let mut offset = 0u64;
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let chunk = SyncIndexChunk {
            next: offset as i64 + batch.len() as i64,
            records: batch.iter().map(|i| record(*i)).collect(),
        };
        store.apply(GROUP, offset, &chunk).expect("apply");
        offset = chunk.next as u64;
    }
    let write = started.elapsed();
    let ps = probes(n);
    let started = Instant::now();
    for i in &ps {
        let r = record(*i);
        let found = store.by_id(&r.message_id).expect("by id");
        assert_eq!(found.len(), 1);
    }
    let id = started.elapsed() / ps.len() as u32;
    let started = Instant::now();
    let mut rows = 0;
    for i in &ps {
        let r = record(*i);
        let page = store
            .range(&RangeQuery::new(
                r.subject,
                r.created_time,
                r.created_time + 2_000,
                100,
            ))
            .expect("range");
        rows = page.entries.len();
    }
    let range = started.elapsed() / ps.len() as u32;
    report(
        "redb",
        n,
        write,
        id,
        "subject",
        range,
        rows,
        dir_size(dir.path()),
    );
    bench_http(std::sync::Arc::new(store), n);
}

/// One message id looked up through the backup's HTTP API (`GET /v1/messages/<id>`: routing,
/// the store call off the async threads, JSON), in process without a socket, so the figure is
/// the server's share of a query's latency.
fn bench_http(store: std::sync::Arc<IndexStore>, n: usize) {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let app = qmq_backup::http::router(store);
        let ps = probes(n);
        let started = Instant::now();
        for i in &ps {
            let id = record(*i).message_id;
            let request = Request::get(format!("/v1/messages/{id}"))
                .body(Body::empty())
                .expect("request");
            let answer = app.clone().oneshot(request).await.expect("answer");
            assert!(answer.status().is_success());
            let body = answer.into_body().collect().await.expect("body").to_bytes();
            assert!(body.windows(id.len()).any(|w| w == id.as_bytes()));
        }
        let per = started.elapsed() / ps.len() as u32;
        println!(
            "http   GET /v1/messages/<id> (in process, no socket): {:.1} µs",
            per.as_secs_f64() * 1e6
        );
    });
}

/// Cities of the `city` property: a query by one of them finds every tenth message.
const CITIES: usize = 10;

/// [`record`]'s message as a type-6 chunk would index it: 2 tags, an application, 3
/// properties.
fn indexed(i: usize) -> Indexed {
    let r = record(i);
    Indexed {
        subject: r.subject,
        message_id: r.message_id,
        sequence: r.sequence as u64,
        created_time: r.created_time,
        details: Details {
            tags: vec![format!("tag{}", i % 3), "bench".into()],
            app_code: Some("bench-app".into()),
            delayed_until: None,
            times: None,
            properties: vec![
                ("order".into(), format!("order-{i}")),
                ("city".into(), format!("city-{}", i % CITIES)),
                ("channel".into(), format!("ch{}", i % 3)),
            ],
            held: false,
        },
        dead_letter: None,
    }
}

/// The redb index of type-6 entries: writes (details and, as `index` says, property entries
/// on top of the plain index), a message id looked up (with its details) and a property query
/// (a subject range when no property is indexed).
fn bench_redb_details(n: usize, name: &str, index: PropertyIndex) {
    let dir = tempfile::tempdir().expect("temp dir");
    let by_property = index != PropertyIndex::None;
    let store = IndexStore::open(&dir.path().join("index.redb"), None)
        .expect("open")
        .with_property_index(index);
    let started = Instant::now();
    let mut offset = 0u64;
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let records: Vec<Indexed> = batch.iter().map(|i| indexed(*i)).collect();
        let next = offset + batch.len() as u64;
        store
            .apply_indexed(GROUP, offset, next as i64, &records)
            .expect("apply");
        offset = next;
    }
    let write = started.elapsed();
    let ps = probes(n);
    let started = Instant::now();
    for i in &ps {
        let found = store.by_id(&record(*i).message_id).expect("by id");
        assert_eq!(found.len(), 1);
        assert!(found[0].details.is_some());
    }
    let id = started.elapsed() / ps.len() as u32;
    let started = Instant::now();
    let mut rows = 0;
    for i in &ps {
        let r = record(*i);
        let mut q = RangeQuery::new(r.subject, r.created_time, r.created_time + 20_000, 100);
        if by_property {
            q.property = Some(("city".into(), format!("city-{}", i % CITIES)));
        } else {
            q.to = r.created_time + 2_000;
        }
        rows = store.range(&q).expect("range").entries.len();
    }
    let range = started.elapsed() / ps.len() as u32;
    report(
        name,
        n,
        write,
        id,
        if by_property { "property" } else { "subject" },
        range,
        rows,
        dir_size(dir.path()),
    );
}

#[cfg(feature = "bench-fjall")]
fn bench_fjall(n: usize) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    use qmq_backup::keys::{prefix_end, put_str, put_time, put_u64};

    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::builder(dir.path()).open().expect("open");
    let ks = |name: &str| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .expect("keyspace")
    };
    let (messages, by_subject, by_id, by_time, offsets) = (
        ks("messages"),
        ks("by_subject"),
        ks("by_id"),
        ks("by_time"),
        ks("offsets"),
    );
    let started = Instant::now();
    let mut offset = 0u64;
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        // The same keys as the redb store, and the same check-then-insert of the primary key.
        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
        for i in batch {
            let r = record(*i);
            let seq = r.sequence as u64;
            let mut pk = Vec::new();
            put_str(&mut pk, GROUP);
            put_str(&mut pk, &r.subject);
            put_u64(&mut pk, seq);
            if messages.get(&pk).expect("get").is_some() {
                continue;
            }
            let mut t = Vec::new();
            put_time(&mut t, r.created_time);
            let mut pv = t.clone();
            pv.extend_from_slice(r.message_id.as_bytes());
            b.insert(&messages, pk, pv);
            let mut k = Vec::new();
            put_str(&mut k, &r.subject);
            put_time(&mut k, r.created_time);
            put_str(&mut k, GROUP);
            put_u64(&mut k, seq);
            b.insert(&by_subject, k, r.message_id.as_bytes());
            let mut k = Vec::new();
            put_str(&mut k, &r.message_id);
            put_str(&mut k, GROUP);
            put_str(&mut k, &r.subject);
            put_u64(&mut k, seq);
            b.insert(&by_id, k, t.clone());
            let mut k = t.clone();
            put_str(&mut k, GROUP);
            put_str(&mut k, &r.subject);
            put_u64(&mut k, seq);
            b.insert(&by_time, k, r.message_id.as_bytes());
        }
        offset += batch.len() as u64;
        b.insert(&offsets, GROUP, offset.to_be_bytes());
        b.commit().expect("commit");
    }
    let write = started.elapsed();
    let ps = probes(n);
    let started = Instant::now();
    for i in &ps {
        let r = record(*i);
        let mut p = Vec::new();
        put_str(&mut p, &r.message_id);
        assert_eq!(by_id.prefix(&p).count(), 1);
    }
    let id = started.elapsed() / ps.len() as u32;
    let started = Instant::now();
    let mut rows = 0;
    for i in &ps {
        let r = record(*i);
        let mut start = Vec::new();
        put_str(&mut start, &r.subject);
        let mut end = start.clone();
        put_time(&mut start, r.created_time);
        put_time(&mut end, r.created_time + 2_000);
        let end = prefix_end(&end).expect("end");
        rows = 0;
        for kv in by_subject.range(start..end).take(100) {
            let (_key, _value) = kv.into_inner().expect("row");
            rows += 1;
        }
    }
    let range = started.elapsed() / ps.len() as u32;
    db.persist(PersistMode::SyncAll).expect("persist");
    report(
        "fjall",
        n,
        write,
        id,
        "subject",
        range,
        rows,
        dir_size(dir.path()),
    );
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    bench_redb(n);
    bench_redb_details(n, "redb6", PropertyIndex::All);
    bench_redb_details(n, "redb6-", PropertyIndex::None);
    #[cfg(feature = "bench-fjall")]
    bench_fjall(n);
}
