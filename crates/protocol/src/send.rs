//! SEND_MESSAGE: a batch of messages and the per-message answer.
//!
//! Request body: messages in send form, back to back (see [`crate::message`]).
//! Response body (code SUCCESS): one entry per message that did NOT succeed —
//! `short string message_id`, `i32 code`, `short string remark`. An empty body means every
//! message was stored.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{Message, SentMessage};
use crate::wire::{put_string, EncodeError, Reader};
use crate::DecodeError;

/// Per-message producer result codes (Java `MessageProducerCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProducerCode {
    /// Stored.
    Success,
    /// The broker is too busy; retry later or elsewhere.
    BrokerBusy,
    /// A message with this id was already stored.
    Duplicate,
    /// The subject is not served by this broker.
    SubjectNotAssigned,
    /// The broker is read-only; send to another group.
    ReadOnly,
    /// The message is blocked (refused by policy: too large, malformed, forbidden).
    Block,
    /// The broker failed to store the message.
    StoreError,
}

impl ProducerCode {
    /// The wire code.
    pub fn code(self) -> i32 {
        match self {
            Self::Success => 0,
            Self::BrokerBusy => 1,
            Self::Duplicate => 2,
            Self::SubjectNotAssigned => 3,
            Self::ReadOnly => 4,
            Self::Block => 5,
            Self::StoreError => 6,
        }
    }

    /// The code for a wire value.
    pub fn from_code(code: i32) -> Result<Self, DecodeError> {
        Ok(match code {
            0 => Self::Success,
            1 => Self::BrokerBusy,
            2 => Self::Duplicate,
            3 => Self::SubjectNotAssigned,
            4 => Self::ReadOnly,
            5 => Self::Block,
            6 => Self::StoreError,
            other => {
                return Err(DecodeError::UnknownCode {
                    field: "producer result",
                    code: i64::from(other),
                })
            }
        })
    }
}

/// Encodes a batch of messages as a SEND_MESSAGE body.
pub fn encode_send_request(messages: &[Message], out: &mut BytesMut) -> Result<(), EncodeError> {
    for m in messages {
        m.encode_with_crc(out)?;
    }
    Ok(())
}

/// Decodes a SEND_MESSAGE body. A framing error anywhere fails the whole batch (the message
/// boundaries after it cannot be trusted); CRC mismatches are reported per message through
/// [`SentMessage::crc_ok`] so the rest of the batch can still be stored.
pub fn decode_send_request(body: &Bytes) -> Result<Vec<SentMessage>, DecodeError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(SentMessage::decode(body, &mut r)?);
    }
    Ok(out)
}

/// Like [`decode_send_request`], refusing the whole body ([`DecodeError::Invalid`]) as soon as
/// what it decodes to would take more than `max_decoded` bytes of memory, before the rest is
/// decoded. Servers use it so a frame's length bounds what decoding it allocates.
pub fn decode_send_request_limited(
    body: &Bytes,
    max_decoded: usize,
) -> Result<Vec<SentMessage>, DecodeError> {
    let mut r = Reader::new(body);
    let mut budget = max_decoded;
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(SentMessage::decode_limited(body, &mut r, &mut budget)?);
    }
    Ok(out)
}

/// Decodes a SEND_MESSAGE body and checks every message's CRC: the first mismatch fails the
/// whole body with [`DecodeError::CrcMismatch`]. Servers that prefer to refuse only the damaged
/// message use [`decode_send_request`] and [`SentMessage::verify_crc`] per message.
pub fn decode_send_request_verified(body: &Bytes) -> Result<Vec<SentMessage>, DecodeError> {
    let messages = decode_send_request(body)?;
    for m in &messages {
        m.verify_crc()?;
    }
    Ok(messages)
}

/// Re-encodes received messages as a SEND_MESSAGE body, byte for byte as they arrived (what a
/// delay server does when it forwards due messages to a broker).
pub fn encode_sent_messages(messages: &[SentMessage], out: &mut BytesMut) {
    for m in messages {
        m.encode(out);
    }
}

/// The result of one message that was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// The message's id.
    pub message_id: String,
    /// Why it was not stored.
    pub code: ProducerCode,
    /// A human-readable remark.
    pub remark: String,
}

/// Encodes the SEND_MESSAGE response body from the failures of a batch.
pub fn encode_send_response(
    failures: &[SendFailure],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    for f in failures {
        put_string(out, &f.message_id, "message id")?;
        out.put_i32(f.code.code());
        put_string(out, &f.remark, "remark")?;
    }
    Ok(())
}

/// Decodes a SEND_MESSAGE response body.
pub fn decode_send_response(body: &[u8]) -> Result<Vec<SendFailure>, DecodeError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while !r.is_empty() {
        let message_id = r.string("message id")?;
        let code = ProducerCode::from_code(r.i32("producer result")?)?;
        let remark = r.string("remark")?;
        out.push(SendFailure {
            message_id,
            code,
            remark,
        });
    }
    Ok(out)
}
