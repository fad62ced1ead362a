//! qmq-rs backup server (QMQ's `qmq-backup`, spec §3): follows broker groups over the sync
//! protocol and keeps a queryable message index that survives restarts.
//!
//! * [`IndexStore`]: the index in one redb file — messages by subject and creation time, by
//!   message id, and per broker group and sequence — with each group's sync offset stored in
//!   the same transaction as the records it covers, and retention by creation time.
//! * [`follower`]: a task per broker group speaking sync type 5 (index records) to the
//!   group's sync address, resuming from the stored offset, reconnecting with back-off.
//! * [`http`]: the query API — QMQ's `GET /api/message?backupQuery=` and qmq-rs's own JSON
//!   endpoints under `/v1`.
//!
//! This is the first slice of the backup: consumption records (sync type 1), dead letters and
//! replay come later, as tables and offset streams of their own in the same store.

#![warn(missing_docs)]

mod error;
pub mod follower;
pub mod http;
pub mod keys;
pub mod server;
pub mod store;

pub use error::BackupError;
pub use store::{Applied, IndexEntry, IndexStore, Page, RangeQuery, INDEX_STREAM};
