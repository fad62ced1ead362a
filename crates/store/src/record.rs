//! The message-log record payload: the store's metadata about a message, then its bytes.
//!
//! Layout, big-endian: `u8 format (1) | u16 subject length | subject | u8 tag count |
//! (u16 tag length | tag)* | u64 append time (ms since the Unix epoch) | message bytes`.
//! The message bytes are opaque to the store (the broker's stored form of a QMQ message).
//! The layout is part of the replication protocol: see [`crate::formats`].

use crate::error::{Result, StoreError};

const FORMAT: u8 = 1;

/// Most tags one message may carry (QMQ sends a one-byte count).
pub const MAX_TAGS: usize = 255;

/// Appends the metadata part of a record (everything before the message bytes) to `h`.
pub fn header(h: &mut Vec<u8>, subject: &str, tags: &[String], time_ms: u64) {
    h.push(FORMAT);
    h.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    h.extend_from_slice(subject.as_bytes());
    h.push(tags.len() as u8);
    for t in tags {
        h.extend_from_slice(&(t.len() as u16).to_be_bytes());
        h.extend_from_slice(t.as_bytes());
    }
    h.extend_from_slice(&time_ms.to_be_bytes());
}

/// A decoded record, borrowing from the payload.
#[derive(Debug)]
pub struct View<'a> {
    /// The subject.
    pub subject: &'a str,
    /// The tags.
    pub tags: Vec<&'a str>,
    /// When the store appended it (ms since the Unix epoch).
    pub time_ms: u64,
    /// The message bytes.
    pub body: &'a [u8],
}

/// Decodes a payload; `offset` only labels errors.
pub fn decode(p: &[u8], offset: u64) -> Result<View<'_>> {
    let corrupt = || StoreError::Corrupt {
        log: "message log",
        offset,
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = p.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(s)
    };
    if take(1)?[0] != FORMAT {
        return Err(corrupt());
    }
    let str_of =
        |b: &'_ [u8]| -> Result<usize> { Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))) };
    let n = str_of(take(2)?)?;
    let subject = std::str::from_utf8(take(n)?).map_err(|_| corrupt())?;
    let count = take(1)?[0];
    let mut tags = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let n = str_of(take(2)?)?;
        tags.push(std::str::from_utf8(take(n)?).map_err(|_| corrupt())?);
    }
    let t = take(8)?;
    let time_ms = u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    let body = &p[pos..];
    Ok(View {
        subject,
        tags,
        time_ms,
        body,
    })
}

/// The bits a tag sets in a 64-bit tag summary (a one-word Bloom filter with two hashes).
pub fn tag_bits(tag: &str) -> u64 {
    let h = crc32c::crc32c(tag.as_bytes());
    (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63))
}

/// The tag summary of a message: the union of its tags' bits. A message cannot carry a tag
/// whose bits are not all set in its summary, so filters can pass over it by index alone.
pub fn tag_summary<S: AsRef<str>>(tags: &[S]) -> u64 {
    tags.iter().fold(0, |acc, t| acc | tag_bits(t.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_damage_is_an_error() {
        let tags = vec!["red".to_owned(), "主".to_owned()];
        let mut p = Vec::new();
        header(&mut p, "order.paid", &tags, 1234);
        p.extend_from_slice(b"body");
        let v = decode(&p, 0).unwrap();
        assert_eq!(v.subject, "order.paid");
        assert_eq!(v.tags, ["red", "主"]);
        assert_eq!(v.time_ms, 1234);
        assert_eq!(v.body, b"body");
        for cut in 0..p.len() - 4 {
            assert!(decode(&p[..cut], 0).is_err(), "cut at {cut}");
        }
        assert!(decode(&[2], 0).is_err());
    }

    #[test]
    fn summary_contains_every_tag() {
        let s = tag_summary(&["a", "b", "c"]);
        for t in ["a", "b", "c"] {
            assert_eq!(s & tag_bits(t), tag_bits(t));
        }
        assert_eq!(tag_summary::<&str>(&[]), 0);
    }
}
