//! Sending messages to a broker.

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

/// A new message for `subject` with a fresh id.
pub fn new_message(subject: &str) -> Message {
    let now = chrono::Utc::now().timestamp_millis();
    Message {
        flags: MessageFlags::default(),
        created_time: now,
        expire_or_schedule: now,
        subject: subject.to_owned(),
        message_id: crate::id::next_id(&local_host()),
        tags: Vec::new(),
        attrs: Vec::new(),
    }
}

fn local_host() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".into())
}

/// Sends a batch to the broker on `conn`; returns one result per message, in order.
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
