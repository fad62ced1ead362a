//! The pull API: the application asks for messages when it wants them ([`PullClient::pull`]),
//! acks each batch ([`PullClient::ack`]) and hands failed messages back for a later retry
//! ([`PullClient::retry_later`]). It pulls the subject and the group's retry subject from every
//! broker of the route, in turn. A broker that answers BROKER_REJECT (a slave, or a master
//! deposed by a failover) or refuses or drops the connection fails that pull; the next pull
//! re-reads the route (throttled by the router) and continues on the group's new master.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qmq_protocol::{ClientType, TagType};

use super::handler::ReceivedMessage;
use super::listener::{retry_subject, send_back_to, ConsumeError, Consumer, ConsumerConfig};
use super::{NewGroupStart, PullConsumer, PullError};
use crate::brokers::Brokers;
use crate::message::keys;
use crate::monitoring;
use crate::ConnectionError;

/// Messages from one pull, to be acked together with [`PullClient::ack`].
#[derive(Debug)]
pub struct PulledBatch {
    /// The messages, in pull-log order.
    pub messages: Vec<ReceivedMessage>,
    /// The broker address and the subject (or retry subject) pulled.
    source: (String, String),
    first: i64,
}

/// One (broker, subject) pair pulled from.
struct Source {
    addr: String,
    subject: String,
    consumer: PullConsumer,
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
    sources: Vec<Source>,
    next: usize,
    brokers: Arc<Brokers>,
    config: ConsumerConfig,
    start: NewGroupStart,
    tags: Option<(TagType, Vec<String>)>,
    /// A broker refused a pull or ack, or went away: re-read the route before the next pull.
    stale: AtomicBool,
}

impl Consumer {
    /// A [`PullClient`] for `subject` as `group`, connected to the route's readable brokers.
    pub async fn pull_client(
        &self,
        subject: &str,
        group: &str,
    ) -> Result<PullClient, ConsumeError> {
        let mut client = PullClient {
            subject: subject.to_owned(),
            group: group.to_owned(),
            sources: Vec::new(),
            next: 0,
            brokers: self.brokers().clone(),
            config: self.config().clone(),
            start: NewGroupStart::Broker,
            tags: None,
            stale: AtomicBool::new(false),
        };
        client.follow_route().await?;
        if client.sources.is_empty() {
            return Err(ConsumeError::NoBroker(subject.to_owned()));
        }
        Ok(client)
    }
}

impl PullClient {
    /// Where the group starts on a broker that has never seen it (default: as the broker is
    /// configured; see [`NewGroupStart`]).
    ///
    /// ```no_run
    /// # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
    /// use qmq_client::{NewGroupStart, TagType};
    ///
    /// let pull = consumer
    ///     .pull_client("order.created", "audit")
    ///     .await?
    ///     .new_group_start(NewGroupStart::Earliest)
    ///     .with_tags(TagType::Or, &["vip".into(), "refund".into()]);
    /// # Ok(()) }
    /// ```
    pub fn new_group_start(mut self, start: NewGroupStart) -> Self {
        self.start = start;
        self.sources = std::mem::take(&mut self.sources)
            .into_iter()
            .map(|mut s| {
                s.consumer = s.consumer.new_group_start(start);
                s
            })
            .collect();
        self
    }

    /// Only messages whose tags match (`And`: all of `tags`, `Or`: any of them).
    pub fn with_tags(mut self, tag_type: TagType, tags: &[String]) -> Self {
        self.tags = Some((tag_type, tags.to_vec()));
        self.sources = std::mem::take(&mut self.sources)
            .into_iter()
            .map(|mut s| {
                s.consumer = s.consumer.with_tags(tag_type, tags);
                s
            })
            .collect();
        self
    }

    fn source(&self, conn: crate::Connection, addr: &str, subject: &str) -> Source {
        let mut consumer = PullConsumer::new(conn, subject, &self.group, &self.config.consumer_id)
            .new_group_start(self.start);
        if let Some((tag_type, tags)) = &self.tags {
            consumer = consumer.with_tags(*tag_type, tags);
        }
        Source {
            addr: addr.to_owned(),
            subject: subject.to_owned(),
            consumer,
        }
    }

    /// Reads the route and pulls from its readable brokers: keeps the sources of brokers still
    /// listed whose connection is open, adds the new ones, drops those that left. A route that
    /// cannot be had, or lists no reachable broker, leaves the sources as they are.
    async fn follow_route(&mut self) -> Result<(), ConsumeError> {
        let groups = self
            .brokers
            .router
            .route(&self.subject, ClientType::Consumer, &self.group)
            .await?;
        let retry = retry_subject(&self.subject, &self.group);
        let mut kept: Vec<Source> = Vec::new();
        let mut old = std::mem::take(&mut self.sources);
        for g in groups.into_iter().filter(|g| g.state.can_read()) {
            let open: Vec<Source> = {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    old.into_iter().partition(|s| s.addr == g.master);
                old = rest;
                mine.into_iter()
                    .filter(|s| s.consumer.connection().is_open())
                    .collect()
            };
            if !open.is_empty() {
                kept.extend(open);
                continue;
            }
            match self.brokers.connection(&g.master).await {
                Ok(conn) => {
                    for s in [self.subject.clone(), retry.clone()] {
                        kept.push(self.source(conn.clone(), &g.master, &s));
                    }
                }
                Err(e) => tracing::warn!(broker = %g.master, error = %e, "skipping broker"),
            }
        }
        if kept.is_empty() {
            tracing::warn!(subject = %self.subject, "route lists no reachable broker; keeping the old one");
            self.sources = old;
        } else {
            self.sources = kept;
        }
        Ok(())
    }

    /// Up to `max` messages from the next source (broker and subject or retry subject) in
    /// turn, waiting up to `wait`; `None` when it had none. After a broker refused a pull or
    /// went away (that pull's error), the route is read again first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as to messages: if the future is dropped after the request went out, the
    /// broker may have handed this consumer a batch that the client never sees, but nothing
    /// is lost. The client only moves on past what it received, so the next pull of that
    /// source asks from the same place and the broker (qmq-rs or Java QMQ) hands the same
    /// messages out again. The turn of the sources does move on, so the next call may pull
    /// another source first.
    pub async fn pull(
        &mut self,
        max: i32,
        wait: Duration,
    ) -> Result<Option<PulledBatch>, PullError> {
        if self.stale.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.follow_route().await {
                tracing::warn!(subject = %self.subject, error = %e, "route re-read failed");
                self.stale.store(true, Ordering::Release);
            }
        }
        if self.sources.is_empty() {
            self.stale.store(true, Ordering::Release);
            monitoring::pull_failed(&self.subject, &self.group);
            return Err(PullError::Connection(ConnectionError::Closed(format!(
                "no broker for {}",
                self.subject
            ))));
        }
        let i = self.next % self.sources.len();
        self.next = self.next.wrapping_add(1);
        let source = &mut self.sources[i];
        let (first, messages) = match source.consumer.pull(max, wait).await {
            Ok(pulled) => pulled,
            Err(e) => {
                monitoring::pull_failed(&self.subject, &self.group);
                if e.calls_for_reroute() {
                    let addr = source.addr.clone();
                    self.brokers.reroute(&self.subject, &addr);
                    self.stale.store(true, Ordering::Release);
                }
                return Err(e);
            }
        };
        if messages.is_empty() {
            return Ok(None);
        }
        monitoring::pulled(&self.subject, &self.group, messages.len());
        let key = (source.addr.clone(), source.subject.clone());
        let messages = messages
            .into_iter()
            .map(|mut m| {
                m.set_attr(keys::CONSUMER_GROUP_NAME, self.group.clone());
                ReceivedMessage::new(m, &self.subject, &self.group)
            })
            .collect();
        Ok(Some(PulledBatch {
            messages,
            source: key,
            first,
        }))
    }

    /// Acks every message of `batch` (batches of one source must be acked in pull order).
    /// Messages handed to [`PullClient::retry_later`] are acked along with the rest. A batch
    /// from a broker the client no longer pulls from (it failed over) cannot be acked; its
    /// group's new master hands the messages out again.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the ack may or may not have reached the broker. Acking the
    /// batch again is harmless (the broker ignores a range it already has); a batch left
    /// unacked is handed out again, so nothing is lost either way, at worst delivered twice.
    pub async fn ack(&self, batch: &PulledBatch) -> Result<(), PullError> {
        let last = batch.first + batch.messages.len() as i64 - 1;
        let (addr, subject) = &batch.source;
        let Some(source) = self
            .sources
            .iter()
            .find(|s| &s.addr == addr && &s.subject == subject)
        else {
            return Err(PullError::Connection(ConnectionError::Closed(addr.clone())));
        };
        let result = source.consumer.ack(batch.first, last).await;
        match &result {
            Ok(()) => monitoring::acked(&self.subject, &self.group, last - batch.first + 1),
            Err(_) => monitoring::ack_failed(&self.subject, &self.group),
        }
        if let Err(e) = &result {
            if e.calls_for_reroute() {
                self.brokers.reroute(&self.subject, addr);
                self.stale.store(true, Ordering::Release);
            }
        }
        result
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
