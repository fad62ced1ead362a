//! Property tests: every payload type and the frame codec round-trip through their encoders and
//! decoders.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use qmq_protocol::frame::{VERSION_8, VERSION_9};
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
        let sent = send::decode_send_request(&body).unwrap();
        prop_assert_eq!(sent.len(), 1);
        prop_assert!(sent[0].crc_ok());
        prop_assert_eq!(&sent[0].message, &m);
        prop_assert_eq!(&sent[0].stored, &stored);
    }

    #[test]
    fn send_batches(ms in vec(message(), 0..5)) {
        let mut out = BytesMut::new();
        encode_send_request(&ms, &mut out).unwrap();
        let got: Vec<Message> = decode_send_request(&out.freeze()).unwrap().into_iter().map(|s| s.message).collect();
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
    fn pull_requests_v9(p in pull_request()) {
        let mut out = BytesMut::new();
        p.encode(VERSION_9, &mut out).unwrap();
        prop_assert_eq!(PullRequest::decode(VERSION_9, &out).unwrap(), p);
    }

    #[test]
    fn pull_requests_v8_keep_their_tag_filter(p in pull_request()) {
        let mut out = BytesMut::new();
        p.encode(VERSION_8, &mut out).unwrap();
        let got = PullRequest::decode(VERSION_8, &out).unwrap();
        prop_assert_eq!(got.tag_filter(), p.tag_filter());
        prop_assert_eq!(got.filters.len(), 1);
        let mut again = BytesMut::new();
        got.encode(VERSION_8, &mut again).unwrap();
        prop_assert_eq!(again, out);
    }

    #[test]
    fn pull_responses(offset in any::<i64>(), ms in vec(message(), 0..4)) {
        let resp = PullResponse { pull_log_offset: offset, reserved: -1, messages: ms };
        let mut out = BytesMut::new();
        resp.encode(&mut out).unwrap();
        prop_assert_eq!(PullResponse::decode(&out).unwrap(), resp);
    }

    #[test]
    fn acks(subject in short(), group in short(), consumer_id in short(), b in any::<i64>(), l in any::<i64>(), broadcast in any::<bool>()) {
        let a = AckRequest { subject, group, consumer_id, pull_offset_begin: b, pull_offset_last: l, broadcast };
        let mut out = BytesMut::new();
        a.encode(&mut out).unwrap();
        prop_assert_eq!(AckRequest::decode(&out).unwrap(), a);
    }

    #[test]
    fn client_register(attrs in vec((short(), short()), 0..8)) {
        let m = MetaInfoRequest { attrs };
        let mut out = BytesMut::new();
        m.encode(&mut out).unwrap();
        prop_assert_eq!(MetaInfoRequest::decode(&out).unwrap(), m);
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
}
