//! Pull logs: one per consumer, a dense array of consume-log sequences. Entry `n` is the
//! consume-log sequence of the `n`-th message handed to that consumer (its pull-log sequence).
//!
//! Entry (12 bytes, big-endian): `u64 consume-log sequence | u32 CRC32C(pull sequence ‖
//! consume sequence)`, so a damaged or misplaced entry is recognised. Pull logs are derived from
//! the action log: entries are written at their index, so replaying a pull twice writes the same
//! bytes. Segments holding only acked entries are deleted by retention.

use std::path::Path;

use crate::error::Result;
use crate::fixed::FixedLog;

const ENTRY: u64 = 12;

fn crc(index: u64, seq: u64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&index.to_be_bytes()), &seq.to_be_bytes())
}

/// One consumer's pull log.
pub struct PullLog {
    log: FixedLog,
}

impl PullLog {
    /// Opens or creates the pull log in `dir`.
    pub fn open(dir: &Path, per_segment: u64) -> Result<Self> {
        Ok(Self {
            log: FixedLog::open("pull-log", dir, ENTRY, per_segment)?,
        })
    }

    /// Writes `seqs` at pull-log sequences `first..`.
    pub fn write(&mut self, first: u64, seqs: &[u64]) -> Result<()> {
        let mut buf = Vec::with_capacity(seqs.len() * ENTRY as usize);
        for (i, s) in seqs.iter().enumerate() {
            buf.extend_from_slice(&s.to_be_bytes());
            buf.extend_from_slice(&crc(first + i as u64, *s).to_be_bytes());
        }
        self.log.write(first, &buf)
    }

    /// The consume-log sequences at pull-log sequences `first..` (at most `max`, fewer if the
    /// log is shorter); `None` for an entry that is damaged or deleted.
    pub fn read(&self, first: u64, max: usize) -> Result<Vec<Option<u64>>> {
        let bytes = self.log.read(first, max)?;
        Ok(bytes
            .chunks_exact(ENTRY as usize)
            .enumerate()
            .map(|(i, c)| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&c[..8]);
                let seq = u64::from_be_bytes(a);
                let sum = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
                (crc(first + i as u64, seq) == sum).then_some(seq)
            })
            .collect())
    }

    /// Deletes whole segments holding only pull-log sequences below `first_needed`.
    pub fn delete_before(&mut self, first_needed: u64) -> Result<usize> {
        self.log.delete_before(first_needed)
    }

    /// Makes the entries durable.
    pub fn sync(&self) -> Result<()> {
        self.log.sync()
    }
}
