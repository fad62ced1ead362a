//! CONSUME_MANAGE: an operator (through the meta server) moves a consumer group's position on a
//! broker to the newest or the oldest message of a subject.
//!
//! Request body: `short string subject`, `short string consumer group`, `i32 consume from`
//! (1 = latest, 2 = earliest). The broker answers SUCCESS or PARAM_ERROR with an empty body.

use bytes::{BufMut, BytesMut};

use crate::wire::{put_string, EncodeError, Reader};
use crate::DecodeError;

/// Where a consumer group starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumeFrom {
    /// Skip everything stored: consume only messages that arrive from now on.
    Latest,
    /// Start again from the oldest message still stored.
    Earliest,
}

impl ConsumeFrom {
    /// The wire code.
    pub fn code(self) -> i32 {
        match self {
            Self::Latest => 1,
            Self::Earliest => 2,
        }
    }

    /// The value for a wire code.
    pub fn from_code(code: i32) -> Result<Self, DecodeError> {
        match code {
            1 => Ok(Self::Latest),
            2 => Ok(Self::Earliest),
            other => Err(DecodeError::UnknownCode {
                field: "consume from",
                code: i64::from(other),
            }),
        }
    }
}

/// A CONSUME_MANAGE request (meta server to broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeManageRequest {
    /// The subject.
    pub subject: String,
    /// The consumer group whose position moves.
    pub group: String,
    /// Where it moves to.
    pub consume_from: ConsumeFrom,
}

impl ConsumeManageRequest {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_string(out, &self.subject, "subject")?;
        put_string(out, &self.group, "group")?;
        out.put_i32(self.consume_from.code());
        Ok(())
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let req = Self {
            subject: r.string("subject")?,
            group: r.string("group")?,
            consume_from: ConsumeFrom::from_code(r.i32("consume from")?)?,
        };
        r.finish("consume manage request")?;
        Ok(req)
    }
}
