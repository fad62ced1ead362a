//! The QMQ wire protocol, byte-compatible with the QMQ Java client.
//!
//! Map of the protocol:
//! - [`frame`]: every request and response is a [`Frame`] (length-prefixed header + body),
//!   read and written by [`FrameCodec`] (tokio-util) with a frame-size limit.
//! - [`codes`]: command codes (what a request asks) and response codes.
//! - [`message`]: the message wire form ([`Message`]) shared by sends and pull responses.
//! - [`send`]: SEND_MESSAGE batches and per-message [`ProducerCode`] results.
//! - [`pull`]: PULL_MESSAGE requests with tag filters, pull responses, ACK_REQUEST.
//! - [`meta`]: CLIENT_REGISTER routes, BROKER_REGISTER heartbeats, BROKER_ACQUIRE_META.
//!
//! Payload decoders take the body bytes (and the header version where the layout depends on it)
//! and never panic or allocate beyond the bytes they are given; encoders append to a `BytesMut`.

pub mod codes;
mod error;
pub mod frame;
pub mod message;
pub mod meta;
pub mod payload;
pub mod pull;
pub mod send;
pub mod wire;

pub use error::DecodeError;
pub use frame::{Frame, FrameCodec, FrameError, Header};
pub use message::{Message, MessageFlags, SentMessage};
pub use meta::{
    BrokerAcquireMetaRequest, BrokerAcquireMetaResponse, BrokerGroup, BrokerRegisterRequest,
    BrokerRequestType, BrokerRole, BrokerState, ClientRequestType, ClientType, MetaInfoRequest,
    MetaInfoResponse, OnOfflineState,
};
pub use payload::Payload;
pub use pull::{AckRequest, PullFilter, PullRequest, PullResponse, TagType};
pub use send::{ProducerCode, SendFailure};
pub use wire::EncodeError;
