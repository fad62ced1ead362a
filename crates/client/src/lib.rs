//! Native async Rust client for QMQ: speaks the same wire protocol as the QMQ Java client.
//!
//! - [`Connection`]: one multiplexed connection to a QMQ server.
//! - [`producer`]: build messages with QMQ-style ids and send batches with per-message results.
//! - [`consumer`]: [`PullConsumer`] pulls (with long poll and tag filters) and acks.

pub mod connection;
pub mod consumer;
mod id;
pub mod producer;

pub use connection::{Connection, ConnectionError};
pub use consumer::{PullConsumer, PullError};
pub use producer::{new_message, send_batch, SendError};
