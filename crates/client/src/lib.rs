//! Native async Rust client for QMQ: speaks the same wire protocol as the QMQ Java client, so it
//! works against qmq-rs and Java QMQ servers alike.
//!
//! - [`Client`]: connects to the meta server (checking it at once) and builds producers and
//!   consumers sharing its router.
//! - [`Producer`]: an async send queue with batching, retries keeping message ids, routing
//!   through a [`Router`] ([`StaticRouter`] or [`MetaRouter`]) and per-broker
//!   [`CircuitBreaker`]s. [`MessageExt`] gives typed message properties, tags, delay and expiry.
//! - [`Consumer`]: listeners ([`Consumer::subscribe`]) with bounded concurrency, QMQ's
//!   retry and dead-letter subjects, at-most-once and broadcast modes, tag filters and
//!   [`Filter`] hooks; the same as a [`Stream`](futures::Stream) of [`Delivery`]s to ack or
//!   nack ([`Consumer::stream`]); the pull API ([`PullClient`]); the low-level single-broker
//!   [`PullConsumer`].
//! - [`from_java`]: QMQ Java client concepts and their equivalents here.
//! - [`idempotent`]: run handlers at most once per message with a database, a database
//!   transaction shared with the handler (cargo feature `sql`), or Redis (feature `redis`).
//! - [`consumer`](macro@consumer): `#[qmq_client::consumer(...)]`, QMQ's `@QmqConsumer` (see
//!   [`annotation`]).
//! - `outbox` (feature `sql`): transactional messages, sent if and only if the business
//!   transaction commits (QMQ's outbox table, resent by the watchdog).
//! - [`Connection`] and [`send_batch`]: one multiplexed connection to one QMQ server, one request
//!   at a time (the low-level path, see [below](#without-a-meta-server-low-level)).
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
//! # Quick start
//!
//! Applications find their brokers through the meta server, as QMQ's Java client does: a
//! [`Client`] checks the meta server when it connects, asks it which broker groups serve a
//! subject, keeps the answer fresh and follows failovers. One client (cheap to clone) serves
//! every producer and consumer of the process; they are made with builders, whose `build()`
//! returns an error rather than panicking outside a Tokio runtime.
//!
//! ```no_run
//! use qmq_client::*;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The meta server's HTTP address (`host:port`; QMQ Java's `metaServer` is the URL
//! // `http://127.0.0.1:8080/meta/address`) and this application's code. A meta server that
//! // cannot be reached is an error here, naming the address and what failed.
//! let client = Client::connect("127.0.0.1:8080", "order-service").await?;
//!
//! let producer = client.producer().build()?;
//! let mut m = new_message("order.created");
//! m.set_i64("orderId", 42)?;
//! let receipt = producer.send(m).await?; // resolves once a broker stored it
//! println!("stored {} on {}", receipt.message_id, receipt.broker);
//!
//! // Many at once: one result per message, in order.
//! let mut batch = Vec::new();
//! for order in 43..53 {
//!     let mut m = new_message("order.created");
//!     m.set_i64("orderId", order)?;
//!     batch.push(m);
//! }
//! for result in producer.send_all(batch).await {
//!     println!("{:?}", result.map(|r| r.message_id));
//! }
//!
//! let consumer = client.consumer().concurrency(8).build()?;
//! consumer
//!     .subscribe("order.created", "billing", |m: ReceivedMessage| async move {
//!         println!("order {:?}", m.get_i64("orderId"));
//!         Ok(()) // acks; an Err sends the message to the group's retry subject
//!     }, SubscribeOptions::default())
//!     .await?;
//! // ... until the process stops:
//! consumer.shutdown().await;
//! producer.close().await;
//! # Ok(()) }
//! ```
//!
//! [`Producer::builder`] and [`Consumer::builder`] take any [`Router`] (a [`MetaRouter`] of
//! one's own, a [`StaticRouter`]); [`Producer::new`] and [`Consumer::new`] take a whole config.
//!
//! The programs in `crates/client/examples/` do the same against a running server
//! (`qmq standalone` serves the meta server on `127.0.0.1:8080`): `producer`, `listener`,
//! `stream`, `pull`, `macro_consumer`, `transactional` (feature `sql`) and `low_level`.
//!
//! # Consuming as a stream
//!
//! [`Consumer::stream`] gives the messages as a [`Stream`](futures::Stream) of [`Delivery`]s,
//! for code that drives its own loop. Each delivery is resolved explicitly: [`Delivery::ack`],
//! [`Delivery::nack`] (back through the group's retry subject, like a listener's `Err`) or
//! [`Delivery::retry_after`]; one dropped unresolved counts as a failure, so none is lost. It
//! is the listener underneath (same retries, filters, modes, metrics and spans), with at most
//! [`ConsumerConfig::concurrency`] deliveries unresolved at once: the stream stops handing out
//! (and pulling) until some are resolved.
//!
//! ```no_run
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! use futures::StreamExt;
//! use qmq_client::{HandleError, MessageExt, SubscribeOptions};
//!
//! let mut deliveries = consumer.stream("order.created", "billing", SubscribeOptions::default()).await?;
//! while let Some(d) = deliveries.next().await {
//!     match d.get_i64("orderId") {
//!         Some(order) => {
//!             println!("order {order}");
//!             d.ack();
//!         }
//!         None => d.nack(HandleError::msg("no orderId")), // retried after the broker's delay
//!     }
//! #   break;
//! }
//! deliveries.shutdown().await; // what is unresolved is handed out again
//! # Ok(()) }
//! ```
//!
//! QMQ Java users: [`from_java`] maps `MessageProducerProvider`, `@QmqConsumer`,
//! `PullConsumer`, idempotent checkers and filters to this crate.
//!
//! # Where a new consumer group starts
//!
//! A consumer group that a broker has never seen starts, on that broker, at the subject's
//! **latest** message: it gets the messages stored after its first pull there, none of the
//! earlier ones. That is QMQ's rule, and qmq-rs brokers follow it by default
//! (`--new-group-start latest`). So:
//!
//! - start a new group's consumers **before** the producers whose messages it must see; once a
//!   broker has seen the group it keeps the group's position there, across restarts of either
//!   side (a broker added to the subject's route later is new to the group again);
//! - to have a new group read what the subject already holds, ask for
//!   [`NewGroupStart::Earliest`] ([`SubscribeOptions::new_group_start`],
//!   [`PullClient::new_group_start`]), or start the brokers with `--new-group-start earliest`;
//! - [`NewGroupStart::Broker`] (the default) leaves it to the broker's setting;
//!   [`NewGroupStart::Latest`] insists on the latest whatever the broker's setting.
//!
//! The choice applies only the first time a broker sees the group; after that the group resumes
//! where it stopped. Java QMQ brokers ignore the request and always start at the latest. The
//! group's retry subject always starts at the earliest, so no failed message is skipped.
//!
//! ```no_run
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! use qmq_client::{NewGroupStart, ReceivedMessage, SubscribeOptions};
//!
//! // A new "reporting" group reads the subject from its oldest stored message.
//! let options = SubscribeOptions {
//!     new_group_start: NewGroupStart::Earliest,
//!     ..SubscribeOptions::default()
//! };
//! consumer
//!     .subscribe("order.created", "reporting", |_m: ReceivedMessage| async { Ok(()) }, options)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # At least once: a handler may see a message again
//!
//! A listener acks a message only after its handler returned `Ok` (a pulled batch is acked as
//! one pull-log range once all its messages are done), so no message is lost, but some are
//! delivered twice. When the ack does not reach the broker, or does not outlive it, the broker
//! hands the message out again although its handler finished:
//!
//! - the consumer process dies, or its connection drops, between the handler and the ack;
//! - the broker dies: a master killed before the ack arrived, or after it but before it reached
//!   the slave (acks are replicated asynchronously in every replication mode). The slave that
//!   takes over continues the group from the last ack it has.
//!
//! The message comes back to the same consumer on its next pull, or, once that consumer has
//! been silent for the broker's consumer lease (3 min), to any consumer of the group through
//! its retry subject (`qmq_times` is not incremented then: it is not a failure). A test that
//! killed a master under load saw 30 such repeats; that is the normal price of at-least-once, not
//! a fault. The broker's duplicate window does not help here: it drops repeated *sends* of one
//! message id, not repeated deliveries.
//!
//! A handler whose effect must happen once therefore either is idempotent by itself (an upsert,
//! a unique key on the business row) or is wrapped in [`idempotent::Idempotent`], which records
//! each message's key (`<subject>%<group>%<message id>`) in a database or Redis and skips a
//! delivery whose key is recorded; with `idempotent::Transactional` (feature `sql`) the record
//! and the handler's database writes commit together, so a crash cannot keep one without the
//! other. [`SubscribeOptions::consume_most_once`] is the opposite trade: the message is acked
//! before its handler runs, never delivered twice, and lost if the handler fails or the process
//! dies.
//!
//! ```no_run
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! use std::collections::HashSet;
//! use std::sync::Mutex;
//! use futures::future::BoxFuture;
//! use qmq_client::idempotent::{Idempotent, IdempotentChecker, IdempotentError};
//! use qmq_client::{ReceivedMessage, SubscribeOptions};
//!
//! /// A checker of one's own (in memory here, so only good for one process: use `SqlChecker`
//! /// or `RedisChecker` when several consumers share the group).
//! #[derive(Default)]
//! struct Seen(Mutex<HashSet<String>>);
//!
//! impl IdempotentChecker for Seen {
//!     fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
//!         Box::pin(async move { Ok(!self.0.lock().unwrap().insert(key.to_owned())) })
//!     }
//!     fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
//!         Box::pin(async move {
//!             self.0.lock().unwrap().remove(key);
//!             Ok(())
//!         })
//!     }
//! }
//!
//! let handler = Idempotent::new(Seen::default(), |m: ReceivedMessage| async move {
//!     println!("charging order {} once", m.message_id);
//!     Ok(())
//! });
//! consumer.subscribe_with("order.paid", "billing", handler, SubscribeOptions::default()).await?;
//! # Ok(()) }
//! ```
//!
//! The producer side is at-least-once too: a send whose answer was lost is tried again with the
//! same message id (the broker's duplicate window answers DUPLICATE instead of storing it twice,
//! a Java QMQ broker stores it again), and the outbox watchdog may resend a message whose
//! producer died after the broker stored it.
//!
//! # Without a meta server (low level)
//!
//! - [`StaticRouter`]: [`Producer`] and [`Consumer`] over a fixed list of broker addresses, for
//!   tests and a single `qmq standalone` broker. It answers every subject and client type with
//!   that list, so delayed messages and [`HandleError::retry_after`] go to those brokers rather
//!   than to a delay server (they need the meta server's routes), and it follows no failover.
//! - [`Connection`], [`send_batch`] and [`PullConsumer`]: one connection to one broker, one
//!   request at a time, nothing more: no routing, queue, retries, circuit breaker, retry
//!   subject, tracing or metrics. The building blocks of the above and of the `qmq send` /
//!   `qmq consume` commands; applications use [`Producer`] and [`Consumer`] instead.
//!
//! ```no_run
//! use std::time::Duration;
//! use qmq_client::{new_message, send_batch, Connection, PullConsumer};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = Connection::connect("127.0.0.1:20881").await?; // a broker, not the meta server
//! let mut m = new_message("demo");
//! m.set_attr("body", "hello");
//! for result in send_batch(&conn, &[m], Duration::from_secs(5)).await? {
//!     result?; // per message: stored, or refused by the broker
//! }
//!
//! let mut consumer = PullConsumer::new(conn, "demo", "g1", "consumer-1");
//! let (first, messages) = consumer.pull(10, Duration::from_secs(5)).await?;
//! if !messages.is_empty() {
//!     consumer.ack(first, first + messages.len() as i64 - 1).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! All off by default, so that a program links no database driver it does not use:
//!
//! | feature | adds |
//! |---|---|
//! | `sql` | `idempotent::SqlChecker` and `idempotent::Transactional` (sqlx: PostgreSQL, MySQL/MariaDB, SQLite); `outbox`: transactional messages |
//! | `redis` | `idempotent::RedisChecker` |

#![warn(missing_docs)]

pub mod annotation;
pub mod breaker;
mod brokers;
pub mod client;
pub mod consumer;
pub mod from_java;
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
pub use client::{BuildError, Client, ClientBuilder, ConnectError};
pub use connection::{Connection, ConnectionError};
pub use consumer::{
    ConsumeError, Consumer, ConsumerBuilder, ConsumerConfig, Deliveries, Delivery, Filter,
    FilterContext, HandleError, HandleResult, MessageHandler, NewGroupStart, PullClient,
    PullConsumer, PullError, PulledBatch, ReceivedMessage, SubscribeOptions, Subscription,
};
pub use message::{MessageExt, PropertyError};
pub use producer::{
    new_message, send_batch, Producer, ProducerBuilder, ProducerConfig, SendError, SendReceipt,
};
pub use qmq_protocol::{
    BrokerGroup, BrokerState as BrokerGroupState, ClientType, Message, TagType,
};
pub use qmq_transport::{DiscoveryError, MetaRouter, MetaRouterConfig};
pub use router::{RouteError, Router, StaticRouter};

/// Registers an async fn as a listener; see [`annotation`].
pub use qmq_client_macros::consumer;

/// The README's Rust code blocks, compiled as doctests of this crate so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    //! Re-exports the `#[consumer]` macro's expansion refers to.
    pub use futures::future::BoxFuture;
    pub use inventory;
}
