//! Any frame's body as a typed payload, chosen by the header (code, direction, version).
//!
//! Servers decode the payloads they serve directly; this enum is for tools, tests and fuzzing
//! that must understand every frame they see.

use bytes::{Bytes, BytesMut};

use crate::codes::{command, response};
use crate::message::SentMessage;
use crate::meta::{
    BrokerAcquireMetaRequest, BrokerAcquireMetaResponse, BrokerRegisterRequest, MetaInfoRequest,
    MetaInfoResponse,
};
use crate::pull::{AckRequest, PullRequest, PullResponse};
use crate::send::{decode_send_request, decode_send_response, encode_send_response, SendFailure};
use crate::wire::EncodeError;
use crate::{DecodeError, Frame};

/// A typed frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// SEND_MESSAGE request.
    Send(Vec<SentMessage>),
    /// SEND_MESSAGE response: the messages that were not stored.
    SendResult(Vec<SendFailure>),
    /// PULL_MESSAGE request.
    Pull(PullRequest),
    /// Successful PULL_MESSAGE response.
    Pulled(PullResponse),
    /// ACK_REQUEST.
    Ack(AckRequest),
    /// CLIENT_REGISTER request.
    ClientRegister(MetaInfoRequest),
    /// CLIENT_REGISTER response.
    Route(MetaInfoResponse),
    /// BROKER_REGISTER request.
    BrokerRegister(BrokerRegisterRequest),
    /// BROKER_ACQUIRE_META request.
    AcquireMeta(BrokerAcquireMetaRequest),
    /// BROKER_ACQUIRE_META response.
    AcquiredMeta(BrokerAcquireMetaResponse),
    /// A body this protocol does not interpret (empty responses, other commands).
    Raw(Bytes),
}

impl Payload {
    /// Decodes `frame`'s body according to its header.
    pub fn decode(frame: &Frame) -> Result<Self, DecodeError> {
        let h = &frame.header;
        let body = &frame.body;
        if h.is_response() {
            if h.code != response::SUCCESS || body.is_empty() {
                return Ok(Self::Raw(body.clone()));
            }
            return Ok(match h.request_code {
                command::SEND_MESSAGE => Self::SendResult(decode_send_response(body)?),
                command::PULL_MESSAGE => Self::Pulled(PullResponse::decode(body)?),
                command::CLIENT_REGISTER => Self::Route(MetaInfoResponse::decode(body)?),
                command::BROKER_ACQUIRE_META => {
                    Self::AcquiredMeta(BrokerAcquireMetaResponse::decode(body)?)
                }
                _ => Self::Raw(body.clone()),
            });
        }
        Ok(match h.code {
            command::SEND_MESSAGE => Self::Send(decode_send_request(body)?),
            command::PULL_MESSAGE => Self::Pull(PullRequest::decode(h.version, body)?),
            command::ACK_REQUEST => Self::Ack(AckRequest::decode(body)?),
            command::CLIENT_REGISTER => Self::ClientRegister(MetaInfoRequest::decode(body)?),
            command::BROKER_REGISTER => Self::BrokerRegister(BrokerRegisterRequest::decode(body)?),
            command::BROKER_ACQUIRE_META => {
                Self::AcquireMeta(BrokerAcquireMetaRequest::decode(body)?)
            }
            _ => Self::Raw(body.clone()),
        })
    }

    /// Encodes the body for protocol `version` (only pull requests depend on it).
    pub fn encode(&self, version: i16) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        match self {
            Self::Send(messages) => {
                for m in messages {
                    m.message.encode_with_crc(&mut out)?;
                }
            }
            Self::SendResult(failures) => encode_send_response(failures, &mut out)?,
            Self::Pull(p) => p.encode(version, &mut out)?,
            Self::Pulled(p) => p.encode(&mut out)?,
            Self::Ack(a) => a.encode(&mut out)?,
            Self::ClientRegister(m) => m.encode(&mut out)?,
            Self::Route(m) => m.encode(&mut out)?,
            Self::BrokerRegister(b) => b.encode(&mut out)?,
            Self::AcquireMeta(a) => a.encode(&mut out)?,
            Self::AcquiredMeta(a) => a.encode(&mut out)?,
            Self::Raw(b) => return Ok(b.clone()),
        }
        Ok(out.freeze())
    }
}
