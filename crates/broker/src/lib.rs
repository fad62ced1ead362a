//! Realtime broker: accepts sends, serves long-poll pulls and acks on top of the store.
//!
//! Data flows one way: network ([`server`]) → decode (`qmq-protocol`) → store (`qmq-store`) →
//! pull ([`pull`], scheduled fairly per consumer group by [`scheduler`]). Messages a consumer will
//! not finish go to its group's retry subject ([`retry`], names in [`subjects`]).

pub mod config;
mod error;
pub mod pull;
pub mod registration;
pub mod retry;
pub mod scheduler;
pub mod server;
pub mod subjects;
pub mod tags;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use server::{serve, BrokerControl, BrokerHandle};
