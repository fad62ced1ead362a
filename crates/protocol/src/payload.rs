//! Any frame's body as a typed payload, chosen by the header (code, direction, version).
//!
//! Servers decode the payloads they serve directly; this enum is for tools, tests and fuzzing
//! that must understand every frame they see. `decode` then `encode` with the same header gives
//! back the body byte for byte.

use bytes::{Bytes, BytesMut};

use crate::codes::{command, response};
use crate::manage::ConsumeManageRequest;
use crate::message::SentMessage;
use crate::meta::{
    BrokerAcquireMetaRequest, BrokerAcquireMetaResponse, BrokerRegisterRequest, MetaInfoRequest,
    MetaInfoResponse,
};
use crate::pull::{AckRequest, PullRequest, PullResponse};
use crate::send::{
    decode_send_request_verified, decode_send_response, encode_send_response, encode_sent_messages,
    SendFailure,
};
use crate::wire::EncodeError;
use crate::{DecodeError, Frame, Header};

/// A typed frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// SEND_MESSAGE request (every message's CRC checked).
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
    /// CONSUME_MANAGE request.
    ConsumeManage(ConsumeManageRequest),
    /// A body this protocol does not interpret: empty or error responses, the answers to
    /// BROKER_REGISTER / ACK_REQUEST / CONSUME_MANAGE (empty), and commands QMQ clients never
    /// send to the servers this crate serves (replication, UID, lag queries).
    Raw(Bytes),
}

impl Payload {
    /// Decodes `frame`'s body according to its header.
    pub fn decode(frame: &Frame) -> Result<Self, DecodeError> {
        let h = &frame.header;
        let body = &frame.body;
        if h.is_response() {
            if h.code != response::SUCCESS {
                return Ok(Self::Raw(body.clone()));
            }
            return Ok(match h.request_code {
                // An empty body: every message was stored.
                command::SEND_MESSAGE => Self::SendResult(decode_send_response(body)?),
                _ if body.is_empty() => Self::Raw(body.clone()),
                command::PULL_MESSAGE => {
                    Self::Pulled(PullResponse::decode_for_version(h.version, body)?)
                }
                command::CLIENT_REGISTER => Self::Route(MetaInfoResponse::decode(body)?),
                command::BROKER_ACQUIRE_META => {
                    Self::AcquiredMeta(BrokerAcquireMetaResponse::decode(body)?)
                }
                _ => Self::Raw(body.clone()),
            });
        }
        Ok(match h.code {
            command::SEND_MESSAGE => Self::Send(decode_send_request_verified(body)?),
            command::PULL_MESSAGE => Self::Pull(PullRequest::decode(h.version, body)?),
            command::ACK_REQUEST => Self::Ack(AckRequest::decode_for_version(h.version, body)?),
            command::CLIENT_REGISTER => Self::ClientRegister(MetaInfoRequest::decode(body)?),
            command::BROKER_REGISTER => Self::BrokerRegister(BrokerRegisterRequest::decode(body)?),
            command::BROKER_ACQUIRE_META => {
                Self::AcquireMeta(BrokerAcquireMetaRequest::decode(body)?)
            }
            command::CONSUME_MANAGE => Self::ConsumeManage(ConsumeManageRequest::decode(body)?),
            _ => Self::Raw(body.clone()),
        })
    }

    /// Encodes the body to send under `header` (its version picks the layout of pull requests,
    /// pull responses and acks).
    pub fn encode(&self, header: &Header) -> Result<Bytes, EncodeError> {
        let version = header.version;
        let mut out = BytesMut::new();
        match self {
            Self::Send(messages) => encode_sent_messages(messages, &mut out),
            Self::SendResult(failures) => encode_send_response(failures, &mut out)?,
            Self::Pull(p) => p.encode(version, &mut out)?,
            Self::Pulled(p) => p.encode_for_version(version, &mut out)?,
            Self::Ack(a) => a.encode_for_version(version, &mut out)?,
            Self::ClientRegister(m) => m.encode(&mut out)?,
            Self::Route(m) => m.encode(&mut out)?,
            Self::BrokerRegister(b) => b.encode(&mut out)?,
            Self::AcquireMeta(a) => a.encode(&mut out)?,
            Self::AcquiredMeta(a) => a.encode(&mut out)?,
            Self::ConsumeManage(c) => c.encode(&mut out)?,
            Self::Raw(b) => return Ok(b.clone()),
        }
        Ok(out.freeze())
    }

    /// A frame of `header` carrying this payload.
    pub fn into_frame(&self, header: Header) -> Result<Frame, EncodeError> {
        Ok(Frame::new(header, self.encode(&header)?))
    }
}
