//! The QMQ wire protocol, byte-compatible with the official QMQ Java client and servers.
//!
//! Map of the protocol (all integers big-endian; a "short string" is an `i16` byte length and
//! UTF-8 bytes):
//!
//! - [`frame`]: every request and response is a [`Frame`]: `i32 total`, `i16 header length`
//!   (18), a [`Header`] (magic `0xdec10ade`, code, version, opaque, flag, request code) and a
//!   body. [`FrameCodec`] reads and writes frames (tokio-util) under a size limit. The header
//!   `version` picks payload layouts: [`frame::VERSION_8`] added message tags, one pull tag filter
//!   and the ack broadcast byte; [`frame::VERSION_9`] (the Java client's) a list of pull filters.
//! - [`codes`]: command codes (what a request asks: SEND_MESSAGE, PULL_MESSAGE, ...) and
//!   response codes (SUCCESS, NO_MESSAGE, ...), as constants and as [`Command`] /
//!   [`ResponseCode`].
//! - [`message`]: the wire form of one message ([`Message`]), shared by sends, delay-server
//!   forwards and pull responses; in sends it follows its CRC-32 ([`SentMessage`]).
//! - [`send`]: SEND_MESSAGE bodies (messages back to back) and the answer listing the messages
//!   that failed, each with a [`ProducerCode`].
//! - [`pull`]: PULL_MESSAGE requests ([`PullRequest`] with [`PullFilter`]s), pull responses
//!   ([`PullResponse`]) and ACK_REQUEST ([`AckRequest`]).
//! - [`meta`]: meta-server traffic: CLIENT_REGISTER ([`MetaInfoRequest`] /
//!   [`MetaInfoResponse`], a client asks for the broker groups of a subject), BROKER_REGISTER
//!   ([`BrokerRegisterRequest`], brokers and delay servers come online and heartbeat) and
//!   BROKER_ACQUIRE_META (a server learns its group and role).
//! - [`replication`]: SYNC_LOG_REQUEST between a slave and its master ([`SyncLogRequest`],
//!   [`SyncChunk`], [`SyncHeartbeat`], the backup server's [`SyncIndexChunk`],
//!   SYNC_CHECKPOINT_REQUEST's [`SyncCheckpoint`]) and qmq-rs's GROUP_LEASE with the meta server
//!   ([`GroupLeaseRequest`], [`GroupLeaseResponse`]): roles, epochs and the master's lease.
//! - [`manage`]: CONSUME_MANAGE ([`ConsumeManageRequest`]), meta server to broker.
//! - [`payload`]: any frame body as a typed [`Payload`], chosen by its header.
//! - [`wire`]: the bounds-checked [`wire::Reader`] and string writers all payloads use.
//!
//! Decoders take the body bytes (and the header version where the layout depends on it), return
//! a [`DecodeError`] for anything malformed, never panic, and never allocate more than the bytes
//! they are given can justify. Encoders append to a `BytesMut` and fail with an [`EncodeError`]
//! for values the wire format cannot carry.

#![warn(missing_docs)]

pub mod backup;
pub mod codes;
mod error;
pub mod frame;
pub mod manage;
pub mod message;
pub mod meta;
pub mod payload;
pub mod pull;
pub mod replication;
pub mod send;
pub mod wire;

pub use backup::{
    FetchMessagesRequest, FetchMessagesResponse, StoredRecord, SyncMessagesChunk, FETCH_MESSAGES,
};
pub use codes::{Command, ResponseCode};
pub use error::DecodeError;
pub use frame::{Frame, FrameCodec, FrameError, Header};
pub use manage::{ConsumeFrom, ConsumeManageRequest};
pub use message::{Message, MessageFlags, SentMessage};
pub use meta::{
    BrokerAcquireMetaRequest, BrokerAcquireMetaResponse, BrokerGroup, BrokerRegisterRequest,
    BrokerRequestType, BrokerRole, BrokerState, ClientRequestType, ClientType, MetaInfoRequest,
    MetaInfoResponse, OnOfflineState,
};
pub use payload::Payload;
pub use pull::{AckRequest, PullFilter, PullRequest, PullResponse, TagType};
pub use replication::{
    EpochStart, GroupLeaseRequest, GroupLeaseResponse, SyncCheckpoint, SyncChunk, SyncHeartbeat,
    SyncIndexChunk, SyncIndexRecord, SyncLogRequest, SyncType,
};
pub use send::{ProducerCode, SendFailure};
pub use wire::EncodeError;
