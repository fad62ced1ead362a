//! Golden tests: every frame captured from the official QMQ Java client and servers decodes into
//! its typed payload and re-encodes to the same bytes.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use qmq_protocol::codes::command;
use qmq_protocol::{Frame, FrameCodec, Payload};
use tokio_util::codec::Decoder;

fn vector_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    assert!(
        files.len() >= 20,
        "vectors missing under {}",
        root.display()
    );
    files
}

fn split(bytes: &[u8]) -> Vec<Frame> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(f) = codec.decode(&mut buf).unwrap() {
        frames.push(f);
    }
    assert!(
        buf.is_empty(),
        "{} bytes left after the last frame",
        buf.len()
    );
    frames
}

#[test]
fn every_captured_frame_round_trips_byte_for_byte() {
    let mut decoded = std::collections::BTreeMap::<String, usize>::new();
    for path in vector_files() {
        let bytes = std::fs::read(&path).unwrap();
        let frames = split(&bytes);
        assert!(!frames.is_empty(), "{}", path.display());
        let mut again = BytesMut::new();
        for frame in &frames {
            let payload = Payload::decode(frame)
                .unwrap_or_else(|e| panic!("{}: {:?}: {e}", path.display(), frame.header));
            let body = payload.encode(frame.header.version).unwrap();
            assert_eq!(body, frame.body, "{}: {:?}", path.display(), frame.header);
            let kind = format!("{payload:?}");
            let kind = kind.split('(').next().unwrap().to_owned();
            *decoded.entry(kind).or_default() += 1;
            Frame::new(frame.header, body).encode_into(&mut again);
        }
        assert_eq!(&again[..], &bytes[..], "{}", path.display());
    }
    // Every payload kind the captures hold was understood, not passed through raw.
    for kind in [
        "Send",
        "Pull",
        "Pulled",
        "Ack",
        "ClientRegister",
        "Route",
        "BrokerRegister",
    ] {
        assert!(
            decoded.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in {decoded:?}"
        );
    }
}

#[test]
fn captured_send_carries_a_valid_crc_and_the_expected_fields() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/send-consume/conn05_port20881_c2s_34554.bin"),
    )
    .unwrap();
    let frames = split(&bytes);
    let send = frames
        .iter()
        .find(|f| f.header.code == command::SEND_MESSAGE)
        .unwrap();
    let Payload::Send(messages) = Payload::decode(send).unwrap() else {
        panic!("not a send");
    };
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.crc_ok(), "captured CRC must verify");
    assert_eq!(m.message.subject, "qmq.capture.subject");
    assert!(m.message.flags.is_reliable());
    assert!(!m.message.flags.is_delay());
    assert!(m.message.created_time > 1_700_000_000_000);

    // The pull response hands the same stored bytes back.
    let pulled = split(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/vectors/send-consume/conn05_port20881_s2c_20881.bin"),
        )
        .unwrap(),
    );
    let Some(Payload::Pulled(resp)) = pulled
        .iter()
        .map(|f| Payload::decode(f).unwrap())
        .find(|p| matches!(p, Payload::Pulled(_)))
    else {
        panic!("no pull response");
    };
    assert_eq!(resp.reserved, -1);
    assert_eq!(resp.messages.len(), 1);
    assert_eq!(resp.messages[0], m.message);
    assert_eq!(resp.messages[0].to_stored().unwrap(), m.stored);
}

#[test]
fn captured_delay_send_has_the_delay_flag_and_a_future_schedule() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/delay-5s/conn05_port20801_c2s_34366.bin"),
    )
    .unwrap();
    let frames = split(&bytes);
    let Payload::Send(messages) = Payload::decode(&frames[0]).unwrap() else {
        panic!("not a send");
    };
    let m = &messages[0].message;
    assert!(messages[0].crc_ok());
    assert!(m.flags.is_delay());
    let delay = m.expire_or_schedule - m.created_time;
    assert!((4_000..=6_000).contains(&delay), "delay {delay} ms");
}
