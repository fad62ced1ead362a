//! On-disk record framing shared by the message log and the schedule logs, and the record body.
//!
//! Every record is `u32 length | u32 CRC-32C of the payload | payload` (big-endian). A reader
//! stops at the first record whose length is impossible, whose bytes run past the end of the
//! file, or whose CRC does not match: everything from there on is a torn or damaged tail.
//!
//! Message-log payload ([`DelayRecord`]):
//! `u8 version (1) | i64 due_ms | u16 subject length | subject | u16 id length | id | message`
//! where `message` is the message's stored wire form, exactly as received, up to the end.
//!
//! Schedule-log payload: `u64 message-log offset of the source record | message-log payload`.

use std::io::{self, Read};

use bytes::Bytes;

/// Bytes of the frame header (length + CRC).
pub const FRAME_HEADER: usize = 8;
const VERSION: u8 = 1;

/// Appends one framed record holding `parts` concatenated.
pub fn put_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = 0u32;
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// A message as the engine stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRecord {
    /// When it is due (ms since the epoch), already clamped to "not before it was received".
    pub due_ms: i64,
    /// The subject.
    pub subject: String,
    /// The message id.
    pub message_id: String,
    /// The message's stored wire form.
    pub message: Bytes,
}

impl DelayRecord {
    /// Appends the message-log payload.
    #[cfg(test)]
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        encode_payload(
            out,
            self.due_ms,
            &self.subject,
            &self.message_id,
            &self.message,
        );
    }

    /// Reads a message-log payload. `None` if it is not one (a damaged record whose CRC happened
    /// to match is still refused here).
    pub fn decode_payload(p: &[u8]) -> Option<Self> {
        let due_ms = peek_due(p)?;
        let mut at = 9;
        let mut short = |p: &[u8]| -> Option<String> {
            let len = u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?) as usize;
            let s = std::str::from_utf8(p.get(at + 2..at + 2 + len)?).ok()?;
            at += 2 + len;
            Some(s.to_owned())
        };
        let subject = short(p)?;
        let message_id = short(p)?;
        Some(Self {
            due_ms,
            subject,
            message_id,
            message: Bytes::copy_from_slice(&p[at..]),
        })
    }
}

/// Appends a message-log payload (subject and id must be at most 65535 bytes).
pub fn encode_payload(
    out: &mut Vec<u8>,
    due_ms: i64,
    subject: &str,
    message_id: &str,
    message: &[u8],
) {
    out.push(VERSION);
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    out.extend_from_slice(subject.as_bytes());
    out.extend_from_slice(&(message_id.len() as u16).to_be_bytes());
    out.extend_from_slice(message_id.as_bytes());
    out.extend_from_slice(message);
}

/// Appends one framed record whose payload `fill` writes (no intermediate copy).
pub fn put_frame_with(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    fill(out);
    let len = (out.len() - at - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(&out[at + FRAME_HEADER..]);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

/// The due time of a message-log payload without decoding the rest.
pub fn peek_due(p: &[u8]) -> Option<i64> {
    if p.first() != Some(&VERSION) {
        return None;
    }
    Some(i64::from_be_bytes(p.get(1..9)?.try_into().ok()?))
}

/// Why a scan stopped before the end of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The input ends inside a record (a torn write).
    Torn,
    /// A length is impossible or a CRC does not match.
    Corrupt(&'static str),
}

/// Reads framed records one by one from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    max_payload: usize,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of `inner`, whose first byte is at file offset `offset`; payloads over
    /// `max_payload` bytes count as damage.
    pub fn new(inner: R, offset: u64, max_payload: usize) -> Self {
        Self {
            inner,
            offset,
            max_payload,
            buf: Vec::new(),
        }
    }

    /// The file offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record as `(offset, payload)`; `Ok(Ok(None))` at a clean end of input,
    /// `Ok(Err(damage))` at a torn or corrupt record (the offset stays at its start).
    #[allow(clippy::type_complexity)]
    pub fn next_record(&mut self) -> io::Result<Result<Option<(u64, &[u8])>, Damage>> {
        let mut header = [0u8; FRAME_HEADER];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(Ok(None));
        }
        if got < FRAME_HEADER {
            return Ok(Err(Damage::Torn));
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len > self.max_payload {
            return Ok(Err(Damage::Corrupt("impossible record length")));
        }
        self.buf.resize(len, 0);
        if read_full(&mut self.inner, &mut self.buf)? < len {
            return Ok(Err(Damage::Torn));
        }
        if crc32c::crc32c(&self.buf) != crc {
            return Ok(Err(Damage::Corrupt("CRC-32C mismatch")));
        }
        let at = self.offset;
        self.offset += (FRAME_HEADER + len) as u64;
        Ok(Ok(Some((at, &self.buf))))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DelayRecord {
        DelayRecord {
            due_ms: 1_700_000_000_123,
            subject: "order.timeout".into(),
            message_id: "id-1".into(),
            message: Bytes::from_static(b"\x02stored form"),
        }
    }

    #[test]
    fn payload_round_trips() {
        let mut p = Vec::new();
        sample().encode_payload(&mut p);
        assert_eq!(DelayRecord::decode_payload(&p), Some(sample()));
        assert_eq!(peek_due(&p), Some(1_700_000_000_123));
        assert_eq!(DelayRecord::decode_payload(&p[..12]), None);
    }

    #[test]
    fn reader_stops_at_torn_and_corrupt_records() {
        let mut p = Vec::new();
        sample().encode_payload(&mut p);
        let mut file = Vec::new();
        put_frame(&mut file, &[&p]);
        put_frame(&mut file, &[&p]);
        let one = file.len() / 2;

        let mut r = FrameReader::new(&file[..], 0, 1 << 20);
        assert_eq!(r.next_record().unwrap().unwrap().unwrap().0, 0);
        assert_eq!(r.next_record().unwrap().unwrap().unwrap().0, one as u64);
        assert_eq!(r.next_record().unwrap(), Ok(None));

        let mut r = FrameReader::new(&file[..file.len() - 1], 0, 1 << 20);
        r.next_record().unwrap().unwrap().unwrap();
        assert_eq!(r.next_record().unwrap(), Err(Damage::Torn));
        assert_eq!(r.offset(), one as u64);

        let mut flipped = file.clone();
        flipped[one + 12] ^= 0x40;
        let mut r = FrameReader::new(&flipped[..], 0, 1 << 20);
        r.next_record().unwrap().unwrap().unwrap();
        assert_eq!(
            r.next_record().unwrap(),
            Err(Damage::Corrupt("CRC-32C mismatch"))
        );
    }
}
