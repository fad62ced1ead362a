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
//! * [`records`]: consumption records from each group's action log (sync type 1, a second
//!   follower stream per group, its own `action` offset in the same store): who pulled and
//!   acked which message, stamped with the backup's receive time (`seen_at`).
//!
//! Dead-letter bodies and replay come later, as tables of their own in the same store.

#![warn(missing_docs)]

mod error;
pub mod follower;
pub mod http;
pub mod keys;
pub mod life;
pub mod records;
pub mod server;
pub mod store;

pub use error::BackupError;
pub use life::{Event, EventKind, Life};
pub use records::{AppliedActions, ConsumptionRecord, RecordAction, ACTION_STREAM};
pub use store::{Applied, IndexEntry, IndexStore, Page, RangeQuery, INDEX_STREAM};
