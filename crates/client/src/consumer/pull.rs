//! Pulling messages from one broker and acknowledging them: the low-level [`PullConsumer`] that
//! [`PullClient`](crate::PullClient) and the listeners are built on.

use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::{command, response};
use qmq_protocol::frame::VERSION_9;
use qmq_protocol::{AckRequest, Message, PullFilter, PullRequest, PullResponse, TagType};

use crate::{Connection, ConnectionError};

/// Why a pull or ack failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The connection failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A request could not be encoded.
    #[error(transparent)]
    Encode(#[from] qmq_protocol::EncodeError),
    /// A response could not be decoded.
    #[error(transparent)]
    Decode(#[from] qmq_protocol::DecodeError),
    /// The broker answered with an error code.
    #[error("broker answered code {0}")]
    Broker(i16),
}

impl PullError {
    /// Whether the broker should no longer be pulled from at this address: it answered
    /// BROKER_REJECT (a slave or a deposed master) or its connection was refused, reset or
    /// closed. The client then re-reads the subject's routes.
    pub(crate) fn calls_for_reroute(&self) -> bool {
        matches!(
            self,
            PullError::Broker(response::BROKER_REJECT)
                | PullError::Connection(
                    ConnectionError::Connect { .. } | ConnectionError::Closed(_)
                )
        )
    }
}

/// Where a consumer group the broker has never seen starts (sent in the pull request's
/// `offset` field, which QMQ brokers ignore; see [`qmq_protocol::pull::START_EARLIEST`]).
///
/// It matters once per (broker, group): the first pull of the group on that broker fixes its
/// position there, and later pulls continue from it whatever they ask. With the default, a new
/// group gets only the messages stored after its first pull, so start its consumers before
/// the producers it must hear from, or ask for [`NewGroupStart::Earliest`] to read what the
/// subject already holds. Retry subjects always start at the earliest. See the crate's
/// [new group section](crate#where-a-new-consumer-group-starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewGroupStart {
    /// As the broker is configured (QMQ's rule, and the default: the latest message).
    #[default]
    Broker,
    /// At the oldest stored message.
    Earliest,
    /// After the newest message.
    Latest,
}

impl NewGroupStart {
    fn offset(self) -> i64 {
        match self {
            Self::Broker => -1,
            Self::Earliest => qmq_protocol::pull::START_EARLIEST,
            Self::Latest => qmq_protocol::pull::START_LATEST,
        }
    }
}

/// A consumer of one subject in one group, pulling from one broker. Each pulled batch must be
/// acked (in order); what is not acked is handed out again.
///
/// Low level, no meta server: one connection, no routing, no retry subject (failed messages
/// cannot be handed back), no failover. Not QMQ Java's `PullConsumer`, whose equivalent is
/// [`PullClient`](crate::PullClient) ([`Consumer::pull_client`](crate::Consumer::pull_client)).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use qmq_client::{Connection, NewGroupStart, PullConsumer};
///
/// let conn = Connection::connect("127.0.0.1:20881").await?; // a broker
/// let mut consumer = PullConsumer::new(conn, "demo", "g1", "consumer-1")
///     .new_group_start(NewGroupStart::Earliest);
/// let (first, messages) = consumer.pull(10, Duration::from_secs(5)).await?;
/// if !messages.is_empty() {
///     consumer.ack(first, first + messages.len() as i64 - 1).await?;
/// }
/// # Ok(()) }
/// ```
pub struct PullConsumer {
    conn: Connection,
    subject: String,
    group: String,
    consumer_id: String,
    broadcast: bool,
    filters: Vec<PullFilter>,
    /// Last pull-log offset received.
    last_received: i64,
    start: NewGroupStart,
}

impl PullConsumer {
    /// A consumer of `subject` in `group` named `consumer_id`.
    pub fn new(conn: Connection, subject: &str, group: &str, consumer_id: &str) -> Self {
        Self {
            conn,
            subject: subject.into(),
            group: group.into(),
            consumer_id: consumer_id.into(),
            broadcast: false,
            filters: Vec::new(),
            last_received: -1,
            start: NewGroupStart::Broker,
        }
    }

    /// Where the group starts if the broker has never seen it (default: the broker decides).
    pub fn new_group_start(mut self, start: NewGroupStart) -> Self {
        self.start = start;
        self
    }

    /// Only messages whose tags match (`And`: all of them, `Or`: any of them).
    pub fn with_tags(mut self, tag_type: TagType, tags: &[String]) -> Self {
        self.filters = vec![PullFilter::Tag {
            tag_type,
            tags: tags.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }];
        self
    }

    /// Every consumer of the group sees every message.
    pub fn broadcast(mut self, on: bool) -> Self {
        self.broadcast = on;
        self
    }

    /// Pulls up to `max` messages, waiting up to `wait` for some to arrive. Returns the
    /// pull-log offset of the first and the messages (none when the wait ran out).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as to messages: a dropped future may leave the broker having handed out a
    /// batch this consumer never received, but the consumer's position only moves on past
    /// what it received, so its next pull asks from the same place and the broker (qmq-rs or
    /// Java QMQ) hands those messages out again. The connection stays usable.
    pub async fn pull(
        &mut self,
        max: i32,
        wait: Duration,
    ) -> Result<(i64, Vec<Message>), PullError> {
        let req = PullRequest {
            subject: self.subject.clone(),
            group: self.group.clone(),
            consumer_id: self.consumer_id.clone(),
            request_num: max,
            offset: self.start.offset(),
            pull_offset_begin: -1,
            pull_offset_last: self.last_received,
            timeout_ms: wait.as_millis() as i64,
            broadcast: self.broadcast,
            filters: self.filters.clone(),
        };
        let mut body = BytesMut::new();
        req.encode(VERSION_9, &mut body)?;
        let resp = self
            .conn
            .request(
                command::PULL_MESSAGE,
                body.freeze(),
                wait + Duration::from_secs(5),
            )
            .await?;
        match resp.header.code {
            response::NO_MESSAGE => Ok((-1, Vec::new())),
            response::SUCCESS => {
                let r = PullResponse::decode(&resp.body)?;
                if !r.messages.is_empty() {
                    self.last_received = r.pull_log_offset + r.messages.len() as i64 - 1;
                }
                Ok((r.pull_log_offset, r.messages))
            }
            code => Err(PullError::Broker(code)),
        }
    }

    /// The connection this consumer pulls on.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Acknowledges pull-log offsets `first..=last`.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the ack may or may not have reached the broker. Sending it
    /// again is harmless (a range already acked is ignored); left unacked, the messages are
    /// handed out again (at least once, never lost).
    pub async fn ack(&self, first: i64, last: i64) -> Result<(), PullError> {
        let mut body = BytesMut::new();
        AckRequest {
            subject: self.subject.clone(),
            group: self.group.clone(),
            consumer_id: self.consumer_id.clone(),
            pull_offset_begin: first,
            pull_offset_last: last,
            broadcast: self.broadcast,
        }
        .encode(&mut body)?;
        let resp = self
            .conn
            .request(command::ACK_REQUEST, body.freeze(), Duration::from_secs(5))
            .await?;
        if resp.header.code != response::SUCCESS {
            return Err(PullError::Broker(resp.header.code));
        }
        Ok(())
    }
}
