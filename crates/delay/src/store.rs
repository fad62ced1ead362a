//! The schedule logs (one file per time bucket), their dispatch logs, the wheel, and recovery.
//!
//! `schedule_log/<bucket start ms>.sched`: framed records (see [`crate::record`]) of every
//! message due in `[start, start + scale)`, in message-log order. `dispatch_log/<bucket start
//! ms>.disp`: fixed 12-byte records `u64 schedule-log offset | u32 CRC-32C of those 8 bytes`,
//! one per message the dispatcher accepted.
//!
//! All of it sits behind one mutex held only for short, non-blocking-on-the-network work; the
//! engine calls the methods that touch the disk from its writer thread or `spawn_blocking`.
//! Loading a bucket (reading its dispatch log and schedule log) runs outside the lock.
//!
//! Restart cost: a schedule log is read at open only past the length the checkpoint counts as
//! durable (the part a crash may have torn); the durable part is CRC-checked when the bucket is
//! loaded, every record of it before any of its entries reaches the wheel. A bucket whose
//! records the checkpoint counts all dispatched is settled: neither of its logs is read again.
//!
//! Durability: a flush fsyncs the very handles that wrote since the last flush (an error a
//! failed writeback left on one handle is not reported to another one opened later), then
//! the directories in which logs were created, before a checkpoint counts any of it durable.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, DurableBucket};
use crate::error::DelayError;
use crate::fsutil::{cut_tail, ensure_dir, numbered_files, sync_dir};
use crate::record::{put_frame, Damage, FrameReader, FRAME_HEADER};
use crate::wheel::{TimingWheel, WheelEntry};

const SCHED: &str = ".sched";
const DISP: &str = ".disp";
const DISPATCH_RECORD: usize = 12;
/// Open schedule-log handles kept for buckets not in the wheel.
const MAX_IDLE_HANDLES: usize = 256;

/// State of one bucket.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Bytes of valid records.
    pub len: u64,
    /// Records.
    pub records: u64,
    /// Message-log offset of the last record.
    pub last_wal: Option<u64>,
    /// Distinct records the dispatcher accepted: exact once the bucket is loaded (or settled);
    /// before that, what the checkpoint knew (a lower bound).
    pub dispatched: u64,
    /// Whether the bucket's records are in the wheel (new ones go straight in).
    pub loaded: bool,
    /// Entries of this bucket in the wheel or being dispatched.
    pub pending: u64,
    /// Of `dispatched`, those whose dispatch record could not be written (the append failed):
    /// a checkpoint does not count them, so a restart loads the bucket and offers them again.
    unrecorded: u64,
    /// Schedule-log handles that wrote since the last flush.
    unsynced: Vec<Arc<File>>,
    /// Dispatch-log handles that wrote since the last flush.
    dispatch_unsynced: Vec<Arc<File>>,
}

/// Adds `file` to `list` unless that very handle is there already.
fn note_writer(list: &mut Vec<Arc<File>>, file: &Arc<File>) {
    if !list.iter().any(|f| Arc::ptr_eq(f, file)) {
        list.push(file.clone());
    }
}

/// A record to add to a schedule log.
pub struct NewRecord<'a> {
    /// Message-log offset of its source record.
    pub wal_offset: u64,
    /// The message-log payload.
    pub payload: &'a [u8],
    /// Due time.
    pub due_ms: i64,
}

/// Work to load one bucket into the wheel, done outside the lock.
pub struct LoadJob {
    bucket_start: i64,
    file: Arc<File>,
    /// The schedule log (for a repair) and the dispatch log.
    sched_path: PathBuf,
    disp_path: PathBuf,
    /// Bytes of the schedule log to load: `[0, len)`.
    len: u64,
    /// Records in those bytes.
    records: u64,
    /// Message-log offset of the last record in those bytes.
    last_wal: Option<u64>,
    /// The bucket's dispatched count when its load began (see [`Store::count_load`]).
    base: u64,
}

/// What a [`LoadJob`] read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Entries not recorded as dispatched, in schedule-log order.
    pub entries: Vec<WheelEntry>,
    /// Distinct records of `[0, len)` the dispatch log records as dispatched.
    pub dispatched: u64,
    /// Damaged dispatch records (their messages are offered again) and intact schedule records
    /// of an unknown layout (never dispatched).
    pub damaged: u64,
    /// Where the schedule log is damaged, if it is: nothing from there to `len` was read.
    pub damage: Option<LoadDamage>,
}

/// A damaged schedule-log record met by a [`LoadJob`].
#[derive(Debug, Clone)]
pub struct LoadDamage {
    /// Offset of the damaged record.
    pub at: u64,
    /// Message-log offset of the record after the last intact one (None: none was intact, the
    /// bucket's records may start anywhere in the message log).
    pub resume_wal: Option<u64>,
    /// Records of `[0, len)` not read (the damaged one and every later one).
    pub unread: u64,
    /// What is wrong with it.
    pub damage: Damage,
}

/// The part of a bucket a failed load must read again.
#[derive(Debug, Clone, Copy)]
struct LoadPart {
    len: u64,
    records: u64,
    last_wal: Option<u64>,
    base: u64,
}

/// Everything a flush must fsync and persist, taken under the lock and run outside it.
pub struct FlushPlan {
    /// (bucket start, is a dispatch log, path, the handles that wrote).
    files: Vec<(i64, bool, PathBuf, Vec<Arc<File>>)>,
    /// Directories in which logs were created since the last flush.
    dirs: Vec<PathBuf>,
    checkpoint: Checkpoint,
}

/// Schedule and dispatch logs to delete (retention), outside the lock.
pub struct DoomedFiles {
    paths: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// Schedule logs, dispatch logs and the wheel.
pub struct Store {
    root: PathBuf,
    sched_dir: PathBuf,
    disp_dir: PathBuf,
    scale_ms: i64,
    max_payload: usize,
    /// Buckets by start ms.
    pub buckets: BTreeMap<i64, Bucket>,
    handles: HashMap<i64, Arc<File>>,
    dispatch_handles: HashMap<i64, Arc<File>>,
    /// A schedule log was created since the last flush.
    sched_dir_dirty: bool,
    /// A dispatch log was created since the last flush.
    disp_dir_dirty: bool,
    /// Loaded buckets whose load failed: start -> the part to load again.
    reload: BTreeMap<i64, LoadPart>,
    /// The timing wheel.
    pub wheel: TimingWheel,
    /// Message-log offset up to which every record is in a schedule log.
    pub applied_wal: u64,
    /// Set when a schedule-log append failed: the checkpoint stops at this message-log offset so
    /// a restart replays the lost records.
    pub poisoned_at: Option<u64>,
    /// Buckets deleted by retention: start -> last message-log offset they held. Replays skip
    /// those records.
    pub cleaned: BTreeMap<i64, u64>,
    /// Records found damaged while loading or dispatching.
    pub damaged: u64,
    /// Damaged schedule records rebuilt from the message log by a load.
    pub repaired: u64,
}

fn sched_path(dir: &Path, start: i64) -> PathBuf {
    dir.join(format!("{start}{SCHED}"))
}

fn disp_path(dir: &Path, start: i64) -> PathBuf {
    dir.join(format!("{start}{DISP}"))
}

/// Reads a file by position without moving a shared cursor.
struct AtReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Outcome of scanning one schedule log at open.
struct Scanned {
    bucket: Bucket,
    /// Records the checkpoint counted as durable were missing or damaged.
    lost_durable: bool,
}

impl Store {
    /// Opens the schedule and dispatch logs under `root`, trusting what `cp` says is durable
    /// and checking the rest. Returns the store and whether durable schedule-log data was found
    /// missing (the caller then replays the whole message log).
    pub fn open(
        root: &Path,
        scale_ms: i64,
        tick_ms: i64,
        max_payload: usize,
        cp: &Checkpoint,
    ) -> Result<(Self, bool), DelayError> {
        let sched_dir = root.join("schedule_log");
        let disp_dir = root.join("dispatch_log");
        ensure_dir(&sched_dir)?;
        ensure_dir(&disp_dir)?;
        let mut store = Self {
            root: root.to_owned(),
            sched_dir,
            disp_dir,
            scale_ms,
            max_payload: max_payload + 64 * 1024,
            buckets: BTreeMap::new(),
            handles: HashMap::new(),
            dispatch_handles: HashMap::new(),
            sched_dir_dirty: false,
            disp_dir_dirty: false,
            reload: BTreeMap::new(),
            wheel: TimingWheel::new(tick_ms),
            applied_wal: cp.wal_offset,
            poisoned_at: None,
            cleaned: cp.cleaned.clone(),
            damaged: 0,
            repaired: 0,
        };
        let mut rewind = false;
        let files = numbered_files(&store.sched_dir, SCHED)?;
        for (start, path) in &files {
            let scanned = store.scan_schedule(path, cp.buckets.get(start))?;
            rewind |= scanned.lost_durable;
            store.buckets.insert(*start, scanned.bucket);
        }
        for start in cp.buckets.keys() {
            if !store.buckets.contains_key(start) {
                tracing::error!(bucket = start, "schedule log in the checkpoint is missing");
                rewind = true;
            }
        }
        store.check_dispatch_logs()?;
        Ok((store, rewind))
    }

    /// Deletes the dispatch logs of buckets retention deleted, warns about ones without a
    /// schedule log, and cuts torn tails (a partial record a crash left) so later appends
    /// start on a record boundary. Reads no record: each log is read when its bucket loads.
    fn check_dispatch_logs(&mut self) -> Result<(), DelayError> {
        for (start, path) in numbered_files(&self.disp_dir, DISP)? {
            if !self.buckets.contains_key(&start) {
                if self.cleaned.contains_key(&start) {
                    std::fs::remove_file(&path).map_err(|e| DelayError::io("delete", &path, e))?;
                } else {
                    tracing::warn!(file = %path.display(), "dispatch log without a schedule log");
                }
                continue;
            }
            let len = std::fs::metadata(&path)
                .map_err(|e| DelayError::io("stat", &path, e))?
                .len();
            let whole = len - len % DISPATCH_RECORD as u64;
            if whole < len {
                let mut file = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .open(&path)
                    .map_err(|e| DelayError::io("open dispatch log", &path, e))?;
                cut_tail(&mut file, &path, whole)?;
            }
        }
        Ok(())
    }

    /// After the message-log replay: takes what the checkpoint `cp` knew dispatched. A bucket
    /// whose records (exactly the ones the checkpoint counted) were all recorded dispatched is
    /// settled: nothing of it is loaded, and records added to it later go straight into the
    /// wheel. Any other bucket is loaded when due, which reads its dispatch log; until then its
    /// dispatched count is the checkpoint's (a lower bound). Call it only when no durable
    /// schedule-log data was found missing (otherwise every bucket is loaded, as if in doubt).
    pub fn settle(&mut self, cp: &Checkpoint) {
        let mut settled = 0usize;
        for (start, b) in self.buckets.iter_mut() {
            let Some(d) = cp.buckets.get(start) else {
                continue;
            };
            if b.len < d.len || b.records < d.records {
                continue;
            }
            b.dispatched = d.dispatched.min(b.records);
            if b.len == d.len && b.records == d.records && d.dispatched >= d.records {
                b.loaded = true;
                settled += 1;
            }
        }
        if settled > 0 {
            tracing::info!(
                settled,
                "fully dispatched buckets are not read again (settled by the checkpoint)"
            );
        }
    }

    fn scan_schedule(
        &self,
        path: &Path,
        durable: Option<&DurableBucket>,
    ) -> Result<Scanned, DelayError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| DelayError::io("open schedule log", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| DelayError::io("stat", path, e))?
            .len();
        // Only the part after what the checkpoint counts durable is read here (a crash may
        // have torn it). The durable part is CRC-checked when the bucket is loaded, before any
        // of its entries reaches the wheel (a damaged record is then rebuilt from the message
        // log if it still holds it, see `engine::load`). A log shorter than its durable length
        // lost data: it is read whole to find where.
        let (from, mut bucket) = match durable {
            Some(d) if size >= d.len => (
                d.len,
                Bucket {
                    len: d.len,
                    records: d.records,
                    last_wal: d.last_wal,
                    ..Bucket::default()
                },
            ),
            _ => (0, Bucket::default()),
        };
        let reader = AtReader {
            file: &file,
            pos: from,
            end: size,
        };
        let mut frames = FrameReader::new(
            BufReader::with_capacity((size - from).clamp(4096, 1 << 20) as usize, reader),
            from,
            self.max_payload,
        );
        let valid_end = loop {
            match frames
                .next_record()
                .map_err(|e| DelayError::io("read schedule log", path, e))?
            {
                Ok(Some((_, payload))) => {
                    let Some(wal) = payload.get(..8).and_then(|w| w.try_into().ok()) else {
                        break frames.offset();
                    };
                    bucket.records += 1;
                    bucket.last_wal = Some(u64::from_be_bytes(wal));
                }
                Ok(None) => break frames.offset(),
                Err(damage) => {
                    tracing::warn!(file = %path.display(), at = frames.offset(), ?damage, "schedule log is torn or damaged");
                    break frames.offset();
                }
            }
        };
        // Records the checkpoint counted durable are gone: only a full message-log replay can
        // bring them back. (Records after the checkpoint come back with the normal replay.)
        let lost_durable = durable.is_some_and(|d| valid_end < d.len);
        if lost_durable {
            tracing::error!(file = %path.display(), valid_end, "schedule log lost checkpointed records");
        }
        drop(frames);
        bucket.len = valid_end;
        cut_tail(&mut file, path, valid_end)?;
        Ok(Scanned {
            bucket,
            lost_durable,
        })
    }

    /// The bucket start for a due time.
    pub fn bucket_of(&self, due_ms: i64) -> i64 {
        due_ms.div_euclid(self.scale_ms) * self.scale_ms
    }

    fn handle(&mut self, start: i64) -> Result<Arc<File>, DelayError> {
        if let Some(f) = self.handles.get(&start) {
            return Ok(f.clone());
        }
        if self.handles.len() >= MAX_IDLE_HANDLES {
            let buckets = &self.buckets;
            self.handles
                .retain(|s, _| buckets.get(s).is_some_and(|b| b.loaded && b.pending > 0));
        }
        let path = sched_path(&self.sched_dir, start);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| DelayError::io("open schedule log", &path, e))?;
        let file = Arc::new(file);
        self.handles.insert(start, file.clone());
        Ok(file)
    }

    /// Appends records to their buckets' schedule logs (one write per bucket). Records of
    /// loaded buckets go into the wheel. Returns, per record, its bucket or the error; and
    /// whether the dispatch loop should look again (wheel entry or new bucket).
    pub fn append(&mut self, records: &[NewRecord<'_>]) -> (Vec<Result<i64, String>>, bool) {
        let mut by_bucket: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_bucket
                .entry(self.bucket_of(r.due_ms))
                .or_default()
                .push(i);
        }
        let mut results: Vec<Result<i64, String>> = vec![Ok(0); records.len()];
        let mut wake = false;
        let mut buf = Vec::new();
        for (start, idxs) in by_bucket {
            let created = !self.buckets.contains_key(&start);
            if created {
                wake = true;
            }
            let base = self.buckets.get(&start).map_or(0, |b| b.len);
            buf.clear();
            let mut entries = Vec::with_capacity(idxs.len());
            for &i in &idxs {
                let r = &records[i];
                let at = base + buf.len() as u64;
                put_frame(&mut buf, &[&r.wal_offset.to_be_bytes(), r.payload]);
                entries.push(WheelEntry {
                    due_ms: r.due_ms,
                    bucket_no: (start / self.scale_ms) as u32,
                    len: (buf.len() as u64 - (at - base)) as u32,
                    offset: at,
                });
            }
            let written = self.handle(start).and_then(|f| {
                let w = crate::fsutil::inject("delay::schedule::write")
                    .and_then(|()| (&*f).write_all(&buf));
                w.map(|()| f).map_err(|e| {
                    DelayError::io("append schedule log", sched_path(&self.sched_dir, start), e)
                })
            });
            let file = match written {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "schedule log append failed; a restart replays it from the message log");
                    // Drop whatever part was written: later appends must start on a record boundary.
                    if let Some(f) = self.handles.remove(&start) {
                        let _ = f.set_len(base);
                    }
                    let first = idxs
                        .iter()
                        .map(|&i| records[i].wal_offset)
                        .min()
                        .unwrap_or(0);
                    self.poisoned_at = Some(self.poisoned_at.map_or(first, |p| p.min(first)));
                    for &i in &idxs {
                        results[i] = Err(e.to_string());
                    }
                    continue;
                }
            };
            self.sched_dir_dirty |= created;
            let bucket = self.buckets.entry(start).or_default();
            note_writer(&mut bucket.unsynced, &file);
            bucket.len = base + buf.len() as u64;
            bucket.records += idxs.len() as u64;
            bucket.last_wal = idxs
                .iter()
                .map(|&i| records[i].wal_offset)
                .max()
                .max(bucket.last_wal);
            if bucket.loaded {
                bucket.pending += entries.len() as u64;
                for e in entries {
                    self.wheel.insert(e);
                }
                wake = true;
            }
            for &i in &idxs {
                results[i] = Ok(start);
            }
        }
        (results, wake)
    }

    /// Begins loading the most urgent bucket that needs it: a bucket whose load failed, or
    /// an unloaded one starting at or before `horizon_ms`. The bucket holding `now_ms` goes
    /// first, then overdue ones (newest first), then later ones (soonest first). The bucket
    /// counts as loaded from here on: records appended to it go straight into the wheel, and
    /// the job reads the part before them. Opens the schedule log if needed; reads nothing.
    pub fn begin_load(
        &mut self,
        horizon_ms: i64,
        now_ms: i64,
    ) -> Result<Option<LoadJob>, DelayError> {
        self.reload.retain(|s, _| self.buckets.contains_key(s));
        let now_bucket = self.bucket_of(now_ms);
        let urgency = |start: i64| match start.cmp(&now_bucket) {
            std::cmp::Ordering::Equal => (0, 0),
            std::cmp::Ordering::Less => (1, now_bucket - start),
            std::cmp::Ordering::Greater => (2, start - now_bucket),
        };
        let unloaded = self
            .buckets
            .range(..=horizon_ms)
            .filter(|(_, b)| !b.loaded)
            .map(|(s, _)| *s);
        let Some(start) = self
            .reload
            .keys()
            .copied()
            .chain(unloaded)
            .min_by_key(|&s| urgency(s))
        else {
            return Ok(None);
        };
        let file = self.handle(start)?;
        let reload = self.reload.remove(&start);
        let Some(b) = self.buckets.get_mut(&start) else {
            return Ok(None);
        };
        let part = match reload {
            Some(part) => part,
            None => {
                b.loaded = true;
                LoadPart {
                    len: b.len,
                    records: b.records,
                    last_wal: b.last_wal,
                    base: b.dispatched,
                }
            }
        };
        Ok(Some(LoadJob {
            bucket_start: start,
            file,
            sched_path: sched_path(&self.sched_dir, start),
            disp_path: disp_path(&self.disp_dir, start),
            len: part.len,
            records: part.records,
            last_wal: part.last_wal,
            base: part.base,
        }))
    }

    /// Whether [`Self::begin_load`] has work for `horizon_ms` (a cheap look, no disk); and
    /// when the next unloaded bucket after the horizon starts.
    pub fn loads_pending(&self, horizon_ms: i64) -> (bool, Option<i64>) {
        let pending =
            !self.reload.is_empty() || self.buckets.range(..=horizon_ms).any(|(_, b)| !b.loaded);
        let next = self
            .buckets
            .range(horizon_ms + 1..)
            .find(|(_, b)| !b.loaded)
            .map(|(s, _)| *s);
        (pending, next)
    }

    /// A [`LoadJob`] failed: nothing of it went into the wheel; a later
    /// [`Self::begin_load`] reads the same part again (records appended since the job began
    /// are in the wheel already and are not read twice).
    pub fn abort_load(&mut self, job: &LoadJob) {
        self.reload.insert(
            job.bucket_start,
            LoadPart {
                len: job.len,
                records: job.records,
                last_wal: job.last_wal,
                base: job.base,
            },
        );
    }

    /// Adds entries a [`LoadJob`] found to the wheel (in parts, so the lock is never held for
    /// long).
    pub fn insert_loaded(&mut self, start: i64, entries: &[WheelEntry]) {
        if let Some(b) = self.buckets.get_mut(&start) {
            b.pending += entries.len() as u64;
        }
        for e in entries {
            self.wheel.insert(*e);
        }
    }

    /// Counts what a [`LoadJob`] found dispatched and damaged (before its entries go into the
    /// wheel with [`Self::insert_loaded`]). The bucket's count becomes exact: what the job
    /// found recorded before `len`, plus what was dispatched since the load began (records
    /// appended after it, at `len` or later); the lower bound it had until then is dropped.
    pub fn count_load(&mut self, job: &LoadJob, loaded: &Loaded) {
        self.damaged += loaded.damaged;
        if let Some(b) = self.buckets.get_mut(&job.bucket_start) {
            b.dispatched = b.dispatched.saturating_sub(job.base) + loaded.dispatched;
        }
    }

    /// A schedule-log handle for reading a due record.
    pub fn reader(&mut self, bucket_no: u32) -> Result<Arc<File>, DelayError> {
        self.handle(i64::from(bucket_no) * self.scale_ms)
    }

    /// Records accepted messages in their buckets' dispatch logs.
    pub fn record_dispatched(&mut self, entries: &[WheelEntry]) {
        let mut by_bucket: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        for e in entries {
            let start = i64::from(e.bucket_no) * self.scale_ms;
            let buf = by_bucket.entry(start).or_default();
            let off = e.offset.to_be_bytes();
            buf.extend_from_slice(&off);
            buf.extend_from_slice(&crc32c::crc32c(&off).to_be_bytes());
        }
        for (start, buf) in by_bucket {
            let n = (buf.len() / DISPATCH_RECORD) as u64;
            if let Some(b) = self.buckets.get_mut(&start) {
                b.dispatched += n;
                b.pending = b.pending.saturating_sub(n);
            }
            let path = disp_path(&self.disp_dir, start);
            let file = match self.dispatch_handles.get(&start) {
                Some(f) => f.clone(),
                None => {
                    let existed = path.exists();
                    match OpenOptions::new().create(true).append(true).open(&path) {
                        Ok(f) => {
                            // The directory entry is fsynced by the next flush, before any
                            // record of the new file counts as durable.
                            self.disp_dir_dirty |= !existed;
                            let f = Arc::new(f);
                            self.dispatch_handles.insert(start, f.clone());
                            f
                        }
                        Err(e) => {
                            tracing::error!(file = %path.display(), error = %e, "cannot open dispatch log; these messages may be delivered again after a restart");
                            if let Some(b) = self.buckets.get_mut(&start) {
                                b.unrecorded += n;
                            }
                            continue;
                        }
                    }
                }
            };
            let written = (|| {
                let before = file.metadata()?.len();
                let w = crate::fsutil::inject("delay::dispatch::write")
                    .and_then(|()| (&*file).write_all(&buf));
                if w.is_err() {
                    // Keep the log on a record boundary for later appends.
                    file.set_len(before)?;
                }
                w
            })();
            match written {
                Ok(()) => {
                    if let Some(b) = self.buckets.get_mut(&start) {
                        note_writer(&mut b.dispatch_unsynced, &file);
                    }
                }
                Err(e) => {
                    self.dispatch_handles.remove(&start);
                    if let Some(b) = self.buckets.get_mut(&start) {
                        b.unrecorded += n;
                    }
                    tracing::error!(file = %path.display(), error = %e, "dispatch log append failed; these messages may be delivered again after a restart");
                }
            }
        }
    }

    /// Forgets wheel entries that could not be dispatched because their record is damaged.
    pub fn drop_pending(&mut self, entries: &[WheelEntry]) {
        for e in entries {
            let start = i64::from(e.bucket_no) * self.scale_ms;
            if let Some(b) = self.buckets.get_mut(&start) {
                b.pending = b.pending.saturating_sub(1);
            }
            self.damaged += 1;
        }
    }

    /// Takes what must be fsynced and checkpointed now.
    pub fn plan_flush(&mut self) -> FlushPlan {
        let mut files = Vec::new();
        let mut cp = Checkpoint {
            wal_offset: self
                .poisoned_at
                .map_or(self.applied_wal, |p| p.min(self.applied_wal)),
            cleaned: self.cleaned.clone(),
            ..Checkpoint::default()
        };
        for (start, b) in self.buckets.iter_mut() {
            let sched = std::mem::take(&mut b.unsynced);
            if !sched.is_empty() {
                files.push((*start, false, sched_path(&self.sched_dir, *start), sched));
            }
            let disp = std::mem::take(&mut b.dispatch_unsynced);
            if !disp.is_empty() {
                files.push((*start, true, disp_path(&self.disp_dir, *start), disp));
            }
            cp.buckets.insert(
                *start,
                DurableBucket {
                    len: b.len,
                    records: b.records,
                    last_wal: b.last_wal,
                    // Every dispatch record counted here was written through a handle this
                    // flush fsyncs (or an earlier one did) before the checkpoint is written.
                    dispatched: b.dispatched.saturating_sub(b.unrecorded).min(b.records),
                },
            );
        }
        let mut dirs = Vec::new();
        if std::mem::take(&mut self.sched_dir_dirty) {
            dirs.push(self.sched_dir.clone());
        }
        if std::mem::take(&mut self.disp_dir_dirty) {
            dirs.push(self.disp_dir.clone());
        }
        FlushPlan {
            files,
            dirs,
            checkpoint: cp,
        }
    }

    /// Takes back what a failed flush did not make durable, to be fsynced again next time.
    /// `poison`: a log fsync failed, so the checkpoint's message-log offset must not pass this
    /// (the last durable checkpoint's) until the store is reopened and replays from there.
    pub fn flush_failed(&mut self, plan: FlushPlan, poison: Option<u64>) {
        for (start, dispatch, _, handles) in plan.files {
            if let Some(b) = self.buckets.get_mut(&start) {
                let list = if dispatch {
                    &mut b.dispatch_unsynced
                } else {
                    &mut b.unsynced
                };
                for h in &handles {
                    note_writer(list, h);
                }
            }
        }
        for dir in plan.dirs {
            if dir == self.sched_dir {
                self.sched_dir_dirty = true;
            } else {
                self.disp_dir_dirty = true;
            }
        }
        if let Some(p) = poison {
            self.poisoned_at = Some(self.poisoned_at.map_or(p, |q| q.min(p)));
        }
    }

    /// Removes buckets that are fully dispatched and ended before `cutoff_ms` from the state
    /// (they are then tombstoned in `cleaned`); returns their starts. Their files are deleted
    /// with [`Store::delete_files`] once a checkpoint without them is durable.
    pub fn take_expired(&mut self, cutoff_ms: i64) -> Vec<i64> {
        let doomed: Vec<i64> = self
            .buckets
            .range(..cutoff_ms - self.scale_ms + 1)
            .filter(|(_, b)| b.dispatched >= b.records && b.pending == 0)
            .map(|(s, _)| *s)
            .collect();
        for start in &doomed {
            if let Some(b) = self.buckets.remove(start) {
                self.cleaned.insert(*start, b.last_wal.unwrap_or(0));
            }
            self.handles.remove(start);
            self.dispatch_handles.remove(start);
        }
        doomed
    }

    /// The schedule and dispatch logs of `starts`, to delete with [`DoomedFiles::delete`].
    pub fn files_of(&self, starts: &[i64]) -> DoomedFiles {
        DoomedFiles {
            paths: starts
                .iter()
                .flat_map(|&s| [sched_path(&self.sched_dir, s), disp_path(&self.disp_dir, s)])
                .collect(),
            dirs: if starts.is_empty() {
                Vec::new()
            } else {
                vec![self.sched_dir.clone(), self.disp_dir.clone()]
            },
        }
    }

    /// Drops tombstones of records the message log no longer holds.
    pub fn forget_cleaned_before(&mut self, wal_start: u64) {
        self.cleaned.retain(|_, last| *last >= wal_start);
    }

    /// The dispatch log of the bucket starting at `start`.
    pub(crate) fn dispatch_path(&self, start: i64) -> PathBuf {
        disp_path(&self.disp_dir, start)
    }

    /// The bucket width (ms).
    pub(crate) fn scale_ms(&self) -> i64 {
        self.scale_ms
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl DoomedFiles {
    /// Deletes the files (missing ones are fine) and fsyncs their directories.
    pub fn delete(&self) -> Result<(), DelayError> {
        for path in &self.paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(DelayError::io("delete", path, e)),
            }
        }
        for dir in &self.dirs {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl FlushPlan {
    /// Fsyncs, through the handles that wrote them, the logs written since the last flush,
    /// then the directories in which logs were created.
    pub fn sync_logs(&self) -> Result<(), DelayError> {
        for (_, dispatch, path, handles) in &self.files {
            for h in handles {
                let site = if *dispatch {
                    "delay::dispatch::fsync"
                } else {
                    "delay::schedule::fsync"
                };
                let synced = crate::fsutil::inject(site).and_then(|()| h.sync_data());
                synced.map_err(|e| DelayError::io("fsync", path, e))?;
            }
        }
        for dir in &self.dirs {
            let synced = crate::fsutil::inject("delay::log::dir_fsync")
                .map_err(|e| DelayError::io("fsync directory", dir, e))
                .and_then(|()| sync_dir(dir));
            synced?;
        }
        Ok(())
    }

    /// Writes the checkpoint (after [`Self::sync_logs`]); returns the message-log offset from
    /// which the retained checkpoints replay (the message log must be kept from there).
    pub fn write_checkpoint(&self, root: &Path) -> Result<u64, DelayError> {
        self.checkpoint.store(root)
    }

    /// Both steps (used at open).
    pub fn execute(self, root: &Path) -> Result<u64, DelayError> {
        self.sync_logs()?;
        self.write_checkpoint(root)
    }

    /// Directories this flush fsyncs (tests).
    #[cfg(test)]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl LoadJob {
    /// The bucket this job loads.
    pub fn bucket_start(&self) -> i64 {
        self.bucket_start
    }

    /// Bytes of the schedule log this job reads: `[0, len)`.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Message-log offset of the last record this job reads (a repair rebuilds no later one).
    pub fn last_wal(&self) -> Option<u64> {
        self.last_wal
    }

    /// Reads the bucket's dispatch log, then its schedule log (checking every record's CRC),
    /// and returns the entries not yet dispatched. Nothing goes into the wheel here: a damaged
    /// record is found before any entry of the bucket can be dispatched. An I/O error fails
    /// the whole job (it is tried again later).
    pub fn run(&self, scale_ms: i64, max_payload: usize) -> Result<Loaded, DelayError> {
        let mut loaded = Loaded::default();
        let dispatched = self.read_dispatched(&mut loaded.damaged)?;
        loaded.dispatched = dispatched.len() as u64;
        crate::fsutil::inject("delay::schedule::read").map_err(|e| {
            DelayError::io(
                "read schedule log",
                format!("bucket {}", self.bucket_start),
                e,
            )
        })?;
        let reader = AtReader {
            file: &self.file,
            pos: 0,
            end: self.len,
        };
        let mut frames = FrameReader::new(
            BufReader::with_capacity(1 << 20, reader),
            0,
            max_payload + 64 * 1024,
        );
        let bucket_no = (self.bucket_start / scale_ms) as u32;
        // Dispatched offsets, ascending; schedule-log offsets are read ascending too.
        let mut done = dispatched.iter().copied().peekable();
        let mut read = 0u64;
        let mut resume_wal = None;
        loop {
            match frames.next_record() {
                Ok(Ok(Some((at, payload)))) => {
                    read += 1;
                    if let Some(wal) = payload.get(..8).and_then(|w| w.try_into().ok()) {
                        let wal = u64::from_be_bytes(wal);
                        // The next message-log record starts right after this one's frame.
                        resume_wal = Some(wal + (FRAME_HEADER + payload.len() - 8) as u64);
                    }
                    while done.next_if(|&d| d < at).is_some() {}
                    if done.next_if_eq(&at).is_some() {
                        continue;
                    }
                    match payload.get(8..).and_then(crate::record::peek_due) {
                        Some(due_ms) => loaded.entries.push(WheelEntry {
                            due_ms,
                            bucket_no,
                            len: (FRAME_HEADER + payload.len()) as u32,
                            offset: at,
                        }),
                        None => loaded.damaged += 1,
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(damage)) => {
                    loaded.damage = Some(LoadDamage {
                        at: frames.offset(),
                        resume_wal,
                        unread: self.records.saturating_sub(read),
                        damage,
                    });
                    break;
                }
                Err(e) => {
                    // An I/O error is not damage: the whole load is tried again later.
                    return Err(DelayError::io(
                        "read schedule log",
                        format!("bucket {}", self.bucket_start),
                        e,
                    ));
                }
            }
        }
        Ok(loaded)
    }

    /// The distinct schedule-log offsets in `[0, len)` the dispatch log records, ascending.
    /// Damaged records are counted in `damaged` and skipped (their messages are offered
    /// again); a partial record at the end (an append in progress) is left alone.
    fn read_dispatched(&self, damaged: &mut u64) -> Result<Vec<u64>, DelayError> {
        let path = &self.disp_path;
        let read =
            crate::fsutil::inject("delay::dispatch::read").and_then(|()| std::fs::read(path));
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DelayError::io("read dispatch log", path, e)),
        };
        let (offsets, bad) = parse_dispatch_records(&bytes, path);
        *damaged += bad;
        let mut offsets: Vec<u64> = offsets.into_iter().filter(|&o| o < self.len).collect();
        offsets.sort_unstable();
        offsets.dedup();
        Ok(offsets)
    }

    /// Writes `bytes` (records rebuilt from the message log) over the damaged part of the
    /// schedule log starting at `at`, and fsyncs them. The part lies before every record
    /// appended since the job began, so nothing else writes there.
    pub fn rewrite(&self, at: u64, bytes: &[u8]) -> Result<(), DelayError> {
        let path = &self.sched_path;
        // Not the append handle: a positional write through an O_APPEND file appends.
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| DelayError::io("open schedule log", path, e))?;
        let written = crate::fsutil::inject("delay::schedule::write")
            .and_then(|()| file.write_all_at(bytes, at))
            .and_then(|()| crate::fsutil::inject("delay::schedule::fsync"))
            .and_then(|()| file.sync_data());
        written.map_err(|e| DelayError::io("repair schedule log", path, e))
    }

    /// The schedule log this job reads.
    pub fn sched_path(&self) -> &Path {
        &self.sched_path
    }
}

/// The offsets of the intact 12-byte records of a dispatch log (in file order, repeats kept)
/// and how many were damaged (logged). Trailing bytes short of a record are ignored.
pub(crate) fn parse_dispatch_records(bytes: &[u8], path: &Path) -> (Vec<u64>, u64) {
    let whole = bytes.len() - bytes.len() % DISPATCH_RECORD;
    let mut out = Vec::with_capacity(whole / DISPATCH_RECORD);
    let mut damaged = 0;
    for rec in bytes[..whole].chunks_exact(DISPATCH_RECORD) {
        let id: Option<[u8; 8]> = rec.get(..8).and_then(|b| b.try_into().ok());
        let crc: Option<[u8; 4]> = rec.get(8..12).and_then(|b| b.try_into().ok());
        let intact = id
            .zip(crc)
            .filter(|(id, crc)| crc32c::crc32c(id) == u32::from_be_bytes(*crc));
        match intact {
            Some((id, _)) => out.push(u64::from_be_bytes(id)),
            None => damaged += 1,
        }
    }
    if damaged > 0 {
        tracing::error!(file = %path.display(), damaged, "damaged dispatch records skipped (their messages may be delivered again)");
    }
    (out, damaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_logs_makes_the_next_flush_fsync_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let scale = 60_000;
        let (mut store, _) =
            Store::open(dir.path(), scale, 10, 1024, &Checkpoint::default()).unwrap();
        let (results, _) = store.append(&[NewRecord {
            wal_offset: 0,
            payload: b"payload",
            due_ms: scale,
        }]);
        assert_eq!(results, vec![Ok(scale)]);
        let plan = store.plan_flush();
        assert_eq!(plan.dirs(), [store.sched_dir.clone()]);
        plan.execute(dir.path()).unwrap();
        // A new dispatch log: its directory entry is fsynced by the next flush.
        store.record_dispatched(&[WheelEntry {
            due_ms: scale,
            bucket_no: 1,
            len: 15,
            offset: 0,
        }]);
        let plan = store.plan_flush();
        assert_eq!(plan.dirs(), [store.disp_dir.clone()]);
        // ... through the handle that wrote it.
        assert_eq!(plan.files.len(), 1);
        assert!(Arc::ptr_eq(
            &plan.files[0].3[0],
            &store.dispatch_handles[&scale]
        ));
        plan.execute(dir.path()).unwrap();
        assert!(store.plan_flush().dirs().is_empty(), "once only");
    }
}
