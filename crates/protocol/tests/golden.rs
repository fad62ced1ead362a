//! Golden tests: every frame captured from the official QMQ Java client and servers decodes into
//! its typed payload and re-encodes to the same bytes; our constructors and encoders produce the
//! captured bytes from the same values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use qmq_protocol::codes::command;
use qmq_protocol::frame::{VERSION_7, VERSION_8, VERSION_9};
use qmq_protocol::meta::*;
use qmq_protocol::*;
use tokio_util::codec::Decoder;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn vector_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(vectors()).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    assert_eq!(
        files.len(),
        24,
        "vectors missing under {}",
        vectors().display()
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

fn frames(name: &str) -> Vec<Frame> {
    split(&std::fs::read(vectors().join(name)).unwrap())
}

fn payloads(name: &str) -> Vec<Payload> {
    frames(name)
        .iter()
        .map(|f| Payload::decode(f).unwrap())
        .collect()
}

fn kind(p: &Payload) -> String {
    let debug = format!("{p:?}");
    debug.split('(').next().unwrap().to_owned()
}

#[test]
fn every_captured_frame_round_trips_byte_for_byte() {
    let mut decoded = BTreeMap::<String, usize>::new();
    for path in vector_files() {
        let bytes = std::fs::read(&path).unwrap();
        let frames = split(&bytes);
        assert!(!frames.is_empty(), "{}", path.display());
        let mut again = BytesMut::new();
        for frame in &frames {
            let payload = Payload::decode(frame)
                .unwrap_or_else(|e| panic!("{}: {:?}: {e}", path.display(), frame.header));
            let body = payload.encode(&frame.header).unwrap();
            assert_eq!(body, frame.body, "{}: {:?}", path.display(), frame.header);
            *decoded.entry(kind(&payload)).or_default() += 1;
            payload
                .into_frame(frame.header)
                .unwrap()
                .encode_into(&mut again);
        }
        assert_eq!(&again[..], &bytes[..], "{}", path.display());
    }
    // Every payload kind the captures hold was understood; only empty bodies stay raw.
    let expected = [
        ("Ack", 2),
        ("BrokerRegister", 4),
        ("ClientRegister", 10),
        ("Pull", 14),
        ("Pulled", 2),
        ("Raw", 14),
        ("Route", 7),
        ("Send", 3),
        ("SendResult", 3),
    ];
    let expected: BTreeMap<String, usize> =
        expected.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    assert_eq!(decoded, expected);
}

#[test]
fn raw_bodies_are_only_the_empty_answers() {
    for path in vector_files() {
        for frame in split(&std::fs::read(&path).unwrap()) {
            if let Payload::Raw(body) = Payload::decode(&frame).unwrap() {
                assert!(body.is_empty(), "{}: {:?}", path.display(), frame.header);
                assert!(frame.header.is_response());
            }
        }
    }
}

#[test]
fn responses_echo_their_request() {
    for path in vector_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.contains("_s2c_") {
            continue;
        }
        let prefix = &name[..name.find("_s2c_").unwrap()];
        let requests_file = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(prefix) && n.contains("_c2s_")
            })
            .unwrap();
        let requests = split(&std::fs::read(requests_file).unwrap());
        for resp in split(&std::fs::read(&path).unwrap()) {
            assert!(resp.header.is_response(), "{name}");
            assert!(resp.header.response_code().is_some(), "{name}");
            let req = requests
                .iter()
                .find(|r| {
                    r.header.opaque == resp.header.opaque
                        && r.header.code == resp.header.request_code
                })
                .unwrap_or_else(|| panic!("{name}: no request for {:?}", resp.header));
            assert!(req.header.is_request());
            assert_eq!(req.header.response(resp.header.code), resp.header, "{name}");
        }
    }
}

#[test]
fn client_register_from_a_producer() {
    let frames = frames("client-first-frames/producer.bin");
    assert_eq!(frames.len(), 1);
    let Payload::ClientRegister(req) = Payload::decode(&frames[0]).unwrap() else {
        panic!("not a CLIENT_REGISTER");
    };
    assert_eq!(req.client_type(), ClientType::Producer);
    assert_eq!(req.request_type(), ClientRequestType::Online);
    assert_eq!(req.subject(), "qmq.smoke.subject");
    assert_eq!(req.app_code(), "smoke-producer");
    assert_eq!(req.consumer_group(), "");
    assert_eq!(req.client_id(), "vm@@f84670883874569427875193288d74b3");
    assert_eq!(req.extra_attrs().count(), 0);

    // Our constructor writes the Java client's bytes.
    let ours = MetaInfoRequest::new(
        req.client_id(),
        ClientType::Producer,
        ClientRequestType::Online,
        "qmq.smoke.subject",
        "smoke-producer",
        "",
    );
    let header = Header::request(command::CLIENT_REGISTER, frame::CLIENT_VERSION, 0);
    assert_eq!(frames[0].header, header);
    let mut body = BytesMut::new();
    ours.encode(&mut body).unwrap();
    assert_eq!(body, frames[0].body);
}

#[test]
fn routes_name_the_broker_and_delay_groups() {
    let routes = payloads("delay-5s/conn03_port20880_s2c_20880.bin");
    let Payload::Route(delay) = &routes[2] else {
        panic!("not a route");
    };
    assert_eq!(delay.client_type(), ClientType::DelayProducer);
    assert_eq!(delay.state, OnOfflineState::Online);
    assert_eq!(
        delay.groups,
        [BrokerGroup {
            name: "delay-dev".into(),
            master: "127.0.0.1:20801".into(),
            update_time: 1_795_579_455_000,
            state: BrokerState::ReadWrite,
        }]
    );
    let Payload::Route(retry) = &routes[0] else {
        panic!("not a route");
    };
    assert_eq!(retry.subject, "%RETRY%qmq.delay.subject%delay-group");
    assert_eq!(retry.consumer_group, "delay-group");
    assert_eq!(retry.client_type(), ClientType::Consumer);
    assert_eq!(retry.groups[0].master, "127.0.0.1:20881");
}

#[test]
fn broker_heartbeats_match_what_we_build() {
    for (file, group, addr, role) in [
        (
            "delay-5s/conn06_port20880_c2s_34926.bin",
            "delay-dev",
            "127.0.0.1:20801",
            BrokerRole::DelayMaster,
        ),
        (
            "send-consume/conn06_port20880_c2s_58590.bin",
            "dev",
            "127.0.0.1:20881",
            BrokerRole::Master,
        ),
    ] {
        let frames = frames(file);
        let ours = BrokerRegisterRequest {
            request_type: BrokerRequestType::Heartbeat,
            group_name: group.into(),
            broker_address: addr.into(),
            role,
            state: BrokerState::ReadWrite,
        };
        assert_eq!(
            Payload::decode(&frames[0]).unwrap(),
            Payload::BrokerRegister(ours.clone())
        );
        let header = Header::server_request(command::BROKER_REGISTER, frames[0].header.opaque);
        assert_eq!(frames[0].header, header, "{file}");
        assert_eq!(header.version, VERSION_8);
        let mut body = BytesMut::new();
        ours.encode(&mut body).unwrap();
        assert_eq!(body, frames[0].body);
    }
}

#[test]
fn captured_pulls_and_acks() {
    let ps = payloads("send-consume/conn05_port20881_c2s_34554.bin");
    let Payload::Pull(first) = &ps[0] else {
        panic!("not a pull");
    };
    assert_eq!(first.subject, "qmq.capture.subject");
    assert_eq!(first.group, "capture-group");
    assert_eq!(first.request_num, 50);
    assert_eq!(first.timeout_ms, 2500);
    assert_eq!(
        (
            first.offset,
            first.pull_offset_begin,
            first.pull_offset_last
        ),
        (-1, -1, -1)
    );
    assert!(!first.broadcast);
    // The Java client sends an inactive NO_TAG filter: no filtering.
    assert_eq!(
        first.filters,
        [PullFilter::Tag {
            tag_type: TagType::NoTag,
            tags: vec![]
        }]
    );
    assert_eq!(first.tag_filter(), None);
    let Payload::Pull(retry) = &ps[1] else {
        panic!("not a pull");
    };
    assert_eq!(retry.subject, "%RETRY%qmq.capture.subject%capture-group");

    let Some(Payload::Ack(ack)) = ps.iter().find(|p| matches!(p, Payload::Ack(_))) else {
        panic!("no ack");
    };
    assert_eq!((ack.pull_offset_begin, ack.pull_offset_last), (0, 0));
    assert!(!ack.is_heartbeat());
    assert_eq!(ack.consumer_id, first.consumer_id);
}

#[test]
fn captured_send_carries_a_valid_crc_and_comes_back_in_the_pull() {
    let frames = frames("send-consume/conn05_port20881_c2s_34554.bin");
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
    assert_eq!(m.message.message_id, "261125.040919.192.0.2.2.31728.0");
    assert!(m.message.flags.is_reliable());
    assert!(!m.message.flags.is_delay());
    assert!(!m.message.flags.has_tags());
    assert_eq!(m.message.created_time, 1_795_579_759_140);
    assert_eq!(m.message.attr("k"), Some("hello-qmq"));
    assert_eq!(m.message.attr("qmq_appCode"), Some("smoke-producer"));
    // Re-encoding from the typed message (recomputing the CRC) gives the captured bytes.
    let mut again = BytesMut::new();
    m.message.encode_with_crc(&mut again).unwrap();
    assert_eq!(again, send.body);

    // The broker answers with an empty result list: the message was stored.
    let answers = payloads("send-consume/conn05_port20881_s2c_20881.bin");
    assert!(answers.contains(&Payload::SendResult(vec![])));

    // The pull response hands the same stored bytes back, at pull-log offset 0.
    let Some(Payload::Pulled(resp)) = answers
        .into_iter()
        .find(|p| matches!(p, Payload::Pulled(_)))
    else {
        panic!("no pull response");
    };
    assert_eq!(resp.reserved, -1);
    let listed: Vec<(i64, &Message)> = resp.messages_with_offsets().collect();
    assert_eq!(listed, [(0, &m.message)]);
    assert_eq!(resp.messages[0].to_stored().unwrap(), m.stored);
}

#[test]
fn pull_responses_to_old_consumers_drop_tags() {
    // The captured (tagless) pull response reads the same in every version.
    let frames = frames("send-consume/conn05_port20881_s2c_20881.bin");
    let pulled = frames
        .iter()
        .find(|f| f.header.request_code == command::PULL_MESSAGE && !f.body.is_empty())
        .unwrap();
    let new = PullResponse::decode_for_version(VERSION_9, &pulled.body).unwrap();
    assert_eq!(
        PullResponse::decode_for_version(VERSION_7, &pulled.body).unwrap(),
        new
    );

    // With tags: version 8+ keeps them, version 7 loses the list but keeps the flag.
    let mut tagged = new.clone();
    tagged.messages[0].flags = tagged.messages[0].flags.with_tags(true);
    tagged.messages[0].tags = vec!["red".into(), "big".into()];
    let mut v9 = BytesMut::new();
    tagged.encode_for_version(VERSION_9, &mut v9).unwrap();
    let mut v7 = BytesMut::new();
    tagged.encode_for_version(VERSION_7, &mut v7).unwrap();
    assert_eq!(v9.len(), v7.len() + 1 + 2 * (2 + 3));
    assert_eq!(v7.len(), pulled.body.len());
    assert_eq!(v7[16], 0b100, "the flag still says tags");
    let old = PullResponse::decode_for_version(VERSION_7, &v7).unwrap();
    assert!(old.messages[0].tags.is_empty());
    assert_eq!(old.messages[0].attrs, new.messages[0].attrs);
    // A version-7 reader of the version-9 bytes would misread them: the layouts differ.
    assert_ne!(
        PullResponse::decode_for_version(VERSION_7, &v9).ok(),
        Some(tagged)
    );
}

#[test]
fn delay_messages_go_through_the_delay_server_unchanged() {
    let from_client = frames("delay-5s/conn05_port20801_c2s_34366.bin");
    let to_broker = frames("delay-5s/conn10_port20881_c2s_55014.bin");
    // The Java delay server forwards with version 7, the stored bytes untouched.
    assert_eq!(from_client[0].header.version, VERSION_9);
    assert_eq!(to_broker[0].header.version, VERSION_7);
    assert_eq!(from_client[0].body, to_broker[0].body);

    let Payload::Send(messages) = Payload::decode(&to_broker[0]).unwrap() else {
        panic!("not a send");
    };
    let m = &messages[0].message;
    assert!(messages[0].crc_ok());
    assert!(m.flags.is_delay());
    assert_eq!(m.expire_or_schedule - m.created_time, 5_000);
    assert_eq!(
        m.attr("qmq_scheduleReceiveTime"),
        Some(m.expire_or_schedule.to_string().as_str())
    );
}

#[test]
fn a_damaged_capture_is_refused_with_a_crc_error() {
    let frames = frames("delay-5s/conn05_port20801_c2s_34366.bin");
    let mut body = frames[0].body.to_vec();
    let last = body.len() - 1;
    body[last] ^= 0x01; // the last attribute value: "0" becomes "1"
    let damaged = Frame::new(frames[0].header, body);
    match Payload::decode(&damaged) {
        Err(DecodeError::CrcMismatch { carried, computed }) => {
            assert_eq!(carried, 3_587_228_909);
            assert_ne!(computed, carried);
        }
        other => panic!("expected a CRC mismatch, got {other:?}"),
    }
}
