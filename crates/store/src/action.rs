//! Action log records: every pull and ack, so consumer state can be rebuilt after a crash.
//!
//! Binary layout, big-endian: `u8 kind`, then the key (subject, group, consumer, each a `u16`
//! length and UTF-8), then the kind's fields. The layout is part of the replication protocol:
//! see [`crate::formats`].

use crate::error::{Result, StoreError};

/// Who consumes: a consumer of a group on a subject. Broadcast consumers have their own progress.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ConsumerKey {
    /// Subject.
    pub subject: String,
    /// Consumer group.
    pub group: String,
    /// Consumer id.
    pub consumer: String,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Messages handed to a consumer: consume-log sequences `seqs` became pull-log sequences
    /// `first_pull..first_pull + seqs.len()`; the group's next consume sequence became `next`
    /// (past any message skipped by a filter).
    Pull {
        /// The consumer.
        key: ConsumerKey,
        /// Broadcast consumption (progress kept per consumer).
        broadcast: bool,
        /// First pull-log sequence written.
        first_pull: u64,
        /// Consume-log sequences handed out, in order.
        seqs: Vec<u64>,
        /// The group's next consume-log sequence after this pull.
        next: u64,
    },
    /// The consumer finished pull-log sequences `first..=last`.
    Ack {
        /// The consumer.
        key: ConsumerKey,
        /// First pull-log sequence acked.
        first: u64,
        /// Last pull-log sequence acked.
        last: u64,
    },
    /// The group's next consume sequence was set by an operator (reset offset).
    Reset {
        /// The consumer key; its consumer field is empty for a whole (non-broadcast) group.
        key: ConsumerKey,
        /// The new next consume-log sequence.
        next: u64,
    },
}

const PULL: u8 = 1;
const ACK: u8 = 2;
const RESET: u8 = 3;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Action {
    /// Encodes the action.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let (kind, key) = match self {
            Self::Pull { key, .. } => (PULL, key),
            Self::Ack { key, .. } => (ACK, key),
            Self::Reset { key, .. } => (RESET, key),
        };
        out.push(kind);
        put_str(&mut out, &key.subject);
        put_str(&mut out, &key.group);
        put_str(&mut out, &key.consumer);
        match self {
            Self::Pull {
                broadcast,
                first_pull,
                seqs,
                next,
                ..
            } => {
                out.push(u8::from(*broadcast));
                out.extend_from_slice(&first_pull.to_be_bytes());
                out.extend_from_slice(&next.to_be_bytes());
                out.extend_from_slice(&(seqs.len() as u32).to_be_bytes());
                for s in seqs {
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            Self::Ack { first, last, .. } => {
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&last.to_be_bytes());
            }
            Self::Reset { next, .. } => out.extend_from_slice(&next.to_be_bytes()),
        }
        out
    }

    /// Decodes an action; `offset` only labels errors.
    pub fn decode(b: &[u8], offset: u64) -> Result<Self> {
        let mut r = Cursor { b, pos: 0, offset };
        let kind = r.u8()?;
        let key = ConsumerKey {
            subject: r.str()?,
            group: r.str()?,
            consumer: r.str()?,
        };
        Ok(match kind {
            PULL => {
                let broadcast = r.u8()? != 0;
                let first_pull = r.u64()?;
                let next = r.u64()?;
                let n = r.u32()? as usize;
                if n > r.b.len() / 8 {
                    return Err(r.corrupt());
                }
                let mut seqs = Vec::with_capacity(n);
                for _ in 0..n {
                    seqs.push(r.u64()?);
                }
                Self::Pull {
                    key,
                    broadcast,
                    first_pull,
                    seqs,
                    next,
                }
            }
            ACK => Self::Ack {
                key,
                first: r.u64()?,
                last: r.u64()?,
            },
            RESET => Self::Reset {
                key,
                next: r.u64()?,
            },
            _ => return Err(r.corrupt()),
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    offset: u64,
}

impl Cursor<'_> {
    fn corrupt(&self) -> StoreError {
        StoreError::Corrupt {
            log: "action log",
            offset: self.offset,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.pos + n > self.b.len() {
            return Err(self.corrupt());
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self) -> Result<String> {
        let s = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([s[0], s[1]]));
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.corrupt())
    }
}
