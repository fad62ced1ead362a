//! Append throughput of the message log (async flush) against a plain sequential `write` of the
//! same bytes to the same disk, in the same run. Prints msgs/s, MB/s and the ratio.
//!
//! `cargo bench -p qmq-store` (set QMQ_BENCH_DIR to measure another disk; default: a temp dir
//! under the target directory).

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmq_store::{FlushPolicy, Store, StoreConfig};

const BATCH: usize = 30;
const PRODUCERS: usize = 16;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("QMQ_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("bench dir"),
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir"),
    }
}

/// Sequential `write` calls of the same framed bytes, one call per batch, then one fsync.
fn raw_write(size: usize, count: usize) -> Duration {
    let dir = bench_dir();
    let mut f = std::fs::File::create(dir.path().join("raw")).expect("create");
    let record = vec![7u8; size + 8 + 2 + 5];
    let batch: Vec<u8> = record
        .iter()
        .copied()
        .cycle()
        .take(record.len() * BATCH)
        .collect();
    let start = Instant::now();
    for _ in 0..count / BATCH {
        f.write_all(&batch).expect("write");
    }
    f.sync_data().expect("fsync");
    start.elapsed()
}

fn store_append(rt: &tokio::runtime::Runtime, size: usize, count: usize) -> Duration {
    let dir = bench_dir();
    let mut config = StoreConfig::new(dir.path());
    config.flush = FlushPolicy::Async {
        interval: Duration::from_millis(10),
    };
    let store = Store::open(config).expect("open");
    let body = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let store = store.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let subject = format!("bench{p}");
                for _ in 0..count / BATCH / PRODUCERS {
                    let batch = (0..BATCH)
                        .map(|_| (subject.clone(), body.clone()))
                        .collect();
                    store.append(batch).await.expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
    });
    store.close().expect("close");
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:>6} {:>10} {:>14} {:>10} {:>14} {:>10} {:>7}",
        "size", "messages", "store msg/s", "store MB/s", "raw msg/s", "raw MB/s", "ratio"
    );
    for (size, count) in [(100usize, 600_000usize), (1024, 240_000)] {
        let count = count / (BATCH * PRODUCERS) * BATCH * PRODUCERS;
        let raw = raw_write(size, count);
        let store = store_append(&rt, size, count);
        let mb = (count * size) as f64 / 1e6;
        let (s, r) = (store.as_secs_f64(), raw.as_secs_f64());
        println!(
            "{:>6} {:>10} {:>14.0} {:>10.1} {:>14.0} {:>10.1} {:>7.2}",
            size,
            count,
            count as f64 / s,
            mb / s,
            count as f64 / r,
            mb / r,
            r / s
        );
    }
}
