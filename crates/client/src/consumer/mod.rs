//! Consuming: the listener API ([`Consumer::subscribe`]), the stream API
//! ([`Consumer::stream`]), the pull API ([`PullClient`]) and the single-broker
//! [`PullConsumer`] they are built on.
//!
//! Listeners and streams are one mechanism: a stream is the listener engine with a handler
//! that hands each message out as a [`Delivery`] and waits for its [`Delivery::ack`],
//! [`Delivery::nack`] or [`Delivery::retry_after`]. Both pull from every broker of the route
//! with bounded concurrency, follow failovers, send failures to the group's retry subject (and
//! to the dead-letter subject after the last retry) and ack each pulled batch once all its
//! messages are done; tags, [`Filter`]s, broadcast and at-most-once work the same for both,
//! and so do tracing and metrics. The stream sits on the listener rather than the other way
//! round because the per-batch bookkeeping (which messages of a pulled range are done, when to
//! ack it) must live below either API anyway, and handlers keep a direct call instead of a
//! channel hop per message. Pick the listener for a function called per message, the
//! stream to drive the loop yourself (`while let Some(d) = deliveries.next().await`), and the
//! pull API to ask for batches when you want them.
//!
//! ```no_run
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! use futures::StreamExt;
//! use qmq_client::{HandleError, MessageExt, SubscribeOptions};
//!
//! let mut deliveries = consumer.stream("order.created", "audit", SubscribeOptions::default()).await?;
//! while let Some(d) = deliveries.next().await {
//!     if d.times() == 1 {
//!         d.nack(HandleError::msg("first delivery fails, on purpose")); // back via %RETRY%
//!     } else {
//!         println!("{}", d.message_id);
//!         d.ack();
//!     }
//! #   break;
//! }
//! deliveries.shutdown().await; // unresolved deliveries come again to the group
//! # Ok(()) }
//! ```

mod builder;
mod handler;
mod listener;
mod pull;
mod pull_client;
mod stream;

pub use builder::ConsumerBuilder;
pub use handler::{
    Filter, FilterContext, HandleError, HandleResult, MessageHandler, ReceivedMessage,
};
pub(crate) use listener::run_guarded;
pub use listener::{
    dead_retry_subject, retry_subject, ConsumeError, Consumer, ConsumerConfig, SubscribeOptions,
    Subscription,
};
pub use pull::{NewGroupStart, PullConsumer, PullError};
pub use pull_client::{PullClient, PulledBatch};
pub use stream::{Deliveries, Delivery};
