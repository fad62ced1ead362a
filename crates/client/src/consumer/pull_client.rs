//! The pull API: the application asks for messages when it wants them ([`PullClient::pull`]),
//! acks each batch ([`PullClient::ack`]) and hands failed messages back for a later retry
//! ([`PullClient::retry_later`]). It pulls the subject and the group's retry subject from every
//! broker of the route, in turn.

use std::time::Duration;

use qmq_protocol::ClientType;

use super::handler::ReceivedMessage;
use super::listener::{retry_subject, send_back_to, ConsumeError, Consumer, ConsumerConfig};
use super::{PullConsumer, PullError};
use crate::brokers::Brokers;
use crate::message::keys;
use std::sync::Arc;

/// Messages from one pull, to be acked together with [`PullClient::ack`].
#[derive(Debug)]
pub struct PulledBatch {
    /// The messages, in pull-log order.
    pub messages: Vec<ReceivedMessage>,
    source: usize,
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
    sources: Vec<PullConsumer>,
    next: usize,
    brokers: Arc<Brokers>,
    config: ConsumerConfig,
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
        let retry = retry_subject(subject, group);
        let mut sources = Vec::new();
        for g in groups.into_iter().filter(|g| g.state.can_read()) {
            match self.brokers().connection(&g.master).await {
                Ok(conn) => {
                    for s in [subject, retry.as_str()] {
                        sources.push(PullConsumer::new(
                            conn.clone(),
                            s,
                            group,
                            &self.config().consumer_id,
                        ));
                    }
                }
                Err(e) => tracing::warn!(broker = %g.master, error = %e, "skipping broker"),
            }
        }
        if sources.is_empty() {
            return Err(ConsumeError::NoBroker(subject.to_owned()));
        }
        Ok(PullClient {
            subject: subject.to_owned(),
            group: group.to_owned(),
            sources,
            next: 0,
            brokers: self.brokers().clone(),
            config: self.config().clone(),
        })
    }
}

impl PullClient {
    /// Up to `max` messages from the next source (broker and subject or retry subject) in
    /// turn, waiting up to `wait`; `None` when it had none.
    pub async fn pull(
        &mut self,
        max: i32,
        wait: Duration,
    ) -> Result<Option<PulledBatch>, PullError> {
        let source = self.next % self.sources.len();
        self.next = self.next.wrapping_add(1);
        let (first, messages) = self.sources[source].pull(max, wait).await?;
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
            source,
            first,
        }))
    }

    /// Acks every message of `batch` (batches of one source must be acked in pull order).
    /// Messages handed to [`PullClient::retry_later`] are acked along with the rest.
    pub async fn ack(&self, batch: &PulledBatch) -> Result<(), PullError> {
        let last = batch.first + batch.messages.len() as i64 - 1;
        self.sources[batch.source].ack(batch.first, last).await
    }

    /// Sends `message` to the group's retry subject with `qmq_times` incremented (or to the
    /// dead-letter subject once out of retries), for delivery after the broker's retry delay
    /// (plus the configured `retry_delay`, if any), as a listener does with a failed message.
    /// Call it before acking the message's batch; `false` if it could not be sent (then do not
    /// ack, and the broker hands the batch out again).
    pub async fn retry_later(&self, message: &ReceivedMessage) -> bool {
        send_back_to(
            &self.brokers,
            &self.config,
            &self.subject,
            &self.group,
            message.message().clone(),
            self.config.retry_delay,
        )
        .await
    }
}
