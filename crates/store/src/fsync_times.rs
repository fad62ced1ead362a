//! How long a log's fsyncs take: a fixed-bucket histogram kept with atomics by the log itself,
//! so the store needs no metrics library and the broker exports it at scrape time
//! (`qmq_store_flush_seconds`). Only fsyncs that had something to make durable are counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the last, unbounded one is implied).
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counts per bucket (the last one: above every bound) and the total time.
#[derive(Debug, Default)]
pub(crate) struct FsyncTimes {
    counts: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl FsyncTimes {
    /// Counts one fsync that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = FSYNC_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A copy of the counts so far.
    pub(crate) fn snapshot(&self) -> FsyncSnapshot {
        let buckets: Vec<(f64, u64)> = FSYNC_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(le, c)| (le, c.load(Ordering::Relaxed)))
            .collect();
        FsyncSnapshot {
            count: buckets.iter().map(|(_, c)| c).sum(),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// A log's fsync times since the store opened.
#[derive(Debug, Clone, PartialEq)]
pub struct FsyncSnapshot {
    /// (upper bound in seconds, fsyncs in this bucket: not cumulative), the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Total time spent in them, in seconds.
    pub sum_seconds: f64,
    /// How many fsyncs.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fsync_lands_in_its_bucket() {
        let t = FsyncTimes::default();
        t.record(Duration::from_micros(50));
        t.record(Duration::from_micros(100));
        t.record(Duration::from_millis(3));
        t.record(Duration::from_secs(2));
        let s = t.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), FSYNC_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.0001, 2), "a bound is inclusive");
        assert_eq!(s.buckets[5], (0.005, 1));
        assert_eq!(s.buckets[12], (f64::INFINITY, 1));
        assert!((s.sum_seconds - 2.00315).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
