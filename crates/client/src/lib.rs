//! Native async Rust client for QMQ: speaks the same wire protocol as the QMQ Java client.

pub mod connection;

pub use connection::{Connection, ConnectionError};
