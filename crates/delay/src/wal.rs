//! The message log: a write-ahead log of every accepted message, in segment files.
//!
//! Files are `message_log/<base offset, 20 digits>.wal`; offsets are global (the base of a
//! segment is the end of the one before). A batch of records is written with one `write` and
//! made durable with one `fdatasync` before any of its messages is acknowledged. Schedule logs
//! are derived from it and can always be rebuilt from it while its segments are kept.
//!
//! A batch whose write or fsync failed is cut off again ([`MessageLog::discard_from`]); if even
//! that fails the log refuses appends until it is reopened (where the tail is checked again).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::DelayError;
use crate::fsutil::{cut_tail, ensure_dir, numbered_files, sync_dir};
use crate::record::{Damage, FrameReader, FRAME_HEADER};

const SUFFIX: &str = ".wal";

/// The message log of one store.
pub struct MessageLog {
    dir: PathBuf,
    /// Base offset -> length of every segment before the active one.
    segments: BTreeMap<u64, u64>,
    active: File,
    /// The active segment's base offset and length.
    active_base: u64,
    active_len: u64,
    segment_bytes: u64,
    max_payload: usize,
    /// A failed batch could not be cut off: appends are refused until reopened.
    failed: bool,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

impl MessageLog {
    /// Opens (or creates) the log in `dir`. The last segment is checked from `valid_from` (a
    /// global offset known to start a record, e.g. the checkpoint; earlier bases are clamped)
    /// and any torn or damaged tail is cut aside.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        max_payload: usize,
        valid_from: u64,
    ) -> Result<Self, DelayError> {
        ensure_dir(dir)?;
        let mut segments = BTreeMap::new();
        for (base, path) in numbered_files(dir, SUFFIX)? {
            let len = std::fs::metadata(&path)
                .map_err(|e| DelayError::io("stat", &path, e))?
                .len();
            segments.insert(base as u64, len);
        }
        // The newest segment (or a first, empty one) is the active one.
        let base = segments.pop_last().map_or(0, |(base, _)| base);
        let path = segment_path(dir, base);
        let mut active = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DelayError::io("open message log", &path, e))?;
        // Find the end of the valid records in the active segment.
        let start = valid_from.saturating_sub(base);
        let len = active
            .metadata()
            .map_err(|e| DelayError::io("stat", &path, e))?
            .len();
        let start = if start > len { 0 } else { start };
        active
            .seek(SeekFrom::Start(start))
            .map_err(|e| DelayError::io("seek", &path, e))?;
        let mut reader = FrameReader::new(BufReader::new(&active), start, max_payload);
        let valid_end = loop {
            match reader
                .next_record()
                .map_err(|e| DelayError::io("read message log", &path, e))?
            {
                Ok(Some(_)) => {}
                Ok(None) => break reader.offset(),
                Err(damage) => {
                    tracing::warn!(file = %path.display(), at = reader.offset(), ?damage, "message log tail is damaged");
                    break reader.offset();
                }
            }
        };
        drop(reader);
        cut_tail(&mut active, &path, valid_end)?;
        active
            .seek(SeekFrom::End(0))
            .map_err(|e| DelayError::io("seek", &path, e))?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            segments,
            active,
            active_base: base,
            active_len: valid_end,
            segment_bytes,
            max_payload,
            failed: false,
        })
    }

    /// The global offset just after the last record.
    pub fn end(&self) -> u64 {
        self.active_base + self.active_len
    }

    /// The global offset of the first record still kept.
    pub fn start(&self) -> u64 {
        self.segments
            .keys()
            .next()
            .copied()
            .unwrap_or(self.active_base)
    }

    /// Appends `frames` (whole framed records) and returns the global offset of the first byte.
    /// Not durable until [`Self::sync`].
    pub fn append(&mut self, frames: &[u8]) -> Result<u64, DelayError> {
        if self.failed {
            return Err(DelayError::io(
                "append message log",
                segment_path(&self.dir, self.active_base),
                std::io::Error::other(
                    "an earlier failed write could not be undone; reopen the store",
                ),
            ));
        }
        if self.active_len > 0 && self.active_len + frames.len() as u64 > self.segment_bytes {
            self.roll(self.end())?;
        }
        let at = self.end();
        let written =
            crate::fsutil::inject("delay::wal::write").and_then(|()| self.active.write_all(frames));
        if let Err(e) = written {
            // Leave no partial batch behind: later appends must start on a record boundary.
            self.discard_from(at);
            return Err(DelayError::io(
                "append message log",
                segment_path(&self.dir, self.active_base),
                e,
            ));
        }
        self.active_len += frames.len() as u64;
        Ok(at)
    }

    /// Cuts the active segment back to global offset `at` (the start of a batch whose write or
    /// fsync failed), so that nothing of the batch can be replayed. If the cut fails, appends
    /// are refused until the log is reopened.
    pub fn discard_from(&mut self, at: u64) {
        let local = at.saturating_sub(self.active_base);
        let cut = self
            .active
            .set_len(local)
            .and_then(|_| self.active.seek(SeekFrom::Start(local)).map(|_| ()));
        match cut {
            Ok(()) => self.active_len = self.active_len.min(local),
            Err(e) => {
                tracing::error!(file = %segment_path(&self.dir, self.active_base).display(), error = %e, "cannot cut a failed batch off the message log; refusing appends until reopened");
                self.failed = true;
            }
        }
    }

    fn roll(&mut self, new_base: u64) -> Result<(), DelayError> {
        self.sync()?;
        let path = segment_path(&self.dir, new_base);
        self.active = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| DelayError::io("create message log segment", &path, e))?;
        sync_dir(&self.dir)?;
        self.segments.insert(self.active_base, self.active_len);
        self.active_base = new_base;
        self.active_len = 0;
        Ok(())
    }

    /// Makes sure the next record gets an offset of at least `floor` (after data loss, offsets
    /// must never be reused: replays tell records apart by offset).
    pub fn ensure_end_at_least(&mut self, floor: u64) -> Result<(), DelayError> {
        if self.end() < floor {
            tracing::warn!(
                end = self.end(),
                floor,
                "message log ends before offsets already used; starting a new segment"
            );
            self.roll(floor)?;
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<(), DelayError> {
        let synced =
            crate::fsutil::inject("delay::wal::fsync").and_then(|()| self.active.sync_data());
        synced.map_err(|e| {
            DelayError::io(
                "fsync message log",
                segment_path(&self.dir, self.active_base),
                e,
            )
        })
    }

    /// Calls `f(offset, payload)` for every valid record at or after global offset `from`, in
    /// order. A damaged record in an older segment ends that segment's replay (logged); the
    /// next segment is read from its start.
    pub fn replay(
        &self,
        from: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), DelayError>,
    ) -> Result<(), DelayError> {
        let active = std::iter::once((self.active_base, self.active_len));
        for (base, len) in self.segments.iter().map(|(&b, &l)| (b, l)).chain(active) {
            if base + len <= from || len == 0 {
                continue;
            }
            let path = segment_path(&self.dir, base);
            crate::fsutil::inject("delay::wal::read")
                .map_err(|e| DelayError::io("read message log", &path, e))?;
            let mut file = File::open(&path).map_err(|e| DelayError::io("open", &path, e))?;
            let mut start = from.saturating_sub(base);
            if start >= len {
                start = 0;
            }
            file.seek(SeekFrom::Start(start))
                .map_err(|e| DelayError::io("seek", &path, e))?;
            let limited = std::io::Read::take(BufReader::with_capacity(1 << 20, file), len - start);
            let mut reader = FrameReader::new(limited, start, self.max_payload);
            loop {
                match reader
                    .next_record()
                    .map_err(|e| DelayError::io("read message log", &path, e))?
                {
                    Ok(Some((at, payload))) => f(base + at, payload)?,
                    Ok(None) => break,
                    Err(damage) => {
                        log_damage(&path, reader.offset(), &damage);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes whole segments that end at or before `upto` and were last written before
    /// `older_than`; the active segment is never deleted. Returns how many were deleted.
    pub fn delete_before(
        &mut self,
        upto: u64,
        older_than: SystemTime,
    ) -> Result<usize, DelayError> {
        // Only older segments are in `segments`: the active one is never deleted.
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .filter(|(&base, &len)| base + len <= upto)
            .map(|(&base, _)| base)
            .collect();
        let mut deleted = 0;
        for base in doomed {
            let path = segment_path(&self.dir, base);
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(|e| DelayError::io("stat", &path, e))?;
            if modified >= older_than {
                continue;
            }
            std::fs::remove_file(&path).map_err(|e| DelayError::io("delete", &path, e))?;
            self.segments.remove(&base);
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len() + 1
    }
}

/// What the message log holds at an offset a slave asks for (see `MessageLog::span_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalChunk {
    /// Whole records, back to back, starting at `start`: the asked offset, or (when the log no
    /// longer holds it, or it falls in a gap left after data loss) the next offset it holds.
    Records {
        /// Global offset of the first byte.
        start: u64,
        /// The records, byte for byte as on disk.
        bytes: bytes::Bytes,
    },
    /// The asked offset is the log's end: nothing new.
    AtEnd,
    /// The asked offset is beyond the log's end: the asker holds data this log never had.
    Ahead {
        /// This log's end.
        end: u64,
    },
}

/// A part of one segment to read without holding the log's lock.
#[derive(Debug)]
pub enum WalSpan {
    /// Read `[from, base + len)` of the segment at `path`.
    Read {
        /// The segment file.
        path: PathBuf,
        /// Its base offset.
        base: u64,
        /// Its valid length (bytes durable when the span was taken).
        len: u64,
        /// Global offset to read from.
        from: u64,
    },
    /// Nothing to read: this answer as it is.
    Done(WalChunk),
}

impl WalSpan {
    /// Reads whole records of the span: at most `max_bytes`, or the first record alone if it is
    /// larger.
    pub fn read(self, max_bytes: usize) -> Result<WalChunk, DelayError> {
        let (path, base, len, from) = match self {
            WalSpan::Done(c) => return Ok(c),
            WalSpan::Read {
                path,
                base,
                len,
                from,
            } => (path, base, len, from),
        };
        let file = File::open(&path).map_err(|e| DelayError::io("open", &path, e))?;
        let local = from - base;
        let avail = len - local;
        let read_at = |at: u64, n: u64| -> Result<Vec<u8>, DelayError> {
            let mut buf = vec![0u8; n as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, at)
                .map_err(|e| DelayError::io("read message log", &path, e))?;
            Ok(buf)
        };
        let mut buf = read_at(local, avail.min(max_bytes.max(FRAME_HEADER) as u64))?;
        let mut whole = whole_records(&buf);
        if whole == 0 {
            // The first record alone is larger than `max_bytes`.
            let need = buf
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .map(|h: [u8; 4]| u32::from_be_bytes(h) as u64 + FRAME_HEADER as u64)
                .unwrap_or(0);
            if need == 0 || need > avail {
                return Err(DelayError::Corrupt {
                    path,
                    reason: format!("record at {from} runs past the segment's end"),
                });
            }
            buf = read_at(local, need)?;
            whole = buf.len();
        }
        buf.truncate(whole);
        Ok(WalChunk::Records {
            start: from,
            bytes: bytes::Bytes::from(buf),
        })
    }
}

/// Length of the longest prefix of `buf` made of whole framed records (by their lengths).
pub(crate) fn whole_records(buf: &[u8]) -> usize {
    let mut at = 0usize;
    while let Some(h) = buf.get(at..at + 4) {
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let end = at + FRAME_HEADER + len;
        if end > buf.len() {
            break;
        }
        at = end;
    }
    at
}

impl MessageLog {
    /// Where the records at global `offset` are (cheap, no disk I/O: call it under the lock and
    /// read the span after releasing it).
    pub fn span_at(&self, offset: u64) -> Result<WalSpan, DelayError> {
        let end = self.end();
        if offset > end {
            return Ok(WalSpan::Done(WalChunk::Ahead { end }));
        }
        if offset == end {
            return Ok(WalSpan::Done(WalChunk::AtEnd));
        }
        let active = std::iter::once((self.active_base, self.active_len));
        let all = self.segments.iter().map(|(&b, &l)| (b, l)).chain(active);
        for (base, len) in all {
            if len == 0 || base + len <= offset {
                continue;
            }
            // The first segment holding bytes at or after `offset`.
            let from = offset.max(base);
            return Ok(WalSpan::Read {
                path: segment_path(&self.dir, base),
                base,
                len,
                from,
            });
        }
        Ok(WalSpan::Done(WalChunk::AtEnd))
    }

    /// Appends a chunk of whole records copied from a master's message log at global offset
    /// `start`, which must be this log's end, and fsyncs it. The caller has checked the records.
    pub fn append_replicated(&mut self, start: u64, frames: &[u8]) -> Result<(), DelayError> {
        if start != self.end() {
            return Err(DelayError::Corrupt {
                path: self.dir.clone(),
                reason: format!("replicated chunk at {start}, log ends at {}", self.end()),
            });
        }
        let at = self.append(frames)?;
        if let Err(e) = self.sync() {
            self.discard_from(at);
            return Err(e);
        }
        Ok(())
    }
}

fn log_damage(path: &Path, at: u64, damage: &Damage) {
    tracing::error!(file = %path.display(), at, ?damage, "damaged message log record; the rest of this segment is skipped");
}
