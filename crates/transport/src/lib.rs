//! The client side of QMQ's transport, shared by the qmq-rs client and servers.
//!
//! - [`Connection`]: one multiplexed connection to a QMQ server (meta server, broker or delay
//!   server), many requests in flight, responses matched by `opaque`.
//! - [`Router`]: which broker groups serve a subject; [`StaticRouter`] answers with fixed
//!   addresses, [`MetaRouter`] asks a QMQ meta server and keeps its answers fresh.
//! - [`identity`]: the host name and client ids this process presents.
//!
//! Why a crate of its own: the broker registers with the meta server over a [`Connection`] and
//! the delay server forwards due messages through a [`Router`]. Before this crate they depended
//! on the whole `qmq-client`, and with it on SQL drivers and Redis they never call. Servers
//! depend on this crate; `qmq-client` re-exports every item here at its old path, so client
//! users see no change. Nothing here touches the disk.
//!
//! Runtimes: the constructors ([`MetaRouter::new`], [`StaticRouter::new`]) need no Tokio
//! runtime; every async fn (and the tasks it spawns) runs on the Tokio runtime that polls it.

#![warn(missing_docs)]

pub mod connection;
pub mod identity;
mod meta_router;
pub mod router;

pub use connection::{Connection, ConnectionError};
pub use meta_router::{DiscoveryError, MetaRouter, MetaRouterConfig};
pub use router::{RouteError, Router, StaticRouter};
