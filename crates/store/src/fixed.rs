//! Dense arrays of fixed-size entries in segment files: the shape of consume logs and pull logs.
//!
//! Entry `i` lives in the segment whose first index is `i - i % per_segment`, named by that index
//! (20 digits), at byte `(i % per_segment) * entry`. Whole segments can be deleted from the front
//! (retention), so a log's stored range is `first()..len()`. Bytes that are missing from a
//! segment (a file cut short, a deleted middle segment) read as zeros; callers protect each
//! entry with a checksum, so such entries are recognised as damaged rather than trusted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::{io, Result};
use crate::faults;
use crate::log::{open_segment_files, sync_dir};

struct Segment {
    path: PathBuf,
    file: File,
}

/// A segmented array of fixed-size entries.
pub struct FixedLog {
    /// What the log holds (`consume-log`, `pull-log`): names its failpoints.
    kind: &'static str,
    dir: PathBuf,
    entry: u64,
    per_segment: u64,
    segments: BTreeMap<u64, Segment>,
    len: u64,
    /// Segments written since their last fsync.
    dirty: Mutex<BTreeSet<u64>>,
}

impl FixedLog {
    /// Opens (or creates) the log of `kind` (`consume-log`, `pull-log`) in `dir` with
    /// `entry`-byte entries, `per_segment` per file. Its length is where the last segment's
    /// last whole entry ends.
    pub fn open(kind: &'static str, dir: &Path, entry: u64, per_segment: u64) -> Result<Self> {
        let mut segments = BTreeMap::new();
        for (base, path, file) in open_segment_files(dir)? {
            segments.insert(base, Segment { path, file });
        }
        let len = match segments.iter().next_back() {
            Some((&base, s)) => {
                let bytes = s.file.metadata().map_err(io("stat", &s.path))?.len();
                base + (bytes / entry).min(per_segment)
            }
            None => 0,
        };
        Ok(Self {
            kind,
            dir: dir.to_path_buf(),
            entry,
            per_segment,
            segments,
            len,
            dirty: Mutex::new(BTreeSet::new()),
        })
    }

    /// Number of entries (the next index).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// First index still stored (`len()` when the log is empty).
    pub fn first(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(self.len)
    }

    fn segment(&mut self, base: u64) -> Result<&Segment> {
        if !self.segments.contains_key(&base) {
            let path = self.dir.join(format!("{base:020}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io("create", &path))?;
            sync_dir(&self.dir)?;
            self.segments.insert(base, Segment { path, file });
        }
        self.segments
            .get(&base)
            .ok_or_else(|| std::io::Error::other("segment vanished"))
            .map_err(io("open", &self.dir))
    }

    /// Writes whole entries `data` at index `index` (possibly across segments).
    pub fn write(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let n = data.len() as u64 / self.entry;
        let mut done = 0u64;
        while done < n {
            let i = index + done;
            let base = i - i % self.per_segment;
            let here = (base + self.per_segment - i).min(n - done);
            let from = (done * self.entry) as usize;
            let to = ((done + here) * self.entry) as usize;
            let at = (i - base) * self.entry;
            let kind = self.kind;
            let s = self.segment(base)?;
            faults::check(kind, "write")
                .and_then(|()| s.file.write_all_at(&data[from..to], at))
                .map_err(io("write", &s.path))?;
            self.dirty.lock().insert(base);
            done += here;
        }
        self.len = self.len.max(index + n);
        Ok(())
    }

    /// Reads entries `index..` (at most `max`, never past `len()`), with zeros for bytes that
    /// are not stored. Returns the bytes of `min(max, len - index)` entries.
    pub fn read(&self, index: u64, max: usize) -> Result<Vec<u8>> {
        if index >= self.len {
            return Ok(Vec::new());
        }
        let n = (self.len - index).min(max as u64);
        let mut out = vec![0u8; (n * self.entry) as usize];
        let mut done = 0u64;
        while done < n {
            let i = index + done;
            let base = i - i % self.per_segment;
            let here = (base + self.per_segment - i).min(n - done);
            if let Some(s) = self.segments.get(&base) {
                let from = (done * self.entry) as usize;
                let to = ((done + here) * self.entry) as usize;
                faults::check(self.kind, "read")
                    .and_then(|()| {
                        read_partial(&s.file, &mut out[from..to], (i - base) * self.entry)
                    })
                    .map_err(io("read", &s.path))?;
            }
            done += here;
        }
        Ok(out)
    }

    /// Makes an empty log `len` entries long without writing any (the segment holding `len`
    /// is created, sparse, up to it): entries below read as zeros, which their checksums
    /// reject. Nothing happens if the log is not empty.
    pub fn extend_to(&mut self, len: u64) -> Result<()> {
        if self.len > 0 || !self.segments.is_empty() || len == 0 {
            return Ok(());
        }
        let base = len - len % self.per_segment;
        let bytes = (len - base) * self.entry;
        let s = self.segment(base)?;
        s.file.set_len(bytes).map_err(io("extend", &s.path))?;
        self.dirty.lock().insert(base);
        self.len = len;
        Ok(())
    }

    /// Drops entries at and after `len`.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        let keep_base = len - len % self.per_segment;
        let doomed: Vec<u64> = self
            .segments
            .range(keep_base + 1..)
            .map(|(&b, _)| b)
            .collect();
        for base in doomed {
            if let Some(s) = self.segments.remove(&base) {
                std::fs::remove_file(&s.path).map_err(io("delete", &s.path))?;
            }
            self.dirty.lock().remove(&base);
        }
        if let Some(s) = self.segments.get(&keep_base) {
            s.file
                .set_len((len - keep_base) * self.entry)
                .map_err(io("truncate", &s.path))?;
            s.file.sync_all().map_err(io("fsync", &s.path))?;
        }
        self.len = len;
        Ok(())
    }

    /// Deletes whole segments holding only entries below `index`; the segment `len()` falls in
    /// is always kept. Returns how many were deleted.
    pub fn delete_before(&mut self, index: u64) -> Result<usize> {
        let limit = index.min(self.len);
        let doomed: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|&b| b + self.per_segment <= limit && b + self.per_segment <= self.len)
            .collect();
        for base in &doomed {
            if let Some(s) = self.segments.remove(base) {
                std::fs::remove_file(&s.path).map_err(io("delete", &s.path))?;
            }
            self.dirty.lock().remove(base);
        }
        Ok(doomed.len())
    }

    /// Makes every written entry durable.
    pub fn sync(&self) -> Result<()> {
        let dirty: Vec<u64> = std::mem::take(&mut *self.dirty.lock())
            .into_iter()
            .collect();
        for base in dirty {
            if let Some(s) = self.segments.get(&base) {
                faults::check(self.kind, "fsync")
                    .and_then(|()| s.file.sync_data())
                    .map_err(io("fsync", &s.path))?;
            }
        }
        Ok(())
    }
}

/// Reads as much of `buf` as the file holds at `at`, leaving the rest as it is (zeros).
fn read_partial(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_span_segments_and_front_segments_can_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FixedLog::open("test", dir.path(), 4, 3).unwrap();
        let data: Vec<u8> = (0u32..10).flat_map(|i| i.to_be_bytes()).collect();
        log.write(0, &data).unwrap();
        assert_eq!(log.len(), 10);
        assert_eq!(log.read(2, 5).unwrap(), data[8..28].to_vec());
        log.sync().unwrap();
        drop(log);
        let mut log = FixedLog::open("test", dir.path(), 4, 3).unwrap();
        assert_eq!(log.len(), 10);
        assert_eq!(log.delete_before(7).unwrap(), 2);
        assert_eq!(log.first(), 6);
        // Deleted entries read as zeros.
        assert_eq!(log.read(5, 2).unwrap(), [0, 0, 0, 0, 0, 0, 0, 6]);
        log.truncate(4).unwrap();
        assert_eq!(log.len(), 4);
        log.write(4, &[1, 2, 3, 4]).unwrap();
        drop(log);
        let log = FixedLog::open("test", dir.path(), 4, 3).unwrap();
        assert_eq!(log.len(), 5);
    }
}
