//! Meta server: broker registry, subject routing, client state and admin operations.
//!
//! - [`serve`] starts a server from a [`MetaConfig`] and returns a [`MetaServerHandle`].
//! - The TCP listener speaks the QMQ meta protocol (CLIENT_REGISTER, BROKER_REGISTER,
//!   BROKER_ACQUIRE_META); [`auth`] decides who may register brokers (cluster secret, trusted
//!   addresses). The HTTP listener answers discovery (`GET /meta/address`), the token-protected
//!   admin API (see [`http`]), QMQ's `/management` endpoint and broker directives (see
//!   [`broker_api`]).
//! - State lives in a database ([`store::Store`]: embedded SQLite, PostgreSQL or
//!   MySQL/MariaDB); every meta server on one database serves the same routes.
//! - [`failover`]: GROUP_LEASE (roles, epochs and master leases of replicated groups) and the
//!   failover checker that promotes a slave when a master's lease runs out.
//! - [`metrics`]: Prometheus metrics ([`MetaMetrics`], given in [`MetaConfig::metrics`]).
//! - [`cli`] is the admin tool (`qmq tools ...`); [`standalone`] registers a local broker.

pub mod admin;
pub mod auth;
pub mod broker_api;
mod cache;
pub mod cli;
mod config;
mod core;
mod error;
pub mod failover;
pub mod http;
mod http_client;
mod http_compat;
pub mod metrics;
pub mod model;
mod routing;
mod server;
pub mod standalone;
pub mod store;
pub mod subject;
mod tcp;

pub use crate::config::MetaConfig;
pub use crate::core::MetaCore;
pub use crate::error::MetaError;
pub use crate::http_client::{ApiResult, TOKEN_HEADER};
pub use crate::metrics::MetaMetrics;
pub use crate::server::{serve, MetaServerHandle};
