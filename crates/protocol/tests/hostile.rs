//! Hostile input: random and mutated frames fed to the frame decoder and every payload decoder
//! must give clean errors: no panic, no allocation beyond the frame limit.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::Config;
use qmq_protocol::{Frame, FrameCodec, FrameError, Payload};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio_util::codec::Decoder;

/// Frames from the golden captures, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut seeds = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = FrameCodec::default();
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                let mut one = BytesMut::new();
                frame.encode_into(&mut one);
                seeds.push(one.to_vec());
            }
        }
    }
    seeds
}

/// Decodes everything in `bytes` with a small frame limit, then every payload of every frame,
/// and checks the decoder never buffered beyond what it was given plus the limit.
fn feed(bytes: &[u8], limit: usize) {
    let mut codec = FrameCodec::new(limit);
    let mut buf = BytesMut::from(bytes);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.body.len() <= limit);
                // Every interpretation of the body, whatever the header says.
                for (code, flag) in [(10, 0), (11, 0), (12, 0), (30, 0), (35, 0), (40, 0), (0, 1)] {
                    for request_code in [10, 11, 35, 40] {
                        for version in [7, 8, 9] {
                            let mut f = Frame::new(frame.header, frame.body.clone());
                            f.header.code = code;
                            f.header.flag = flag;
                            f.header.request_code = request_code;
                            f.header.version = version;
                            if let Ok(p) = Payload::decode(&f) {
                                // What decodes must encode again.
                                let _ = p.encode(version);
                            }
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(FrameError::Io(e)) => panic!("io error from memory: {e}"),
            Err(_) => break,
        }
        assert!(
            buf.capacity() <= bytes.len().max(limit + 64) * 2,
            "decoder over-allocated"
        );
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let seeds = seeds();
    assert!(!seeds.is_empty());
    let rng = &mut StdRng::seed_from_u64(7);
    let mut cases = 0usize;
    // Mutations of real frames: flip, overwrite, truncate, extend, splice length fields.
    for round in 0..150_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        let edits = 1 + rng.gen_range(0..4);
        for _ in 0..edits {
            match rng.gen_range(0..5) {
                0 => {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.gen_range(0..8);
                }
                1 => {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = rng.gen();
                }
                2 => {
                    let n = rng.gen_range(0..bytes.len());
                    bytes.truncate(n.max(1));
                }
                3 => {
                    let extra: Vec<u8> = (0..rng.gen_range(0..32)).map(|_| rng.gen()).collect();
                    bytes.extend(extra);
                }
                _ => {
                    // A hostile length (0x7fff / 0xffff / i32::MAX) somewhere in the body.
                    if bytes.len() > 26 {
                        let i = rng.gen_range(24..bytes.len() - 2);
                        let v: [u8; 2] = if rng.gen() {
                            [0x7f, 0xff]
                        } else {
                            [0xff, 0xff]
                        };
                        bytes[i..i + 2].copy_from_slice(&v);
                    }
                }
            }
        }
        feed(&bytes, 1 << 16);
        cases += 1;
    }
    // Pure noise, with and without a valid prefix.
    for _ in 0..150_000 {
        let len = rng.gen_range(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if rng.gen() && bytes.len() >= 10 {
            let total = (bytes.len() - 4) as i32;
            bytes[0..4].copy_from_slice(&total.to_be_bytes());
            bytes[4..6].copy_from_slice(&18i16.to_be_bytes());
            bytes[6..10].copy_from_slice(&0xdec1_0adeu32.to_be_bytes());
        }
        feed(&bytes, 1 << 16);
        cases += 1;
    }
    assert_eq!(cases, 300_000);
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut codec = FrameCodec::new(1024);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(1_000_000i32).to_be_bytes());
    buf.extend_from_slice(&18i16.to_be_bytes());
    buf.extend_from_slice(&0xdec1_0adeu32.to_be_bytes());
    match codec.decode(&mut buf) {
        Err(FrameError::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (1_000_000, 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(buf.capacity() < 4096);
}

#[test]
fn bad_magic_and_header_length_are_refused() {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(&[0, 0, 0, 20, 0, 18, 0xca, 0xfe, 0xba, 0xbe][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::BadMagic(0xcafebabe))
    ));
    let mut buf = BytesMut::from(&[0, 0, 0, 20, 0, 17, 0xde, 0xc1, 0x0a, 0xde][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::BadHeaderLength(17))
    ));
    let mut buf = BytesMut::from(&[0, 0, 0, 5, 0, 18, 0xde, 0xc1, 0x0a, 0xde][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::TooShort(5))
    ));
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]
    #[test]
    fn arbitrary_bodies_decode_cleanly(body in proptest::collection::vec(any::<u8>(), 0..512), code in any::<i16>(), version in 0i16..12, flag in 0i32..2, rc in any::<i16>()) {
        let mut f = Frame::new(Default::default(), body);
        f.header.code = code;
        f.header.version = version;
        f.header.flag = flag;
        f.header.request_code = rc;
        let _ = Payload::decode(&f);
    }
}
