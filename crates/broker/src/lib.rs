//! Realtime broker: accepts sends, serves long-poll pulls and acks on top of the store.
//!
//! Data flows one way: network ([`server`]) → decode (`qmq-protocol`) → store (`qmq-store`) →
//! pull ([`pull`], scheduled fairly per consumer group by [`scheduler`]). Messages a consumer will
//! not finish go to its group's retry subject ([`retry`], names in [`subjects`]), which is
//! served only after the retry delay.
//!
//! Limits and policies (all in [`BrokerConfig`]): names are checked at the protocol edge before
//! anything is recorded ([`subjects`]); a new consumer group starts at the latest message, as in
//! QMQ, unless configured or asked otherwise ([`pull`]); pull responses and redeliveries keep to
//! a byte budget below the frame limit; each connection has bounded requests and bytes in
//! flight, and a SEND frame a bounded decoded size; acks are checked against what was pulled and
//! applied in order per consumer; idle consumers are forgotten ([`server`]). A message whose
//! id was stored on its subject within the duplicate window is answered `DUPLICATE` and not
//! stored again ([`dedup`]).

pub mod config;
pub mod dedup;
mod error;
pub mod metrics;
pub mod pull;
pub mod registration;
pub mod replication;
pub mod retry;
pub mod scheduler;
pub mod server;
pub mod subjects;
pub mod tags;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use metrics::BrokerMetrics;
pub use server::{serve, serve_with, BrokerControl, BrokerHandle};
