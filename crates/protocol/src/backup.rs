//! qmq-rs's additions for its backup server, served on a broker's sync port next to QMQ's
//! SYNC_LOG_REQUEST. A Java broker answers neither (unknown sync type / `UNKNOWN_CODE`).
//!
//! * SYNC_LOG_REQUEST **type 6** ([`crate::SyncType::Messages`]): like QMQ's index type 5, but
//!   each record carries the whole stored message ([`StoredRecord`]), so the backup can index
//!   tags, properties and delivery times and keep dead letters with their bodies without a
//!   second round trip. The answer is a [`SyncMessagesChunk`].
//! * FETCH_MESSAGES (code [`FETCH_MESSAGES`]): the stored messages of one subject at given
//!   sequences ([`FetchMessagesRequest`] → [`FetchMessagesResponse`]), what QMQ's slaves serve
//!   over HTTP at `/api/broker/message` (spec §3.5); the backup uses it to show a message's body
//!   fetched live from its broker.

use bytes::{BufMut, Bytes, BytesMut};

use crate::replication::{decode_sized, encode_sized};
use crate::wire::{put_string, Reader};
use crate::{DecodeError, EncodeError};

/// Command code of FETCH_MESSAGES (qmq-rs only; unused by QMQ).
pub const FETCH_MESSAGES: i16 = 28;

/// Most sequences one [`FetchMessagesRequest`] may ask for.
pub const MAX_FETCH: usize = 1024;

/// One message as a broker stores it: its consume-log sequence in the subject it is stored
/// under, that subject, and the stored message (see [`crate::Message::encode_stored`]).
///
/// Layout: `i64 sequence ; str16 subject ; i32 len ; len bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The consume-log sequence in `subject`.
    pub sequence: i64,
    /// The subject the sequence counts in (a retry or dead-letter subject for those copies).
    pub subject: String,
    /// The stored message.
    pub stored: Bytes,
}

impl StoredRecord {
    /// Bytes [`StoredRecord::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        8 + 2 + self.subject.len() + 4 + self.stored.len()
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.subject.is_empty() {
            return Err(EncodeError::Empty { field: "subject" });
        }
        let len = i32::try_from(self.stored.len()).map_err(|_| EncodeError::TooLong {
            field: "stored message",
            len: self.stored.len(),
            max: i32::MAX as usize,
        })?;
        out.put_i64(self.sequence);
        put_string(out, &self.subject, "subject")?;
        out.put_i32(len);
        out.put_slice(&self.stored);
        Ok(())
    }

    /// Reads one record; `whole` is the buffer `r` reads, so the message is shared, not copied.
    pub fn decode(whole: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let sequence = r.i64("record sequence")?;
        let subject = r.string("record subject")?;
        if subject.is_empty() {
            return Err(DecodeError::Invalid {
                field: "record subject",
                reason: "must not be empty",
            });
        }
        let len = r.i32("stored message length")?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            field: "stored message length",
            len: i64::from(len),
        })?;
        let at = whole.len() - r.remaining();
        r.bytes(len, "stored message")?;
        Ok(Self {
            sequence,
            subject,
            stored: whole.slice(at..at + len),
        })
    }
}

/// Reads records back to back until `body` ends.
fn decode_records(body: &Bytes) -> Result<Vec<StoredRecord>, DecodeError> {
    let mut r = Reader::new(body);
    let mut records = Vec::new();
    while !r.is_empty() {
        records.push(StoredRecord::decode(body, &mut r)?);
    }
    Ok(records)
}

/// The answer to a type-6 SYNC_LOG_REQUEST: the stored messages from the requested
/// message-log offset, in log order.
///
/// Layout as QMQ's index answer ([`crate::SyncIndexChunk`]): `i32 size ; i64 next ; size bytes
/// of` [`StoredRecord`]s, where `next` is the message-log offset to ask for next; with nothing
/// new it is the requested offset and `size` is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMessagesChunk {
    /// The message-log offset to ask for next.
    pub next: i64,
    /// The records, in message-log order.
    pub records: Vec<StoredRecord>,
}

impl SyncMessagesChunk {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        encode_sized(out, self.next, "sync messages chunk", |out| {
            self.records.iter().try_for_each(|r| r.encode(out))
        })
    }

    /// Decodes a body: exactly `size` bytes of whole records must follow the header.
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let (next, at) = decode_sized(body, "sync messages")?;
        let records = decode_records(&body.slice(at..))?;
        Ok(Self { next, records })
    }
}

/// FETCH_MESSAGES request: the stored messages of `subject` at `sequences`.
///
/// Layout: `str16 subject ; i32 count ; count × i64 sequence`; at most [`MAX_FETCH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchMessagesRequest {
    /// The subject the sequences count in.
    pub subject: String,
    /// The consume-log sequences wanted.
    pub sequences: Vec<i64>,
}

impl FetchMessagesRequest {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.subject.is_empty() {
            return Err(EncodeError::Empty { field: "subject" });
        }
        if self.sequences.len() > MAX_FETCH {
            return Err(EncodeError::TooLong {
                field: "fetch sequences",
                len: self.sequences.len(),
                max: MAX_FETCH,
            });
        }
        put_string(out, &self.subject, "subject")?;
        out.put_i32(self.sequences.len() as i32);
        for s in &self.sequences {
            out.put_i64(*s);
        }
        Ok(())
    }

    /// Decodes a body; an empty subject, a negative count or more than [`MAX_FETCH`]
    /// sequences are refused.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let subject = r.string("fetch subject")?;
        if subject.is_empty() {
            return Err(DecodeError::Invalid {
                field: "fetch subject",
                reason: "must not be empty",
            });
        }
        let count = r.i32("fetch count")?;
        let count = usize::try_from(count).map_err(|_| DecodeError::NegativeLength {
            field: "fetch count",
            len: i64::from(count),
        })?;
        if count > MAX_FETCH {
            return Err(DecodeError::Invalid {
                field: "fetch count",
                reason: "more than MAX_FETCH sequences",
            });
        }
        let mut sequences = Vec::with_capacity(count);
        for _ in 0..count {
            sequences.push(r.i64("fetch sequence")?);
        }
        r.finish("fetch messages request")?;
        Ok(Self { subject, sequences })
    }
}

/// FETCH_MESSAGES response: the records found, back to back, in the order asked; sequences
/// the broker no longer (or never) had are left out, as QMQ's `/api/broker/message` does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchMessagesResponse {
    /// The messages found.
    pub records: Vec<StoredRecord>,
}

impl FetchMessagesResponse {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        for record in &self.records {
            record.encode(out)?;
        }
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        Ok(Self {
            records: decode_records(body)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: i64, subject: &str, stored: &'static [u8]) -> StoredRecord {
        StoredRecord {
            sequence,
            subject: subject.into(),
            stored: Bytes::from_static(stored),
        }
    }

    #[test]
    fn chunk_round_trips_and_shares_the_buffer() {
        let chunk = SyncMessagesChunk {
            next: 4096,
            records: vec![record(0, "a", b"xyz"), record(7, "%RETRY%a%g", b"")],
        };
        let mut out = BytesMut::new();
        chunk.encode(&mut out).unwrap();
        let body = out.freeze();
        assert_eq!(&body[..4], &((body.len() - 12) as i32).to_be_bytes());
        let back = SyncMessagesChunk::decode(&body).unwrap();
        assert_eq!(back, chunk);
        let empty = SyncMessagesChunk {
            next: 9,
            records: vec![],
        };
        let mut out = BytesMut::new();
        empty.encode(&mut out).unwrap();
        assert_eq!(out.len(), 12);
        assert_eq!(SyncMessagesChunk::decode(&out.freeze()).unwrap(), empty);
    }

    #[test]
    fn truncated_or_lying_chunks_are_refused() {
        let chunk = SyncMessagesChunk {
            next: 1,
            records: vec![record(3, "s", b"hello")],
        };
        let mut out = BytesMut::new();
        chunk.encode(&mut out).unwrap();
        let body = out.freeze();
        for cut in 0..body.len() {
            assert!(
                SyncMessagesChunk::decode(&body.slice(..cut)).is_err(),
                "{cut}"
            );
        }
        // A record length beyond the chunk.
        let mut bad = BytesMut::from(&body[..]);
        let len_at = 12 + 8 + 2 + 1;
        bad[len_at..len_at + 4].copy_from_slice(&100i32.to_be_bytes());
        assert!(SyncMessagesChunk::decode(&bad.freeze()).is_err());
        // A negative size.
        let mut bad = BytesMut::from(&body[..]);
        bad[..4].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(SyncMessagesChunk::decode(&bad.freeze()).is_err());
    }

    #[test]
    fn fetch_request_round_trips_and_refuses_bad_input() {
        let req = FetchMessagesRequest {
            subject: "a.b".into(),
            sequences: vec![0, 5, i64::MAX],
        };
        let mut out = BytesMut::new();
        req.encode(&mut out).unwrap();
        assert_eq!(FetchMessagesRequest::decode(&out).unwrap(), req);
        assert!(FetchMessagesRequest::decode(&out[..out.len() - 1]).is_err());
        let mut extra = out.clone();
        extra.put_u8(0);
        assert!(FetchMessagesRequest::decode(&extra).is_err());

        let mut empty = BytesMut::new();
        put_string(&mut empty, "", "subject").unwrap();
        empty.put_i32(0);
        assert!(FetchMessagesRequest::decode(&empty).is_err());

        let mut many = BytesMut::new();
        put_string(&mut many, "s", "subject").unwrap();
        many.put_i32(MAX_FETCH as i32 + 1);
        assert!(FetchMessagesRequest::decode(&many).is_err());
        let too_many = FetchMessagesRequest {
            subject: "s".into(),
            sequences: vec![0; MAX_FETCH + 1],
        };
        assert!(too_many.encode(&mut BytesMut::new()).is_err());
    }

    #[test]
    fn fetch_response_round_trips() {
        let resp = FetchMessagesResponse {
            records: vec![record(1, "s", b"one"), record(2, "s", b"two")],
        };
        let mut out = BytesMut::new();
        resp.encode(&mut out).unwrap();
        assert_eq!(FetchMessagesResponse::decode(&out.freeze()).unwrap(), resp);
        assert!(FetchMessagesResponse::decode(&Bytes::new())
            .unwrap()
            .records
            .is_empty());
    }
}
