//! Consuming: the listener API ([`Consumer::subscribe`]), the pull API ([`PullClient`]) and the
//! single-broker [`PullConsumer`] both are built on.

mod builder;
mod handler;
mod listener;
mod pull;
mod pull_client;

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
