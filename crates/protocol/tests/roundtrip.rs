//! Property tests: every payload type and the frame codec round-trip through their encoders and
//! decoders, in every protocol version whose layout differs.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use qmq_protocol::frame::{VERSION_4, VERSION_7, VERSION_8, VERSION_9};
use qmq_protocol::manage::*;
use qmq_protocol::meta::*;
use qmq_protocol::pull::*;
use qmq_protocol::send::*;
use qmq_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

fn short() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u8>(),
        any::<i64>(),
        any::<i64>(),
        short(),
        short(),
        vec(short(), 0..4),
        vec((short(), "\\PC{0,40}"), 0..6),
    )
        .prop_map(|(flag, created, expire, subject, id, tags, attrs)| {
            let flags = MessageFlags(flag & 0b011).with_tags(!tags.is_empty());
            Message {
                flags,
                created_time: created,
                expire_or_schedule: expire,
                subject,
                message_id: id,
                tags,
                attrs,
            }
        })
}

/// Versions before 8 (no tags in pull responses, no pull filters, no ack broadcast byte).
fn old_version() -> impl Strategy<Value = i16> {
    prop_oneof![Just(VERSION_4), Just(VERSION_7), 0i16..VERSION_8]
}

/// Versions 8 and later.
fn new_version() -> impl Strategy<Value = i16> {
    prop_oneof![Just(VERSION_8), Just(VERSION_9), VERSION_8..i16::MAX]
}

fn tag_type() -> impl Strategy<Value = TagType> {
    prop_oneof![Just(TagType::NoTag), Just(TagType::Or), Just(TagType::And)]
}

fn filter() -> impl Strategy<Value = PullFilter> {
    prop_oneof![
        (tag_type(), vec(vec(any::<u8>(), 0..8), 0..4))
            .prop_map(|(tag_type, tags)| PullFilter::Tag { tag_type, tags }),
        (short(), short()).prop_map(|(env, sub_env)| PullFilter::SubEnv { env, sub_env }),
    ]
}

fn pull_request() -> impl Strategy<Value = PullRequest> {
    (
        (short(), short(), short()),
        any::<i32>(),
        any::<(i64, i64, i64, i64)>(),
        any::<bool>(),
        vec(filter(), 0..3),
    )
        .prop_map(
            |((subject, group, consumer_id), request_num, (o, b, l, t), broadcast, filters)| {
                PullRequest {
                    subject,
                    group,
                    consumer_id,
                    request_num,
                    offset: o,
                    pull_offset_begin: b,
                    pull_offset_last: l,
                    timeout_ms: t,
                    broadcast,
                    filters,
                }
            },
        )
}

fn broker_state() -> impl Strategy<Value = BrokerState> {
    (1..=4i32).prop_map(|c| BrokerState::from_code(c).unwrap())
}

fn broker_role() -> impl Strategy<Value = BrokerRole> {
    (0..=7i32).prop_map(|c| BrokerRole::from_code(c).unwrap())
}

proptest! {
    #[test]
    fn message_stored_and_send_forms(m in message()) {
        let stored = m.to_stored().unwrap();
        let mut r = wire::Reader::new(&stored);
        prop_assert_eq!(Message::decode_stored(&mut r).unwrap(), m.clone());
        prop_assert!(r.is_empty());

        let mut out = BytesMut::new();
        m.encode_with_crc(&mut out).unwrap();
        let body = out.freeze();
        let sent = send::decode_send_request_verified(&body).unwrap();
        prop_assert_eq!(sent.len(), 1);
        prop_assert!(sent[0].crc_ok());
        prop_assert_eq!(&sent[0].message, &m);
        prop_assert_eq!(&sent[0].stored, &stored);
        let mut again = BytesMut::new();
        encode_sent_messages(&sent, &mut again);
        prop_assert_eq!(&again[..], &body[..]);
    }

    #[test]
    fn a_damaged_message_fails_its_crc(m in message(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut out = BytesMut::new();
        m.encode_with_crc(&mut out).unwrap();
        // Flip one bit of a time field: the message still parses, its CRC no longer matches.
        let i = 8 + 1 + pick.index(16);
        out[i] ^= 1 << bit;
        let body = out.freeze();
        let sent = decode_send_request(&body).unwrap();
        prop_assert!(!sent[0].crc_ok());
        let mismatch = matches!(sent[0].verify_crc(), Err(DecodeError::CrcMismatch { .. }));
        prop_assert!(mismatch);
        let refused = matches!(decode_send_request_verified(&body), Err(DecodeError::CrcMismatch { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn send_batches(ms in vec(message(), 0..5)) {
        let mut out = BytesMut::new();
        encode_send_request(&ms, &mut out).unwrap();
        let got: Vec<Message> = decode_send_request_verified(&out.freeze()).unwrap().into_iter().map(|s| s.message).collect();
        prop_assert_eq!(got, ms);
    }

    #[test]
    fn send_results(fs in vec((short(), 1..=6i32, short()), 0..5)) {
        let fs: Vec<SendFailure> = fs.into_iter().map(|(message_id, code, remark)| SendFailure {
            message_id, code: ProducerCode::from_code(code).unwrap(), remark,
        }).collect();
        let mut out = BytesMut::new();
        encode_send_response(&fs, &mut out).unwrap();
        prop_assert_eq!(decode_send_response(&out).unwrap(), fs);
    }

    #[test]
    fn pull_requests_v9(p in pull_request(), version in VERSION_9..i16::MAX) {
        let mut out = BytesMut::new();
        p.encode(version, &mut out).unwrap();
        prop_assert_eq!(PullRequest::decode(version, &out).unwrap(), p);
    }

    #[test]
    fn pull_requests_v8_carry_one_tag_filter(p in pull_request(), tag_type in tag_type(), tags in vec(vec(any::<u8>(), 0..8), 0..4)) {
        // What version 8 can say: no filter, or one tag filter (a tagless NO_TAG means none).
        let mut p = p;
        p.filters = if tag_type == TagType::NoTag && tags.is_empty() {
            Vec::new()
        } else {
            vec![PullFilter::Tag { tag_type, tags }]
        };
        let mut out = BytesMut::new();
        p.encode(VERSION_8, &mut out).unwrap();
        prop_assert_eq!(PullRequest::decode(VERSION_8, &out).unwrap(), p);
    }

    #[test]
    fn pull_requests_v8_refuse_what_they_cannot_carry(p in pull_request()) {
        let mut out = BytesMut::new();
        let result = p.encode(VERSION_8, &mut out);
        if matches!(p.filters.as_slice(), [] | [PullFilter::Tag { .. }]) {
            prop_assert!(result.is_ok());
            let got = PullRequest::decode(VERSION_8, &out).unwrap();
            prop_assert_eq!(got.tag_filter(), p.tag_filter());
        } else {
            let refused = matches!(result, Err(EncodeError::NotInVersion { version: VERSION_8, .. }));
            prop_assert!(refused);
        }
    }

    #[test]
    fn pull_requests_before_v8_carry_no_filter(p in pull_request(), version in old_version()) {
        let mut out = BytesMut::new();
        let result = p.encode(version, &mut out);
        if p.filters.is_empty() {
            prop_assert!(result.is_ok());
            prop_assert_eq!(PullRequest::decode(version, &out).unwrap(), p);
        } else {
            let refused = matches!(result, Err(EncodeError::NotInVersion { .. }));
            prop_assert!(refused);
        }
    }

    #[test]
    fn pull_responses(offset in any::<i64>(), ms in vec(message(), 0..4)) {
        let resp = PullResponse { pull_log_offset: offset, reserved: -1, messages: ms };
        let mut out = BytesMut::new();
        resp.encode(&mut out).unwrap();
        prop_assert_eq!(PullResponse::decode(&out).unwrap(), resp.clone());
        // The stored bytes a broker keeps go out unchanged to version-8+ consumers.
        let mut built = BytesMut::new();
        PullResponse::encode_head(offset, &mut built);
        for m in &resp.messages {
            append_stored_for_version(&m.to_stored().unwrap(), VERSION_9, &mut built).unwrap();
        }
        prop_assert_eq!(built, out);
        let offsets: Vec<i64> = resp.messages_with_offsets().map(|(o, _)| o).collect();
        if let Some(end) = offset.checked_add(resp.messages.len() as i64) {
            prop_assert_eq!(offsets, (offset..end).collect::<Vec<_>>());
        }
    }

    #[test]
    fn pull_responses_for_old_consumers_lose_tags_but_keep_the_flag(offset in any::<i64>(), ms in vec(message(), 0..4), old in old_version(), new in new_version()) {
        let resp = PullResponse { pull_log_offset: offset, reserved: -1, messages: ms };
        let mut out = BytesMut::new();
        resp.encode_for_version(old, &mut out).unwrap();
        let got = PullResponse::decode_for_version(old, &out).unwrap();
        let mut expected = resp.clone();
        for m in &mut expected.messages {
            m.tags.clear();
        }
        prop_assert_eq!(&got, &expected);
        // The broker's byte-level cut gives the same bytes.
        let mut built = BytesMut::new();
        PullResponse::encode_head(offset, &mut built);
        for m in &resp.messages {
            append_stored_for_version(&m.to_stored().unwrap(), old, &mut built).unwrap();
        }
        prop_assert_eq!(&built, &out);
        // Newer versions keep everything.
        let mut full = BytesMut::new();
        resp.encode_for_version(new, &mut full).unwrap();
        prop_assert_eq!(PullResponse::decode_for_version(new, &full).unwrap(), resp);
    }

    #[test]
    fn acks(subject in short(), group in short(), consumer_id in short(), b in any::<i64>(), l in any::<i64>(), broadcast in any::<bool>(), new in new_version(), old in old_version()) {
        let a = AckRequest { subject, group, consumer_id, pull_offset_begin: b, pull_offset_last: l, broadcast };
        let mut out = BytesMut::new();
        a.encode(&mut out).unwrap();
        prop_assert_eq!(AckRequest::decode(&out).unwrap(), a.clone());
        let mut v = BytesMut::new();
        a.encode_for_version(new, &mut v).unwrap();
        prop_assert_eq!(&v, &out);
        prop_assert_eq!(AckRequest::decode_for_version(new, &v).unwrap(), a.clone());
        prop_assert_eq!(a.is_heartbeat(), b < 0);
        // Before version 8 there is no broadcast byte.
        let mut o = BytesMut::new();
        let result = a.encode_for_version(old, &mut o);
        if a.broadcast {
            let refused = matches!(result, Err(EncodeError::NotInVersion { .. }));
            prop_assert!(refused);
        } else {
            prop_assert_eq!(o.len(), out.len() - 1);
            prop_assert_eq!(AckRequest::decode_for_version(old, &o).unwrap(), a);
        }
    }

    #[test]
    fn client_register(attrs in vec((short(), short()), 0..8)) {
        let m = MetaInfoRequest { attrs };
        let mut out = BytesMut::new();
        m.encode(&mut out).unwrap();
        let got = MetaInfoRequest::decode(&out).unwrap();
        prop_assert_eq!(&got, &m);
        // A repeated key reads as its last value, as the Java map does.
        for (k, _) in &m.attrs {
            let last = m.attrs.iter().rev().find(|(key, _)| key == k).unwrap();
            prop_assert_eq!(got.get(k), last.1.as_str());
        }
    }

    #[test]
    fn client_register_typed(id in short(), ct in 1..=4i32, heartbeat in any::<bool>(), subject in short(), app in short(), group in short(), extra in vec(("x[a-z]{1,6}", short()), 0..3)) {
        let ct = ClientType::from_code(ct).unwrap();
        let rt = if heartbeat { ClientRequestType::Heartbeat } else { ClientRequestType::Online };
        let mut m = MetaInfoRequest::new(&id, ct, rt, &subject, &app, &group);
        for (k, v) in &extra {
            m.set(k, v.clone());
        }
        let mut out = BytesMut::new();
        m.encode(&mut out).unwrap();
        let got = MetaInfoRequest::decode(&out).unwrap();
        prop_assert_eq!(got.client_id(), id.as_str());
        prop_assert_eq!(got.client_type(), ct);
        prop_assert_eq!(got.request_type(), rt);
        prop_assert_eq!(got.subject(), subject.as_str());
        prop_assert_eq!(got.app_code(), app.as_str());
        prop_assert_eq!(got.consumer_group(), group.as_str());
        prop_assert_eq!(got.client_ldc(), "");
        let extras: Vec<&str> = got.extra_attrs().map(|(k, _)| k).collect();
        let mut expected: Vec<&str> = extra.iter().map(|(k, _)| k.as_str()).collect();
        let mut seen = std::collections::HashSet::new();
        expected.retain(|k| seen.insert(*k));
        prop_assert_eq!(extras, expected);
    }

    #[test]
    fn routes(ts in any::<i64>(), subject in short(), group in short(), offline in any::<bool>(), ct in any::<u8>(),
              groups in vec((short(), short(), any::<i64>(), broker_state()), 0..4)) {
        let r = MetaInfoResponse {
            timestamp: ts, subject, consumer_group: group,
            state: if offline { OnOfflineState::Offline } else { OnOfflineState::Online },
            client_type_code: ct,
            groups: groups.into_iter().map(|(name, master, update_time, state)| BrokerGroup { name, master, update_time, state }).collect(),
        };
        let mut out = BytesMut::new();
        r.encode(&mut out).unwrap();
        prop_assert_eq!(MetaInfoResponse::decode(&out).unwrap(), r);
    }

    #[test]
    fn broker_register(t in 0..=2i32, group in short(), addr in short(), role in broker_role(), state in broker_state()) {
        let b = BrokerRegisterRequest { request_type: BrokerRequestType::from_code(t).unwrap(), group_name: group, broker_address: addr, role, state };
        let mut out = BytesMut::new();
        b.encode(&mut out).unwrap();
        prop_assert_eq!(BrokerRegisterRequest::decode(&out).unwrap(), b);
    }

    #[test]
    fn acquire_meta(host in short(), port in any::<i32>(), name in short(), master in short(), role in broker_role()) {
        let req = BrokerAcquireMetaRequest { hostname: host, port };
        let mut out = BytesMut::new();
        req.encode(&mut out).unwrap();
        prop_assert_eq!(BrokerAcquireMetaRequest::decode(&out).unwrap(), req);
        let resp = BrokerAcquireMetaResponse { name, master, role };
        let mut out = BytesMut::new();
        resp.encode(&mut out).unwrap();
        prop_assert_eq!(BrokerAcquireMetaResponse::decode(&out).unwrap(), resp);
    }

    #[test]
    fn consume_manage(subject in short(), group in short(), earliest in any::<bool>()) {
        let c = ConsumeManageRequest {
            subject, group,
            consume_from: if earliest { ConsumeFrom::Earliest } else { ConsumeFrom::Latest },
        };
        let mut out = BytesMut::new();
        c.encode(&mut out).unwrap();
        prop_assert_eq!(ConsumeManageRequest::decode(&out).unwrap(), c);
    }

    #[test]
    fn typed_payloads_in_frames(p in pull_request(), version in VERSION_9..12, opaque in any::<i32>()) {
        // Through Payload and the codec, as a server sees it.
        let header = Header::request(Command::PullMessage.code(), version, opaque);
        let frame = Payload::Pull(p.clone()).into_frame(header).unwrap();
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        codec.encode(frame, &mut wire).unwrap();
        let got = codec.decode(&mut wire).unwrap().unwrap();
        prop_assert!(wire.is_empty());
        prop_assert_eq!(got.header, header);
        prop_assert_eq!(got.header.command(), Some(Command::PullMessage));
        prop_assert_eq!(Payload::decode(&got).unwrap(), Payload::Pull(p));
    }

    #[test]
    fn frames_in_any_chunking(frames in vec((any::<(i16, i16, i32, i32, i16)>(), vec(any::<u8>(), 0..64)), 1..5), cut in 1usize..40) {
        let frames: Vec<Frame> = frames.into_iter().map(|((code, version, opaque, flag, request_code), body)| Frame {
            header: Header { code, version, opaque, flag, request_code },
            body: Bytes::from(body),
        }).collect();
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        // Feed the bytes in chunks of `cut`: frames come out whole, in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(cut) {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
    }
}

#[test]
fn oversized_values_are_refused_by_the_encoder() {
    let m = Message {
        subject: "s".repeat(40_000),
        ..Message::default()
    };
    assert!(matches!(
        m.to_stored(),
        Err(EncodeError::TooLong {
            field: "subject",
            ..
        })
    ));
    let mut big = Message::default();
    big.set_attr("body", "x".repeat(70_000));
    assert!(big.to_stored().is_err());
    let mut ok = Message::default();
    ok.set_attr("body", "x".repeat(60_000));
    let stored = ok.to_stored().unwrap();
    let mut r = wire::Reader::new(&stored);
    assert_eq!(Message::decode_stored(&mut r).unwrap(), ok);

    // At most 127 tags: the Java reader takes the count as a signed byte.
    let tagged = Message {
        flags: MessageFlags::default().with_tags(true),
        tags: (0..128).map(|i| i.to_string()).collect(),
        ..Message::default()
    };
    assert!(matches!(
        tagged.to_stored(),
        Err(EncodeError::TooMany { max: 127, .. })
    ));

    let mut codec = FrameCodec::new(100);
    let mut out = BytesMut::new();
    let frame = Frame::new(Header::default(), vec![0u8; 100]);
    assert!(matches!(
        codec.encode(frame, &mut out),
        Err(FrameError::EncodeTooLarge {
            size: 120,
            limit: 100
        })
    ));
    assert!(out.is_empty());
}

#[test]
fn headers_say_what_they_are() {
    let req = Header::request(command::CLIENT_REGISTER, frame::CLIENT_VERSION, 7);
    assert!(req.is_request());
    assert_eq!(req.request_code, command::CLIENT_REGISTER);
    assert_eq!(req.response_code(), None);
    let resp = req.response(codes::response::NO_MESSAGE);
    assert!(resp.is_response());
    assert_eq!(resp.opaque, 7);
    assert_eq!(resp.version, frame::VERSION_9);
    assert_eq!(resp.command(), Some(Command::ClientRegister));
    assert_eq!(resp.response_code(), Some(ResponseCode::NoMessage));
    let reg = Header::server_request(command::BROKER_REGISTER, 3);
    assert_eq!((reg.version, reg.request_code), (8, -1));
    assert_eq!(reg.command(), Some(Command::BrokerRegister));
}

use qmq_protocol::codes::command;

/// SYNC_CHECKPOINT_REQUEST's answer keeps QMQ's shape (`u8 version ; i32 len ; bytes ; i32
/// len ; bytes`) and round-trips; a truncated or negative length is refused.
#[test]
fn sync_checkpoint_layout_and_roundtrip() {
    let cp = SyncCheckpoint {
        version: SyncCheckpoint::VERSION,
        message: Bytes::from_static(b"{\"m\":1}"),
        action: Bytes::from_static(b"[]"),
    };
    let mut out = BytesMut::new();
    cp.encode(&mut out).unwrap();
    let mut expected = vec![1u8, 0, 0, 0, 7];
    expected.extend_from_slice(b"{\"m\":1}");
    expected.extend_from_slice(&[0, 0, 0, 2]);
    expected.extend_from_slice(b"[]");
    assert_eq!(&out[..], &expected[..]);
    let body = out.freeze();
    assert_eq!(SyncCheckpoint::decode(&body).unwrap(), cp);
    assert!(SyncCheckpoint::decode(&body.slice(..body.len() - 1)).is_err());
    let mut negative = expected.clone();
    negative[1] = 0xff;
    assert!(SyncCheckpoint::decode(&Bytes::from(negative)).is_err());
}
