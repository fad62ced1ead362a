//! A segmented, append-only record log: the shape of both the message log and the action log.
//!
//! Records are `u32 length | u32 CRC32C(payload) | payload`. Offsets are logical byte positions
//! across the whole log; a segment file is named by the offset of its first byte (20 digits) and
//! holds at most `segment_size` bytes. A record never spans two segments: when it does not fit,
//! the next segment starts where the current one ends, so offsets are dense and do not depend
//! on the segment size.
//!
//! This framing, and the payloads of the message log and the action log, are the replication
//! protocol: replicas copy the records byte for byte at the same offsets
//! ([`LogReader::read_chunk`], [`check_records`], [`RecordLog::append_records`]). The layouts
//! are specified in [`crate::formats`] (`FORMAT.md`); changing them is a protocol change.
//!
//! Reads use `pread` on the segment files (no mmap): memory use does not grow with the log, and
//! the page cache does the caching. On open the tail is scanned from a given offset: a torn tail
//! (a partial or garbled last record) is truncated; a damaged record followed by good ones is
//! skipped with an error log, so one flipped byte never costs the records after it. Only a
//! length or CRC mismatch (or a record cut short by the file's end) means damage: any other
//! read error is returned as [`StoreError::Io`], and the open fails without cutting anything.
//!
//! # Failed writes and fsyncs
//!
//! After a failed write or fsync the log does not trust its files: it records the failure
//! and repairs before anything else is appended. [`RecordLog::append_runs`] that fails cuts
//! what it wrote back to the log's last good end (truncating the segment, deleting segments
//! it created) and answers [`StoreError::Failed`]: nothing of that call is stored. When the
//! cut itself fails it answers [`StoreError::MaybeStored`] instead (the outcome is unknown).
//! A failed fsync ([`LogReader::sync`]) leaves the records in place but unconfirmed. The
//! repair ([`RecordLog::repair`], run by the next append) cuts the files back to the log's
//! end, rewrites every byte after the durable mark from the page cache (after a failed fsync
//! the kernel may have dropped them from the disk while keeping them readable), fsyncs, and
//! reads those records back; until it succeeds appends and fsyncs fail with
//! [`StoreError::Failed`], and once the disk works again the log goes on without a reopen.
//! ("Not stored" holds for this process and the next; a machine crash before the repair's
//! fsync lands may still bring back bytes of the cut write, as with any unsynced write.)
//!
//! The segment map's lock is held only to look up or swap entries: fsyncs, file creation and
//! deletion happen outside it, so readers never wait for the disk behind the writer.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::error::{io, Result, StoreError};
use crate::faults;

/// Bytes before a record's payload.
pub const RECORD_HEADER: u64 = 8;

struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
}

/// How far a log is written (visible to readers) and fsynced (durable).
#[derive(Default)]
struct Marks {
    written: AtomicU64,
    synced: AtomicU64,
    /// Held while fsyncing and while a repair moves the marks back, so waiting callers share
    /// one fsync and a mark never moves past a cut.
    syncing: parking_lot::Mutex<()>,
    /// Why the files cannot be trusted since a failed write or fsync, until a repair.
    failure: parking_lot::Mutex<Option<String>>,
    /// How long the fsyncs that made something durable took.
    fsyncs: crate::fsync_times::FsyncTimes,
}

impl Marks {
    /// Records a failure (the first one's reason is kept until a repair).
    fn fail(&self, e: &StoreError) {
        self.failure.lock().get_or_insert_with(|| e.to_string());
    }

    /// The error an operation refused while the log awaits a repair gets.
    fn refused(&self) -> Option<StoreError> {
        self.failure
            .lock()
            .as_ref()
            .map(|reason| StoreError::Failed {
                reason: format!("awaiting repair after: {reason}"),
            })
    }
}

/// Where a piece of a run of records went in the log (see [`RecordLog::append_runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The run's index.
    pub run: usize,
    /// The piece's first byte in the run.
    pub at: usize,
    /// Its log offset.
    pub offset: u64,
}

/// A segmented record log. Appends need `&mut self`; reads go through a cheap [`LogReader`].
pub struct RecordLog {
    name: &'static str,
    dir: PathBuf,
    segment_size: u64,
    segments: Arc<RwLock<BTreeMap<u64, Segment>>>,
    marks: Arc<Marks>,
    /// Offset where the next record goes.
    end: u64,
    /// Records known to be damaged (skipped on scans).
    skipped: Vec<u64>,
}

/// A read handle on a [`RecordLog`], shareable across threads.
#[derive(Clone)]
pub struct LogReader {
    name: &'static str,
    /// The log's segment size: no record is larger.
    segment_size: u64,
    segments: Arc<RwLock<BTreeMap<u64, Segment>>>,
    marks: Arc<Marks>,
}

impl RecordLog {
    /// The newest segment's base, file and path, copied out so no lock is held while using it.
    fn last_segment(&self) -> Option<(u64, Arc<File>, PathBuf)> {
        self.segments
            .read()
            .values()
            .next_back()
            .map(|s| (s.base, s.file.clone(), s.path.clone()))
    }

    /// Opens (or creates) the log in `dir`, checking every record from `scan_from` to the end:
    /// a torn tail is truncated, damaged records followed by good ones are skipped.
    pub fn open(name: &'static str, dir: &Path, segment_size: u64, scan_from: u64) -> Result<Self> {
        let mut segments = BTreeMap::new();
        for (base, path, file) in open_segment_files(dir)? {
            segments.insert(
                base,
                Segment {
                    base,
                    path,
                    file: Arc::new(file),
                },
            );
        }
        let mut log = Self {
            name,
            dir: dir.to_path_buf(),
            segment_size,
            segments: Arc::new(RwLock::new(segments)),
            marks: Arc::default(),
            end: 0,
            skipped: Vec::new(),
        };
        log.recover(scan_from)?;
        // What recovery kept may sit in the page cache only (a killed process): make it durable
        // so the durable mark starts at the end.
        log.marks.written.store(log.end, Ordering::Release);
        log.sync()?;
        Ok(log)
    }

    fn recover(&mut self, scan_from: u64) -> Result<()> {
        let bases: Vec<u64> = self.segments.read().keys().copied().collect();
        let Some(&last_base) = bases.last() else {
            self.end = 0;
            return Ok(());
        };
        // Scan every segment that holds bytes at or after `scan_from`.
        let first_to_scan = bases
            .iter()
            .rev()
            .find(|&&b| b <= scan_from)
            .copied()
            .unwrap_or(bases[0]);
        let reader = self.reader();
        for &base in bases.iter().filter(|&&b| b >= first_to_scan) {
            let (path, file) = {
                let segs = self.segments.read();
                let s = &segs[&base];
                (s.path.clone(), s.file.clone())
            };
            let len = file.metadata().map_err(io("stat", &path))?.len();
            let end = base + len;
            let mut pos = scan_from.clamp(base, end);
            while pos < end {
                match reader.read(pos) {
                    Ok(payload) => pos += RECORD_HEADER + payload.len() as u64,
                    Err(StoreError::Corrupt { .. }) => match reader.resync(pos)? {
                        Some(next) => {
                            tracing::error!(
                                log = self.name,
                                offset = pos,
                                "skipping a damaged record"
                            );
                            self.skipped.push(pos);
                            pos = next;
                        }
                        None => {
                            tracing::warn!(
                                log = self.name,
                                offset = pos,
                                dropped = end - pos,
                                "truncating a torn tail"
                            );
                            file.set_len(pos - base).map_err(io("truncate", &path))?;
                            faults::check(self.name, "fsync")
                                .and_then(|()| file.sync_all())
                                .map_err(io("fsync", &path))?;
                            break;
                        }
                    },
                    Err(e) => return Err(e),
                }
            }
            if base == last_base {
                self.end = pos;
            }
        }
        Ok(())
    }

    /// A read handle.
    pub fn reader(&self) -> LogReader {
        LogReader {
            name: self.name,
            segment_size: self.segment_size,
            segments: self.segments.clone(),
            marks: self.marks.clone(),
        }
    }

    /// Offset where the next record goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The largest a segment (and so a record) may be.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Offset of the first byte still on disk.
    pub fn start(&self) -> u64 {
        self.segments
            .read()
            .keys()
            .next()
            .copied()
            .unwrap_or(self.end)
    }

    /// Records found damaged on open, skipped.
    pub fn skipped(&self) -> &[u64] {
        &self.skipped
    }

    /// Appends one record, written at once (not yet durable: see [`RecordLog::sync`]), and
    /// returns its offset.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
        frame_with(&mut record, |out| out.extend_from_slice(payload));
        let mut placed = Vec::with_capacity(1);
        self.append_runs(&[(&record, &[record.len()])], &mut placed)?;
        placed
            .pop()
            .map(|p| p.offset)
            .ok_or_else(|| StoreError::Failed {
                reason: "an appended record got no offset".into(),
            })
    }

    /// Appends already framed and checked records (see [`check_records`], which gives
    /// `sizes`) as they are, at the log's end: a replica's copy of another log's bytes. The
    /// records land at the offsets `end()..` in order (offsets are dense whatever the segment
    /// size: a segment starts where the previous one ends). As [`RecordLog::append_runs`]
    /// on failure.
    pub fn append_records(&mut self, bytes: &[u8], sizes: &[usize]) -> Result<()> {
        let mut placed = Vec::new();
        self.append_runs(&[(bytes, sizes)], &mut placed)
    }

    /// Appends framed records (see [`frame_with`]) given as runs of back-to-back records with each
    /// record's size, with one vectored write per segment they go to, and makes them visible
    /// to readers. Pushes to `placed` where each run went: one [`Placed`] per contiguous piece
    /// (a run is split, at a record boundary, only where it crosses into a new segment).
    ///
    /// Repairs the log first if a write or fsync failed before. On failure nothing of the call
    /// is stored ([`StoreError::Failed`], or the cause itself when the records were refused
    /// before any write) unless the cut failed too ([`StoreError::MaybeStored`]).
    pub fn append_runs(
        &mut self,
        runs: &[(&[u8], &[usize])],
        placed: &mut Vec<Placed>,
    ) -> Result<()> {
        if self.marks.failure.lock().is_some() {
            self.repair().map_err(|e| StoreError::Failed {
                reason: format!("the log awaits repair: {e}"),
            })?;
        }
        let start = self.end;
        let placed_before = placed.len();
        let written = self.write_runs(runs, placed);
        if let Err(cause) = written {
            placed.truncate(placed_before);
            if self.end == start && matches!(cause, StoreError::TooLarge { .. }) {
                return Err(cause);
            }
            return Err(self.rewind(start, &cause));
        }
        Ok(())
    }

    /// Cuts the log back to `to` (at most its end) after `cause`, a failed write or fsync of
    /// what follows, and repairs it. Returns the error to answer for what was cut:
    /// [`StoreError::Failed`] (not stored) once the files are cut, else
    /// [`StoreError::MaybeStored`]. If the rest of the repair fails, the log stays failed and
    /// its next write tries again.
    pub fn rewind(&mut self, to: u64, cause: &StoreError) -> StoreError {
        tracing::error!(log = self.name, error = %cause, cut_to = to, "write failed; cutting it");
        self.marks.fail(cause);
        let _marks = self.marks.syncing.lock();
        self.end = self.end.min(to);
        self.marks.written.fetch_min(self.end, Ordering::AcqRel);
        self.marks.synced.fetch_min(self.end, Ordering::AcqRel);
        if let Err(e) = self.cut() {
            tracing::error!(log = self.name, error = %e, "cutting a failed write failed");
            return StoreError::MaybeStored {
                reason: format!("{cause}; cutting it failed: {e}"),
            };
        }
        if let Err(e) = self.restore() {
            tracing::error!(log = self.name, error = %e, "log repair failed; retrying at the next write");
        }
        StoreError::Failed {
            reason: cause.to_string(),
        }
    }

    /// Makes the files match the log after a failed write or fsync (see the module docs):
    /// cuts them back to the log's end, then rewrites and fsyncs every byte after the durable
    /// mark and reads those records back. Clears the failure on success; does nothing if
    /// there is none.
    pub fn repair(&mut self) -> Result<()> {
        if self.marks.failure.lock().is_none() {
            return Ok(());
        }
        let _marks = self.marks.syncing.lock();
        let repaired = self.cut().and_then(|()| self.restore());
        if let Err(e) = &repaired {
            tracing::error!(log = self.name, error = %e, "log repair failed");
        }
        repaired
    }

    /// Deletes the segments at or after the log's end and truncates the last one to it: after
    /// this, nothing past the end is readable, to this process or the next.
    fn cut(&self) -> Result<()> {
        let end = self.end;
        // Out of the map (its lock held only for that), then deleted; a reader holding one
        // of them reads on.
        let doomed = self.segments.write().split_off(&end);
        for s in doomed.values() {
            faults::check(self.name, "delete")
                .and_then(|()| match std::fs::remove_file(&s.path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    r => r,
                })
                .map_err(io("delete", &s.path))?;
        }
        let last = self.last_segment();
        if let Some((base, file, path)) = last {
            if file.metadata().map_err(io("stat", &path))?.len() > end - base {
                file.set_len(end - base).map_err(io("truncate", &path))?;
            }
        }
        Ok(())
    }

    /// After [`RecordLog::cut`]: rewrites what a failed fsync may have lost from the disk
    /// (every byte after the durable mark; the page cache still has them), fsyncs it and the
    /// cut, checks the last segment ends at the log's end and reads the records back. Then
    /// the log is trusted again: its marks move to the end and the failure is cleared.
    fn restore(&self) -> Result<()> {
        let end = self.end;
        sync_dir(&self.dir)?;
        let from = self.marks.synced.load(Ordering::Acquire).min(end);
        let segs: Vec<(u64, Arc<File>, PathBuf)> = self
            .segments
            .read()
            .values()
            .map(|s| (s.base, s.file.clone(), s.path.clone()))
            .collect();
        let count = segs.len();
        for (i, (base, file, path)) in segs.into_iter().enumerate() {
            let last = i + 1 == count;
            let seg_end = if last {
                end
            } else {
                base + file.metadata().map_err(io("stat", &path))?.len()
            };
            if seg_end <= from && !last {
                continue;
            }
            let mut at = from.clamp(base, seg_end) - base;
            let mut buf = vec![0u8; (1 << 20).min(seg_end - base - at) as usize];
            while base + at < seg_end {
                let n = ((seg_end - base - at) as usize).min(buf.len());
                read_exact_at(self.name, &file, &mut buf[..n], at).map_err(io("read", &path))?;
                let mut slices = [IoSlice::new(&buf[..n])];
                write_all_vectored_at(self.name, &file, &path, &mut slices, at)?;
                at += n as u64;
            }
            // The last segment's cut, too, must be durable.
            faults::check(self.name, "fsync")
                .and_then(|()| file.sync_data())
                .map_err(io("fsync", &path))?;
            if last && file.metadata().map_err(io("stat", &path))?.len() != end - base {
                return Err(StoreError::Failed {
                    reason: format!("{} does not end where the log does", path.display()),
                });
            }
        }
        // Read back what was rewritten: every record intact.
        let reader = self.reader();
        let mut pos = from;
        while pos < end {
            let payload = match reader.read(pos) {
                Err(StoreError::Corrupt { .. }) => match reader.next_segment_after(pos) {
                    Some(next) => {
                        pos = next;
                        continue;
                    }
                    None => {
                        return Err(StoreError::Corrupt {
                            log: self.name,
                            offset: pos,
                        })
                    }
                },
                r => r?,
            };
            pos += RECORD_HEADER + payload.len() as u64;
        }
        self.marks.written.store(end, Ordering::Release);
        self.marks.synced.store(end, Ordering::Release);
        if let Some(reason) = self.marks.failure.lock().take() {
            tracing::warn!(log = self.name, end, after = %reason, "log repaired; writes resume");
        }
        Ok(())
    }

    /// Why the log awaits a repair, if it does.
    pub fn failure(&self) -> Option<String> {
        self.marks.failure.lock().clone()
    }

    fn write_runs(&mut self, runs: &[(&[u8], &[usize])], placed: &mut Vec<Placed>) -> Result<()> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(runs.len());
        // The segment being filled, and the log offset where `slices` start.
        let mut segment: Option<(u64, Arc<File>, PathBuf)> = None;
        let mut slices_at = self.end;
        for (run, &(bytes, sizes)) in runs.iter().enumerate() {
            if segment.is_none() {
                segment = Some(self.segment_for(0)?);
                slices_at = self.end;
            }
            let len = bytes.len() as u64;
            // Usually the whole run fits: no need to look at its records.
            if segment
                .as_ref()
                .is_some_and(|(base, _, _)| self.end + len <= base + self.segment_size)
            {
                placed.push(Placed {
                    run,
                    at: 0,
                    offset: self.end,
                });
                slices.push(IoSlice::new(bytes));
                self.end += len;
                continue;
            }
            let (mut from, mut at) = (0, 0);
            for &size in sizes {
                let size64 = size as u64;
                if size64 > self.segment_size {
                    return Err(StoreError::TooLarge {
                        size,
                        segment: self.segment_size,
                    });
                }
                let fits = segment
                    .as_ref()
                    .is_some_and(|(base, _, _)| self.end + size64 <= base + self.segment_size);
                if !fits {
                    if at > from {
                        slices.push(IoSlice::new(&bytes[from..at]));
                    }
                    from = at;
                    if let Some((base, file, path)) = &segment {
                        write_all_vectored_at(
                            self.name,
                            file,
                            path,
                            &mut slices,
                            slices_at - base,
                        )?;
                        self.marks.written.store(self.end, Ordering::Release);
                    }
                    slices.clear();
                    segment = Some(self.segment_for(size64)?);
                    slices_at = self.end;
                }
                if at == from {
                    placed.push(Placed {
                        run,
                        at,
                        offset: self.end,
                    });
                }
                self.end += size64;
                at += size;
            }
            if at > from {
                slices.push(IoSlice::new(&bytes[from..at]));
            }
        }
        if let Some((base, file, path)) = &segment {
            write_all_vectored_at(self.name, file, path, &mut slices, slices_at - base)?;
            self.marks.written.store(self.end, Ordering::Release);
        }
        Ok(())
    }

    /// The segment the next `size` bytes go to, rolling to a new one when they do not fit.
    /// The map's lock is held only to look up and to insert: readers never wait for the
    /// fsync or the file creation.
    fn segment_for(&mut self, size: u64) -> Result<(u64, Arc<File>, PathBuf)> {
        let last = self.last_segment();
        if let Some((base, file, path)) = last {
            if self.end + size <= base + self.segment_size {
                return Ok((base, file, path));
            }
            // The full segment is done: make it durable before moving on.
            faults::check(self.name, "fsync")
                .and_then(|()| file.sync_data())
                .map_err(io("fsync", &path))?;
        }
        let base = self.end;
        let path = self.dir.join(format!("{base:020}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("create", &path))?;
        preallocate(&file, &path, self.segment_size);
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        self.segments.write().insert(
            base,
            Segment {
                base,
                path: path.clone(),
                file: file.clone(),
            },
        );
        Ok((base, file, path))
    }

    /// Makes every appended record durable (fdatasync of the active segment).
    pub fn sync(&self) -> Result<()> {
        self.reader().sync()
    }

    /// Deletes whole segments that end at or before `offset` and were last written before
    /// `older_than` (the active segment is never deleted). Returns how many were deleted.
    pub fn delete_before(
        &mut self,
        offset: u64,
        older_than: std::time::SystemTime,
    ) -> Result<usize> {
        // The map's lock is held only to copy it and to take each segment out: stat and
        // unlink happen outside it (a reader still holding a segment's file reads on).
        let segs: Vec<(u64, Arc<File>, PathBuf)> = self
            .segments
            .read()
            .values()
            .map(|s| (s.base, s.file.clone(), s.path.clone()))
            .collect();
        let mut deleted = 0;
        for pair in segs.windows(2) {
            let ((base, file, path), next) = (&pair[0], pair[1].0);
            if next > offset {
                break;
            }
            let modified = file
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io("stat", path))?;
            if modified > older_than {
                break;
            }
            self.segments.write().remove(base);
            faults::check(self.name, "delete")
                .and_then(|()| std::fs::remove_file(path))
                .map_err(io("delete", path))?;
            tracing::info!(log = self.name, segment = base, "deleted by retention");
            deleted += 1;
        }
        Ok(deleted)
    }
}

impl LogReader {
    /// A read error at `offset`: running into the file's end means the record was cut short
    /// (damage, as a CRC mismatch); anything else is an I/O error, never damage.
    fn read_error(&self, offset: u64, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return StoreError::Corrupt {
                log: self.name,
                offset,
            };
        }
        let path = self
            .segments
            .read()
            .range(..=offset)
            .next_back()
            .map(|(_, s)| s.path.clone())
            .unwrap_or_default();
        StoreError::Io {
            op: "read",
            path,
            source: e,
        }
    }

    /// Offset up to which records are written (readable).
    pub fn written(&self) -> u64 {
        self.marks.written.load(Ordering::Acquire)
    }

    /// Whether the log awaits a repair after a failed write or fsync.
    pub fn failed(&self) -> bool {
        self.marks.failure.lock().is_some()
    }

    fn locate(&self, offset: u64) -> Result<(u64, Arc<File>)> {
        let segs = self.segments.read();
        let (_, s) = segs
            .range(..=offset)
            .next_back()
            .ok_or(StoreError::OutOfRange {
                what: "log offset",
                value: offset,
            })?;
        Ok((s.base, s.file.clone()))
    }

    /// Makes every record written so far durable (fdatasync of the active segment; full
    /// segments were made durable when the log moved past them); usable without the writer's
    /// lock.
    ///
    /// A failed fsync leaves the log awaiting a repair (see the module docs): until then this
    /// fails with [`StoreError::Failed`].
    pub fn sync(&self) -> Result<()> {
        let _one_at_a_time = self.marks.syncing.lock();
        self.sync_locked()
    }

    /// [`LogReader::sync`] with `marks.syncing` held.
    fn sync_locked(&self) -> Result<()> {
        if let Some(e) = self.marks.refused() {
            return Err(e);
        }
        let target = self.marks.written.load(Ordering::Acquire);
        if self.marks.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let file = {
            let segs = self.segments.read();
            segs.values()
                .next_back()
                .map(|s| (s.file.clone(), s.path.clone()))
        };
        if let Some((file, path)) = file {
            let started = std::time::Instant::now();
            let synced = faults::check(self.name, "fsync")
                .and_then(|()| file.sync_data())
                .map_err(io("fsync", &path));
            if let Err(e) = synced {
                self.marks.fail(&e);
                return Err(e);
            }
            self.marks.fsyncs.record(started.elapsed());
        }
        self.marks.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// How long this log's fsyncs have taken since it was opened.
    pub fn fsync_times(&self) -> crate::FsyncSnapshot {
        self.marks.fsyncs.snapshot()
    }

    /// Makes the log durable at least up to `end`; callers arriving while another one fsyncs
    /// wait for it and usually find their records already durable (group commit).
    pub fn sync_to(&self, end: u64) -> Result<()> {
        if self.durable() >= end {
            return Ok(());
        }
        let _one_at_a_time = self.marks.syncing.lock();
        if self.durable() >= end {
            return Ok(());
        }
        self.sync_locked()
    }

    /// Offset of the first byte still on disk (0 for an empty log).
    pub fn start(&self) -> u64 {
        self.segments.read().keys().next().copied().unwrap_or(0)
    }

    /// The segments' bases (the offsets of their first records), oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.read().keys().copied().collect()
    }

    /// Offset below which every record is durable (fsynced).
    pub fn durable(&self) -> u64 {
        self.marks.synced.load(Ordering::Acquire)
    }

    /// The offset of the first intact record after a damaged one at `offset` in the same
    /// segment: the first position whose length fits and whose CRC matches (`None`: none).
    /// Only runs when damage is found, and reads the rest of one segment at most. A read
    /// error is an error, not the end of the good records.
    pub fn resync(&self, offset: u64) -> Result<Option<u64>> {
        let Ok((base, file)) = self.locate(offset) else {
            return Ok(None);
        };
        let file_len = file
            .metadata()
            .map_err(|e| self.read_error(offset, e))?
            .len();
        let start = offset - base + 1;
        if start >= file_len {
            return Ok(None);
        }
        let mut buf = vec![0u8; (file_len - start) as usize];
        match read_exact_at(self.name, &file, &mut buf, start) {
            Ok(()) => {}
            // Cut short meanwhile: what was there is all there is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(self.read_error(offset, e)),
        }
        let head = RECORD_HEADER as usize;
        Ok((0..buf.len().saturating_sub(head)).find_map(|i| {
            let len = u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
            let crc = u32::from_be_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]);
            let body = buf.get(i + head..i + head + len)?;
            // Payloads are never empty, so runs of zero bytes do not look like records.
            (len > 0 && crc32c::crc32c(body) == crc).then_some(base + start + i as u64)
        }))
    }

    /// Whole records from `from` (raised to the log's first stored offset; the returned
    /// offset says where the bytes start) for a replica: never past the end of the segment
    /// holding that offset nor past `limit`, at most `max_bytes` but always the first whole
    /// record when one is there. Every record is checked (length and CRC): a damaged one is
    /// [`StoreError::Corrupt`], never shipped. Nothing there: no bytes.
    pub fn read_chunk(&self, from: u64, limit: u64, max_bytes: usize) -> Result<(u64, Vec<u8>)> {
        let located = {
            let segs = self.segments.read();
            let first = segs.keys().next().copied();
            let from = first.map_or(from, |f| from.max(f));
            let here = segs
                .range(..=from)
                .next_back()
                .map(|(_, s)| (s.base, s.file.clone()));
            let next = segs.range(from + 1..).next().map(|(&b, _)| b);
            (from, here, next)
        };
        let (from, Some((base, file)), next) = located else {
            return Ok((located.0, Vec::new()));
        };
        let stop = limit.min(next.unwrap_or(u64::MAX));
        if from >= stop {
            return Ok((from, Vec::new()));
        }
        let room = stop - from;
        let head = RECORD_HEADER as usize;
        let want = (max_bytes.max(head) as u64).min(room) as usize;
        let mut buf = vec![0u8; want];
        read_exact_at(self.name, &file, &mut buf, from - base)
            .map_err(|e| self.read_error(from, e))?;
        let corrupt = |offset: u64| StoreError::Corrupt {
            log: self.name,
            offset,
        };
        // Whole records in what was read.
        let mut pos = 0usize;
        while pos + head <= buf.len() {
            let len = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
            let size = head as u64 + u64::from(len);
            if len == 0 || size > self.segment_size || size > room - pos as u64 {
                return Err(corrupt(from + pos as u64));
            }
            if pos + size as usize > buf.len() {
                break;
            }
            pos += size as usize;
        }
        if pos == 0 {
            // The first record is larger than `max_bytes`: it alone.
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let size = head as u64 + u64::from(len);
            if len == 0 || size > self.segment_size || size > room {
                return Err(corrupt(from));
            }
            buf = vec![0u8; size as usize];
            read_exact_at(self.name, &file, &mut buf, from - base)
                .map_err(|e| self.read_error(from, e))?;
            pos = buf.len();
        }
        buf.truncate(pos);
        if let Err((at, _)) = check_records(&buf, self.segment_size) {
            return Err(corrupt(from + at as u64));
        }
        Ok((from, buf))
    }

    /// Reads and checks the record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        let (base, file) = self.locate(offset)?;
        let corrupt = || StoreError::Corrupt {
            log: self.name,
            offset,
        };
        let mut head = [0u8; RECORD_HEADER as usize];
        read_exact_at(self.name, &file, &mut head, offset - base)
            .map_err(|e| self.read_error(offset, e))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // A damaged length must not make us allocate more than a record can be.
        if RECORD_HEADER + u64::from(len) > self.segment_size {
            return Err(corrupt());
        }
        let mut payload = vec![0u8; len as usize];
        read_exact_at(
            self.name,
            &file,
            &mut payload,
            offset - base + RECORD_HEADER,
        )
        .map_err(|e| self.read_error(offset, e))?;
        if crc32c::crc32c(&payload) != crc {
            return Err(corrupt());
        }
        Ok(payload)
    }

    /// Reads and checks the record at `offset` whose payload is `len` bytes long (as an index
    /// entry says) with one read call, and returns its payload (no copy). A record of another
    /// length is damaged.
    pub fn read_sized(&self, offset: u64, len: u32) -> Result<Bytes> {
        let (base, file) = self.locate(offset)?;
        let corrupt = StoreError::Corrupt {
            log: self.name,
            offset,
        };
        let head = RECORD_HEADER as usize;
        if (head as u64) + u64::from(len) > self.segment_size {
            return Err(corrupt);
        }
        let mut record = vec![0u8; head + len as usize];
        read_exact_at(self.name, &file, &mut record, offset - base)
            .map_err(|e| self.read_error(offset, e))?;
        let crc = u32::from_be_bytes([record[4], record[5], record[6], record[7]]);
        if record[..4] != len.to_be_bytes() || crc32c::crc32c(&record[head..]) != crc {
            return Err(corrupt);
        }
        Ok(Bytes::from(record).slice(head..))
    }

    /// Reads records from `offset` until `end`, calling `visit(offset, payload)` for each;
    /// damaged records listed in `skipped` are passed over.
    pub fn scan(
        &self,
        mut offset: u64,
        end: u64,
        skipped: &[u64],
        mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        while offset < end {
            match self.read(offset) {
                Ok(payload) => {
                    visit(offset, &payload)?;
                    offset += RECORD_HEADER + payload.len() as u64;
                }
                Err(StoreError::Corrupt { .. }) => {
                    if let Some(next) = self.next_segment_after(offset) {
                        // The end of a segment that was cut short: go on with the next one.
                        offset = next;
                    } else if let Some(next) = self.resync(offset)? {
                        if !skipped.contains(&offset) {
                            tracing::error!(log = self.name, offset, "skipping a damaged record");
                        }
                        offset = next;
                    } else if let Some(next) = self.segments.read().range(offset + 1..).next() {
                        tracing::error!(
                            log = self.name,
                            offset,
                            "skipping the damaged rest of a segment"
                        );
                        offset = *next.0;
                    } else {
                        return Err(StoreError::Corrupt {
                            log: self.name,
                            offset,
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The base of the segment after the one holding `offset`, if `offset` is that segment's
    /// end (records never span segments).
    fn next_segment_after(&self, offset: u64) -> Option<u64> {
        let segs = self.segments.read();
        let (_, s) = segs.range(..=offset).next_back()?;
        let len = s.file.metadata().ok()?.len();
        if offset != s.base + len {
            return None;
        }
        segs.range(offset + 1..).next().map(|(&b, _)| b)
    }
}

/// Checks that `bytes` are whole, intact records (as a slave must before appending what a
/// master shipped): every record's header is complete, its payload non-empty and complete,
/// its CRC matches, and the record fits in a segment of `segment_size` bytes. Returns each
/// record's size, or the byte position in `bytes` of the first bad record and why.
pub fn check_records(
    bytes: &[u8],
    segment_size: u64,
) -> std::result::Result<Vec<usize>, (usize, String)> {
    let head = RECORD_HEADER as usize;
    let mut sizes = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(h) = bytes.get(pos..pos + head) else {
            return Err((pos, "a record header is cut short".into()));
        };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 {
            return Err((pos, "a record with an empty payload".into()));
        }
        if (head + len) as u64 > segment_size {
            return Err((
                pos,
                format!(
                    "a record of {} bytes exceeds the segment size {segment_size}",
                    head + len
                ),
            ));
        }
        let Some(payload) = bytes.get(pos + head..pos + head + len) else {
            return Err((pos, "a record is cut short".into()));
        };
        if crc32c::crc32c(payload) != crc {
            return Err((pos, "CRC mismatch".into()));
        }
        sizes.push(head + len);
        pos += head + len;
    }
    Ok(sizes)
}

/// Creates `dir` if needed and opens (read-write) every segment file in it: files named by
/// the 20-digit offset of their first byte or entry. Returns (base, path, file) in any order.
pub(crate) fn open_segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf, File)>> {
    std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let path = entry.map_err(io("list", dir))?.path();
        let Some(base) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        out.push((base, path, file));
    }
    Ok(out)
}

/// fsyncs a directory so a created or renamed file survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync dir", dir))
}

/// Frames a record whose payload `write` appends to `out`: the header's place is kept, then
/// filled in with the payload's length and CRC (one pass over contiguous bytes). Pure, so
/// callers can frame on their own threads and hand over finished records.
pub fn frame_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER as usize]);
    write(out);
    let body = at + RECORD_HEADER as usize;
    let len = (out.len() - body) as u32;
    let crc = crc32c::crc32c(&out[body..]);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 4..body].copy_from_slice(&crc.to_be_bytes());
}

/// Reserves a new segment's blocks without changing its length (`FALLOC_FL_KEEP_SIZE`):
/// appends then skip the file system's per-page block reservation (about a tenth of a write's
/// cost here), and the file still ends where its data ends, so recovery reads it as before.
/// Best effort: without support or space the segment just grows as it is written.
fn preallocate(file: &File, path: &Path, size: u64) {
    if let Err(e) = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size) {
        tracing::debug!(path = %path.display(), error = %e, "segment not preallocated");
    }
}

/// Most buffers one `pwritev` call takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Reads exactly `buf.len()` bytes of `file` at `at` (`log` names the failpoint).
fn read_exact_at(log: &str, file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    faults::check(log, "read")?;
    file.read_exact_at(buf, at)
}

/// Writes all of `slices` at file position `at`, however the kernel splits the writes.
fn write_all_vectored_at(
    log: &str,
    file: &File,
    path: &Path,
    mut slices: &mut [IoSlice<'_>],
    mut at: u64,
) -> Result<()> {
    let fail = |source: std::io::Error| StoreError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    };
    faults::check(log, "write").map_err(fail)?;
    while !slices.is_empty() {
        let n = match rustix::io::pwritev(file, &slices[..slices.len().min(IOV_MAX)], at) {
            Ok(0) => return Err(fail(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(fail(e.into())),
        };
        at += n as u64;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `records` in runs of `per_run` with one `append_runs`; returns how many pieces
    /// the runs were placed in and every record's offset, worked out from the pieces.
    fn append_in_runs(
        log: &mut RecordLog,
        records: &[Vec<u8>],
        per_run: usize,
    ) -> (usize, Vec<u64>) {
        let runs: Vec<(Vec<u8>, Vec<usize>)> = records
            .chunks(per_run)
            .map(|c| (c.concat(), c.iter().map(Vec::len).collect()))
            .collect();
        let borrowed: Vec<(&[u8], &[usize])> = runs.iter().map(|(b, s)| (&b[..], &s[..])).collect();
        let mut placed = Vec::new();
        log.append_runs(&borrowed, &mut placed).unwrap();
        let mut offsets = Vec::new();
        for (r, (_, sizes)) in runs.iter().enumerate() {
            let mut at = 0;
            for size in sizes {
                let piece = placed
                    .iter()
                    .rfind(|p| p.run == r && p.at <= at)
                    .expect("every record is placed");
                offsets.push(piece.offset + (at - piece.at) as u64);
                at += size;
            }
        }
        (placed.len(), offsets)
    }

    fn framed(count: u8) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut r = Vec::new();
                frame_with(&mut r, |out| {
                    out.extend_from_slice(&vec![i; 1 + usize::from(i) % 30])
                });
                r
            })
            .collect()
    }

    #[test]
    fn runs_that_fit_are_placed_whole_and_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RecordLog::open("test", dir.path(), 10_000, 0).unwrap();
        let records = framed(40);
        let (pieces, offsets) = append_in_runs(&mut log, &records, 7);
        assert_eq!(pieces, 40usize.div_ceil(7), "one piece per run");
        let reader = log.reader();
        let mut expected = 0;
        for (i, at) in offsets.into_iter().enumerate() {
            assert_eq!(at, expected, "record {i}");
            assert_eq!(reader.read(at).unwrap(), vec![i as u8; 1 + i % 30]);
            expected += records[i].len() as u64;
        }
        assert_eq!(log.end(), expected);
    }

    #[test]
    fn runs_split_at_record_boundaries_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RecordLog::open("test", dir.path(), 100, 0).unwrap();
        let records = framed(40);
        let (_, offsets) = append_in_runs(&mut log, &records, 7);
        assert_eq!(offsets.len(), records.len());
        let mut bases: Vec<u64> = open_segment_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(b, _, _)| b)
            .collect();
        bases.sort_unstable();
        assert!(bases.len() > 3, "the test must span segments");
        let reader = log.reader();
        for (i, &at) in offsets.iter().enumerate() {
            let payload = reader.read(at).unwrap();
            assert_eq!(payload, vec![i as u8; 1 + i % 30], "record {i}");
            // A record never spans segments.
            let end = at + RECORD_HEADER + payload.len() as u64;
            let base = bases.iter().rev().find(|&&b| b <= at).unwrap();
            let next = bases.iter().find(|&&b| b > at).copied().unwrap_or(u64::MAX);
            assert!(
                end <= base + 100 && end <= next,
                "record {i} spans segments"
            );
        }
        // Every segment file ends where its data ends (preallocation keeps the size), so a
        // reopen finds the same end.
        let end = log.end();
        drop(log);
        let log = RecordLog::open("test", dir.path(), 100, 0).unwrap();
        assert_eq!(log.end(), end);
        assert!(log.skipped().is_empty());
    }
}
