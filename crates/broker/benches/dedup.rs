//! The duplicate window on its own: nanoseconds per message to admit and commit SEND batches
//! of 30 new ids (subject and id as the Java client makes them), in a window first empty and
//! then kept full at its default 1,000,000 ids; and to answer a batch of duplicates.
//!
//! `cargo bench -p qmq-broker --bench dedup`

use std::sync::Arc;
use std::time::{Duration, Instant};

use qmq_broker::dedup::DedupWindow;

const BATCH: usize = 30;

/// Ids shaped as QMQ's: date, time, host, pid, counter.
fn ids(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("261202.061500.10.0.0.12.4242.{i}"))
        .collect()
}

/// Admits and commits `n` new ids from `from` on, in batches; nanoseconds per message.
async fn run(w: &Arc<DedupWindow>, subject: &str, from: usize, n: usize) -> f64 {
    let ids = ids(from, n);
    let start = Instant::now();
    for chunk in ids.chunks(BATCH) {
        let batch: Vec<(&str, &str)> = chunk.iter().map(|id| (subject, id.as_str())).collect();
        let (_, reservation) = w.admit(&batch, qmq_broker::dedup::now_ms).await;
        reservation.commit();
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let max_ids = 1_000_000;
    let w = Arc::new(DedupWindow::new(Duration::from_secs(120), max_ids));
    let subject = "order.changed.payment";
    let filling = run(&w, subject, 0, max_ids).await;
    let full = run(&w, subject, max_ids, 3 * max_ids).await;
    // Duplicates: the last ids again.
    let again = ids(4 * max_ids - 300_000, 300_000);
    let start = Instant::now();
    for chunk in again.chunks(BATCH) {
        let batch: Vec<(&str, &str)> = chunk.iter().map(|id| (subject, id.as_str())).collect();
        let (admissions, _) = w.admit(&batch, qmq_broker::dedup::now_ms).await;
        assert!(admissions
            .iter()
            .all(|a| *a == qmq_broker::dedup::Admission::Duplicate));
    }
    let duplicates = start.elapsed().as_nanos() as f64 / again.len() as f64;
    println!("duplicate window, batches of {BATCH}, {max_ids} ids at most:");
    println!("  new ids, window filling:   {filling:7.0} ns per message");
    println!("  new ids, window kept full: {full:7.0} ns per message");
    println!("  duplicates:                {duplicates:7.0} ns per message");
    println!(
        "  memory: {:.1} bytes per id",
        w.memory_bytes() as f64 / max_ids as f64
    );
}
