//! Consume logs: one per subject, a dense array of fixed-size entries pointing into the message
//! log. Entry `n` is the subject's `n`-th message (its consume-log sequence).
//!
//! Entry (24 bytes, big-endian): `u64 message-log offset | u32 record payload length |
//! u64 tag summary | u32 CRC32C of the first 20 bytes`. The tag summary lets tag filters pass
//! over messages without reading them. The CRC makes a torn or garbled entry recognisable: it
//! is never trusted. Consume logs are derived data: whatever is missing after a crash is
//! re-indexed from the message log, and segments whose messages retention deleted are deleted.
//!
//! Because they are derived, new entries are kept in an in-memory tail (readers see it) and
//! written in large pieces: by the store's flusher (every flush interval), when the tail
//! reaches [`TAIL_LIMIT`] entries, and before a checkpoint. The tail holds them unencoded:
//! encoding and checksumming happen when they are written, mostly on the flusher's thread, so
//! the append path only copies 24 bytes per message. (A write per append batch and subject
//! cost more than the message-log write itself for small messages.)

use std::path::Path;

use crate::error::{io, Result};
use crate::fixed::FixedLog;

/// File in a consume log's directory holding its first sequence when the log was created
/// empty at a non-zero sequence ([`ConsumeLog::create_at`]): sequences below it were never
/// stored here (a resynchronised replica starts at its master's retained range).
const START_FILE: &str = "START";

/// Bytes per entry.
pub const ENTRY: u64 = 24;

/// Where one message is in the message log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the message's record in the message log.
    pub offset: u64,
    /// Length of the record's payload.
    pub len: u32,
    /// Summary of the message's tags (see [`crate::filter::Filter::may_match`]).
    pub tags: u64,
}

impl Entry {
    fn encode(self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.tags.to_be_bytes());
        let crc = crc32c::crc32c(&out[at..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let crc = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
        if crc32c::crc32c(&b[..20]) != crc {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Some(Self {
            offset: u64_at(0),
            len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            tags: u64_at(12),
        })
    }
}

/// One subject's consume log.
pub struct ConsumeLog {
    log: FixedLog,
    /// Offset of the newest indexed message, to skip already-indexed records on recovery.
    last_offset: Option<u64>,
    /// Entries appended after the written ones (`log.len()..len()`), not yet written.
    tail: Vec<Entry>,
    /// No entry below this sequence was ever stored here (see [`ConsumeLog::create_at`]).
    floor: u64,
}

/// Unwritten entries a consume log holds before it writes them itself (192 KiB of them; a
/// subject gets this busy only above ~800,000 messages/s with the default 10 ms flush interval).
pub const TAIL_LIMIT: usize = 8192;

/// Entries checked per read while recovering.
const CHUNK: usize = 4096;

impl ConsumeLog {
    /// Opens or creates the consume log in `dir`. Entries before `trusted` were made durable by
    /// a checkpoint; those after it are checked (CRC, increasing offsets, below `log_end`) and
    /// the log is cut at the first bad one. Entries pointing at or past `log_end` are dropped.
    pub fn open(dir: &Path, per_segment: u64, trusted: u64, log_end: u64) -> Result<Self> {
        let mut log = FixedLog::open("consume-log", dir, ENTRY, per_segment)?;
        let floor = read_floor(dir)?.min(log.len());
        let first = log.first().max(floor);
        let start = trusted.min(log.len()).max(first);
        let mut prev = match start.checked_sub(1) {
            Some(p) if p >= log.first() => Self::decode_at(&log, p)?.map(|e| e.offset),
            _ => None,
        };
        let mut cut = None;
        let mut seq = start;
        'scan: while seq < log.len() {
            let bytes = log.read(seq, CHUNK)?;
            for b in bytes.chunks_exact(ENTRY as usize) {
                let ok = Entry::decode(b)
                    .filter(|e| e.offset < log_end && prev.is_none_or(|p| e.offset > p));
                match ok {
                    Some(e) => prev = Some(e.offset),
                    None => {
                        cut = Some(seq);
                        break 'scan;
                    }
                }
                seq += 1;
            }
        }
        // Trusted entries pointing past the log's end (its tail was lost): drop them too.
        let mut len = cut.unwrap_or(log.len());
        while len > first {
            match Self::decode_at(&log, len - 1)? {
                Some(e) if e.offset >= log_end => len -= 1,
                _ => break,
            }
        }
        if len < log.len() {
            tracing::warn!(path = %dir.display(), kept = len, dropped = log.len() - len, "cutting a consume log's unverifiable tail");
            log.truncate(len)?;
        }
        // The newest readable entry (a damaged trusted one is passed over).
        let mut last_offset = None;
        let mut at = len;
        while at > first && len - at < CHUNK as u64 {
            if let Some(e) = Self::decode_at(&log, at - 1)? {
                last_offset = Some(e.offset);
                break;
            }
            at -= 1;
        }
        Ok(Self {
            log,
            last_offset,
            tail: Vec::new(),
            floor,
        })
    }

    /// Creates an empty consume log in `dir` (which must hold none) whose first sequence is
    /// `first`: the next entry appended gets sequence `first`. A resynchronised replica's
    /// consume logs start where its master's retained range starts, so the sequences of the
    /// messages it copies (and the consumer state referring to them) stay the master's. The
    /// start is kept in a `START` file; the index segment holding `first` is created sparse.
    pub fn create_at(dir: &Path, per_segment: u64, first: u64) -> Result<()> {
        if first == 0 {
            return Ok(());
        }
        let mut log = FixedLog::open("consume-log", dir, ENTRY, per_segment)?;
        log.extend_to(first)?;
        log.sync()?;
        let path = dir.join(START_FILE);
        std::fs::write(&path, first.to_string()).map_err(io("write", &path))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", &path))?;
        crate::log::sync_dir(dir)
    }

    fn decode_at(log: &FixedLog, seq: u64) -> Result<Option<Entry>> {
        let b = log.read(seq, 1)?;
        Ok((b.len() == ENTRY as usize)
            .then(|| Entry::decode(&b))
            .flatten())
    }

    /// Number of entries; the next message gets this sequence.
    pub fn len(&self) -> u64 {
        self.log.len() + self.tail.len() as u64
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// First sequence still stored (earlier segments were deleted by retention).
    pub fn first(&self) -> u64 {
        self.log.first().max(self.floor.min(self.len()))
    }

    /// Offset of the newest indexed message.
    pub fn last_offset(&self) -> Option<u64> {
        self.last_offset
    }

    /// Appends entries (to the in-memory tail, written once it is large) and returns the first
    /// one's sequence.
    pub fn append_many(&mut self, entries: &[Entry]) -> Result<u64> {
        self.append_moved(entries, |offset| offset)
    }

    /// Appends entries as [`ConsumeLog::append_many`] does, their offsets passed through
    /// `offset` first (the writer's entries are relative to their batch until it is placed).
    /// A failed write of a full tail is logged, not returned: the entries stay in the tail,
    /// readable, and the next flush writes them (consume logs are derived data; an append
    /// must not fail for them once its messages are in the message log).
    pub fn append_moved(&mut self, entries: &[Entry], offset: impl Fn(u64) -> u64) -> Result<u64> {
        let seq = self.len();
        self.tail.extend(entries.iter().map(|e| Entry {
            offset: offset(e.offset),
            ..*e
        }));
        if let Some(last) = self.tail.last() {
            self.last_offset = Some(last.offset);
        }
        if self.tail.len() >= TAIL_LIMIT {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "consume log write failed; its entries stay in memory");
            }
        }
        Ok(seq)
    }

    /// Writes `entries` over the written ones at `seq..` (rebuilt damaged entries; the
    /// in-memory tail is never damaged).
    pub fn rewrite(&mut self, seq: u64, entries: &[Entry]) -> Result<()> {
        let mut bytes = Vec::with_capacity(entries.len() * ENTRY as usize);
        for e in entries
            .iter()
            .take(self.log.len().saturating_sub(seq) as usize)
        {
            e.encode(&mut bytes);
        }
        self.log.write(seq, &bytes)
    }

    /// Encodes the in-memory tail and writes it to the files (not yet durable: see
    /// [`ConsumeLog::sync`]). Returns how many entries it wrote. The tail keeps about the
    /// capacity this write needed: a busy subject reuses its buffer, a quiet one gives it back.
    pub fn flush(&mut self) -> Result<usize> {
        let n = self.tail.len();
        if n > 0 {
            let mut bytes = Vec::with_capacity(n * ENTRY as usize);
            for e in &self.tail {
                e.encode(&mut bytes);
            }
            self.log.write(self.log.len(), &bytes)?;
            self.tail.clear();
        }
        let keep = if n == 0 {
            0
        } else {
            n.next_power_of_two().min(TAIL_LIMIT)
        };
        if self.tail.capacity() > keep {
            self.tail.shrink_to(keep);
        }
        Ok(n)
    }

    /// Reads up to `max` entries from `seq`; `None` for an entry that is damaged or deleted.
    pub fn read(&self, seq: u64, max: usize) -> Result<Vec<Option<Entry>>> {
        let written = self.log.len();
        let bytes = if seq < written {
            self.log.read(seq, max)?
        } else {
            Vec::new()
        };
        let mut out: Vec<Option<Entry>> = bytes
            .chunks_exact(ENTRY as usize)
            .map(Entry::decode)
            .collect();
        if out.len() < max {
            let from = (seq.max(written) - written) as usize;
            if let Some(t) = self.tail.get(from..) {
                out.extend(t.iter().take(max - out.len()).copied().map(Some));
            }
        }
        Ok(out)
    }

    /// The first sequence whose message is at or after message-log offset `offset` (entries
    /// are in message-log order; unreadable entries count as before it).
    pub fn first_at_or_after(&self, offset: u64) -> Result<u64> {
        let (mut lo, mut hi) = (self.first(), self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = self.read(mid, 1)?.into_iter().next().flatten();
            if entry.is_some_and(|e| e.offset >= offset) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Deletes whole segments whose messages all lie before message-log offset `offset`.
    pub fn delete_before_offset(&mut self, offset: u64) -> Result<usize> {
        let seq = self.first_at_or_after(offset)?;
        self.log.delete_before(seq)
    }

    /// Writes the tail and makes every entry durable.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.log.sync()
    }
}

/// The first sequence a `START` file records (0 without one).
fn read_floor(dir: &Path) -> Result<u64> {
    let path = dir.join(START_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| crate::StoreError::BadNameFile {
                path,
                reason: format!("bad consume-log start: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("read", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        Entry {
            offset: i * 10,
            len: 3,
            tags: i,
        }
    }

    #[test]
    fn the_in_memory_tail_is_read_with_the_files_and_written_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ConsumeLog::open(dir.path(), 1000, 0, u64::MAX).unwrap();
        let per_limit = TAIL_LIMIT as u64;
        // Below the limit: nothing on disk yet, everything readable.
        let first: Vec<Entry> = (0..10).map(entry).collect();
        assert_eq!(c.append_many(&first).unwrap(), 0);
        assert_eq!(
            FixedLog::open("consume-log", dir.path(), ENTRY, 1000)
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            c.read(3, 4).unwrap(),
            (3..7).map(|i| Some(entry(i))).collect::<Vec<_>>()
        );
        // Past the limit: written, across index segments.
        let more: Vec<Entry> = (10..per_limit + 20).map(entry).collect();
        assert_eq!(c.append_many(&more).unwrap(), 10);
        let on_disk = FixedLog::open("consume-log", dir.path(), ENTRY, 1000)
            .unwrap()
            .len();
        assert_eq!(on_disk, per_limit + 20);
        // A tail again; reads that straddle the file and the tail.
        let tail: Vec<Entry> = (per_limit + 20..per_limit + 30).map(entry).collect();
        c.append_many(&tail).unwrap();
        let got = c.read(on_disk - 2, 5).unwrap();
        assert_eq!(
            got,
            (on_disk - 2..on_disk + 3)
                .map(|i| Some(entry(i)))
                .collect::<Vec<_>>()
        );
        assert_eq!(c.len(), per_limit + 30);
        assert_eq!(
            c.first_at_or_after(entry(on_disk + 1).offset).unwrap(),
            on_disk + 1
        );
        assert_eq!(c.read(c.len(), 5).unwrap(), Vec::new());
        // sync writes the tail; a reopen sees everything.
        c.sync().unwrap();
        let c = ConsumeLog::open(dir.path(), 1000, 0, u64::MAX).unwrap();
        assert_eq!(c.len(), per_limit + 30);
        assert_eq!(c.last_offset(), Some(entry(per_limit + 29).offset));
    }
}
