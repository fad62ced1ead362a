//! Annotation-style listeners, as QMQ's `@QmqConsumer`: put
//! `#[qmq_client::consumer(subject = "...", group = "...")]` on an
//! `async fn(ReceivedMessage) -> HandleResult` anywhere in the program, then start every such
//! function with [`Consumer::subscribe_registered`]. Registration happens at link time (through
//! the `inventory` crate), so no list of handlers has to be kept by hand.
//!
//! ```no_run
//! use qmq_client::{HandleResult, ReceivedMessage};
//!
//! #[qmq_client::consumer(subject = "order.created", group = "billing", tags = ["vip"])]
//! async fn on_order(message: ReceivedMessage) -> HandleResult {
//!     println!("order {}", message.message_id);
//!     Ok(())
//! }
//!
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! let started = consumer.subscribe_registered().await?;
//! # Ok(()) }
//! ```

use futures::future::BoxFuture;
use qmq_protocol::TagType;

use crate::consumer::{ConsumeError, Consumer, HandleResult, ReceivedMessage, SubscribeOptions};

/// One `#[consumer]` function and its attributes (built by the macro, not by hand).
#[derive(Debug)]
pub struct ConsumerRegistration {
    /// `module::path::function`, for logs.
    pub name: &'static str,
    /// The subject.
    pub subject: &'static str,
    /// The consumer group.
    pub group: &'static str,
    /// Tag filter (empty: none).
    pub tags: &'static [&'static str],
    /// How `tags` combine.
    pub tag_type: TagType,
    /// Broadcast mode.
    pub broadcast: bool,
    /// At-most-once mode.
    pub consume_most_once: bool,
    /// The function.
    pub handler: fn(ReceivedMessage) -> BoxFuture<'static, HandleResult>,
}

impl ConsumerRegistration {
    /// The subscription options these attributes stand for.
    pub fn options(&self) -> SubscribeOptions {
        SubscribeOptions {
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
            tag_type: Some(self.tag_type),
            broadcast: self.broadcast,
            consume_most_once: self.consume_most_once,
            filters: Vec::new(),
            new_group_start: Default::default(),
        }
    }
}

inventory::collect!(ConsumerRegistration);

/// Every `#[consumer]` function linked into the program.
pub fn registered() -> impl Iterator<Item = &'static ConsumerRegistration> {
    inventory::iter::<ConsumerRegistration>.into_iter()
}

impl Consumer {
    /// Subscribes every `#[consumer]` function of the program; returns how many.
    pub async fn subscribe_registered(&self) -> Result<usize, ConsumeError> {
        let mut n = 0;
        for r in registered() {
            tracing::info!(
                handler = r.name,
                subject = r.subject,
                group = r.group,
                "subscribing"
            );
            self.subscribe(r.subject, r.group, r.handler, r.options())
                .await?;
            n += 1;
        }
        Ok(n)
    }
}
