//! qmq-rs delay server: messages scheduled for a later time (QMQ's delay/scheduled messages).
//!
//! Storage follows QMQ's design: a message log (write-ahead log, fsynced before a message is
//! acknowledged), schedule logs bucketed by delivery time (bucket width fixed when the store is
//! created, default 60 minutes), an in-memory timing wheel holding only the buckets near "now",
//! and per-bucket dispatch logs so a restart skips no message and offers again only what it had
//! not recorded as dispatched.
//!
//! Restarts cost nothing per message of history: buckets the checkpoint counts fully
//! dispatched (fully dispatched history kept for retention) are never read again, the durable
//! part of every other schedule log is CRC-checked when its bucket is loaded rather than at
//! open, and dispatch starts as soon as the store is open: the bucket holding "now" is loaded
//! first, and loading later or overdue buckets never holds up the dispatch of what is due.
//!
//! Duplicates: a crash between forwarding a batch and recording it as dispatched (one
//! `dispatch_batch`, at most a few hundred messages) offers that batch again after the
//! restart, with the same message ids. A qmq-rs broker answers an id it stored within its
//! duplicate window (default 2 minutes, `--dedup-window-secs`; see `qmq_broker::dedup`) with
//! DUPLICATE and stores nothing, and the forwarder counts that as stored: so a restart within
//! the window stores nothing twice. A restart after it, a broker with the window off, a
//! re-dispatch routed to another broker group, or QMQ's Java broker (which never answers
//! DUPLICATE) may still store such a message twice; consumers that must never see a
//! duplicate still check ids (`qmq_client::idempotent`).
//!
//! - [`DelayEngine`]: the engine; [`DelayEngine::schedule`] takes message bytes + subject +
//!   id + schedule time, a [`Dispatcher`] receives them when due.
//! - [`Clock`]: injectable time ([`SystemClock`], [`ManualClock`] for tests).
//! - [`server`]: the TCP server speaking QMQ's SEND_MESSAGE (default port 20801) and
//!   [`BrokerForwarder`], the dispatcher that forwards due messages to one broker, and
//!   [`RoutedForwarder`], which sends each subject to the brokers the meta server routes it to.
//!
//! - [`metrics`]: Prometheus metrics ([`DelayMetrics`], given in [`DelayConfig::metrics`]):
//!   received, refused, dispatched, lateness, and the delay backlog at every scrape.
//! - [`replication`]: master/slave replication and failover of a delay group (the message log
//!   exactly, dispatch state with a bounded lag), roles from the meta server.
//!
//! Memory: a message costs memory only while its bucket is in the wheel: one 24-byte wheel
//! entry (plus `Vec` growth slack, ~32-48 MB per million loaded messages in total); messages of
//! buckets not yet loaded cost nothing but their bucket's ~100 bytes of metadata.
//!
//! Policies:
//!
//! - **Limits.** A message larger than `max_message_bytes` (default 4 MiB, the broker's
//!   default) is refused; the limit must not exceed the brokers'
//!   ([`DelayConfig::check_broker_limits`], checked by `qmq standalone` at start-up) and must
//!   fit a frame ([`ServerConfig::validate`]). Due messages are handed over in batches of at most
//!   `dispatch_batch` messages and `dispatch_batch_bytes` bytes, and forwarded in frames cut
//!   below the frame limit (16 MiB); a message too large for any frame is a permanent refusal.
//! - **Poison messages.** Every message has its own retry backoff, so one the brokers refuse
//!   never delays the others. A permanent refusal ([`Outcome::Permanent`]: blocked, too large,
//!   subject not assigned) counts towards `max_dispatch_attempts` (default 10); then the
//!   message goes to `%DEAD_DELAY%<subject>` ([`DEAD_LETTER_PREFIX`]) with a WARN line and is
//!   counted ([`DelayEngine::dead_lettered`]), and is recorded as dispatched once stored there.
//!   Transient failures (broker down, busy, read-only, no writable route) never dead-letter.
//! - **Durability.** A message is acknowledged after the message-log fsync; a batch whose
//!   write or fsync fails is cut off again, so an error answer means "not stored" (except a
//!   schedule-log failure after the fsync: the message log then still holds it, and a restart
//!   delivers it). Checkpoints keep three generations and fall back to an older one when the
//!   newest is damaged; created logs get a directory fsync, and flushes fsync the handles
//!   that wrote. After a failed log fsync the checkpoint stops advancing until a reopen.
//!   Disk I/O never runs on the async runtime.
//! - **Fault injection.** With the `failpoints` feature, failpoints named
//!   `delay::{wal,schedule,dispatch,checkpoint}::{write,fsync,read,rename}` and
//!   `delay::log::dir_fsync` inject failures at those sites (`tests/failpoints.rs`).

#![warn(missing_docs)]

mod checkpoint;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod forward;
mod fsutil;
pub mod metrics;
mod record;
pub mod replication;
pub mod server;
mod store;
mod wal;
mod wheel;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{DelayConfig, DEFAULT_MAX_MESSAGE_BYTES};
pub use dispatch::{dead_letter_subject, Dispatcher, DueMessage, Outcome, DEAD_LETTER_PREFIX};
pub use engine::{CleanReport, DelayEngine, DelayStats, NewMessage, Scheduled};
pub use error::{DelayError, DispatchError, ScheduleError};
pub use forward::{BrokerForwarder, RoutedForwarder};
pub use metrics::DelayMetrics;
pub use server::{serve, ServerConfig, ServerHandle};
pub use wal::WalChunk;
