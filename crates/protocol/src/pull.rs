//! PULL_MESSAGE request and response, ACK_REQUEST.
//!
//! Pull request body:
//!
//! ```text
//! short string subject, group, consumer_id
//! i32 request_num
//! i64 offset                 (-1: let the broker decide; QMQ ignores it. qmq-rs brokers
//!                            read START_EARLIEST / START_LATEST here: where a group new
//!                            to the broker starts)
//! i64 pull_offset_begin      consumer's view of its pull log (first not acked)
//! i64 pull_offset_last       consumer's view of its pull log (last pulled)
//! i64 timeout_ms             long-poll wait; < 0 = return at once
//! u8  broadcast
//! version < 8: nothing more
//! version 8:   one tag filter: i16 tag type, u8 count, count x (i16 len + bytes)
//!              (tag type 0 = NO_TAG: no filter)
//! version 9+:  i32 filter count, then per filter: i16 type, then its fields
//!              (1 TAG: as above; 2 SUB_ENV_ISOLATION: short string env, short string sub_env)
//! ```
//!
//! Pull response body (code SUCCESS): `i64 pull-log offset of the first message` (the next
//! messages have the next offsets), `i64 consume offset` (brokers send -1, clients ignore it),
//! then messages in stored form; for requests older than version 8 without their tag lists.
//! NO_MESSAGE responses have an empty body.
//!
//! Ack request body: subject, group, consumer_id (short strings), `i64 pull_offset_begin`,
//! `i64 pull_offset_last`, and from version 8 on `u8 broadcast`. A negative
//! `pull_offset_begin` makes it a heartbeat that acks nothing.

use bytes::{BufMut, BytesMut};

use crate::frame::{VERSION_8, VERSION_9};
use crate::message::{tags_on_wire, Message, MessageFlags, MAX_TAGS};
use crate::wire::{put_short_bytes, put_string, EncodeError, Reader};
use crate::DecodeError;

/// `PullRequest::offset` asking that a consumer group the broker has never seen start at the
/// earliest stored message of the subject (a qmq-rs extension; QMQ sends -1 and ignores it).
pub const START_EARLIEST: i64 = -2;

/// `PullRequest::offset` asking that a new consumer group start at the subject's latest
/// message, as QMQ does (a qmq-rs extension; -1 leaves the choice to the broker's setting).
pub const START_LATEST: i64 = -3;

/// How the tags of a tag filter combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagType {
    /// No tag filtering.
    NoTag,
    /// A message matches if it has any of the tags.
    Or,
    /// A message matches if it has all of the tags.
    And,
}

impl TagType {
    /// The wire code.
    pub fn code(self) -> i16 {
        match self {
            Self::NoTag => 0,
            Self::Or => 1,
            Self::And => 2,
        }
    }

    /// The tag type for a wire code.
    pub fn from_code(code: i16) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(Self::NoTag),
            1 => Ok(Self::Or),
            2 => Ok(Self::And),
            other => Err(DecodeError::UnknownCode {
                field: "tag type",
                code: i64::from(other),
            }),
        }
    }
}

/// A server-side filter carried by a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullFilter {
    /// Only messages whose tags match.
    Tag {
        /// How the tags combine.
        tag_type: TagType,
        /// The tags, as raw bytes (compared byte for byte).
        tags: Vec<Vec<u8>>,
    },
    /// Sub-environment isolation: only messages of this environment.
    SubEnv {
        /// The environment.
        env: String,
        /// The sub-environment.
        sub_env: String,
    },
}

const FILTER_TAG: i16 = 1;
const FILTER_SUB_ENV: i16 = 2;

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Subject to pull from (may be a retry subject).
    pub subject: String,
    /// Consumer group.
    pub group: String,
    /// The consumer's id.
    pub consumer_id: String,
    /// Most messages wanted.
    pub request_num: i32,
    /// Consume-log offset hint (-1 when the broker decides).
    pub offset: i64,
    /// The consumer's first not-acked pull-log offset.
    pub pull_offset_begin: i64,
    /// The consumer's last pulled pull-log offset.
    pub pull_offset_last: i64,
    /// How long the broker may hold the request waiting for messages; negative: answer at once.
    pub timeout_ms: i64,
    /// Broadcast consumption: every consumer sees every message.
    pub broadcast: bool,
    /// Server-side filters, in wire order. Versions before 8 carry none; version 8 at most one
    /// tag filter (none is sent as a `NoTag` filter without tags); version 9 a list, kept as
    /// received (an inactive `NoTag` filter included, so re-encoding is byte-exact).
    pub filters: Vec<PullFilter>,
}

impl PullRequest {
    /// Appends the body for protocol `version` to `out`. Fails with
    /// [`EncodeError::NotInVersion`] when the filters cannot be said in that version (any filter
    /// before version 8; more than one tag filter or a sub-environment filter in version 8).
    pub fn encode(&self, version: i16, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_string(out, &self.subject, "subject")?;
        put_string(out, &self.group, "group")?;
        put_string(out, &self.consumer_id, "consumer id")?;
        out.put_i32(self.request_num);
        out.put_i64(self.offset);
        out.put_i64(self.pull_offset_begin);
        out.put_i64(self.pull_offset_last);
        out.put_i64(self.timeout_ms);
        out.put_u8(u8::from(self.broadcast));
        if version < VERSION_8 {
            if !self.filters.is_empty() {
                return Err(EncodeError::NotInVersion {
                    what: "pull filters",
                    version,
                });
            }
            return Ok(());
        }
        if version < VERSION_9 {
            return match self.filters.as_slice() {
                [] => put_tag_filter(out, TagType::NoTag, &[]),
                [PullFilter::Tag { tag_type, tags }] => put_tag_filter(out, *tag_type, tags),
                _ => Err(EncodeError::NotInVersion {
                    what: "pull filters other than one tag filter",
                    version,
                }),
            };
        }
        let count = i32::try_from(self.filters.len()).map_err(|_| EncodeError::TooMany {
            field: "filters",
            count: self.filters.len(),
            max: i32::MAX as usize,
        })?;
        out.put_i32(count);
        for f in &self.filters {
            match f {
                PullFilter::Tag { tag_type, tags } => {
                    out.put_i16(FILTER_TAG);
                    put_tag_filter(out, *tag_type, tags)?;
                }
                PullFilter::SubEnv { env, sub_env } => {
                    out.put_i16(FILTER_SUB_ENV);
                    put_string(out, env, "env")?;
                    put_string(out, sub_env, "sub env")?;
                }
            }
        }
        Ok(())
    }

    /// Decodes a body sent with protocol `version`.
    pub fn decode(version: i16, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let subject = r.string("subject")?;
        let group = r.string("group")?;
        let consumer_id = r.string("consumer id")?;
        let request_num = r.i32("request num")?;
        let offset = r.i64("offset")?;
        let pull_offset_begin = r.i64("pull offset begin")?;
        let pull_offset_last = r.i64("pull offset last")?;
        let timeout_ms = r.i64("timeout")?;
        let broadcast = r.bool("broadcast")?;
        let mut filters = Vec::new();
        if version >= VERSION_9 {
            let count = r.i32("filter count")?;
            if count < 0 {
                return Err(DecodeError::NegativeLength {
                    field: "filter count",
                    len: i64::from(count),
                });
            }
            for _ in 0..count {
                let kind = r.i16("filter type")?;
                filters.push(match kind {
                    FILTER_TAG => read_tag_filter(&mut r)?,
                    FILTER_SUB_ENV => PullFilter::SubEnv {
                        env: r.string("env")?,
                        sub_env: r.string("sub env")?,
                    },
                    other => {
                        return Err(DecodeError::UnknownCode {
                            field: "pull filter type",
                            code: i64::from(other),
                        })
                    }
                });
            }
        } else if version >= VERSION_8 {
            match read_tag_filter(&mut r)? {
                // "No tag" without tags is how version 8 says "no filter".
                PullFilter::Tag {
                    tag_type: TagType::NoTag,
                    tags,
                } if tags.is_empty() => {}
                filter => filters.push(filter),
            }
        }
        r.finish("pull request")?;
        Ok(Self {
            subject,
            group,
            consumer_id,
            request_num,
            offset,
            pull_offset_begin,
            pull_offset_last,
            timeout_ms,
            broadcast,
            filters,
        })
    }

    /// The tag filter that applies, if any (a `NoTag` or empty filter means none).
    pub fn tag_filter(&self) -> Option<(TagType, &[Vec<u8>])> {
        self.filters.iter().find_map(|f| match f {
            PullFilter::Tag { tag_type, tags }
                if *tag_type != TagType::NoTag && !tags.is_empty() =>
            {
                Some((*tag_type, tags.as_slice()))
            }
            _ => None,
        })
    }
}

fn put_tag_filter(
    out: &mut BytesMut,
    tag_type: TagType,
    tags: &[Vec<u8>],
) -> Result<(), EncodeError> {
    out.put_i16(tag_type.code());
    if tags.len() > MAX_TAGS {
        return Err(EncodeError::TooMany {
            field: "filter tags",
            count: tags.len(),
            max: MAX_TAGS,
        });
    }
    out.put_u8(tags.len() as u8);
    for tag in tags {
        put_short_bytes(out, tag, "tag")?;
    }
    Ok(())
}

fn read_tag_filter(r: &mut Reader<'_>) -> Result<PullFilter, DecodeError> {
    let tag_type = TagType::from_code(r.i16("tag type")?)?;
    let count = usize::from(r.u8("filter tag count")?);
    if count > MAX_TAGS {
        return Err(DecodeError::Invalid {
            field: "filter tag count",
            reason: "more than 127 tags (Java reads the count as a signed byte)",
        });
    }
    let mut tags = Vec::new();
    for _ in 0..count {
        tags.push(r.short_bytes("tag")?.to_vec());
    }
    Ok(PullFilter::Tag { tag_type, tags })
}

/// The body of a successful pull response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullResponse {
    /// Pull-log offset of the first message; the next messages have the next offsets.
    pub pull_log_offset: i64,
    /// The consumer's consume offset; Java brokers send -1 and Java clients ignore it.
    pub reserved: i64,
    /// The messages, in stored form.
    pub messages: Vec<Message>,
}

impl PullResponse {
    /// Writes the two head fields (`pull_log_offset`, then -1); append the messages after it,
    /// e.g. with [`append_stored_for_version`].
    pub fn encode_head(pull_log_offset: i64, out: &mut BytesMut) {
        out.put_i64(pull_log_offset);
        out.put_i64(-1);
    }

    /// Appends the whole body, for a request of version 8 or later, to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_for_version(VERSION_9, out)
    }

    /// Appends the whole body as the answer to a request of protocol `version` (below 8 the
    /// messages' tag lists are left out).
    pub fn encode_for_version(&self, version: i16, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_i64(self.pull_log_offset);
        out.put_i64(self.reserved);
        for m in &self.messages {
            m.encode_stored_for_version(version, out)?;
        }
        Ok(())
    }

    /// Decodes a body answering a request of version 8 or later.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_for_version(VERSION_9, body)
    }

    /// Decodes a body answering a request of protocol `version`.
    pub fn decode_for_version(version: i16, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let pull_log_offset = r.i64("pull log offset")?;
        let reserved = r.i64("consume offset")?;
        let mut messages = Vec::new();
        while !r.is_empty() {
            messages.push(Message::decode_stored_for_version(version, &mut r)?);
        }
        Ok(Self {
            pull_log_offset,
            reserved,
            messages,
        })
    }

    /// The messages with their pull-log offsets (what the consumer acks).
    pub fn messages_with_offsets(&self) -> impl Iterator<Item = (i64, &Message)> + '_ {
        (self.pull_log_offset..).zip(&self.messages)
    }
}

/// Appends one message's stored-form bytes (as a broker keeps them, version 8+ layout) to a pull
/// response for a request of protocol `version`: unchanged from version 8 on; below it with the
/// tag list cut out and the flag byte left as it is, as the Java broker does.
pub fn append_stored_for_version(
    stored: &[u8],
    version: i16,
    out: &mut BytesMut,
) -> Result<(), DecodeError> {
    let mut r = Reader::new(stored);
    let flags = MessageFlags(r.u8("message flag")?);
    if tags_on_wire(version) || !flags.has_tags() {
        out.put_slice(stored);
        return Ok(());
    }
    r.bytes(16, "message times")?;
    r.short_bytes("subject")?;
    r.short_bytes("message id")?;
    let tags_at = r.position();
    let count = r.u8("tag count")?;
    for _ in 0..count {
        r.short_bytes("tag")?;
    }
    out.put_slice(&stored[..tags_at]);
    out.put_slice(&stored[r.position()..]);
    Ok(())
}

/// An ack: the consumer has finished the pull-log range `[pull_offset_begin, pull_offset_last]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    /// Subject.
    pub subject: String,
    /// Consumer group.
    pub group: String,
    /// Consumer id.
    pub consumer_id: String,
    /// First pull-log offset acked.
    pub pull_offset_begin: i64,
    /// Last pull-log offset acked (inclusive).
    pub pull_offset_last: i64,
    /// Broadcast consumption.
    pub broadcast: bool,
}

impl AckRequest {
    /// Whether this ack only keeps the consumer alive (negative begin offset: nothing acked).
    pub fn is_heartbeat(&self) -> bool {
        self.pull_offset_begin < 0
    }

    /// Appends the body (version 8+ layout) to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_for_version(VERSION_9, out)
    }

    /// Appends the body for protocol `version` to `out`. Below version 8 there is no broadcast
    /// byte: a broadcast ack cannot be sent.
    pub fn encode_for_version(&self, version: i16, out: &mut BytesMut) -> Result<(), EncodeError> {
        if version < VERSION_8 && self.broadcast {
            return Err(EncodeError::NotInVersion {
                what: "broadcast ack",
                version,
            });
        }
        put_string(out, &self.subject, "subject")?;
        put_string(out, &self.group, "group")?;
        put_string(out, &self.consumer_id, "consumer id")?;
        out.put_i64(self.pull_offset_begin);
        out.put_i64(self.pull_offset_last);
        if version >= VERSION_8 {
            out.put_u8(u8::from(self.broadcast));
        }
        Ok(())
    }

    /// Decodes a body (version 8+ layout).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_for_version(VERSION_9, body)
    }

    /// Decodes a body sent with protocol `version`.
    pub fn decode_for_version(version: i16, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = Self {
            subject: r.string("subject")?,
            group: r.string("group")?,
            consumer_id: r.string("consumer id")?,
            pull_offset_begin: r.i64("pull offset begin")?,
            pull_offset_last: r.i64("pull offset last")?,
            broadcast: if version >= VERSION_8 {
                r.bool("broadcast")?
            } else {
                false
            },
        };
        r.finish("ack request")?;
        Ok(req)
    }
}
