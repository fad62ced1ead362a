//! Why a payload could not be decoded.

/// A payload that does not follow the QMQ wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended inside a field.
    #[error("truncated {field}: needs {needed} bytes, {remaining} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A length or count field is negative.
    #[error("negative length {len} in {field}")]
    NegativeLength {
        /// The field being read.
        field: &'static str,
        /// The value read.
        len: i64,
    },
    /// A string field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A code field holds a value this protocol does not define.
    #[error("unknown {field} code {code}")]
    UnknownCode {
        /// The field being read.
        field: &'static str,
        /// The value read.
        code: i64,
    },
    /// A message's CRC does not match its bytes.
    #[error("message CRC mismatch: carried {carried:#x}, computed {computed:#x}")]
    CrcMismatch {
        /// The CRC the message carried.
        carried: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// Bytes were left over after a payload that must fill its frame.
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes {
        /// The payload.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A field holds a value that is out of its allowed range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}
