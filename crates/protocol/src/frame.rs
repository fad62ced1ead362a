//! The frame layer: every QMQ request and response is one length-prefixed frame.
//!
//! ```text
//! i32 total            bytes after this field: 2 + header length + body length
//! i16 header length    always 18
//! i32 magic            0xdec10ade
//! i16 code             request: command code; response: response code
//! i16 version          protocol version of the sender (payload layouts depend on it)
//! i32 opaque           request id, echoed by the response
//! i32 flag             bit 0 set = response
//! i16 request code     responses carry the request's command code; requests repeat their own
//! ...  body
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The magic number at the start of every header.
pub const MAGIC: u32 = 0xdec1_0ade;
/// Length of the fixed header, as carried in the header-length field.
pub const HEADER_LEN: i16 = 18;
/// Bytes before the body: total (4) + header length (2) + header (18).
pub const PREFIX_LEN: usize = 4 + 2 + HEADER_LEN as usize;
/// Default largest frame accepted (total field), 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bit 0 of the header flag: the frame is a response.
pub const FLAG_RESPONSE: i32 = 1;

/// Protocol version 4: the oldest layout QMQ still reads. Pull requests carry no filter, acks
/// no broadcast byte, pull responses no message tags.
pub const VERSION_4: i16 = 4;
/// Protocol version 7: delay messages carry their schedule time (flag bit 1, see
/// [`crate::message`]); the Java delay server forwards due messages to brokers with it.
pub const VERSION_7: i16 = 7;
/// Protocol version 8: message tags. Pull responses keep the tag list (brokers strip it for
/// older requests), pull requests carry one tag filter, acks end with a broadcast byte. Java
/// brokers and delay servers talk to the meta server with it (the Java header default).
pub const VERSION_8: i16 = 8;
/// Protocol version 9: pull requests carry a list of typed filters (tag, sub-environment).
/// Every request of the current Java client uses it.
pub const VERSION_9: i16 = 9;
/// The version the current Java client sends: what a client of ours should send.
pub const CLIENT_VERSION: i16 = VERSION_9;
/// The version Java servers use for their own requests to the meta server.
pub const SERVER_VERSION: i16 = VERSION_8;

/// Largest number of bytes the decoder reserves ahead of data actually received. A peer that
/// announces a large frame and then stalls costs at most this much, not the whole frame.
const MAX_RESERVE_AHEAD: usize = 256 * 1024;

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Command code of a request, response code of a response.
    pub code: i16,
    /// Protocol version of the sender.
    pub version: i16,
    /// Request id; a response carries its request's.
    pub opaque: i32,
    /// Flag bits; bit 0 = response.
    pub flag: i32,
    /// A response's request command code; `-1` (0xffff) or the own code in requests.
    pub request_code: i16,
}

impl Header {
    /// A request header for `code`, as the Java client writes it (request code = own code).
    pub fn request(code: i16, version: i16, opaque: i32) -> Self {
        Self {
            code,
            version,
            opaque,
            flag: 0,
            request_code: code,
        }
    }

    /// The header of the response to `self` with response code `code`.
    pub fn response(&self, code: i16) -> Self {
        Self {
            code,
            version: self.version,
            opaque: self.opaque,
            flag: FLAG_RESPONSE,
            request_code: self.code,
        }
    }

    /// A request header as Java servers write their own requests to the meta server
    /// (BROKER_REGISTER, BROKER_ACQUIRE_META): [`SERVER_VERSION`] and the placeholder request
    /// code `-1`.
    pub fn server_request(code: i16, opaque: i32) -> Self {
        Self {
            code,
            version: SERVER_VERSION,
            opaque,
            flag: 0,
            request_code: crate::codes::PLACEHOLDER,
        }
    }

    /// Whether this frame is a response.
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    /// Whether this frame is a request.
    pub fn is_request(&self) -> bool {
        !self.is_response()
    }

    /// The command this frame is about: a request's own code, a response's request code.
    pub fn command_code(&self) -> i16 {
        if self.is_response() {
            self.request_code
        } else {
            self.code
        }
    }

    /// The command as a closed type, `None` for codes QMQ does not define.
    pub fn command(&self) -> Option<crate::codes::Command> {
        crate::codes::Command::from_code(self.command_code())
    }

    /// A response's code as a closed type (`None` for requests and unknown codes).
    pub fn response_code(&self) -> Option<crate::codes::ResponseCode> {
        if self.is_response() {
            crate::codes::ResponseCode::from_code(self.code)
        } else {
            None
        }
    }
}

/// One frame: a header and its raw body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The fixed header.
    pub header: Header,
    /// The body; its layout depends on the code and version.
    pub body: Bytes,
}

impl Frame {
    /// A frame of `header` and `body`.
    pub fn new(header: Header, body: impl Into<Bytes>) -> Self {
        Self {
            header,
            body: body.into(),
        }
    }

    /// Appends the encoded frame to `out` without a size check (the body must be smaller than
    /// 2 GiB; [`FrameCodec`] checks its configured limit).
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(PREFIX_LEN + self.body.len());
        let total = 2 + HEADER_LEN as usize + self.body.len();
        out.put_i32(total as i32);
        out.put_i16(HEADER_LEN);
        out.put_u32(MAGIC);
        out.put_i16(self.header.code);
        out.put_i16(self.header.version);
        out.put_i32(self.header.opaque);
        out.put_i32(self.header.flag);
        out.put_i16(self.header.request_code);
        out.put_slice(&self.body);
    }
}

/// A byte stream that is not a sequence of valid frames. The connection cannot be trusted after
/// one of these: the caller should close it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The magic number is wrong: this is not a QMQ peer, or the stream is out of step.
    #[error("bad magic {0:#010x}, expected 0xdec10ade")]
    BadMagic(u32),
    /// The header-length field is not 18.
    #[error("bad header length {0}, expected 18")]
    BadHeaderLength(i16),
    /// The total length is too small to hold the header.
    #[error("frame length {0} is smaller than the header")]
    TooShort(i32),
    /// The frame is larger than this codec accepts.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The size the frame announced.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The frame to encode is larger than the limit.
    #[error("refusing to send a frame of {size} bytes, the limit is {limit} bytes")]
    EncodeTooLarge {
        /// The size of the frame.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether this is the peer going away (reset or closed mid-stream, as when a client
    /// process exits) rather than bad bytes: servers log it as a close, not as an error.
    pub fn is_disconnect(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        matches!(self, Self::Io(e) if matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe))
    }
}

/// A tokio-util codec for QMQ frames with a frame-size limit.
///
/// The decoder checks the magic number, header length and size limit from the first 10 bytes,
/// before it buffers the rest, so an oversized or foreign frame costs no allocation; it reserves
/// at most 256 KiB ahead of the bytes received. The encoder refuses frames over the limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    /// A codec refusing frames whose total length exceeds `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The largest frame accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 10 {
            return Ok(None);
        }
        let total = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let header_len = i16::from_be_bytes([src[4], src[5]]);
        let magic = u32::from_be_bytes([src[6], src[7], src[8], src[9]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if header_len != HEADER_LEN {
            return Err(FrameError::BadHeaderLength(header_len));
        }
        if total < 2 + i32::from(HEADER_LEN) {
            return Err(FrameError::TooShort(total));
        }
        let total = total as usize;
        if total > self.max_frame {
            return Err(FrameError::TooLarge {
                size: total,
                limit: self.max_frame,
            });
        }
        if src.len() < 4 + total {
            src.reserve((4 + total - src.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let mut frame = src.split_to(4 + total);
        frame.advance(10);
        let code = frame.get_i16();
        let version = frame.get_i16();
        let opaque = frame.get_i32();
        let flag = frame.get_i32();
        let request_code = frame.get_i16();
        Ok(Some(Frame {
            header: Header {
                code,
                version,
                opaque,
                flag,
                request_code,
            },
            body: frame.freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let total = 2 + HEADER_LEN as usize + frame.body.len();
        if total > self.max_frame {
            return Err(FrameError::EncodeTooLarge {
                size: total,
                limit: self.max_frame,
            });
        }
        frame.encode_into(dst);
        Ok(())
    }
}

#[cfg(test)]
mod disconnect_tests {
    use super::FrameError;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_reset_is_a_disconnect_and_bad_bytes_are_not() {
        assert!(FrameError::Io(Error::from(ErrorKind::ConnectionReset)).is_disconnect());
        assert!(FrameError::Io(Error::from(ErrorKind::BrokenPipe)).is_disconnect());
        assert!(!FrameError::Io(Error::other("bytes remaining on stream")).is_disconnect());
        assert!(!FrameError::BadMagic(1).is_disconnect());
        assert!(!FrameError::TooShort(3).is_disconnect());
    }
}
