//! A segmented, append-only record log: the shape of both the message log and the action log.
//!
//! Records are `u32 length | u32 CRC32C(payload) | payload`. Offsets are logical byte positions
//! across the whole log; a segment file is named by the offset of its first byte (20 digits) and
//! holds at most `segment_size` bytes. A record never spans two segments: when it does not fit,
//! the next segment starts where the current one ends.
//!
//! Reads use `pread` on the segment files (no mmap): memory use does not grow with the log, and
//! the page cache does the caching. On open the tail is scanned from a given offset: a torn tail
//! (a partial or garbled last record) is truncated; a damaged record followed by good ones is
//! skipped with an error log, so one flipped byte never costs the records after it.

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
    /// Held while fsyncing for [`LogReader::sync_to`], so waiting callers share one fsync.
    syncing: parking_lot::Mutex<()>,
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
                    Err(StoreError::Corrupt { .. }) => match reader.resync(pos) {
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
                            file.sync_all().map_err(io("fsync", &path))?;
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

    /// Appends framed records (see [`frame_with`]) given as runs of back-to-back records with each
    /// record's size, with one vectored write per segment they go to, and makes them visible
    /// to readers. Pushes to `placed` where each run went: one [`Placed`] per contiguous piece
    /// (a run is split, at a record boundary, only where it crosses into a new segment).
    pub fn append_runs(
        &mut self,
        runs: &[(&[u8], &[usize])],
        placed: &mut Vec<Placed>,
    ) -> Result<()> {
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
                        write_all_vectored_at(file, path, &mut slices, slices_at - base)?;
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
            write_all_vectored_at(file, path, &mut slices, slices_at - base)?;
            self.marks.written.store(self.end, Ordering::Release);
        }
        Ok(())
    }

    /// The segment the next `size` bytes go to, rolling to a new one when they do not fit.
    fn segment_for(&mut self, size: u64) -> Result<(u64, Arc<File>, PathBuf)> {
        let mut segs = self.segments.write();
        if let Some((&base, s)) = segs.iter().next_back() {
            if self.end + size <= base + self.segment_size {
                return Ok((base, s.file.clone(), s.path.clone()));
            }
            // The full segment is done: make it durable before moving on.
            s.file.sync_data().map_err(io("fsync", &s.path))?;
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
        segs.insert(
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
        let mut segs = self.segments.write();
        let bases: Vec<u64> = segs.keys().copied().collect();
        let mut deleted = 0;
        for pair in bases.windows(2) {
            let (base, next) = (pair[0], pair[1]);
            if next > offset {
                break;
            }
            let s = &segs[&base];
            let modified = s
                .file
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io("stat", &s.path))?;
            if modified > older_than {
                break;
            }
            std::fs::remove_file(&s.path).map_err(io("delete", &s.path))?;
            tracing::info!(log = self.name, segment = base, "deleted by retention");
            segs.remove(&base);
            deleted += 1;
        }
        Ok(deleted)
    }
}

impl LogReader {
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
    pub fn sync(&self) -> Result<()> {
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
            file.sync_data().map_err(io("fsync", &path))?;
        }
        self.marks.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
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
        self.sync()
    }

    /// Offset of the first byte still on disk (0 for an empty log).
    pub fn start(&self) -> u64 {
        self.segments.read().keys().next().copied().unwrap_or(0)
    }

    /// Offset below which every record is durable (fsynced).
    pub fn durable(&self) -> u64 {
        self.marks.synced.load(Ordering::Acquire)
    }

    /// The offset of the first intact record after a damaged one at `offset` in the same
    /// segment: the first position whose length fits and whose CRC matches. Only runs when
    /// damage is found, and reads the rest of one segment at most.
    pub fn resync(&self, offset: u64) -> Option<u64> {
        let (base, file) = self.locate(offset).ok()?;
        let file_len = file.metadata().ok()?.len();
        let start = offset - base + 1;
        if start >= file_len {
            return None;
        }
        let mut buf = vec![0u8; (file_len - start) as usize];
        file.read_exact_at(&mut buf, start).ok()?;
        let head = RECORD_HEADER as usize;
        (0..buf.len().saturating_sub(head)).find_map(|i| {
            let len = u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
            let crc = u32::from_be_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]);
            let body = buf.get(i + head..i + head + len)?;
            // Payloads are never empty, so runs of zero bytes do not look like records.
            (len > 0 && crc32c::crc32c(body) == crc).then_some(base + start + i as u64)
        })
    }

    /// Reads and checks the record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        let (base, file) = self.locate(offset)?;
        let corrupt = || StoreError::Corrupt {
            log: self.name,
            offset,
        };
        let mut head = [0u8; RECORD_HEADER as usize];
        file.read_exact_at(&mut head, offset - base)
            .map_err(|_| corrupt())?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // A damaged length must not make us allocate more than a record can be.
        if RECORD_HEADER + u64::from(len) > self.segment_size {
            return Err(corrupt());
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, offset - base + RECORD_HEADER)
            .map_err(|_| corrupt())?;
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
        if file.read_exact_at(&mut record, offset - base).is_err() {
            return Err(corrupt);
        }
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
                    } else if let Some(next) = self.resync(offset) {
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

/// Writes all of `slices` at file position `at`, however the kernel splits the writes.
fn write_all_vectored_at(
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
