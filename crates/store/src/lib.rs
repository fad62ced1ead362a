//! Partition-free storage for the realtime broker, QMQ's model:
//!
//! - **message log** ([`log`]): one append-only log for all subjects, in fixed-size segment
//!   files; every record carries its length and a CRC32C. A message is identified by its
//!   offset. Appends go through one writer thread that batches concurrent callers (group
//!   commit) and, with [`FlushPolicy::SyncBeforeAck`], shares one fsync among them.
//! - **consume logs** ([`consume_log`]): per subject, fixed 16-byte entries pointing into the
//!   message log, addressed by a dense per-subject sequence.
//! - **pull logs** ([`pull_log`]): per (subject, group, consumer), the consume-log sequences handed
//!   to that consumer. Any number of consumers share a group's single position, so consumers come
//!   and go with no rebalancing; broadcast consumers keep a position of their own.
//! - **action log** ([`action`]): every pull and ack, append-only; consumer state is rebuilt from
//!   it and the last [`checkpoint`].
//!
//! Recovery on [`Store::open`]: the message log's tail after the checkpoint is checked record by
//! record (a torn tail is truncated, a damaged record in the middle skipped), consume logs are
//! trimmed to their valid entries and re-indexed from the message log, and the action log is
//! replayed into the pull logs and progress. Reads return only CRC-checked records.
//!
//! Memory: the store reads with `pread` and keeps no message data of its own; what it holds in
//! memory is one open file per segment / subject / consumer and a few integers per group and
//! consumer, so logs may be far larger than RAM (the page cache does the caching).
//!
//! How the broker uses it: [`Store::append`] (async) for sends; [`Store::pull`] to hand a
//! consumer the group's next messages (skipping what a tag filter rejects); [`Store::progress`] +
//! [`Store::pulled_since`] to re-deliver what a consumer pulled but did not ack;
//! [`Store::ack`]; [`Store::reset`]; [`Store::groups`] / [`Store::consumers`] for listings and lag;
//! [`Store::close`] on shutdown. Long-poll wake-ups are the broker's business: it knows which
//! subjects it just appended to.

pub mod action;
pub mod checkpoint;
pub mod consume_log;
mod error;
pub mod log;
mod names;
pub mod pull_log;
mod store;

pub use action::ConsumerKey;
pub use error::{Result, StoreError};
pub use store::{
    Appended, ConsumerInfo, FlushPolicy, GroupInfo, PullSpec, Pulled, ResetTo, Store, StoreConfig,
};
