//! Store errors.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A record failed its CRC or length check: the bytes on disk are damaged.
    #[error("corrupt record at offset {offset} of {log}")]
    Corrupt {
        /// The log.
        log: &'static str,
        /// The record's offset.
        offset: u64,
    },
    /// An offset or sequence that does not exist (deleted by retention or never written).
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// What was asked for.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A record is larger than a segment can hold.
    #[error("record of {size} bytes exceeds the segment size {segment}")]
    TooLarge {
        /// The record size.
        size: usize,
        /// The segment size.
        segment: u64,
    },
    /// A name (subject, group, consumer) that cannot be stored.
    #[error("invalid {what}: {reason}")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A checkpoint file could not be parsed.
    #[error("checkpoint {path}: {reason}")]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A named directory's `NAME` file is unreadable or names something else.
    #[error("name file {path}: {reason}")]
    BadNameFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store was closed.
    #[error("store closed")]
    Closed,
    /// Another store or process has the data directory open (see [`crate::DirLock`]).
    #[error("data directory {dir} is in use by another store or process")]
    Locked {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// A write or fsync of the message log or the action log failed, or the log still awaits
    /// its repair after one: the operation answered with this was **not stored**. The log
    /// repairs itself before its next write and goes on once the disk works again (see
    /// [`crate::log`]).
    #[error("write failed, nothing stored: {reason}")]
    Failed {
        /// The original failure.
        reason: String,
    },
    /// A write or fsync failed and what it may have put on disk could not be cut away: the
    /// operation **may or may not be stored** (a retry may duplicate it). The store refuses
    /// writes until a repair of the log succeeds.
    #[error("write failed, outcome unknown: {reason}")]
    MaybeStored {
        /// The original failure and why it could not be undone.
        reason: String,
    },
    /// A replica asked for a log from an offset beyond this store's end of it: the replica
    /// holds bytes this store never had (or has lost), and must be cut back
    /// ([`crate::truncate_logs`]) or rebuilt before it can follow this store.
    #[error("{stream} offset {offset} is beyond this store's end {end}")]
    Ahead {
        /// The log.
        stream: crate::LogStream,
        /// The offset asked for.
        offset: u64,
        /// This store's end of the log.
        end: u64,
    },
    /// Replicated bytes do not start at this store's end of the log: nothing was written; the
    /// caller asks again from [`crate::Store::log_end`] (or resynchronises).
    #[error("{stream} chunk starts at {got}, this store's log ends at {expected}")]
    Diverged {
        /// The log.
        stream: crate::LogStream,
        /// This store's end of the log.
        expected: u64,
        /// Where the chunk starts.
        got: u64,
    },
    /// Replicated bytes are not whole, intact records (bad length or CRC, cut mid-record,
    /// a record larger than a segment): nothing was written.
    #[error("bad {stream} chunk at offset {offset}: {reason}")]
    BadChunk {
        /// The log.
        stream: crate::LogStream,
        /// Log offset of the first bad record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// [`crate::truncate_logs`] cannot make the cut consistent (or was asked for a cut that is
    /// not at a record boundary): nothing was changed.
    #[error("cannot truncate the logs: {reason}")]
    TruncateRefused {
        /// Why.
        reason: String,
    },
    /// A resync snapshot ([`crate::Snapshot`]) could not be encoded or decoded.
    #[error("bad resync snapshot: {reason}")]
    BadSnapshot {
        /// Why.
        reason: String,
    },
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Wraps an I/O error with the operation and path.
pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
