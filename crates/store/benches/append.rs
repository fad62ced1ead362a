//! Append throughput of the store (async flush) against a plain sequential `write` of the same
//! bytes (the store's own record framing, so both write exactly as many bytes) to the same disk,
//! in the same run; then a read-back of everything through a consumer group. Prints msgs/s,
//! MB/s, the ratio, the CPU time each side spent per message (all threads of the process), and
//! the process's resident memory before and after reading everything back (reading a log larger
//! than the process must not grow it; the figures include what the allocator kept of the
//! prebuilt input).
//!
//! Both sides start with their input ready (the raw side one buffer of 30 records, the store
//! side each producer's subject and message bytes: 16 producers appending batches of 30, as
//! QMQ producers send, which the store copies into its records). Both end with their bytes
//! fsynced: the store side with [`Store::sync`], the fsync of its message log (an appended
//! message needs nothing else to survive a crash; consume logs are rebuilt from it). Both run
//! `ROUNDS` times in turn on this shared machine: the figures are the medians, and every
//! round's ratio is printed too.
//!
//! `cargo bench -p qmq-store` (set QMQ_BENCH_DIR to measure another disk; default: a temp dir
//! under the target directory).

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmq_store::{ConsumerKey, FlushPolicy, PullSpec, Store, StoreConfig};

const BATCH: usize = 30;
const PRODUCERS: usize = 16;
/// Runs of each side per size; medians are printed.
const ROUNDS: usize = 5;
/// Record framing (length + CRC) and metadata (format, subject "benchNN", no tags, time).
const OVERHEAD: usize = 8 + 1 + 2 + 7 + 1 + 8;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("QMQ_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("bench dir"),
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir"),
    }
}

/// Sequential `write` calls of the same number of bytes, one call per batch, then one fsync.
fn raw_write(size: usize, count: usize) -> (Duration, Duration) {
    quiesce();
    let dir = bench_dir();
    let mut f = std::fs::File::create(dir.path().join("raw")).expect("create");
    let batch = vec![7u8; (size + OVERHEAD) * BATCH];
    let (start, cpu) = (Instant::now(), cpu_time());
    for _ in 0..count / BATCH {
        f.write_all(&batch).expect("write");
    }
    f.sync_data().expect("fsync");
    (start.elapsed(), cpu_time() - cpu)
}

/// Lets the file system finish what the other side left (writeback, and the journal commit
/// and discards that deleting its files queued) before a side starts its clock.
fn quiesce() {
    rustix::fs::sync();
}

/// CPU time used so far by every thread of this process.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

struct Run {
    append: Duration,
    append_cpu: Duration,
    read: Duration,
    /// Resident MB before and after the read-back.
    rss: (f64, f64),
    read_count: usize,
}

fn store_run(rt: &tokio::runtime::Runtime, size: usize, count: usize) -> Run {
    quiesce();
    let dir = bench_dir();
    let mut config = StoreConfig::new(dir.path());
    config.flush = FlushPolicy::Async {
        interval: Duration::from_millis(10),
    };
    let store = Store::open(config).expect("open");
    // Each producer's subject and message bytes; the store copies them into its records.
    let inputs: Vec<(String, Bytes)> = (0..PRODUCERS)
        .map(|p| (format!("bench{p:02}"), Bytes::from(vec![7u8; size])))
        .collect();
    let (start, cpu) = (Instant::now(), cpu_time());
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (subject, body) in inputs {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..count / BATCH / PRODUCERS {
                    let batch = std::iter::repeat_n((subject.as_str(), &body[..]), BATCH);
                    store.append(batch).await.expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
    });
    // Durable like the raw write's final fsync: the message log is fsynced (consume logs and
    // consumer state are rebuilt from it, so an acknowledged message needs nothing else).
    store.sync().expect("sync");
    let (append, append_cpu) = (start.elapsed(), cpu_time() - cpu);

    // Read everything back through one consumer per subject.
    let rss_before = rss_mb();
    let start = Instant::now();
    let mut read_count = 0;
    for p in 0..PRODUCERS {
        let key = ConsumerKey {
            subject: format!("bench{p:02}"),
            group: "g".into(),
            consumer: "c".into(),
        };
        loop {
            let got = store
                .pull(
                    PullSpec {
                        key: &key,
                        broadcast: false,
                        max: 256,
                    },
                    |_| true,
                )
                .expect("pull");
            let Some(last) = got.last() else { break };
            read_count += got.len();
            store.ack(&key, last.pull_seq).expect("ack");
        }
    }
    let read = start.elapsed();
    store.close().expect("close");
    Run {
        append,
        append_cpu,
        rss: (rss_before, rss_mb()),
        read,
        read_count,
    }
}

/// VmRSS of this process in MB, from /proc/self/status (Linux).
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    field("VmRSS:")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:>5} {:>8} {:>11} {:>8} {:>11} {:>8} {:>6} {:>11} {:>8} {:>9} {:>8} {:>8}",
        "size",
        "msgs",
        "store msg/s",
        "MB/s",
        "raw msg/s",
        "MB/s",
        "ratio",
        "read msg/s",
        "MB/s",
        "stored MB",
        "RSS MB",
        "after read"
    );
    for (size, count) in [(100usize, 960_000usize), (1024, 240_000)] {
        let count = count / (BATCH * PRODUCERS) * BATCH * PRODUCERS;
        let mut raws = Vec::new();
        let mut raw_cpus = Vec::new();
        let mut runs = Vec::new();
        // One untimed round of each side first: the first run in a process is slower.
        raw_write(size, count);
        store_run(&rt, size, count);
        for _ in 0..ROUNDS {
            let (raw, raw_cpu) = raw_write(size, count);
            raws.push(raw.as_secs_f64());
            raw_cpus.push(raw_cpu.as_secs_f64());
            let run = store_run(&rt, size, count);
            assert_eq!(run.read_count, count, "read back everything");
            runs.push(run);
        }
        let ratios: Vec<f64> = raws
            .iter()
            .zip(&runs)
            .map(|(r, s)| r / s.append.as_secs_f64())
            .collect();
        let mut stores: Vec<f64> = runs.iter().map(|r| r.append.as_secs_f64()).collect();
        let mut reads: Vec<f64> = runs.iter().map(|r| r.read.as_secs_f64()).collect();
        let mut store_cpus: Vec<f64> = runs.iter().map(|r| r.append_cpu.as_secs_f64()).collect();
        let (s, r, rd, ratio) = (
            median(&mut stores),
            median(&mut raws),
            median(&mut reads),
            median(&mut ratios.clone()),
        );
        let ns_per_msg = |v: &mut Vec<f64>| median(v) * 1e9 / count as f64;
        let (raw_cpu, store_cpu) = (ns_per_msg(&mut raw_cpus), ns_per_msg(&mut store_cpus));
        let mb = (count * size) as f64 / 1e6;
        let stored = (count * (size + OVERHEAD + 24)) as f64 / 1e6;
        let (rss, after_read) = runs[runs.len() - 1].rss;
        println!(
            "{:>5} {:>8} {:>11.0} {:>8.1} {:>11.0} {:>8.1} {:>6.2} {:>11.0} {:>8.1} {:>9.0} {:>8.1} {:>8.1}",
            size,
            count,
            count as f64 / s,
            mb / s,
            count as f64 / r,
            mb / r,
            ratio,
            count as f64 / rd,
            mb / rd,
            stored,
            rss,
            after_read
        );
        let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!("      ratio per round, in order: {}", rounds.join(" "));
        println!("      CPU per message: store {store_cpu:.0} ns, raw {raw_cpu:.0} ns");
    }
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
