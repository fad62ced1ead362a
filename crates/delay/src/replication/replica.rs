//! The slave's store: a copy of the master's message log, the schedule logs derived from it,
//! and the dispatch state copied from the master.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::DelayConfig;
use crate::error::DelayError;
use crate::record::{peek_due, FrameReader, FRAME_HEADER};
use crate::store::{NewRecord, Store};
use crate::wal::MessageLog;
use crate::wheel::WheelEntry;

use super::{DispatchChunk, DISPATCH_RECORD};

/// A replicated chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The chunk does not start at this log's end: never appended (a resync is needed).
    #[error("chunk starts at {start} but this message log ends at {end}: the logs diverged or the master no longer holds what this slave needs; a resync is needed")]
    Diverged {
        /// The chunk's start.
        start: u64,
        /// This log's end.
        end: u64,
    },
    /// The chunk is not a run of whole, intact message-log records.
    #[error("chunk at {start} refused: {reason}")]
    BadChunk {
        /// The chunk's start.
        start: u64,
        /// What is wrong.
        reason: String,
    },
    /// A disk operation failed.
    #[error(transparent)]
    Store(#[from] DelayError),
}

/// Counters of a replica.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    /// Message-log bytes appended.
    pub wal_bytes: AtomicU64,
    /// Chunks refused (diverged or damaged).
    pub refused: AtomicU64,
    /// Dispatch records applied.
    pub dispatch_applied: AtomicU64,
    /// Dispatch records naming a record this replica does not hold (skipped).
    pub dispatch_skipped: AtomicU64,
}

/// A slave's store. Opening it recovers the store like the engine does (and a promoted slave
/// closes it and opens the engine on the same directory).
pub struct Replica {
    cfg: DelayConfig,
    store: Store,
    wal: MessageLog,
    max_payload: usize,
    /// Message-log offset the retained checkpoints replay from.
    checkpointed: u64,
    /// Per bucket, the schedule-log offsets known dispatched (loaded on first use).
    dispatched: HashMap<i64, HashSet<u64>>,
    /// Per bucket, how far the master's dispatch log was read.
    cursors: BTreeMap<i64, u64>,
    /// Counters.
    pub stats: ReplicaStats,
}

impl Replica {
    /// Opens (or creates) the store in `cfg.data_dir` without dispatching anything.
    pub fn open(cfg: DelayConfig) -> Result<Self, DelayError> {
        cfg.validate()?;
        let (store, wal, checkpointed) = crate::engine::recover::recover(&cfg)?;
        let max_payload = crate::engine::max_payload(&cfg);
        Ok(Self {
            cfg,
            store,
            wal,
            max_payload,
            checkpointed,
            dispatched: HashMap::new(),
            cursors: BTreeMap::new(),
            stats: ReplicaStats::default(),
        })
    }

    /// The message log's end (what the slave asks the master for next).
    pub fn wal_end(&self) -> u64 {
        self.wal.end()
    }

    /// The configuration.
    pub fn config(&self) -> &DelayConfig {
        &self.cfg
    }

    /// How far each of the master's dispatch logs was read.
    pub fn dispatch_cursors(&self) -> &BTreeMap<i64, u64> {
        &self.cursors
    }

    /// Appends a chunk copied from the master's message log at `start` (which must be this
    /// log's end): checks every record, appends and fsyncs the bytes unchanged, then appends
    /// the records to their schedule logs as the writer does.
    pub fn append_wal(&mut self, start: u64, bytes: &[u8]) -> Result<(), ReplicaError> {
        let end = self.wal.end();
        if start != end {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ReplicaError::Diverged { start, end });
        }
        let records = match self.check(start, bytes) {
            Ok(r) => r,
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.wal.append_replicated(start, bytes)?;
        self.stats
            .wal_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let new: Vec<NewRecord<'_>> = records
            .iter()
            .filter(|&&(offset, _, due)| !self.known(offset, due))
            .map(|&(offset, len, due)| {
                let at = (offset - start) as usize + FRAME_HEADER;
                NewRecord {
                    wal_offset: offset,
                    payload: &bytes[at..at + len],
                    due_ms: due,
                }
            })
            .collect();
        let (results, _) = self.store.append(&new);
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            // The message log holds them: the checkpoint stops before them (see
            // `Store::poisoned_at`) and the next open replays them.
            tracing::error!(error = %e, "schedule log append failed on the slave");
        }
        self.store.applied_wal = self.wal.end();
        Ok(())
    }

    /// Whether a record is in a schedule log already (or in a bucket retention deleted).
    fn known(&self, offset: u64, due: i64) -> bool {
        let bucket = self.store.bucket_of(due);
        self.store
            .cleaned
            .get(&bucket)
            .is_some_and(|&last| offset <= last)
            || self
                .store
                .buckets
                .get(&bucket)
                .and_then(|b| b.last_wal)
                .is_some_and(|last| offset <= last)
    }

    /// `(global offset, payload length, due)` of every record of a chunk, or why it is refused.
    fn check(&self, start: u64, bytes: &[u8]) -> Result<Vec<(u64, usize, i64)>, ReplicaError> {
        let bad = |reason: String| ReplicaError::BadChunk { start, reason };
        let mut reader = FrameReader::new(bytes, start, self.max_payload);
        let mut out = Vec::new();
        loop {
            match reader.next_record() {
                Ok(Ok(Some((at, payload)))) => {
                    let due = peek_due(payload)
                        .ok_or_else(|| bad(format!("record at {at} has an unknown layout")))?;
                    out.push((at, payload.len(), due));
                }
                Ok(Ok(None)) => break,
                Ok(Err(damage)) => {
                    return Err(bad(format!(
                        "damaged record at {}: {damage:?}",
                        reader.offset()
                    )))
                }
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        if reader.offset() != start + bytes.len() as u64 {
            return Err(bad("trailing bytes".into()));
        }
        Ok(out)
    }

    /// Records the dispatch state of a chunk the master sent. Returns false (nothing applied)
    /// while this message log has not reached the chunk's `wal_end` yet. Records naming a
    /// schedule-log record this replica does not hold are skipped and counted (never marked:
    /// a later record at that offset would otherwise never be delivered).
    pub fn apply_dispatch(&mut self, chunk: &DispatchChunk) -> Result<bool, DelayError> {
        if self.wal.end() < chunk.wal_end {
            return Ok(false);
        }
        let scale = self.store.scale_ms();
        for part in &chunk.parts {
            let bucket = part.bucket;
            let len = self.store.buckets.get(&bucket).map_or(0, |b| b.len);
            if !self.dispatched.contains_key(&bucket) {
                let set = self.read_dispatched(bucket, len)?;
                if let Some(b) = self.store.buckets.get_mut(&bucket) {
                    // Exact from here on: what the log holds, plus what this replica adds.
                    b.dispatched = set.len() as u64;
                }
                self.dispatched.insert(bucket, set);
            }
            let mut entries = Vec::new();
            let mut skipped = 0u64;
            if let Some(known) = self.dispatched.get_mut(&bucket) {
                for rec in part.bytes.chunks_exact(DISPATCH_RECORD) {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&rec[..8]);
                    let crc = u32::from_be_bytes([rec[8], rec[9], rec[10], rec[11]]);
                    if crc32c::crc32c(&id) != crc {
                        skipped += 1;
                        continue;
                    }
                    let offset = u64::from_be_bytes(id);
                    if offset >= len {
                        skipped += 1;
                        continue;
                    }
                    if known.insert(offset) {
                        entries.push(WheelEntry {
                            due_ms: 0,
                            bucket_no: (bucket / scale) as u32,
                            len: 0,
                            offset,
                        });
                    }
                }
            }
            if skipped > 0 {
                tracing::warn!(
                    bucket,
                    skipped,
                    "dispatch records naming records this slave does not hold were skipped"
                );
                self.stats
                    .dispatch_skipped
                    .fetch_add(skipped, Ordering::Relaxed);
            }
            self.store.record_dispatched(&entries);
            self.stats
                .dispatch_applied
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            self.cursors
                .insert(bucket, part.from + part.bytes.len() as u64);
        }
        Ok(true)
    }

    /// The distinct schedule-log offsets before `len` this replica's dispatch log of `bucket`
    /// records (damaged records are counted and skipped).
    fn read_dispatched(&mut self, bucket: i64, len: u64) -> Result<HashSet<u64>, DelayError> {
        let path = self.store.dispatch_path(bucket);
        let read =
            crate::fsutil::inject("delay::dispatch::read").and_then(|()| std::fs::read(&path));
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(DelayError::io("read dispatch log", &path, e)),
        };
        let (offsets, damaged) = crate::store::parse_dispatch_records(&bytes, &path);
        self.store.damaged += damaged;
        Ok(offsets.into_iter().filter(|&o| o < len).collect())
    }

    /// Fsyncs schedule and dispatch logs and writes the checkpoint.
    pub fn flush(&mut self) -> Result<(), DelayError> {
        let plan = self.store.plan_flush();
        if let Err(e) = plan.sync_logs() {
            self.store.flush_failed(plan, Some(self.checkpointed));
            return Err(e);
        }
        match plan.write_checkpoint(&self.cfg.data_dir) {
            Ok(from) => {
                self.checkpointed = from;
                Ok(())
            }
            Err(e) => {
                self.store.flush_failed(plan, None);
                Err(e)
            }
        }
    }

    /// Records per bucket (for tests and monitoring): start -> (records, dispatched).
    pub fn buckets(&self) -> BTreeMap<i64, (u64, u64)> {
        self.store
            .buckets
            .iter()
            .map(|(s, b)| (*s, (b.records, b.dispatched)))
            .collect()
    }
}
