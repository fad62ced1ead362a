//! qmq-rs backup server (QMQ's `qmq-backup`, spec §3): follows broker groups over the sync
//! protocol and keeps a queryable message index that survives restarts.
//!
//! * [`IndexStore`]: the index in one redb file — messages by subject and creation time, by
//!   message id, by property value and per broker group and sequence, their [`Details`]
//!   (tags, application, delivery time of delay messages) and dead letters with their bodies
//!   — with each group's sync offset stored in the same transaction as the records it
//!   covers, and retention by creation time.
//! * [`follower`]: a task per broker group asking the group's sync address for its stored
//!   messages (sync type 6, qmq-rs's richer QMQ type 5), resuming from the stored offset,
//!   reconnecting with back-off.
//! * [`records`]: consumption records from each group's action log (sync type 1, a second
//!   follower stream per group, its own `action` offset in the same store): who pulled and
//!   acked which message, stamped with the backup's receive time (`seen_at`).
//! * [`life`]: a message's life merged from both.
//! * [`brokers`] and [`dead`]: message bodies read from their broker (FETCH_MESSAGES), dead
//!   letters listed and replayed to their group's retry subject.
//! * [`metrics`]: what the followers and replays did, at `GET /metrics`.
//! * [`http`]: the query API — QMQ's `GET /api/message`, `/api/message/dead`,
//!   `/api/message/detail` and `/api/message/records`, and qmq-rs's own JSON endpoints under
//!   `/v1`.

#![warn(missing_docs)]

pub mod brokers;
pub mod dead;
pub mod details;
mod error;
pub mod follower;
pub mod http;
pub mod keys;
pub mod life;
pub mod metrics;
pub mod records;
pub mod server;
pub mod store;

pub use details::{Details, Indexed};
pub use error::BackupError;
pub use life::{Event, EventKind, Life};
pub use records::{AppliedActions, ConsumptionRecord, RecordAction, ACTION_STREAM};
pub use store::{Applied, IndexEntry, IndexStore, Page, RangeQuery, INDEX_STREAM};
