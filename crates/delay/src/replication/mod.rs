//! Master/slave replication of a delay server (qmq-rs issue #14, the delay tier), on top of
//! the shared pieces in `qmq_replication` (write gate, leases, epochs).
//!
//! What is replicated, and how exactly:
//! - **The message log (WAL)**, byte for byte and in full: a slave asks the master's sync port
//!   for the records after its own end (SYNC_LOG_REQUEST type 2, the broker's layout, see
//!   [`sync_server`]), checks every record (length, CRC-32C, layout) and that the chunk starts
//!   exactly at its end, appends and fsyncs it ([`Replica::append_wal`]). A chunk that does not
//!   start at the slave's end is never appended: the logs diverged, or the master no longer
//!   holds what the slave needs (behind its retention, or a gap the master left after data
//!   loss); that is a resync, which is logged and counted and needs an operator (wipe the
//!   slave's data directory). Offsets are global and equal on both sides; segment boundaries
//!   may differ.
//! - **Schedule logs** are not shipped: the slave derives them from the WAL exactly as the
//!   writer and recovery do (records appended to their time bucket's log in WAL order), so the
//!   same bucket files with the same record offsets exist on both sides.
//! - **Dispatch state** (which records were delivered) may lag: the slave polls the master's
//!   dispatch logs every [`follower::DISPATCH_POLL`] (a longer SYNC_LOG_REQUEST of type 1, see
//!   [`DispatchSyncRequest`]) and records what it holds in its own dispatch logs. After a
//!   failover the new master therefore delivers again at most what the old one delivered in the
//!   last poll interval plus one dispatch batch (about one second of deliveries with the
//!   defaults), plus what the old master delivered from WAL records the slave never received
//!   (async mode only). QMQ is at-least-once; consumers already deduplicate by message id.
//!
//! A slave never dispatches and answers every SEND with `BROKER_REJECT`; on promotion it stops
//! copying, flushes, and opens the engine on its own store, which loads every bucket and
//! delivers every due message not known dispatched, never before its time (the due time is
//! part of the replicated record).
//!
//! A server that rejoins as a slave first cuts what it holds beyond the data it shares with the
//! new master ([`cut_unreplicated`], the delay equivalent of `qmq_store::truncate_logs`).
//!
//! - [`Replica`]: the slave's store.
//! - [`sync_server`]: the master's sync port.
//! - [`follower`]: the slave's copy loops.
//! - [`node`]: a replicated delay server's life, role by role.

mod cut;
pub mod follower;
pub mod node;
mod replica;
pub mod sync_server;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use cut::{cut_unreplicated, CutReport};
pub use qmq_replication::{Gate, ReplicationMode, SyncTimeout};
pub use replica::{Replica, ReplicaError, ReplicaStats};

use crate::error::DelayError;
use crate::fsutil::numbered_files;

/// Bytes of one dispatch-log record (`u64 schedule-log offset | u32 CRC-32C`).
pub const DISPATCH_RECORD: usize = 12;

/// New dispatch-log bytes of one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchPart {
    /// The bucket's start (ms).
    pub bucket: i64,
    /// Position in the master's dispatch log of the first byte.
    pub from: u64,
    /// Whole dispatch records.
    pub bytes: Bytes,
}

/// The answer to a dispatch-state request: new dispatch-log bytes per bucket, and the master's
/// message-log end when they were read (every record they name comes from a message-log record
/// before it: a slave applies them once its own message log reaches that end).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispatchChunk {
    /// The master's message-log end, read after the dispatch logs.
    pub wal_end: u64,
    /// Per bucket, the bytes after the slave's position.
    pub parts: Vec<DispatchPart>,
}

/// A dispatch-state request: how far the slave has read each of the master's dispatch logs.
///
/// Wire layout (qmq-rs only; the delay sync protocol is not interoperable with Java's): the
/// broker's 17-byte SYNC_LOG_REQUEST header with type 1 and both offsets 0, then `i32 n` and
/// `n` times `i64 bucket start | i64 position`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispatchSyncRequest {
    /// Bucket start -> bytes of the master's dispatch log already read.
    pub cursors: BTreeMap<i64, u64>,
}

/// A dispatch-state message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed dispatch sync body: {0}")]
pub struct DispatchDecodeError(&'static str);

impl DispatchSyncRequest {
    /// The body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(21 + self.cursors.len() * 16);
        out.put_u8(qmq_protocol::SyncType::Action.code());
        out.put_i64(0);
        out.put_i64(0);
        out.put_i32(self.cursors.len() as i32);
        for (b, c) in &self.cursors {
            out.put_i64(*b);
            out.put_i64(*c as i64);
        }
        out.freeze()
    }

    /// Decodes a body.
    pub fn decode(mut body: &[u8]) -> Result<Self, DispatchDecodeError> {
        if body.len() < 21 {
            return Err(DispatchDecodeError("too short"));
        }
        body.advance(17);
        let n = body.get_i32();
        if n < 0 || body.len() != n as usize * 16 {
            return Err(DispatchDecodeError("bad cursor count"));
        }
        let mut cursors = BTreeMap::new();
        for _ in 0..n {
            let b = body.get_i64();
            let c = body.get_i64();
            cursors.insert(
                b,
                u64::try_from(c).map_err(|_| DispatchDecodeError("negative"))?,
            );
        }
        Ok(Self { cursors })
    }
}

impl DispatchChunk {
    /// The body: `i64 wal_end | i32 n | n times (i64 bucket | i64 from | i32 len | bytes)`.
    pub fn encode(&self) -> Bytes {
        let size: usize = self.parts.iter().map(|p| 20 + p.bytes.len()).sum();
        let mut out = BytesMut::with_capacity(12 + size);
        out.put_i64(self.wal_end as i64);
        out.put_i32(self.parts.len() as i32);
        for p in &self.parts {
            out.put_i64(p.bucket);
            out.put_i64(p.from as i64);
            out.put_i32(p.bytes.len() as i32);
            out.put_slice(&p.bytes);
        }
        out.freeze()
    }

    /// Decodes a body (the bytes are slices of `body`).
    pub fn decode(body: &Bytes) -> Result<Self, DispatchDecodeError> {
        let mut b = body.clone();
        if b.len() < 12 {
            return Err(DispatchDecodeError("too short"));
        }
        let wal_end = u64::try_from(b.get_i64()).map_err(|_| DispatchDecodeError("negative"))?;
        let n = b.get_i32();
        let mut parts = Vec::new();
        for _ in 0..n.max(0) {
            if b.len() < 20 {
                return Err(DispatchDecodeError("truncated part"));
            }
            let bucket = b.get_i64();
            let from = u64::try_from(b.get_i64()).map_err(|_| DispatchDecodeError("negative"))?;
            let len = usize::try_from(b.get_i32()).map_err(|_| DispatchDecodeError("negative"))?;
            if b.len() < len || len % DISPATCH_RECORD != 0 {
                return Err(DispatchDecodeError("bad part length"));
            }
            let bytes = b.split_to(len);
            parts.push(DispatchPart {
                bucket,
                from,
                bytes,
            });
        }
        if !b.is_empty() {
            return Err(DispatchDecodeError("trailing bytes"));
        }
        Ok(Self { wal_end, parts })
    }
}

/// Reads the dispatch logs in `dir` after `cursors` (a position beyond a log's length, as
/// after a torn tail was cut, reads that log from its start), at most about `max_bytes` in all.
pub(crate) fn read_dispatch_logs(
    dir: &Path,
    cursors: &BTreeMap<i64, u64>,
    max_bytes: usize,
) -> Result<Vec<DispatchPart>, DelayError> {
    let mut budget = max_bytes.max(DISPATCH_RECORD);
    let mut parts = Vec::new();
    if !dir.exists() {
        return Ok(parts);
    }
    for (bucket, path) in numbered_files(dir, ".disp")? {
        if budget < DISPATCH_RECORD {
            break;
        }
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len() - m.len() % DISPATCH_RECORD as u64,
            // Deleted by retention meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DelayError::io("stat", &path, e)),
        };
        let mut from = cursors.get(&bucket).copied().unwrap_or(0);
        if from > len {
            from = 0;
        }
        if from == len {
            continue;
        }
        let n = (len - from).min((budget - budget % DISPATCH_RECORD) as u64);
        let mut buf = vec![0u8; n as usize];
        let file = std::fs::File::open(&path).map_err(|e| DelayError::io("open", &path, e))?;
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, from)
            .map_err(|e| DelayError::io("read dispatch log", &path, e))?;
        budget -= n as usize;
        parts.push(DispatchPart {
            bucket,
            from,
            bytes: Bytes::from(buf),
        });
    }
    Ok(parts)
}
