//! Feeds arbitrary bytes to the frame decoder and then every frame body to every payload decoder
//! under every interpretation and version: they must return errors, never panic, never buffer
//! beyond the frame limit, and whatever decodes must re-encode to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qmq_protocol::codes::command;
use qmq_protocol::{FrameCodec, Header, Payload};
use tokio_util::codec::Decoder;

/// Every (code, flag, request code) the payload decoder distinguishes.
const INTERPRETATIONS: [(i16, i32, i16); 12] = [
    (command::SEND_MESSAGE, 0, command::SEND_MESSAGE),
    (command::PULL_MESSAGE, 0, command::PULL_MESSAGE),
    (command::ACK_REQUEST, 0, command::ACK_REQUEST),
    (command::BROKER_REGISTER, 0, -1),
    (command::CLIENT_REGISTER, 0, command::CLIENT_REGISTER),
    (command::BROKER_ACQUIRE_META, 0, -1),
    (command::CONSUME_MANAGE, 0, -1),
    (command::HEARTBEAT, 0, command::HEARTBEAT),
    (0, 1, command::SEND_MESSAGE),
    (0, 1, command::PULL_MESSAGE),
    (0, 1, command::CLIENT_REGISTER),
    (0, 1, command::BROKER_ACQUIRE_META),
];

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(LIMIT);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        assert!(frame.body.len() + 20 <= LIMIT);
        for (code, flag, request_code) in INTERPRETATIONS {
            for version in [4, 7, 8, 9] {
                let header = Header {
                    code,
                    version,
                    flag,
                    request_code,
                    ..frame.header
                };
                let f = qmq_protocol::Frame::new(header, frame.body.clone());
                if let Ok(p) = Payload::decode(&f) {
                    assert_eq!(p.encode(&header).unwrap(), f.body);
                }
            }
        }
    }
    assert!(buf.capacity() <= (data.len() + 256 * 1024) * 2);
});
