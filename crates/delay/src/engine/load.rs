//! Loading buckets into the timing wheel, apart from the dispatch loop.
//!
//! A loader task loads one bucket at a time, the most urgent first (the bucket holding "now",
//! then overdue ones, then the next one within `load_ahead`), each in `spawn_blocking`, and
//! hands its entries to the wheel in parts, waking the dispatch loop after each: a bucket
//! being loaded never holds up the dispatch of what is due already. Buckets the checkpoint
//! counts fully dispatched are never loaded (see [`crate::store::Store::settle`]).
//!
//! A load reads the bucket's whole schedule log and checks every record's CRC before any of
//! its entries reaches the wheel. A damaged record (bit rot in a part the checkpoint counted
//! durable, which the open no longer reads) is rebuilt from the message log when the log
//! still holds that part of the bucket: the records are laid out again byte for byte, written
//! over the damaged part and fsynced, and the load reads the bucket again (a WARN line;
//! [`crate::DelayStats::repaired`], `qmq_delay_repaired_records_total`). When the message log
//! no longer holds them, the bucket's records from the damaged one on cannot be delivered:
//! an ERROR line names the file, the offset and how many records are lost, and they are
//! counted in [`crate::DelayStats::damaged`] (`qmq_delay_damaged_records_total`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::DelayError;
use crate::record::{peek_due, put_frame, FrameReader};
use crate::store::{LoadDamage, LoadJob, Loaded};
use crate::wal::WalChunk;

use super::{join_error, max_payload, Inner};

/// Wheel entries inserted under one hold of the store lock.
const INSERT_CHUNK: usize = 64 * 1024;
/// Message-log bytes read at once by a repair.
const REPAIR_CHUNK: usize = 4 << 20;

impl Inner {
    /// Loads the most urgent bucket that needs it (blocking: call from `spawn_blocking`).
    /// On an error nothing of the bucket is in the wheel and a later call loads it again.
    fn load_one(&self, horizon_ms: i64, now_ms: i64) -> Result<(), DelayError> {
        let Some(job) = self.store.lock().begin_load(horizon_ms, now_ms)? else {
            return Ok(());
        };
        let start = job.bucket_start();
        let loaded = match self.read_bucket(&job) {
            Ok(l) => l,
            Err(e) => {
                self.store.lock().abort_load(&job);
                return Err(e);
            }
        };
        let n = loaded.entries.len();
        // Counted before any entry can fire: damage is on record before the bucket dispatches.
        self.store.lock().count_load(&job, &loaded);
        for part in loaded.entries.chunks(INSERT_CHUNK) {
            self.store.lock().insert_loaded(start, part);
            self.wake.notify_one();
        }
        tracing::debug!(bucket = start, entries = n, "bucket loaded into the wheel");
        Ok(())
    }

    /// Runs a load job; a damaged record is rebuilt from the message log if it can be, and
    /// reported as lost otherwise.
    fn read_bucket(&self, job: &LoadJob) -> Result<Loaded, DelayError> {
        let scale = self.cfg.scale_ms();
        let max = max_payload(&self.cfg);
        let loaded = job.run(scale, max)?;
        let Some(damage) = loaded.damage.clone() else {
            return Ok(loaded);
        };
        let file = job.sched_path().display().to_string();
        let mut loaded = loaded;
        let mut damage = damage;
        if let Some(bytes) = self.rebuild(job, &damage)? {
            job.rewrite(damage.at, &bytes)?;
            let again = job.run(scale, max)?;
            match again.damage.clone() {
                None => {
                    tracing::warn!(
                        file,
                        at = damage.at,
                        records = damage.unread,
                        damage = ?damage.damage,
                        "damaged schedule records rebuilt from the message log"
                    );
                    self.store.lock().repaired += damage.unread;
                    return Ok(again);
                }
                // The rewrite did not hold (the disk keeps damaging it): what it reads now.
                Some(d) => (loaded, damage) = (again, d),
            }
        }
        tracing::error!(
            file,
            at = damage.at,
            lost = damage.unread,
            damage = ?damage.damage,
            "damaged schedule record, and the message log cannot rebuild the bucket's records \
             from there on: they cannot be delivered (the damaged bytes stay in the file)"
        );
        loaded.damaged += damage.unread.max(1);
        Ok(loaded)
    }

    /// The schedule-log bytes `[damage.at, job.len())` laid out again from the message log:
    /// the bucket's records after the last intact one, up to the last one the job covers.
    /// None when the message log no longer yields exactly that many bytes (records gone with
    /// deleted segments, or damaged there too).
    fn rebuild(&self, job: &LoadJob, damage: &LoadDamage) -> Result<Option<Vec<u8>>, DelayError> {
        let want = job.len() - damage.at;
        let Some(last) = job.last_wal() else {
            return Ok(None);
        };
        let scale = self.cfg.scale_ms();
        let bucket = job.bucket_start();
        let max = max_payload(&self.cfg);
        let mut pos = match damage.resume_wal {
            Some(w) => w,
            None => self.wal.lock().start(),
        };
        let mut out = Vec::new();
        loop {
            let span = self.wal.lock().span_at(pos)?;
            let (start, bytes) = match span.read(REPAIR_CHUNK)? {
                WalChunk::Records { start, bytes } => (start, bytes),
                WalChunk::AtEnd | WalChunk::Ahead { .. } => break,
            };
            let mut frames = FrameReader::new(&bytes[..], start, max);
            loop {
                match frames.next_record() {
                    Ok(Ok(Some((at, payload)))) => {
                        if at > last {
                            return Ok((out.len() as u64 == want).then_some(out));
                        }
                        let due = peek_due(payload);
                        if due.is_some_and(|d| d.div_euclid(scale) * scale == bucket) {
                            put_frame(&mut out, &[&at.to_be_bytes(), payload]);
                            if out.len() as u64 > want {
                                return Ok(None);
                            }
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(_)) | Err(_) => return Ok(None),
                }
            }
            pos = start + bytes.len() as u64;
        }
        Ok((out.len() as u64 == want).then_some(out))
    }
}

/// Keeps the buckets within the load-ahead window loaded (see the module docs).
pub(super) async fn load_loop(inner: Arc<Inner>) {
    while !inner.cancel.is_cancelled() {
        let now = inner.clock.now_ms();
        let ahead = inner.cfg.load_ahead_ms();
        let (pending, next) = inner.store.lock().loads_pending(now + ahead);
        if pending {
            let me = inner.clone();
            let loaded = tokio::task::spawn_blocking(move || me.load_one(now + ahead, now))
                .await
                .map_err(|e| join_error("load bucket", e))
                .and_then(|r| r);
            match loaded {
                Ok(()) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "loading a bucket failed; retrying");
                    tokio::select! {
                        _ = inner.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
        }
        let sleep = async {
            match next {
                Some(start) => inner.clock.sleep_until(start - ahead).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.load_wake.notified() => {}
            _ = sleep => {}
        }
    }
}
