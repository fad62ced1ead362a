//! Primitive field codecs shared by every payload: big-endian integers and QMQ "short strings"
//! (`i16` byte length + UTF-8 bytes).
//!
//! [`Reader`] never reads past its slice and never allocates more than the bytes it actually has,
//! so a hostile length field costs an error, not memory.

use bytes::{BufMut, BytesMut};

use crate::DecodeError;

/// A bounds-checked cursor over a payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The whole underlying slice.
    pub fn source(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                field,
                needed: n,
                remaining: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a boolean byte; only 0 and 1 are accepted (what Java writers send), so a decoded
    /// payload re-encodes byte for byte.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                field,
                reason: "a boolean byte must be 0 or 1",
            }),
        }
    }

    /// Reads a big-endian `i16`.
    pub fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `i32`.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `i64`.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// Reads a short string's raw bytes (`i16` length, negative lengths refused).
    pub fn short_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.i16(field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            field,
            len: i64::from(len),
        })?;
        self.bytes(len, field)
    }

    /// Reads a short string whose length is an unsigned 16-bit number (QMQ attribute values may
    /// be up to 65535 bytes; the Java reader compensates negative lengths the same way).
    pub fn ushort_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_be_bytes(self.array(field)?);
        self.bytes(usize::from(len), field)
    }

    /// Reads a UTF-8 short string.
    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.short_bytes(field)?;
        utf8(bytes, field)
    }

    /// Fails unless everything was read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what,
                count: self.remaining(),
            })
        }
    }
}

/// Checks that `bytes` are UTF-8.
pub(crate) fn utf8(bytes: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
}

/// Writes a short string; fails if it is longer than 32767 bytes.
pub fn put_string(out: &mut BytesMut, s: &str, field: &'static str) -> Result<(), EncodeError> {
    put_short_bytes(out, s.as_bytes(), field)
}

/// Writes short-string bytes; fails if longer than 32767 bytes.
pub fn put_short_bytes(
    out: &mut BytesMut,
    bytes: &[u8],
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = i16::try_from(bytes.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: bytes.len(),
        max: i16::MAX as usize,
    })?;
    out.put_i16(len);
    out.put_slice(bytes);
    Ok(())
}

/// Writes bytes with an unsigned 16-bit length (attribute values); fails past 65535 bytes.
pub fn put_ushort_bytes(
    out: &mut BytesMut,
    bytes: &[u8],
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: bytes.len(),
        max: u16::MAX as usize,
    })?;
    out.put_u16(len);
    out.put_slice(bytes);
    Ok(())
}

/// A value that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A length-prefixed field is longer than its length field can say.
    #[error("{field} is {len} bytes, more than the {max} the wire format allows")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The payload holds something the requested protocol version cannot carry (e.g. pull
    /// filters for a version-7 peer); sending it anyway would silently drop it.
    #[error("{what} cannot be sent with protocol version {version}")]
    NotInVersion {
        /// What cannot be carried.
        what: &'static str,
        /// The protocol version asked for.
        version: i16,
    },
    /// A field that must not be empty is (for example a string a QMQ reader takes for the end
    /// of the data when its length is 0).
    #[error("{field} must not be empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// A list has more entries than its count field can say.
    #[error("{field} has {count} entries, more than the {max} the wire format allows")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// How many entries it has.
        count: usize,
        /// The most allowed.
        max: usize,
    },
}
