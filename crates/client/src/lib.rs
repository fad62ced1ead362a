//! Native async Rust client for QMQ: speaks the same wire protocol as the QMQ Java client, so it
//! works against qmq-rs and Java QMQ servers alike.
//!
//! - [`Producer`]: an async send queue with batching, retries keeping message ids, routing
//!   through a [`Router`] ([`StaticRouter`] or [`MetaRouter`]) and per-broker
//!   [`CircuitBreaker`]s. [`MessageExt`] gives typed message properties, tags, delay and expiry.
//! - [`Consumer`]: listeners ([`Consumer::subscribe`]) with bounded concurrency, QMQ's
//!   retry and dead-letter subjects, at-most-once and broadcast modes, tag filters and
//!   [`Filter`] hooks; the pull API ([`PullClient`]); the single-broker [`PullConsumer`].
//! - [`idempotent`]: run handlers at most once per message with a database, a database
//!   transaction shared with the handler (cargo feature `sql`), or Redis (feature `redis`).
//! - [`consumer`](macro@consumer): `#[qmq_client::consumer(...)]`, QMQ's `@QmqConsumer` (see
//!   [`annotation`]).
//! - `outbox` (feature `sql`): transactional messages, sent if and only if the business
//!   transaction commits (QMQ's outbox table, resent by the watchdog).
//! - [`Connection`]: one multiplexed connection to a QMQ server.
//! - [`monitoring`]: send and consume metrics through the `metrics` facade; the application picks
//!   the exporter.
//! - [`tracing_ctx`]: OpenTelemetry spans for sending, handling and acking, with the trace
//!   context carried in `qtrace_` message attributes (W3C Trace Context); the application
//!   installs the tracer provider.
//!
//! [`Connection`], the routers and [`MetaRouter`] live in the small `qmq-transport` crate, which
//! the qmq-rs servers use without the rest of the client; they are re-exported here at their
//! usual paths (`qmq_client::Connection`, `qmq_client::connection::ConnectionError`,
//! `qmq_client::router::Router`, ...).
//!
//! Cargo features, all off by default so that a program links no database driver it does not
//! use:
//!
//! | feature | adds |
//! |---|---|
//! | `sql` | `idempotent::SqlChecker` and `idempotent::Transactional` (sqlx: PostgreSQL, MySQL/MariaDB, SQLite); `outbox`: transactional messages |
//! | `redis` | `idempotent::RedisChecker` |
//!
//! Quick start:
//!
//! ```no_run
//! use std::sync::Arc;
//! use qmq_client::*;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let router = Arc::new(StaticRouter::new(["127.0.0.1:20881"]));
//!
//! let producer = Producer::new(router.clone(), ProducerConfig::default());
//! let mut m = new_message("order.created");
//! m.set_i64("orderId", 42)?;
//! producer.send(m).await?;
//!
//! let consumer = Consumer::new(router, ConsumerConfig::default());
//! consumer
//!     .subscribe("order.created", "billing", |m: ReceivedMessage| async move {
//!         println!("order {:?}", m.get_i64("orderId"));
//!         Ok(())
//!     }, SubscribeOptions::default())
//!     .await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod annotation;
pub mod breaker;
mod brokers;
pub mod consumer;
mod id;
pub mod idempotent;
pub mod message;
pub mod monitoring;
#[cfg(feature = "sql")]
pub mod outbox;
pub mod producer;
pub mod tracing_ctx;

pub use qmq_transport::{connection, router};

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use connection::{Connection, ConnectionError};
pub use consumer::{
    ConsumeError, Consumer, ConsumerConfig, Filter, FilterContext, HandleError, HandleResult,
    MessageHandler, NewGroupStart, PullClient, PullConsumer, PullError, PulledBatch,
    ReceivedMessage, SubscribeOptions, Subscription,
};
pub use message::{MessageExt, PropertyError};
pub use producer::{new_message, send_batch, Producer, ProducerConfig, SendError, SendReceipt};
pub use qmq_protocol::{
    BrokerGroup, BrokerState as BrokerGroupState, ClientType, Message, TagType,
};
pub use qmq_transport::{MetaRouter, MetaRouterConfig};
pub use router::{RouteError, Router, StaticRouter};

/// Registers an async fn as a listener; see [`annotation`].
pub use qmq_client_macros::consumer;

#[doc(hidden)]
pub mod __private {
    //! Re-exports the `#[consumer]` macro's expansion refers to.
    pub use futures::future::BoxFuture;
    pub use inventory;
}
