//! Delay engine benchmark (real clock): schedule throughput, dispatch lateness, memory.
//!
//! `cargo bench -p qmq-delay` (defaults), or
//! `cargo bench -p qmq-delay --bench delay -- [--messages N] [--window-secs S] [--lead-secs L]`
//! Defaults: 1,000,000 messages due uniformly over 120 s, starting 30 s after the start.
//! Prints schedule throughput (msgs/s, 4 concurrent producers, batches of 100), dispatch
//! lateness percentiles (delivery time - due time) with an in-process dispatcher, and heap
//! bytes per million scheduled messages (wheel estimate and measured live heap), for messages
//! in the wheel and for far-future messages kept on disk.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use qmq_delay::clock::wall_ms;
use qmq_delay::{
    DelayConfig, DelayEngine, DispatchError, Dispatcher, DueMessage, NewMessage, Outcome,
    SystemClock,
};
use tokio::sync::Notify;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Lateness {
    samples: Mutex<Vec<i64>>,
    notify: Notify,
}

impl Dispatcher for Lateness {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        Box::pin(async move {
            let now = wall_ms();
            let mut s = self.samples.lock();
            s.extend(batch.iter().map(|m| now - m.due_ms));
            drop(s);
            self.notify.notify_waiters();
            Ok(vec![Outcome::Stored; batch.len()])
        })
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(i: u64, at: i64) -> NewMessage {
    NewMessage {
        subject: "bench.delay".into(),
        message_id: format!("m{i:08}"),
        schedule_ms: at,
        message: Bytes::from(vec![b'x'; 120]),
    }
}

async fn schedule_all(
    engine: &Arc<DelayEngine>,
    n: u64,
    due: impl Fn(u64) -> i64 + Send + Sync + 'static,
) -> f64 {
    let due = Arc::new(due);
    let started = Instant::now();
    let producers = 4;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let engine = engine.clone();
        let due = due.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            let mut batch = Vec::with_capacity(100);
            while i < n {
                batch.push(message(i, due(i)));
                i += producers;
                if batch.len() == 100 || i >= n {
                    for r in engine.schedule(std::mem::take(&mut batch)).await {
                        r.expect("scheduled");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n = arg("--messages", 1_000_000);
    let window_ms = arg("--window-secs", 120) as i64 * 1000;
    let lead_ms = arg("--lead-secs", 30) as i64 * 1000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Lateness { samples: Mutex::new(Vec::with_capacity(n as usize)), notify: Notify::new() });
        let base_heap = LIVE.load(Ordering::Relaxed);
        let engine = Arc::new(
            DelayEngine::open(DelayConfig::new(dir.path().join("near")), Arc::new(SystemClock), sink.clone())
                .await
                .unwrap(),
        );
        let start = wall_ms() + lead_ms;
        let rate = schedule_all(&engine, n, move |i| start + (i as i64 * window_ms) / n as i64).await;
        let stats = engine.stats();
        let heap = LIVE.load(Ordering::Relaxed).saturating_sub(base_heap);
        let per_m = 1_000_000.0 / n as f64;
        println!("messages: {n}, due over {} s starting {} s from start", window_ms / 1000, lead_ms / 1000);
        println!("schedule throughput: {rate:.0} msgs/s (fsynced message log, 4 producers x batches of 100)");
        println!(
            "memory, messages in the wheel: {} entries, wheel {:.1} MB per million, live heap {:.1} MB per million",
            stats.wheel_entries,
            stats.wheel_bytes as f64 * per_m / 1e6,
            heap as f64 * per_m / 1e6
        );
        if wall_ms() > start {
            println!("warning: scheduling took longer than the lead; early messages were already due");
        }
        let deadline = Instant::now() + Duration::from_millis((lead_ms + window_ms) as u64 + 120_000);
        loop {
            let notified = sink.notify.notified();
            if sink.samples.lock().len() as u64 >= n {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                panic!("timed out: {} of {n} delivered", sink.samples.lock().len());
            }
        }
        let mut late = std::mem::take(&mut *sink.samples.lock());
        late.sort_unstable();
        println!(
            "dispatch lateness (ms): p50 {} p99 {} p999 {} max {} min {} (n = {})",
            pct(&late, 0.5),
            pct(&late, 0.99),
            pct(&late, 0.999),
            late[late.len() - 1],
            late[0],
            late.len()
        );
        engine.shutdown().await.unwrap();
        drop(engine);
        drop(late);

        // Far-future messages stay on disk: memory does not grow with them.
        let base_heap = LIVE.load(Ordering::Relaxed);
        let far = Arc::new(
            DelayEngine::open(DelayConfig::new(dir.path().join("far")), Arc::new(SystemClock), sink.clone())
                .await
                .unwrap(),
        );
        let day = 24 * 3600 * 1000i64;
        let now = wall_ms();
        let rate = schedule_all(&far, n, move |i| now + 30 * day + (i as i64 % 1000) * 3_600_000).await;
        let stats = far.stats();
        let heap = LIVE.load(Ordering::Relaxed).saturating_sub(base_heap);
        println!(
            "far future (30-72 days, {} buckets): {rate:.0} msgs/s, {} wheel entries, live heap {:.2} MB per million",
            stats.buckets,
            stats.wheel_entries,
            heap as f64 * per_m / 1e6
        );
        far.shutdown().await.unwrap();
    });
}
