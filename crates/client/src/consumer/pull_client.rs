//! The pull API: the application asks for messages when it wants them ([`PullClient::pull`])
//! and acks each batch ([`PullClient::ack`]), over every broker of the subject's route.

use std::time::Duration;

use qmq_protocol::ClientType;

use super::handler::ReceivedMessage;
use super::listener::{ConsumeError, Consumer};
use super::{PullConsumer, PullError};
use crate::message::keys;

/// Messages from one pull, to be acked together with [`PullClient::ack`].
#[derive(Debug)]
pub struct PulledBatch {
    /// The messages, in pull-log order.
    pub messages: Vec<ReceivedMessage>,
    broker: usize,
    first: i64,
}

/// Pulls one subject as one group from every broker of its route, in turn.
///
/// ```no_run
/// # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let mut pull = consumer.pull_client("order.created", "audit").await?;
/// if let Some(batch) = pull.pull(10, Duration::from_secs(1)).await? {
///     for m in &batch.messages {
///         println!("{}", m.message_id);
///     }
///     pull.ack(&batch).await?;
/// }
/// # Ok(()) }
/// ```
pub struct PullClient {
    subject: String,
    group: String,
    consumers: Vec<PullConsumer>,
    next: usize,
}

impl Consumer {
    /// A [`PullClient`] for `subject` as `group`, connected to the route's readable brokers.
    pub async fn pull_client(
        &self,
        subject: &str,
        group: &str,
    ) -> Result<PullClient, ConsumeError> {
        let groups = self
            .brokers()
            .router
            .route(subject, ClientType::Consumer, group)
            .await?;
        let mut consumers = Vec::new();
        for g in groups.into_iter().filter(|g| g.state.can_read()) {
            match self.brokers().connection(&g.master).await {
                Ok(conn) => consumers.push(PullConsumer::new(
                    conn,
                    subject,
                    group,
                    &self.config().consumer_id,
                )),
                Err(e) => tracing::warn!(broker = %g.master, error = %e, "skipping broker"),
            }
        }
        if consumers.is_empty() {
            return Err(ConsumeError::NoBroker(subject.to_owned()));
        }
        Ok(PullClient {
            subject: subject.to_owned(),
            group: group.to_owned(),
            consumers,
            next: 0,
        })
    }
}

impl PullClient {
    /// Up to `max` messages from the next broker in turn, waiting up to `wait`; `None` when it
    /// had none.
    pub async fn pull(
        &mut self,
        max: i32,
        wait: Duration,
    ) -> Result<Option<PulledBatch>, PullError> {
        let broker = self.next % self.consumers.len();
        self.next = self.next.wrapping_add(1);
        let (first, messages) = self.consumers[broker].pull(max, wait).await?;
        if messages.is_empty() {
            return Ok(None);
        }
        let messages = messages
            .into_iter()
            .map(|mut m| {
                m.set_attr(keys::CONSUMER_GROUP_NAME, self.group.clone());
                ReceivedMessage::new(m, &self.subject, &self.group)
            })
            .collect();
        Ok(Some(PulledBatch {
            messages,
            broker,
            first,
        }))
    }

    /// Acks every message of `batch` (batches of one broker must be acked in pull order).
    pub async fn ack(&self, batch: &PulledBatch) -> Result<(), PullError> {
        let last = batch.first + batch.messages.len() as i64 - 1;
        self.consumers[batch.broker].ack(batch.first, last).await
    }
}
