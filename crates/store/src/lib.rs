//! Partition-free storage for the realtime broker, QMQ's model.
//!
//! # Layout
//!
//! - **message log** ([`log`], `messagelog/`): one append-only log for all subjects, in
//!   segment files of at most a fixed size; every record is `u32 length | u32 CRC32C |
//!   payload`, the payload being the message's subject, tags and append time and then its
//!   bytes ([`formats`]). The record's offset
//!   identifies the message. One writer thread batches concurrent appends (group commit): one
//!   `write` per batch, and with [`FlushPolicy::SyncBeforeAck`] one shared fsync before any of
//!   them is acknowledged; with [`FlushPolicy::Async`] (default) a flusher fsyncs every interval.
//! - **consume logs** ([`consume_log`], `consumelog/<hash>/`): per subject, fixed 24-byte
//!   entries (offset, length, 64-bit tag summary, CRC) addressed by a dense per-subject sequence.
//!   Tag filters pass over non-matching messages by the summary without reading them.
//! - **pull logs** ([`pull_log`], `pulllog/<hash>/`, one per consumer): the consume-log
//!   sequences handed to each consumer, addressed by its pull-log sequence. All consumers of a
//!   group share one position (the next consume-log sequence to hand out), so consumers come
//!   and go with no partitions and no rebalancing; broadcast consumers have their own.
//! - **action log** ([`action`], `actionlog/`): every pull, range ack and reset, append-only,
//!   in records framed as the message log's ([`formats`]).
//!   Pull logs, positions and progress are rebuilt from it and the last [`checkpoint`].
//! - **directory names**: a client's name never becomes a file name. Consume-log and pull-log
//!   directories are named by 32 hex characters of the SHA-256 of the subject (resp. subject,
//!   group and consumer) and hold a `NAME` file with the names themselves, so no name of any
//!   length or alphabet reaches the file system; older data directories, whose directory names
//!   were percent-encoded names, are moved to this layout on open (see `names.rs`).
//! - **`LOCK`**: an exclusive `flock` held while a store has the directory open; a second
//!   store on it, in this process or another, is refused ([`StoreError::Locked`]).
//!
//! # Replication
//!
//! The message log and the action log are the replication protocol: a replica copies them
//! byte for byte ([`Store::read_log_chunk`] on the master, [`Store::append_replicated`] on the
//! replica, [`Store::watch_log_end`] to long-poll) and rebuilds consume logs, pull logs and
//! progress by indexing and replaying them as the master did. Their record layouts are
//! specified in [`formats`] (`FORMAT.md` in this crate's directory). A former master that
//! rejoins as a replica has its unreplicated tail cut by [`truncate_logs`]. A replica that
//! fell behind its master's retention (or diverged beyond what epochs explain) starts again
//! from a [`Snapshot`] of the master ([`Store::snapshot`], [`Store::install_snapshot`]) and
//! copies both logs from there. See [`replication`] and [`snapshot`].
//!
//! A backup server does not copy the logs: it indexes every message by subject, consume-log
//! sequence and message id. [`Store::read_index_chunk`] reads what it needs from the message
//! log in log order ([`IndexRecord`]s, QMQ's sync type 5), long-polled on
//! [`Store::watch_log_end`] like the log copy.
//!
//! # Recovery
//!
//! [`Store::open`] loads the newest readable checkpoint (a damaged or deleted one falls back to
//! an older one, or to a full replay), checks every message-log record after it (a torn tail is
//! cut at the first bad record; a damaged record followed by good ones is skipped), keeps the
//! consume-log entries the checkpoint vouched for and checks the ones after it (cut at the first
//! bad CRC, non-increasing offset or offset past the log's end), re-indexes the messages the
//! consume logs miss, and replays the action log after the checkpoint. Every read is CRC-checked
//! and matched against its index entry: a damaged message is skipped, never returned.
//!
//! Only a checksum or length mismatch is damage: a read I/O error (EIO and the like) is
//! returned as [`StoreError::Io`], so an open that meets one fails and cuts nothing, and a
//! pull that meets one fails instead of passing over the message.
//!
//! # Failures while running
//!
//! - **Message log and action log** ([`log`]): a failed write or fsync cuts what the operation
//!   wrote back to the log's last good end and answers [`StoreError::Failed`]: *not stored*.
//!   If the cut fails too the answer is [`StoreError::MaybeStored`] (*outcome unknown*: a
//!   retry may duplicate). Either way the log then refuses writes (and fsyncs) until a repair
//!   succeeds: the next append, pull, ack, reset or checkpoint first cuts the files back to
//!   the log's end, rewrites and fsyncs what follows the durable mark, and reads it back. So
//!   once the disk works again (space freed) the store goes on by itself, with no reopen, and
//!   [`Store::close`] checkpoints as usual. A pull whose action was written but whose fsync
//!   failed (`SyncBeforeAck`) may stay recorded as handed to the consumer: its messages come
//!   back to it as unacked ones ([`Store::pulled_since`]), never skipped. With async flush, a
//!   failed flusher fsync fails the next write the same way until the repair works.
//! - **Consume logs** are derived data: a failed write keeps the entries in memory (readable)
//!   for the flusher's next try, and fails no append; a checkpoint cannot vouch for them until
//!   it works. A consume-log entry that fails its checksum (below the checkpoint or not) is
//!   rebuilt from the message log when it is read (the subject's records between the good
//!   entries around it), written back, logged and counted in [`Store::stats`].
//! - **Checkpoints**: a failed write, fsync or rename fails [`Store::checkpoint`] (and
//!   `close`); recovery falls back to the previous checkpoint and replays the logs after it.
//! - Fault injection: with the `failpoints` feature every write, fsync, read, rename and delete
//!   site above is a named failpoint (`message-log.write`, ..., see `src/faults.rs`);
//!   `cargo test -p qmq-store --features failpoints` runs tests/failpoints.rs.
//!
//! # Memory
//!
//! Reads use `pread` on segment files, not mmap: memory does not grow with the data (the page
//! cache, which the kernel can always reclaim, does the caching), a damaged or truncated file
//! gives an error instead of a SIGBUS, and there is no unmapping to coordinate with retention.
//! The store itself holds one open file per segment and a few integers per subject, group and
//! consumer. `cargo bench -p qmq-store` prints the process's peak RSS after writing and reading
//! back a log several times larger than the buffers involved.
//!
//! # How the broker uses it
//!
//! All methods are thread-safe and [`Store`] is cheap to clone. `append*` frame the batch on
//! the calling thread and hand it to the store's writer thread at once; the future they return
//! resolves with the writer's answer. The others do file I/O on the calling thread, so call
//! them from `tokio::task::spawn_blocking`.
//!
//! 1. Send: [`Store::append_messages`] (subject + tags + bytes per message → per-message
//!    [`Appended`] `{offset, sequence}` or error, resolved under the flush policy), or
//!    [`Store::append`] for untagged messages, all or nothing.
//! 2. Long poll: [`Store::watch_subject`] gives a `tokio::sync::watch::Receiver<u64>` of the
//!    subject's length; compare with [`Store::position`], await `changed()`, pull again.
//! 3. Pull: [`Store::pull_matching`] with a [`TagFilter`] (or [`Store::pull`] with a closure on
//!    the bytes) atomically takes up to N of the group's next messages, consuming those the
//!    filter rejects, records them in the consumer's pull log and the action log, and returns
//!    [`Pulled`] `{pull_seq, sequence, message, tags}`. `PullSpec::broadcast` gives the consumer
//!    a position of its own. [`Store::pull_with`] adds [`PullOptions`]: a time gate (only
//!    messages appended by a given time: the broker's retry delay), a byte budget (one larger
//!    message alone) and where a group never seen starts (earliest, or latest recorded at once
//!    in the action log).
//! 4. Redelivery: [`Store::progress`] gives the consumer's last pulled and acked pull-log
//!    sequences; [`Store::pulled_since`] returns what it pulled after a given one (QMQ re-sends
//!    pulled-but-unacked messages to the same consumer before new ones), and
//!    [`Store::pulled_since_within`] keeps that to a byte budget.
//! 5. Ack: [`Store::ack`] acks a range of pull-log sequences up to the given one.
//! 6. Reset: [`Store::reset`] to [`ResetTo::Earliest`] or [`ResetTo::Latest`].
//! 7. Listings: [`Store::subject_infos`], [`Store::groups`] (with [`GroupInfo::lag`]),
//!    [`Store::consumers`] (with [`ConsumerInfo::unacked`]).
//! 8. Background work and shutdown: [`Store::spawn_maintenance`] checkpoints and applies
//!    retention every interval; [`Store::close`] stops the store's threads, flushes and
//!    checkpoints. Dropping the last handle without `close` stops the threads too (after the
//!    appends already handed over), but leaves recovery to the next open, as a crash would.

pub mod action;
pub mod checkpoint;
pub mod consume_log;
mod dir_lock;
/// The on-disk formats of the message log and the action log: the replication protocol
/// (this crate's `FORMAT.md`).
#[doc = include_str!("../FORMAT.md")]
pub mod formats {}
mod error;
mod faults;
mod filter;
mod fixed;
mod fsync_times;
pub mod log;
mod names;
pub mod pull_log;
mod record;
pub mod replication;
pub mod snapshot;
mod store;

pub use action::ConsumerKey;
pub use dir_lock::DirLock;
pub use error::{Result, StoreError};
pub use filter::{BytesFilter, Filter, TagFilter, TagMode};
pub use fsync_times::{FsyncSnapshot, FSYNC_BUCKETS};
pub use replication::{truncate_logs, LogChunk, LogStream, Truncated};
pub use snapshot::{ConsumerSnapshot, MessageSnapshot, Snapshot, SnapshotConsumer, SubjectStart};
pub use store::{
    Appended, ConsumerInfo, FlushPolicy, GroupInfo, IndexChunk, IndexRecord, NewMessage,
    PullOptions, PullSpec, Pulled, ResetTo, Store, StoreConfig, StoreStats, StoredMessage,
    SubjectInfo,
};
