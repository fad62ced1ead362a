//! Pull logs: one per consumer, a dense array of `u64` consume-log sequences. Entry `n` is the
//! consume-log sequence of the `n`-th message handed to that consumer (its pull-log sequence).
//!
//! Pull logs are derived from the action log: entries are written at their sequence, so replaying
//! the same pull action twice writes the same bytes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{io, Result};

/// One consumer's pull log.
pub struct PullLog {
    path: PathBuf,
    file: File,
    len: u64,
}

impl PullLog {
    /// Opens or creates the pull log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open", path))?;
        let len = file.metadata().map_err(io("stat", path))?.len() / 8;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Writes `seqs` at pull-log sequences `first..`.
    pub fn write(&mut self, first: u64, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(seqs.len() * 8);
        for s in seqs {
            buf.extend_from_slice(&s.to_be_bytes());
        }
        self.file
            .write_all_at(&buf, first * 8)
            .map_err(io("write", &self.path))?;
        self.len = self.len.max(first + seqs.len() as u64);
        Ok(())
    }

    /// The consume-log sequences at pull-log sequences `first..` (at most `max`; fewer if the log
    /// is shorter).
    pub fn read(&self, first: u64, max: usize) -> Result<Vec<u64>> {
        if first >= self.len {
            return Ok(Vec::new());
        }
        let n = (self.len - first).min(max as u64) as usize;
        let mut buf = vec![0u8; n * 8];
        self.file
            .read_exact_at(&mut buf, first * 8)
            .map_err(io("read", &self.path))?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// Makes the entries durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io("fsync", &self.path))
    }
}
