//! Feeds arbitrary bytes to the frame decoder and every payload decoder: they must return errors,
//! never panic, and never buffer beyond the frame limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qmq_protocol::{FrameCodec, Payload};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(mut frame)) = codec.decode(&mut buf) {
        for (code, flag) in [(10, 0), (11, 0), (12, 0), (30, 0), (35, 0), (40, 0), (0, 1)] {
            for request_code in [10, 11, 35, 40] {
                frame.header.code = code;
                frame.header.flag = flag;
                frame.header.request_code = request_code;
                if let Ok(p) = Payload::decode(&frame) {
                    let _ = p.encode(frame.header.version);
                }
            }
        }
    }
});
