//! qmq-rs delay server: messages scheduled for a later time (QMQ's delay/scheduled messages).
//!
//! Storage follows QMQ's design: a message log (write-ahead log, fsynced before a message is
//! acknowledged), schedule logs bucketed by delivery time (bucket width fixed when the store is
//! created, default 60 minutes), an in-memory timing wheel holding only the buckets near "now",
//! and per-bucket dispatch logs so a restart neither delivers a message twice nor skips one.
//!
//! - [`DelayEngine`]: the engine; [`DelayEngine::schedule`] takes message bytes + subject +
//!   id + schedule time, a [`Dispatcher`] receives them when due.
//! - [`Clock`]: injectable time ([`SystemClock`], [`ManualClock`] for tests).
//! - [`server`]: the TCP server speaking QMQ's SEND_MESSAGE (default port 20801) and
//!   [`BrokerForwarder`], the dispatcher that forwards due messages to one broker, and
//!   [`RoutedForwarder`], which sends each subject to the brokers the meta server routes it to.
//!
//! Memory: a message costs memory only while its bucket is in the wheel: one 24-byte wheel
//! entry (plus `Vec` growth slack, ~32-48 MB per million loaded messages in total); messages of
//! buckets not yet loaded cost nothing but their bucket's ~100 bytes of metadata.

#![warn(missing_docs)]

mod checkpoint;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod forward;
mod fsutil;
mod record;
pub mod server;
mod store;
mod wal;
mod wheel;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::DelayConfig;
pub use dispatch::{Dispatcher, DueMessage};
pub use engine::{CleanReport, DelayEngine, DelayStats, NewMessage, Scheduled};
pub use error::{DelayError, DispatchError, ScheduleError};
pub use forward::{BrokerForwarder, RoutedForwarder};
pub use server::{serve, ServerConfig, ServerHandle};
