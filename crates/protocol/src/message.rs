//! The message wire form shared by sends, delay forwards and pull responses.
//!
//! A message on the wire ("stored form", what a broker keeps and hands back to consumers):
//!
//! ```text
//! u8  flag                 bit 0 set = not reliable; bit 1 = delay message; bit 2 = has tags
//! i64 created_time         ms since the epoch
//! i64 expire_or_schedule   delay messages: delivery time (ms); others: the producer's send time
//! short string subject
//! short string message_id
//! [if flag bit 2] u8 tag count, then that many short strings
//! i32 attrs_len            bytes of the attributes that follow
//! attrs                    (short string key, u16-length string value) pairs
//! ```
//!
//! Inside a SEND_MESSAGE body every message is preceded by an `i64` whose low 32 bits are the
//! CRC-32 (IEEE, as `java.util.zip.CRC32`) of its stored form.
//!
//! The layout does not depend on the header version, with one exception: pull responses to
//! requests older than [`VERSION_8`] carry no tag list, although the flag still says "has tags"
//! (the Java broker cuts the list out and leaves the flag byte alone). The `*_for_version`
//! methods handle that; the plain ones are the version-8+ form.
//!
//! The Java reader takes the tag count as a signed byte, so at most 127 tags can be sent; the
//! Java writer sends each attribute value's length as a 16-bit number that readers take as
//! unsigned, so values may be up to 65535 bytes and keys up to 32767.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::VERSION_8;
use crate::wire::{put_string, put_ushort_bytes, utf8, EncodeError, Reader};
use crate::DecodeError;

/// Most tags a message can carry (the Java reader takes the count as a signed byte).
pub const MAX_TAGS: usize = i8::MAX as usize;

/// Whether messages sent to a peer of protocol `version` carry their tag list.
pub fn tags_on_wire(version: i16) -> bool {
    version >= VERSION_8
}

/// The flag byte of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MessageFlags(pub u8);

impl MessageFlags {
    const UNRELIABLE: u8 = 1;
    const DELAY: u8 = 2;
    const TAGS: u8 = 4;

    /// Whether the message must be durable (bit 0 clear).
    pub fn is_reliable(self) -> bool {
        self.0 & Self::UNRELIABLE == 0
    }

    /// Whether this is a delay/scheduled message (bit 1).
    pub fn is_delay(self) -> bool {
        self.0 & Self::DELAY != 0
    }

    /// Whether a tag list follows the message id (bit 2).
    pub fn has_tags(self) -> bool {
        self.0 & Self::TAGS != 0
    }

    /// The flags with the delay bit set or cleared.
    pub fn with_delay(self, on: bool) -> Self {
        Self::set(self, Self::DELAY, on)
    }

    /// The flags with the tags bit set or cleared.
    pub fn with_tags(self, on: bool) -> Self {
        Self::set(self, Self::TAGS, on)
    }

    /// The flags with reliability on (bit 0 clear) or off (bit 0 set).
    pub fn with_reliable(self, reliable: bool) -> Self {
        Self::set(self, Self::UNRELIABLE, !reliable)
    }

    fn set(self, bit: u8, on: bool) -> Self {
        if on {
            Self(self.0 | bit)
        } else {
            Self(self.0 & !bit)
        }
    }
}

/// One message in its wire form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Flag bits.
    pub flags: MessageFlags,
    /// Creation time, ms since the epoch.
    pub created_time: i64,
    /// Delay messages: the delivery time; others: the producer's send time (ms since the epoch).
    pub expire_or_schedule: i64,
    /// The subject.
    pub subject: String,
    /// The producer-assigned message id (duplicate sends carry the same id).
    pub message_id: String,
    /// Tags; on the wire only when the flags say so.
    pub tags: Vec<String>,
    /// Attributes (the message's properties, body included), in wire order.
    pub attrs: Vec<(String, String)>,
}

impl Message {
    /// Appends the stored form (no CRC) to `out`. The tag list is written when the flags say
    /// so; tags without the flag are not sent.
    pub fn encode_stored(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_stored_inner(true, out)
    }

    /// Appends the stored form as a peer of protocol `version` reads it in a pull response:
    /// below version 8 the tag list is left out (the flag byte is kept, as Java brokers do).
    pub fn encode_stored_for_version(
        &self,
        version: i16,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.encode_stored_inner(tags_on_wire(version), out)
    }

    fn encode_stored_inner(&self, with_tags: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.flags.0);
        out.put_i64(self.created_time);
        out.put_i64(self.expire_or_schedule);
        put_string(out, &self.subject, "subject")?;
        put_string(out, &self.message_id, "message id")?;
        if with_tags && self.flags.has_tags() {
            if self.tags.len() > MAX_TAGS {
                return Err(EncodeError::TooMany {
                    field: "tags",
                    count: self.tags.len(),
                    max: MAX_TAGS,
                });
            }
            out.put_u8(self.tags.len() as u8);
            for tag in &self.tags {
                put_string(out, tag, "tag")?;
            }
        }
        let len_at = out.len();
        out.put_i32(0);
        for (key, value) in &self.attrs {
            put_string(out, key, "attribute key")?;
            put_ushort_bytes(out, value.as_bytes(), "attribute value")?;
        }
        let attrs_len = out.len() - len_at - 4;
        let attrs_len = i32::try_from(attrs_len).map_err(|_| EncodeError::TooLong {
            field: "attributes",
            len: attrs_len,
            max: i32::MAX as usize,
        })?;
        out[len_at..len_at + 4].copy_from_slice(&attrs_len.to_be_bytes());
        Ok(())
    }

    /// Appends the send form (CRC, then the stored form) to `out`.
    pub fn encode_with_crc(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let crc_at = out.len();
        out.put_i64(0);
        self.encode_stored(out)?;
        let crc = crc32fast::hash(&out[crc_at + 8..]);
        out[crc_at..crc_at + 8].copy_from_slice(&i64::from(crc).to_be_bytes());
        Ok(())
    }

    /// The stored form as bytes.
    pub fn to_stored(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode_stored(&mut out)?;
        Ok(out.freeze())
    }

    /// Reads one stored-form message (version 8+ layout: tags present when flagged).
    pub fn decode_stored(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_stored_inner(true, r)
    }

    /// Reads one stored-form message from a pull response to a request of protocol `version`
    /// (below version 8 there is no tag list whatever the flag says).
    pub fn decode_stored_for_version(
        version: i16,
        r: &mut Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Self::decode_stored_inner(tags_on_wire(version), r)
    }

    /// Like [`Message::decode_stored`], charging what the decoded message holds in memory
    /// (strings plus their in-memory headers) to `budget` as it goes and failing as soon as
    /// the budget runs out, before decoding the rest. Attributes cost more decoded than on
    /// the wire (an empty one is 4 bytes there and about 50 here), so a frame's length alone
    /// does not bound what decoding it allocates.
    pub fn decode_stored_limited(
        r: &mut Reader<'_>,
        budget: &mut usize,
    ) -> Result<Self, DecodeError> {
        Self::decode_stored_inner_limited(true, r, budget)
    }

    fn decode_stored_inner(with_tags: bool, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut unlimited = usize::MAX;
        Self::decode_stored_inner_limited(with_tags, r, &mut unlimited)
    }

    fn decode_stored_inner_limited(
        with_tags: bool,
        r: &mut Reader<'_>,
        budget: &mut usize,
    ) -> Result<Self, DecodeError> {
        const STRING: usize = std::mem::size_of::<String>();
        let mut charge = |bytes: usize| -> Result<(), DecodeError> {
            *budget = budget.checked_sub(bytes).ok_or(DecodeError::Invalid {
                field: "message",
                reason: "decodes to more memory than allowed",
            })?;
            Ok(())
        };
        charge(std::mem::size_of::<SentMessage>())?;
        let flags = MessageFlags(r.u8("message flag")?);
        let created_time = r.i64("created time")?;
        let expire_or_schedule = r.i64("expire/schedule time")?;
        let subject = r.string("subject")?;
        let message_id = r.string("message id")?;
        charge(subject.len() + message_id.len())?;
        let mut tags = Vec::new();
        if with_tags && flags.has_tags() {
            let count = usize::from(r.u8("tag count")?);
            if count > MAX_TAGS {
                return Err(DecodeError::Invalid {
                    field: "tag count",
                    reason: "more than 127 tags (Java reads the count as a signed byte)",
                });
            }
            for _ in 0..count {
                let tag = r.string("tag")?;
                charge(STRING + tag.len())?;
                tags.push(tag);
            }
        }
        let attrs_len = r.i32("attributes length")?;
        let attrs_len = usize::try_from(attrs_len).map_err(|_| DecodeError::NegativeLength {
            field: "attributes length",
            len: i64::from(attrs_len),
        })?;
        let mut attrs_reader = Reader::new(r.bytes(attrs_len, "attributes")?);
        let mut attrs = Vec::new();
        while !attrs_reader.is_empty() {
            let key = attrs_reader.string("attribute key")?;
            let value = utf8(
                attrs_reader.ushort_bytes("attribute value")?,
                "attribute value",
            )?;
            charge(2 * STRING + key.len() + value.len())?;
            attrs.push((key, value));
        }
        Ok(Self {
            flags,
            created_time,
            expire_or_schedule,
            subject,
            message_id,
            tags,
            attrs,
        })
    }

    /// The value of attribute `key`, if present (the first one, if repeated).
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets attribute `key` to `value`, replacing an existing one in place or appending.
    pub fn set_attr(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key.to_owned(), value)),
        }
    }
}

/// A message as received in a SEND_MESSAGE body: the decoded message, the CRC it carried and its
/// raw stored-form bytes (what a broker appends to its log unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The decoded message.
    pub message: Message,
    /// The CRC-32 the sender computed over the stored form.
    pub carried_crc: u32,
    /// The stored-form bytes exactly as received.
    pub stored: Bytes,
}

impl SentMessage {
    /// Whether the carried CRC matches the bytes received.
    pub fn crc_ok(&self) -> bool {
        crc32fast::hash(&self.stored) == self.carried_crc
    }

    /// Fails with [`DecodeError::CrcMismatch`] unless the carried CRC matches the bytes received.
    pub fn verify_crc(&self) -> Result<(), DecodeError> {
        let computed = crc32fast::hash(&self.stored);
        if computed == self.carried_crc {
            Ok(())
        } else {
            Err(DecodeError::CrcMismatch {
                carried: self.carried_crc,
                computed,
            })
        }
    }

    /// Appends the send form exactly as received: the carried CRC, then the stored bytes.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_i64(i64::from(self.carried_crc));
        out.put_slice(&self.stored);
    }

    /// Reads one send-form message (CRC + stored form) from `body`, whose reader `r` is over
    /// the same bytes. The CRC is not checked here: see [`Self::verify_crc`].
    pub fn decode(body: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut unlimited = usize::MAX;
        Self::decode_limited(body, r, &mut unlimited)
    }

    /// Like [`SentMessage::decode`], charging the decoded size to `budget` (see
    /// [`Message::decode_stored_limited`]).
    pub fn decode_limited(
        body: &Bytes,
        r: &mut Reader<'_>,
        budget: &mut usize,
    ) -> Result<Self, DecodeError> {
        let crc = r.i64("message crc")?;
        let crc = u32::try_from(crc).map_err(|_| DecodeError::Invalid {
            field: "message crc",
            reason: "a CRC-32 must fill only the low 32 bits",
        })?;
        let start = r.position();
        let message = Message::decode_stored_limited(r, budget)?;
        let stored = body.slice(start..r.position());
        Ok(Self {
            message,
            carried_crc: crc,
            stored,
        })
    }
}
