//! Sending messages: [`Producer`] (queue, batching, retries, routing, circuit breakers) and the
//! one-shot [`send_batch`] it is built on. Applications use [`Producer`] with a
//! [`MetaRouter`](crate::MetaRouter); [`send_batch`] is the low-level path.

mod builder;
mod queue;

pub use builder::ProducerBuilder;
pub use queue::{Producer, ProducerConfig, SendReceipt};

use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_response, encode_send_request};
use qmq_protocol::{Message, MessageFlags, ProducerCode};

use crate::{Connection, ConnectionError};

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The message cannot be encoded (a field too long).
    #[error(transparent)]
    Encode(#[from] qmq_protocol::EncodeError),
    /// The broker's answer could not be decoded.
    #[error(transparent)]
    Decode(#[from] qmq_protocol::DecodeError),
    /// The broker refused the whole batch.
    #[error("broker answered code {0}")]
    Broker(i16),
    /// The producer's queue is full (fire-and-forget sends do not wait for room).
    #[error("send queue is full")]
    QueueFull,
    /// The producer is closed.
    #[error("producer is closed")]
    Closed,
    /// No route: the router knows no writable broker for the subject.
    #[error("no writable broker for subject {0}")]
    NoBroker(String),
    /// Every broker of the subject has its circuit breaker open.
    #[error("every broker for subject {0} is unavailable (circuit open)")]
    BrokersUnavailable(String),
    /// Routing failed.
    #[error(transparent)]
    Route(#[from] crate::router::RouteError),
    /// The message's expiry time passed before it could be stored.
    #[error("message {0} expired before it could be sent")]
    Expired(String),
    /// Every try failed; `last` says how the last one did.
    #[error("gave up after {tries} tries: {last}")]
    GaveUp {
        /// Tries made.
        tries: u32,
        /// The last try's error.
        last: String,
    },
    /// The broker refused this message.
    #[error("message {message_id} refused: {code:?} {remark}")]
    Refused {
        /// The message.
        message_id: String,
        /// Why.
        code: ProducerCode,
        /// The broker's remark.
        remark: String,
    },
}

impl SendError {
    /// Whether the broker was unreachable: the connection was refused, reset or closed (not a
    /// timeout: a slow broker is still the master).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SendError::Connection(ConnectionError::Connect { .. } | ConnectionError::Closed(_))
        )
    }
}

/// A new message for `subject` with a fresh QMQ-style id and its `qmq_createTime` set (as the
/// Java client sets it; consumers read the creation time from it).
///
/// ```
/// let m = qmq_client::new_message("order.created");
/// assert_eq!(m.subject, "order.created");
/// ```
pub fn new_message(subject: &str) -> Message {
    let now = chrono::Utc::now().timestamp_millis();
    Message {
        flags: MessageFlags::default(),
        created_time: now,
        expire_or_schedule: now,
        subject: subject.to_owned(),
        message_id: crate::id::next_id(crate::id::local_host()),
        tags: Vec::new(),
        attrs: vec![(
            crate::message::keys::CREATE_TIME.to_owned(),
            now.to_string(),
        )],
    }
}

/// Sends a batch to the broker on `conn`; returns one result per message, in order.
///
/// Low level, no meta server: one request to one broker, with no routing, retries, queue,
/// circuit breaker, metrics or tracing. A message refused by the broker (including DUPLICATE,
/// which [`Producer`] counts as stored) is an `Err` in its slot. Applications use [`Producer`]
/// with a [`MetaRouter`](crate::MetaRouter) (see the crate's quick start).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use qmq_client::{new_message, send_batch, Connection};
///
/// let conn = Connection::connect("127.0.0.1:20881").await?; // a broker
/// let messages = [new_message("demo"), new_message("demo")];
/// for (m, result) in messages.iter().zip(send_batch(&conn, &messages, Duration::from_secs(5)).await?) {
///     println!("{}: {:?}", m.message_id, result);
/// }
/// # Ok(()) }
/// ```
pub async fn send_batch(
    conn: &Connection,
    messages: &[Message],
    timeout: Duration,
) -> Result<Vec<Result<(), SendError>>, SendError> {
    let mut body = BytesMut::new();
    encode_send_request(messages, &mut body)?;
    let resp = conn
        .request(command::SEND_MESSAGE, body.freeze(), timeout)
        .await?;
    if resp.header.code != response::SUCCESS {
        return Err(SendError::Broker(resp.header.code));
    }
    let failures = decode_send_response(&resp.body)?;
    Ok(messages
        .iter()
        .map(
            |m| match failures.iter().find(|f| f.message_id == m.message_id) {
                Some(f) => Err(SendError::Refused {
                    message_id: f.message_id.clone(),
                    code: f.code,
                    remark: f.remark.clone(),
                }),
                None => Ok(()),
            },
        )
        .collect())
}
