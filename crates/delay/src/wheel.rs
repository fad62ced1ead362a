//! The in-memory timing wheel: the messages of the buckets near "now", keyed by tick.
//!
//! Only buckets whose start is within the load-ahead window of now (and overdue ones) are in
//! the wheel; everything later stays on disk. An entry is 24 bytes: due time, schedule-log
//! offset, record length, bucket number; the message itself stays in the schedule log and is
//! read back when it fires. A message fires at the first tick boundary at or after its due time
//! (never early).

use std::collections::BTreeMap;

/// One scheduled message in the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WheelEntry {
    /// Due time, ms since the epoch.
    pub due_ms: i64,
    /// Bucket number (bucket start / bucket width).
    pub bucket_no: u32,
    /// Record length in the schedule log (frame included).
    pub len: u32,
    /// Record offset in the schedule log.
    pub offset: u64,
}

/// Approximate heap bytes of one tick slot besides its entries (B-tree node share + `Vec`).
const SLOT_OVERHEAD: usize = 64;

/// Entries by tick (tick = ceil(due / tick_ms)).
#[derive(Debug)]
pub struct TimingWheel {
    tick_ms: i64,
    slots: BTreeMap<i64, Vec<WheelEntry>>,
    len: usize,
}

impl TimingWheel {
    /// An empty wheel with ticks of `tick_ms` ms.
    pub fn new(tick_ms: i64) -> Self {
        Self {
            tick_ms: tick_ms.max(1),
            slots: BTreeMap::new(),
            len: 0,
        }
    }

    /// Adds an entry.
    pub fn insert(&mut self, e: WheelEntry) {
        let tick =
            e.due_ms.div_euclid(self.tick_ms) + i64::from(e.due_ms.rem_euclid(self.tick_ms) != 0);
        self.slots.entry(tick).or_default().push(e);
        self.len += 1;
    }

    /// When the earliest entry fires (ms), if any.
    pub fn next_fire_ms(&self) -> Option<i64> {
        self.slots.keys().next().map(|t| t * self.tick_ms)
    }

    /// Moves every entry due at `now_ms` into `out`, in (due time, bucket, offset) order.
    pub fn take_due(&mut self, now_ms: i64, out: &mut Vec<WheelEntry>) {
        let start = out.len();
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() * self.tick_ms > now_ms {
                break;
            }
            let slot = entry.remove();
            self.len -= slot.len();
            out.extend(slot);
        }
        out[start..].sort_unstable();
    }

    /// For each of `limits_ms` (ascending), the entries that fire at or before it. Visits
    /// the slots up to the last limit once.
    pub fn count_firing_by<const N: usize>(&self, limits_ms: [i64; N]) -> [u64; N] {
        let mut out = [0u64; N];
        let Some(&last) = limits_ms.last() else {
            return out;
        };
        let mut i = 0;
        let mut running = 0u64;
        for (tick, slot) in self.slots.range(..=last.div_euclid(self.tick_ms)) {
            let at = tick * self.tick_ms;
            while i < N && at > limits_ms[i] {
                out[i] = running;
                i += 1;
            }
            running += slot.len() as u64;
        }
        for o in &mut out[i..] {
            *o = running;
        }
        out
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Approximate heap bytes held (entries by capacity, plus per-slot overhead).
    pub fn heap_bytes(&self) -> usize {
        self.slots
            .values()
            .map(|v| v.capacity() * std::mem::size_of::<WheelEntry>() + SLOT_OVERHEAD)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(due_ms: i64, offset: u64) -> WheelEntry {
        WheelEntry {
            due_ms,
            bucket_no: 0,
            len: 10,
            offset,
        }
    }

    #[test]
    fn fires_at_or_after_due_in_order() {
        assert_eq!(std::mem::size_of::<WheelEntry>(), 24);
        let mut w = TimingWheel::new(10);
        w.insert(e(1_005, 1));
        w.insert(e(1_000, 2));
        w.insert(e(1_001, 3));
        w.insert(e(2_000, 4));
        assert_eq!(w.next_fire_ms(), Some(1_000));
        let mut out = Vec::new();
        w.take_due(999, &mut out);
        assert!(out.is_empty());
        w.take_due(1_000, &mut out);
        assert_eq!(out, vec![e(1_000, 2)]);
        out.clear();
        w.take_due(1_009, &mut out);
        assert!(
            out.is_empty(),
            "1_001 and 1_005 fire at the 1_010 tick, not before"
        );
        w.take_due(1_010, &mut out);
        assert_eq!(out, vec![e(1_001, 3), e(1_005, 1)]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_fire_ms(), Some(2_000));
    }

    #[test]
    fn counts_entries_firing_by_each_limit() {
        let mut w = TimingWheel::new(10);
        for (due, off) in [(5, 1), (10, 2), (15, 3), (100, 4), (1_000, 5), (5_000, 6)] {
            w.insert(e(due, off));
        }
        // Ticks fire at 10 (5, 10), 20 (15), 100, 1_000, 5_000.
        assert_eq!(w.count_firing_by([9, 10, 99, 1_000]), [0, 2, 3, 5]);
        assert_eq!(w.count_firing_by([10_000]), [6]);
        assert_eq!(w.count_firing_by([-1, 0]), [0, 0]);
    }
}
