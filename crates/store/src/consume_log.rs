//! Consume logs: one per subject, a dense array of fixed-size entries pointing into the message
//! log. Entry `n` is the subject's `n`-th message (its consume-log sequence).
//!
//! Entry: `u64 message-log offset | u32 record length | u32 CRC32C of the first 12 bytes`.
//! The CRC lets recovery drop a torn or garbled last entry instead of trusting it. Consume logs
//! are derived data: whatever is missing after a crash is re-indexed from the message log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{io, Result, StoreError};

/// Bytes per entry.
pub const ENTRY: u64 = 16;

/// Where one message is in the message log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the message's record in the message log.
    pub offset: u64,
    /// Length of the record's payload.
    pub len: u32,
}

impl Entry {
    fn encode(self) -> [u8; ENTRY as usize] {
        let mut b = [0u8; ENTRY as usize];
        b[..8].copy_from_slice(&self.offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.len.to_be_bytes());
        let crc = crc32c::crc32c(&b[..12]);
        b[12..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let crc = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if crc32c::crc32c(&b[..12]) != crc {
            return None;
        }
        Some(Self {
            offset: u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// One subject's consume log.
pub struct ConsumeLog {
    path: PathBuf,
    file: File,
    /// Number of entries (the next sequence).
    len: u64,
    /// Offset of the last entry's message, to skip already-indexed records on recovery.
    last_offset: Option<u64>,
}

impl ConsumeLog {
    /// Opens or creates the consume log at `path`, dropping a torn tail and any entry that points
    /// at or past `log_end` (its message did not survive).
    pub fn open(path: &Path, log_end: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open", path))?;
        let size = file.metadata().map_err(io("stat", path))?.len();
        let mut len = size / ENTRY;
        let mut last_offset = None;
        while len > 0 {
            let mut b = [0u8; ENTRY as usize];
            file.read_exact_at(&mut b, (len - 1) * ENTRY)
                .map_err(io("read", path))?;
            match Entry::decode(&b) {
                Some(e) if e.offset < log_end => {
                    last_offset = Some(e.offset);
                    break;
                }
                _ => len -= 1,
            }
        }
        if len * ENTRY != size {
            tracing::warn!(path = %path.display(), kept = len, "truncating consume log tail");
            file.set_len(len * ENTRY).map_err(io("truncate", path))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            last_offset,
        })
    }

    /// Number of entries; the next message gets this sequence.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the newest indexed message.
    pub fn last_offset(&self) -> Option<u64> {
        self.last_offset
    }

    /// Appends an entry and returns its sequence.
    pub fn append(&mut self, entry: Entry) -> Result<u64> {
        let seq = self.len;
        self.file
            .write_all_at(&entry.encode(), seq * ENTRY)
            .map_err(io("write", &self.path))?;
        self.len += 1;
        self.last_offset = Some(entry.offset);
        Ok(seq)
    }

    /// Appends several entries with one write and returns the first one's sequence.
    pub fn append_many(&mut self, entries: &[Entry]) -> Result<u64> {
        let seq = self.len;
        let mut buf = Vec::with_capacity(entries.len() * ENTRY as usize);
        for e in entries {
            buf.extend_from_slice(&e.encode());
        }
        self.file
            .write_all_at(&buf, seq * ENTRY)
            .map_err(io("write", &self.path))?;
        self.len += entries.len() as u64;
        if let Some(last) = entries.last() {
            self.last_offset = Some(last.offset);
        }
        Ok(seq)
    }

    /// Reads up to `max` entries from `seq`.
    pub fn read(&self, seq: u64, max: usize) -> Result<Vec<Entry>> {
        if seq >= self.len || max == 0 {
            return Ok(Vec::new());
        }
        let n = (self.len - seq).min(max as u64);
        let mut buf = vec![0u8; (n * ENTRY) as usize];
        self.file
            .read_exact_at(&mut buf, seq * ENTRY)
            .map_err(io("read", &self.path))?;
        buf.chunks_exact(ENTRY as usize)
            .enumerate()
            .map(|(i, b)| {
                Entry::decode(b).ok_or(StoreError::Corrupt {
                    log: "consume log",
                    offset: (seq + i as u64) * ENTRY,
                })
            })
            .collect()
    }

    /// Makes the entries durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io("fsync", &self.path))
    }
}
