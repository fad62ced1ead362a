//! Hostile input: random and mutated frames fed to the frame decoder and every payload decoder
//! must give clean errors: no panic, and no allocation out of proportion to the bytes received
//! (checked with a counting allocator), whatever the length fields claim.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::Config;
use qmq_protocol::codes::command;
use qmq_protocol::{Frame, FrameCodec, FrameError, Header, Payload};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio_util::codec::Decoder;

/// Counts the bytes this thread has allocated and the peak since the last [`reset_peak`].
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(n);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size);
        sub(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a measurement: returns the bytes live now.
fn reset_peak() -> usize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

/// Bytes allocated at the peak since `base`.
fn peak_since(base: usize) -> usize {
    PEAK.with(Cell::get).saturating_sub(base)
}

/// The most a payload decoder may allocate for a body of `len` bytes: typed values are a small
/// multiple of the bytes they come from (a `String` header per 2-byte empty string, vectors
/// doubling), never what a length field claims.
fn allowance(len: usize) -> usize {
    32 * len + 4096
}

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

/// Every (code, flag, request code) the payload decoder distinguishes.
const INTERPRETATIONS: [(i16, i32, i16); 13] = [
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
    (4, 1, command::PULL_MESSAGE),
];

/// Decodes `frame`'s body under every interpretation and version; what decodes must encode
/// again to the same bytes, and no decode may allocate beyond its allowance.
fn decode_every_way(frame: &Frame, stats: &mut Stats) {
    stats.frames += 1;
    for (code, flag, request_code) in INTERPRETATIONS {
        for version in [4, 7, 8, 9] {
            let header = Header {
                code,
                version,
                flag,
                request_code,
                ..frame.header
            };
            let f = Frame::new(header, frame.body.clone());
            let base = reset_peak();
            let decoded = Payload::decode(&f);
            let used = peak_since(base);
            assert!(
                used <= allowance(f.body.len()),
                "decoding {} bytes as {header:?} allocated {used} bytes",
                f.body.len()
            );
            stats.decodes += 1;
            if let Ok(p) = decoded {
                if !matches!(p, Payload::Raw(_)) {
                    stats.typed += 1;
                }
                assert_eq!(p.encode(&header).unwrap(), f.body, "{header:?} {p:?}");
            }
        }
    }
}

/// What a hostile run exercised, so the test can tell it did real work.
#[derive(Debug, Default)]
struct Stats {
    /// Frames the codec yielded.
    frames: usize,
    /// Payload decodes attempted.
    decodes: usize,
    /// Payload decodes that gave a typed (not raw) payload.
    typed: usize,
}

/// Feeds `bytes` to a codec limited to `limit`, then every frame it yields to every payload
/// decoder; the codec may not buffer beyond what it was given plus its read-ahead.
fn feed(bytes: &[u8], limit: usize, stats: &mut Stats) {
    let mut codec = FrameCodec::new(limit);
    let mut buf = BytesMut::from(bytes);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.body.len() + 20 <= limit);
                decode_every_way(&frame, stats);
            }
            Ok(None) => break,
            Err(FrameError::Io(e)) => panic!("io error from memory: {e}"),
            Err(_) => break,
        }
    }
    assert!(
        buf.capacity() <= (bytes.len() + 256 * 1024) * 2,
        "decoder over-allocated"
    );
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let seeds = seeds();
    assert!(seeds.len() > 40);
    let rng = &mut StdRng::seed_from_u64(7);
    let mut cases = 0usize;
    let mut stats = Stats::default();
    // Mutations of real frames: flip, overwrite, truncate, extend, hostile length fields.
    for round in 0..150_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        let edits = 1 + rng.gen_range(0..4);
        for _ in 0..edits {
            match rng.gen_range(0..6) {
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
                4 => {
                    // A hostile 16-bit length or count somewhere in the body.
                    if bytes.len() > 26 {
                        let i = rng.gen_range(24..bytes.len() - 1);
                        let v: [u8; 2] = match rng.gen_range(0..3) {
                            0 => [0x7f, 0xff],
                            1 => [0xff, 0xff],
                            _ => [0x80, 0x00],
                        };
                        bytes[i..i + 2].copy_from_slice(&v);
                    }
                }
                _ => {
                    // A hostile 32-bit length (attributes, filter count) somewhere in the body.
                    if bytes.len() > 28 {
                        let i = rng.gen_range(24..bytes.len() - 3);
                        let v = [i32::MAX, -1, i32::MIN, 0x0100_0000][rng.gen_range(0..4)];
                        bytes[i..i + 4].copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
        // Keep the frame length consistent half the time, so the body decoders see the damage.
        if rng.gen() && bytes.len() >= 10 {
            let total = (bytes.len() - 4) as i32;
            bytes[0..4].copy_from_slice(&total.to_be_bytes());
        }
        feed(&bytes, 1 << 16, &mut stats);
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
        feed(&bytes, 1 << 16, &mut stats);
        cases += 1;
    }
    assert_eq!(cases, 300_000);
    println!("{stats:?}");
    // Most inputs reached the payload decoders, and many damaged bodies still decoded.
    assert!(stats.frames > 150_000, "{stats:?}");
    assert!(stats.typed > 150_000, "{stats:?}");
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
fn a_stalled_large_frame_costs_only_the_read_ahead() {
    // 16 MiB announced (within the default limit), 10 bytes sent.
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(16 * 1024 * 1024 - 4i32).to_be_bytes());
    buf.extend_from_slice(&18i16.to_be_bytes());
    buf.extend_from_slice(&0xdec1_0adeu32.to_be_bytes());
    let base = reset_peak();
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(peak_since(base) <= 512 * 1024, "{}", peak_since(base));
    assert!(buf.capacity() <= 512 * 1024);
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
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0, 0, 18, 0xde, 0xc1, 0x0a, 0xde][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::TooShort(-16))
    ));
}

#[test]
fn hostile_counts_cost_an_error_not_memory() {
    // CLIENT_REGISTER claiming 32767 entries, a pull claiming i32::MAX filters, a message
    // claiming 2 GiB of attributes: each is a few bytes long.
    let mut register = 0x7fffi16.to_be_bytes().to_vec();
    register.extend_from_slice(&[0, 1, b'k']);
    let mut pull = Vec::new();
    for s in ["s", "g", "c"] {
        pull.extend_from_slice(&1i16.to_be_bytes());
        pull.extend_from_slice(s.as_bytes());
    }
    pull.extend_from_slice(&[0; 4 + 32 + 1]);
    pull.extend_from_slice(&i32::MAX.to_be_bytes());
    let mut send = vec![0u8; 8 + 1 + 16];
    send.extend_from_slice(&[0, 1, b's', 0, 1, b'i']);
    send.extend_from_slice(&i32::MAX.to_be_bytes());
    for (code, body) in [
        (command::CLIENT_REGISTER, register),
        (command::PULL_MESSAGE, pull),
        (command::SEND_MESSAGE, send),
    ] {
        let frame = Frame::new(Header::request(code, 9, 1), body);
        let base = reset_peak();
        let result = Payload::decode(&frame);
        assert!(result.is_err(), "{code}: {result:?}");
        assert!(peak_since(base) <= allowance(frame.body.len()));
    }
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]
    #[test]
    fn arbitrary_bodies_decode_cleanly(body in proptest::collection::vec(any::<u8>(), 0..512), code in any::<i16>(), version in 0i16..12, flag in 0i32..2, rc in any::<i16>()) {
        let header = Header { code, version, flag, request_code: rc, opaque: 0 };
        let f = Frame::new(header, body);
        let base = reset_peak();
        let decoded = Payload::decode(&f);
        prop_assert!(peak_since(base) <= allowance(f.body.len()));
        if let Ok(p) = decoded {
            prop_assert_eq!(p.encode(&header).unwrap(), f.body);
        }
    }
}

#[test]
fn a_send_body_of_empty_attributes_is_refused_within_its_decoded_budget() {
    // One message with 250,000 empty attributes: 1 MB on the wire, ~12 MB decoded.
    let m = qmq_protocol::Message {
        flags: qmq_protocol::MessageFlags(0),
        created_time: 0,
        expire_or_schedule: 0,
        subject: "s".into(),
        message_id: "i".into(),
        tags: Vec::new(),
        attrs: vec![(String::new(), String::new()); 250_000],
    };
    let mut body = bytes::BytesMut::new();
    qmq_protocol::send::encode_send_request(&[m], &mut body).unwrap();
    let body = body.freeze();
    let budget = 1024 * 1024;
    let base = reset_peak();
    let result = qmq_protocol::send::decode_send_request_limited(&body, budget);
    let used = peak_since(base);
    assert!(result.is_err(), "decoded past its budget");
    assert!(used <= 3 * budget, "decoding allocated {used} bytes");
    // The same body decodes within a budget large enough for it.
    assert!(qmq_protocol::send::decode_send_request_limited(&body, 64 << 20).is_ok());
}
