//! Replication traffic: QMQ's SYNC_LOG_REQUEST (code 20) between a slave and its master's sync
//! port, and qmq-rs's GROUP_LEASE (code [`GROUP_LEASE`]) between a server and the meta server.
//!
//! SYNC_LOG_REQUEST keeps QMQ's layouts (WP §7.1): the request is `u8 syncType ; i64
//! messageLogOffset ; i64 actionLogOffset`; log shipping (types 1 and 2) answers `i32 size ; i64
//! startOffset ; size bytes of the log`, where `startOffset` may be above what was asked when the
//! master no longer holds the requested bytes; a heartbeat (type 3) answers the master's two log
//! ends. The log bytes are the store's own record format (see the store crate's docs). An
//! index request (type 5, from a backup server) answers QMQ's per-message index records
//! ([`SyncIndexChunk`]), byte for byte as a Java broker does.
//!
//! SYNC_CHECKPOINT_REQUEST (code 21) keeps QMQ's response shape with qmq-rs's own content
//! ([`SyncCheckpoint`]): a slave that cannot continue from its logs starts again from it.
//!
//! GROUP_LEASE is a qmq-rs addition (a Java meta server answers it `UNKNOWN_CODE`, and a server
//! then keeps the role QMQ's BROKER_ACQUIRE_META gave it, without failover). Every server of a
//! replicated group calls it about three times per lease: it reports how far its logs reach and
//! which epoch (term) it follows, and learns its role, the group's epoch, the address to
//! replicate from and, for the master, how long it may accept writes. The meta database decides
//! promotions with a conditional update of the group's epoch, so two meta servers can never make
//! two masters of one epoch.

use bytes::{BufMut, Bytes, BytesMut};

use crate::meta::CLUSTER_SECRET_KEY;
use crate::wire::{put_string, Reader};
use crate::{BrokerRole, DecodeError, EncodeError};

/// Command code of GROUP_LEASE (qmq-rs only; unused by QMQ).
pub const GROUP_LEASE: i16 = 70;

/// What a SYNC_LOG_REQUEST asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncType {
    /// Action-log bytes from `action_offset`.
    Action,
    /// Message-log bytes from `message_offset`.
    Message,
    /// The master's log ends (and the slave's, for the master's lag figures).
    Heartbeat,
    /// Message index records for a backup server, from `message_offset`.
    Index,
    /// Stored messages for a qmq-rs backup server, from `message_offset` (qmq-rs only, see
    /// [`crate::SyncMessagesChunk`]).
    Messages,
}

impl SyncType {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::Action => 1,
            Self::Message => 2,
            Self::Heartbeat => 3,
            Self::Index => 5,
            Self::Messages => 6,
        }
    }

    /// The type of a wire code.
    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        match code {
            1 => Ok(Self::Action),
            2 => Ok(Self::Message),
            3 => Ok(Self::Heartbeat),
            5 => Ok(Self::Index),
            6 => Ok(Self::Messages),
            other => Err(DecodeError::UnknownCode {
                field: "sync type",
                code: i64::from(other),
            }),
        }
    }
}

/// A SYNC_LOG_REQUEST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLogRequest {
    /// What is asked for.
    pub sync_type: SyncType,
    /// The slave's message-log end (types 2, 3 and 5), else 0.
    pub message_offset: i64,
    /// The slave's action-log end (types 1 and 3), else 0.
    pub action_offset: i64,
}

impl SyncLogRequest {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.sync_type.code());
        out.put_i64(self.message_offset);
        out.put_i64(self.action_offset);
    }

    /// Decodes a body (the delay flavour's longer body is refused: it has its own type).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = Self {
            sync_type: SyncType::from_code(r.u8("sync type")?)?,
            message_offset: r.i64("message log offset")?,
            action_offset: r.i64("action log offset")?,
        };
        r.finish("sync log request")?;
        Ok(req)
    }
}

/// The answer to a log-shipping SYNC_LOG_REQUEST (types 1 and 2): log bytes and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncChunk {
    /// The log offset of the first byte (the requested one, or the master's oldest retained
    /// offset when it no longer holds the requested bytes).
    pub start: i64,
    /// Whole log records, back to back (empty when the master has nothing new).
    pub bytes: Bytes,
}

impl SyncChunk {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let len = i32::try_from(self.bytes.len()).map_err(|_| EncodeError::TooLong {
            field: "sync chunk",
            len: self.bytes.len(),
            max: i32::MAX as usize,
        })?;
        out.put_i32(len);
        out.put_i64(self.start);
        out.put_slice(&self.bytes);
        Ok(())
    }

    /// Decodes a body; the bytes are a slice of `body` (no copy).
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let size = r.i32("sync chunk size")?;
        let size = usize::try_from(size).map_err(|_| DecodeError::NegativeLength {
            field: "sync chunk size",
            len: i64::from(size),
        })?;
        let start = r.i64("sync chunk start")?;
        let at = r.position();
        r.bytes(size, "sync chunk bytes")?;
        r.finish("sync chunk")?;
        Ok(Self {
            start,
            bytes: body.slice(at..at + size),
        })
    }
}

/// The answer to a heartbeat SYNC_LOG_REQUEST (type 3): the master's log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncHeartbeat {
    /// The master's message-log end.
    pub message_end: i64,
    /// The master's action-log end.
    pub action_end: i64,
}

impl SyncHeartbeat {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_i64(self.message_end);
        out.put_i64(self.action_end);
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let hb = Self {
            message_end: r.i64("master message log end")?,
            action_end: r.i64("master action log end")?,
        };
        r.finish("sync heartbeat")?;
        Ok(hb)
    }
}

/// One message in the answer to an index SYNC_LOG_REQUEST (type 5), what a QMQ backup server
/// keeps per message (QMQ's `MessageIndexSyncWorker` writes it, the backup's index log reads
/// it): `i64 sequence ; i64 createdTime ; str16 subject ; str16 messageId`.
///
/// Neither string may be empty: a Java backup takes a zero length for the end of the data and
/// drops the rest of the chunk, so [`SyncIndexRecord::encode`] refuses one and
/// [`SyncIndexRecord::decode`] rejects one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncIndexRecord {
    /// The message's consume-log sequence in its subject.
    pub sequence: i64,
    /// The message's creation time (ms since the epoch), from its stored form.
    pub created_time: i64,
    /// The subject.
    pub subject: String,
    /// The producer-assigned message id.
    pub message_id: String,
}

impl SyncIndexRecord {
    /// Bytes [`SyncIndexRecord::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        8 + 8 + 2 + self.subject.len() + 2 + self.message_id.len()
    }

    /// The record of a message from its stored form (what a broker keeps in its message log:
    /// `u8 flags ; i64 createdTime ; i64 expireTime ; str16 subject ; str16 messageId ; ...`,
    /// see [`crate::Message::encode_stored`]); only that head is read. Empty strings are
    /// refused ([`DecodeError::Invalid`]), as QMQ's worker skips such messages.
    pub fn from_stored(sequence: i64, stored: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(stored);
        r.u8("message flags")?;
        let created_time = r.i64("created time")?;
        r.i64("expire time")?;
        Ok(Self {
            sequence,
            created_time,
            subject: non_empty(&mut r, "subject")?,
            message_id: non_empty(&mut r, "message id")?,
        })
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        for (s, field) in [(&self.subject, "subject"), (&self.message_id, "message id")] {
            if s.is_empty() {
                return Err(EncodeError::Empty { field });
            }
        }
        out.put_i64(self.sequence);
        out.put_i64(self.created_time);
        put_string(out, &self.subject, "subject")?;
        put_string(out, &self.message_id, "message id")
    }

    /// Reads one record.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            sequence: r.i64("index sequence")?,
            created_time: r.i64("index created time")?,
            subject: non_empty(r, "index subject")?,
            message_id: non_empty(r, "index message id")?,
        })
    }
}

/// Writes `i32 size ; i64 next ; size bytes` with the bytes `records` appends: the layout of
/// the answers to a backup's sync requests (types 5 and 6).
pub(crate) fn encode_sized(
    out: &mut BytesMut,
    next: i64,
    what: &'static str,
    records: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let size_at = out.len();
    out.put_i32(0);
    out.put_i64(next);
    records(out)?;
    let size = out.len() - size_at - 12;
    let size = i32::try_from(size).map_err(|_| EncodeError::TooLong {
        field: what,
        len: size,
        max: i32::MAX as usize,
    })?;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Reads the head [`encode_sized`] writes: `next` and where the records start; exactly `size`
/// bytes must follow the head.
pub(crate) fn decode_sized(body: &[u8], what: &'static str) -> Result<(i64, usize), DecodeError> {
    let mut r = Reader::new(body);
    let size = r.i32(what)?;
    let size = usize::try_from(size).map_err(|_| DecodeError::NegativeLength {
        field: what,
        len: i64::from(size),
    })?;
    let next = r.i64(what)?;
    r.bytes(size, what)?;
    r.finish(what)?;
    Ok((next, 12))
}

/// A short string that must not be empty.
fn non_empty(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let s = r.string(field)?;
    if s.is_empty() {
        return Err(DecodeError::Invalid {
            field,
            reason: "must not be empty",
        });
    }
    Ok(s)
}

/// The answer to an index SYNC_LOG_REQUEST (type 5, for backup servers): index records of the
/// messages from the requested message-log offset, in log order.
///
/// QMQ's layout, the log-shipping one with records as the data: `i32 size ; i64 next ; size
/// bytes of` [`SyncIndexRecord`]s. Unlike types 1 and 2, the `i64` is **the message-log offset
/// to ask for next** (just past the last message looked at), not where the data starts; when
/// there is nothing new it is the requested offset and `size` is 0. It may also move on with
/// no records (messages that give no index record were passed over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncIndexChunk {
    /// The message-log offset the backup asks for next.
    pub next: i64,
    /// The records, in message-log order.
    pub records: Vec<SyncIndexRecord>,
}

impl SyncIndexChunk {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        encode_sized(out, self.next, "sync index chunk", |out| {
            self.records.iter().try_for_each(|r| r.encode(out))
        })
    }

    /// Decodes a body: exactly `size` bytes of whole records must follow the header.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let (next, at) = decode_sized(body, "sync index")?;
        let data = &body[at..];
        let mut records = Vec::new();
        let mut r = Reader::new(data);
        while !r.is_empty() {
            records.push(SyncIndexRecord::decode(&mut r)?);
        }
        Ok(Self { next, records })
    }
}

/// The answer to SYNC_CHECKPOINT_REQUEST (code 21): a master's resync snapshot, for a slave
/// that cannot continue copying from its own logs (behind the master's retention, or diverged).
///
/// QMQ's layout is kept: `u8 version ; i32 len ; bytes ; i32 len ; bytes`. The content is
/// qmq-rs's own (QMQ ships its checkpoint files here): with [`SyncCheckpoint::VERSION`] the
/// first bytes are the message side and the second the consumer side of the store's
/// snapshot, each a JSON document (see `qmq_store::snapshot`). The request's body is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCheckpoint {
    /// Content version ([`SyncCheckpoint::VERSION`]).
    pub version: u8,
    /// The message side (QMQ: the message checkpoint).
    pub message: Bytes,
    /// The consumer side (QMQ: the action checkpoint).
    pub action: Bytes,
}

impl SyncCheckpoint {
    /// The content version this crate writes: qmq-rs's JSON snapshot halves.
    pub const VERSION: u8 = 1;

    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.version);
        for (part, field) in [
            (&self.message, "message checkpoint"),
            (&self.action, "action checkpoint"),
        ] {
            let len = i32::try_from(part.len()).map_err(|_| EncodeError::TooLong {
                field,
                len: part.len(),
                max: i32::MAX as usize,
            })?;
            out.put_i32(len);
            out.put_slice(part);
        }
        Ok(())
    }

    /// Decodes a body; the parts are slices of `body` (no copy).
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u8("checkpoint version")?;
        let mut part = |field: &'static str| -> Result<Bytes, DecodeError> {
            let len = r.i32(field)?;
            let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
                field,
                len: i64::from(len),
            })?;
            let at = r.position();
            r.bytes(len, field)?;
            Ok(body.slice(at..at + len))
        };
        let message = part("message checkpoint")?;
        let action = part("action checkpoint")?;
        r.finish("sync checkpoint")?;
        Ok(Self {
            version,
            message,
            action,
        })
    }
}

/// A GROUP_LEASE request: a server reports itself and asks for its role (and, as master, a
/// lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLeaseRequest {
    /// The server's hostname, as in its `broker` row (`qmq tools add-broker`).
    pub hostname: String,
    /// The server's client port, as in its `broker` row.
    pub serve_port: i32,
    /// The role the server runs as now.
    pub role: BrokerRole,
    /// The epoch the server follows (0: none yet).
    pub epoch: i64,
    /// The server's message-log end.
    pub message_offset: i64,
    /// The server's action-log end (for a delay server: its dispatch-log end).
    pub action_offset: i64,
    /// The cluster secret, when the server has one (sent as in BROKER_REGISTER's extension).
    pub secret: Option<String>,
}

impl GroupLeaseRequest {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_string(out, &self.hostname, "hostname")?;
        out.put_i32(self.serve_port);
        out.put_i32(self.role.code());
        out.put_i64(self.epoch);
        out.put_i64(self.message_offset);
        out.put_i64(self.action_offset);
        match &self.secret {
            Some(secret) => {
                out.put_i16(1);
                put_string(out, CLUSTER_SECRET_KEY, "extension key")?;
                put_string(out, secret, "cluster secret")?;
            }
            None => out.put_i16(0),
        }
        Ok(())
    }

    /// Decodes a body. Unknown extension keys are skipped.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let mut req = Self {
            hostname: r.string("hostname")?,
            serve_port: r.i32("serve port")?,
            role: BrokerRole::from_code(r.i32("broker role")?)?,
            epoch: r.i64("epoch")?,
            message_offset: r.i64("message log offset")?,
            action_offset: r.i64("action log offset")?,
            secret: None,
        };
        let count = r.i16("extension count")?;
        if count < 0 {
            return Err(DecodeError::NegativeLength {
                field: "extension count",
                len: i64::from(count),
            });
        }
        for _ in 0..count {
            let key = r.short_bytes("extension key")?;
            let value = r.string("extension value")?;
            if key == CLUSTER_SECRET_KEY.as_bytes() {
                req.secret = Some(value);
            }
        }
        r.finish("group lease request")?;
        Ok(req)
    }
}

/// Where an epoch's data starts: the new master's log ends when it took over (-1 while it
/// has not reported them yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: i64,
    /// Its master's message-log end when the epoch began.
    pub message_start: i64,
    /// Its master's action-log (delay: dispatch-log) end when the epoch began.
    pub action_start: i64,
}

/// The answer to a GROUP_LEASE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLeaseResponse {
    /// The server's group.
    pub group: String,
    /// The role the server must run as.
    pub role: BrokerRole,
    /// The group's current epoch.
    pub epoch: i64,
    /// For the master of `epoch`: how long, from when it sent the request, it may accept
    /// writes (0: none, for example while the previous master's lease may still run, or when
    /// the request's epoch is not the group's).
    pub lease_ms: i64,
    /// For a slave: the master's sync address (`ip:sync_port`); else empty.
    pub master_sync: String,
    /// The master's client address (`ip:serve_port`), for operators.
    pub master_address: String,
    /// Every epoch of the group, oldest first: where each epoch's data starts, so a server
    /// coming back cuts what it holds beyond the data it shares with the current master.
    pub epochs: Vec<EpochStart>,
}

impl GroupLeaseResponse {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_string(out, &self.group, "group name")?;
        out.put_i32(self.role.code());
        out.put_i64(self.epoch);
        out.put_i64(self.lease_ms);
        put_string(out, &self.master_sync, "master sync address")?;
        put_string(out, &self.master_address, "master address")?;
        let count = i16::try_from(self.epochs.len()).map_err(|_| EncodeError::TooLong {
            field: "epochs",
            len: self.epochs.len(),
            max: i16::MAX as usize,
        })?;
        out.put_i16(count);
        for e in &self.epochs {
            out.put_i64(e.epoch);
            out.put_i64(e.message_start);
            out.put_i64(e.action_start);
        }
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let group = r.string("group name")?;
        let role = BrokerRole::from_code(r.i32("broker role")?)?;
        let epoch = r.i64("epoch")?;
        let lease_ms = r.i64("lease ms")?;
        let master_sync = r.string("master sync address")?;
        let master_address = r.string("master address")?;
        let count = r.i16("epoch count")?;
        if count < 0 {
            return Err(DecodeError::NegativeLength {
                field: "epoch count",
                len: i64::from(count),
            });
        }
        let mut epochs = Vec::new();
        for _ in 0..count {
            epochs.push(EpochStart {
                epoch: r.i64("epoch")?,
                message_start: r.i64("epoch message start")?,
                action_start: r.i64("epoch action start")?,
            });
        }
        r.finish("group lease response")?;
        Ok(Self {
            group,
            role,
            epoch,
            lease_ms,
            master_sync,
            master_address,
            epochs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_log_request_has_qmq_layout() {
        let req = SyncLogRequest {
            sync_type: SyncType::Message,
            message_offset: 0x0102,
            action_offset: 7,
        };
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(out.len(), 17);
        assert_eq!(out[0], 2);
        assert_eq!(&out[1..9], &0x0102i64.to_be_bytes());
        assert_eq!(SyncLogRequest::decode(&out).unwrap(), req);
        assert!(SyncLogRequest::decode(&out[..16]).is_err());
        let mut bad = out.clone();
        bad[0] = 4;
        assert!(SyncLogRequest::decode(&bad).is_err());
    }

    #[test]
    fn sync_chunk_round_trips_and_refuses_short_or_negative_sizes() {
        let chunk = SyncChunk {
            start: 42,
            bytes: Bytes::from_static(b"records"),
        };
        let mut out = BytesMut::new();
        chunk.encode(&mut out).unwrap();
        let body = out.freeze();
        assert_eq!(SyncChunk::decode(&body).unwrap(), chunk);
        assert!(SyncChunk::decode(&body.slice(..body.len() - 1)).is_err());
        let mut neg = BytesMut::new();
        neg.put_i32(-1);
        neg.put_i64(0);
        assert!(SyncChunk::decode(&neg.freeze()).is_err());
    }

    /// QMQ's type-5 layout, written out by hand: `i32 size ; i64 next ; (i64 sequence ; i64
    /// createdTime ; i16 len ; subject ; i16 len ; messageId)*`.
    #[test]
    fn sync_index_chunk_has_qmq_layout() {
        let chunk = SyncIndexChunk {
            next: 4096,
            records: vec![
                SyncIndexRecord {
                    sequence: 7,
                    created_time: 1_700_000_000_123,
                    subject: "a.b".into(),
                    message_id: "m1".into(),
                },
                SyncIndexRecord {
                    sequence: 0,
                    created_time: 1,
                    subject: "主".into(),
                    message_id: "x".into(),
                },
            ],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x31,                         // size: 25 + 24 bytes of records
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, // next offset 4096
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // sequence 7
            0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x7b, // created 1_700_000_000_123
            0x00, 0x03, b'a', b'.', b'b',                   // subject
            0x00, 0x02, b'm', b'1',                         // message id
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sequence 0
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // created 1
            0x00, 0x03, 0xe4, 0xb8, 0xbb,                   // subject "主" (UTF-8)
            0x00, 0x01, b'x',                               // message id
        ];
        let mut out = BytesMut::new();
        chunk.encode(&mut out).unwrap();
        assert_eq!(&out[..], expected);
        assert_eq!(
            chunk.records.iter().map(|r| r.encoded_len()).sum::<usize>(),
            expected.len() - 12
        );
        assert_eq!(SyncIndexChunk::decode(expected).unwrap(), chunk);

        // Nothing new: size 0 and the requested offset.
        let empty = SyncIndexChunk {
            next: 9,
            records: Vec::new(),
        };
        let mut out = BytesMut::new();
        empty.encode(&mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(SyncIndexChunk::decode(&out).unwrap(), empty);
    }

    #[test]
    fn sync_index_chunk_refuses_bad_bodies() {
        let record = SyncIndexRecord {
            sequence: 1,
            created_time: 2,
            subject: "s".into(),
            message_id: "id".into(),
        };
        let mut good = BytesMut::new();
        SyncIndexChunk {
            next: 0,
            records: vec![record.clone()],
        }
        .encode(&mut good)
        .unwrap();
        // Cut anywhere: the size no longer matches the bytes.
        for cut in 0..good.len() {
            assert!(SyncIndexChunk::decode(&good[..cut]).is_err(), "cut {cut}");
        }
        // A size that ends inside a record, or leaves bytes after the records.
        let mut short = good.clone();
        short[3] -= 1;
        assert!(SyncIndexChunk::decode(&short).is_err());
        let mut long = good.clone();
        long.put_u8(0);
        assert!(SyncIndexChunk::decode(&long).is_err());
        long[3] += 1;
        assert!(SyncIndexChunk::decode(&long).is_err());
        let mut negative = good.clone();
        negative[..4].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(SyncIndexChunk::decode(&negative).is_err());
        // Empty strings are neither written nor read.
        for r in [
            SyncIndexRecord {
                subject: String::new(),
                ..record.clone()
            },
            SyncIndexRecord {
                message_id: String::new(),
                ..record.clone()
            },
        ] {
            assert!(matches!(
                r.encode(&mut BytesMut::new()),
                Err(EncodeError::Empty { .. })
            ));
        }
        let mut empty_id = BytesMut::new();
        empty_id.put_i32(8 + 8 + 3 + 2);
        empty_id.put_i64(0);
        empty_id.put_i64(1);
        empty_id.put_i64(2);
        put_string(&mut empty_id, "s", "subject").unwrap();
        empty_id.put_i16(0);
        assert!(SyncIndexChunk::decode(&empty_id).is_err());
    }

    #[test]
    fn sync_index_record_reads_the_stored_head() {
        let m = crate::Message {
            flags: crate::MessageFlags(0).with_tags(true),
            created_time: 1_700_000_000_123,
            expire_or_schedule: 5,
            subject: "order.paid".into(),
            message_id: "id-1".into(),
            tags: vec!["t".into()],
            attrs: vec![("body".into(), "x".into())],
        };
        let stored = m.to_stored().unwrap();
        let r = SyncIndexRecord::from_stored(3, &stored).unwrap();
        assert_eq!(
            r,
            SyncIndexRecord {
                sequence: 3,
                created_time: 1_700_000_000_123,
                subject: "order.paid".into(),
                message_id: "id-1".into(),
            }
        );
        // Only the head is needed; a cut inside it, or an empty id, is an error.
        let head = 1 + 8 + 8 + 2 + 10 + 2 + 4;
        assert_eq!(SyncIndexRecord::from_stored(3, &stored[..head]).unwrap(), r);
        for cut in 0..head {
            assert!(SyncIndexRecord::from_stored(3, &stored[..cut]).is_err());
        }
        let no_id = crate::Message {
            message_id: String::new(),
            ..m
        };
        assert!(SyncIndexRecord::from_stored(3, &no_id.to_stored().unwrap()).is_err());
    }

    #[test]
    fn lease_request_and_response_round_trip() {
        let req = GroupLeaseRequest {
            hostname: "h".into(),
            serve_port: 20881,
            role: BrokerRole::Slave,
            epoch: 3,
            message_offset: 100,
            action_offset: 50,
            secret: Some("s".into()),
        };
        let mut out = BytesMut::new();
        req.encode(&mut out).unwrap();
        assert_eq!(GroupLeaseRequest::decode(&out).unwrap(), req);
        let resp = GroupLeaseResponse {
            group: "g".into(),
            role: BrokerRole::Master,
            epoch: 4,
            lease_ms: 3000,
            master_sync: String::new(),
            master_address: "127.0.0.1:20881".into(),
            epochs: vec![EpochStart {
                epoch: 4,
                message_start: 100,
                action_start: -1,
            }],
        };
        let mut out = BytesMut::new();
        resp.encode(&mut out).unwrap();
        assert_eq!(GroupLeaseResponse::decode(&out).unwrap(), resp);
        assert!(GroupLeaseResponse::decode(&out[..out.len() - 1]).is_err());
    }
}
