//! The TCP server and the broker forwarder, over real loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use qmq_delay::{serve, BrokerForwarder, ManualClock, ServerConfig};
use qmq_protocol::codes::{command, response};
use qmq_protocol::frame::{CLIENT_VERSION, VERSION_7};
use qmq_protocol::send::{
    decode_send_request, decode_send_response, encode_send_request, encode_send_response,
};
use qmq_protocol::{Frame, FrameCodec, Header, Message, MessageFlags, ProducerCode, SendFailure};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::codec::{Decoder, Framed};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/delay-5s");

/// A fake broker: records raw SEND_MESSAGE frames; refuses `refuse` by id once.
struct FakeBroker {
    frames: Mutex<Vec<(Vec<u8>, Frame)>>,
    notify: Notify,
    refuse_once: Mutex<Vec<String>>,
}

impl FakeBroker {
    async fn start(refuse_once: Vec<String>) -> (Arc<Self>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = Arc::new(Self {
            frames: Mutex::new(Vec::new()),
            notify: Notify::new(),
            refuse_once: Mutex::new(refuse_once),
        });
        let b = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    let mut framed = Framed::new(stream, FrameCodec::default());
                    while let Some(Ok(f)) = framed.next().await {
                        let mut raw = BytesMut::new();
                        f.encode_into(&mut raw);
                        let sent = decode_send_request(&f.body).unwrap();
                        let failures: Vec<SendFailure> = {
                            let mut refuse = b.refuse_once.lock();
                            sent.iter()
                                .filter_map(|s| {
                                    let i =
                                        refuse.iter().position(|r| *r == s.message.message_id)?;
                                    refuse.remove(i);
                                    Some(SendFailure {
                                        message_id: s.message.message_id.clone(),
                                        code: ProducerCode::BrokerBusy,
                                        remark: "busy".into(),
                                    })
                                })
                                .collect()
                        };
                        let mut body = BytesMut::new();
                        encode_send_response(&failures, &mut body).unwrap();
                        b.frames.lock().push((raw.to_vec(), f.clone()));
                        b.notify.notify_waiters();
                        let resp = Frame::new(f.header.response(response::SUCCESS), body.freeze());
                        if framed.send(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (me, addr)
    }

    /// Ids of the messages received, in order.
    fn ids(&self) -> Vec<String> {
        self.frames
            .lock()
            .iter()
            .flat_map(|(_, f)| decode_send_request(&f.body).unwrap())
            .map(|s| s.message.message_id)
            .collect()
    }

    async fn wait_frames(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.notify.notified();
            if self.frames.lock().len() >= n {
                return;
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .expect("broker frames");
        }
    }
}

fn delay_message(id: &str, at_ms: i64, now: i64) -> Message {
    Message {
        flags: MessageFlags::default().with_delay(true),
        created_time: now,
        expire_or_schedule: at_ms,
        subject: "order.timeout".into(),
        message_id: id.into(),
        tags: vec![],
        attrs: vec![
            ("qmq_appCode".into(), "test".into()),
            ("body".into(), format!("payload {id}")),
            // Trace context as the client carries it (W3C, `qtrace_` prefix).
            ("qtrace_traceparent".into(), TRACEPARENT.into()),
            ("qtrace_tracestate".into(), "congo=t61rcWkgMzE".into()),
        ],
    }
}

async fn request(conn: &mut Framed<TcpStream, FrameCodec>, frame: Frame) -> Frame {
    let opaque = frame.header.opaque;
    conn.send(frame).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(30), conn.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.header.opaque, opaque);
    f
}

#[tokio::test]
async fn send_message_is_scheduled_and_forwarded_byte_for_byte() {
    let t0 = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0);
    let (broker, broker_addr) = FakeBroker::start(vec!["b".into()]).await;
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.delay.retry_backoff_min = Duration::from_millis(1);
    let server = serve(
        cfg,
        Arc::new(clock.clone()),
        Arc::new(BrokerForwarder::new(broker_addr)),
    )
    .await
    .unwrap();
    let mut conn = Framed::new(
        TcpStream::connect(server.local_addr()).await.unwrap(),
        FrameCodec::default(),
    );
    let two_years = 730 * 24 * 3600 * 1000i64;
    let messages = vec![
        delay_message("a", t0 + 5_000, t0),
        delay_message("b", t0 + 6_000, t0),
        delay_message("too-far", t0 + two_years + 60_000, t0),
    ];
    let mut body = BytesMut::new();
    encode_send_request(&messages, &mut body).unwrap();
    // One corrupted copy: refused alone, the rest of the batch is stored.
    let mut bad = BytesMut::new();
    encode_send_request(&[delay_message("bad-crc", t0 + 1, t0)], &mut bad).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    body.extend_from_slice(&bad);
    let answer = request(
        &mut conn,
        Frame::new(
            Header::request(command::SEND_MESSAGE, CLIENT_VERSION, 7),
            body.freeze(),
        ),
    )
    .await;
    assert_eq!(answer.header.code, response::SUCCESS);
    assert_eq!(answer.header.version, CLIENT_VERSION);
    let failures = decode_send_response(&answer.body).unwrap();
    let failed: Vec<_> = failures
        .iter()
        .map(|f| (f.message_id.as_str(), f.code))
        .collect();
    assert_eq!(
        failed,
        [
            ("bad-crc", ProducerCode::Block),
            ("too-far", ProducerCode::Block)
        ]
    );
    assert!(failures[0].remark.contains("CRC"), "{}", failures[0].remark);
    assert!(
        failures[1].remark.contains("longest delay"),
        "{}",
        failures[1].remark
    );

    // Heartbeats are answered, unknown commands refused.
    let hb = request(
        &mut conn,
        Frame::new(
            Header::request(command::HEARTBEAT, CLIENT_VERSION, 8),
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(hb.header.code, response::SUCCESS);
    let unknown = request(
        &mut conn,
        Frame::new(
            Header::request(command::PULL_MESSAGE, CLIENT_VERSION, 9),
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(unknown.header.code, response::UNKNOWN_CODE);
    // A malformed body is a parameter error and the connection stays usable.
    let bad_body = request(
        &mut conn,
        Frame::new(
            Header::request(command::SEND_MESSAGE, CLIENT_VERSION, 10),
            Bytes::from_static(b"\0\0\0"),
        ),
    )
    .await;
    assert_eq!(bad_body.header.code, response::PARAM_ERROR);

    assert!(broker.frames.lock().is_empty(), "nothing is due yet");
    clock.set(t0 + 6_000);
    // "b" is refused once by the broker and forwarded again.
    broker.wait_frames(2).await;
    let ids = broker.ids();
    assert_eq!(ids, ["a", "b", "b"]);
    for (_, f) in broker.frames.lock().iter() {
        assert_eq!(f.header.code, command::SEND_MESSAGE);
        assert_eq!(f.header.version, VERSION_7);
        for s in decode_send_request(&f.body).unwrap() {
            s.verify_crc().unwrap();
            let original = messages
                .iter()
                .find(|m| m.message_id == s.message.message_id)
                .unwrap();
            assert_eq!(
                s.stored,
                original.to_stored().unwrap(),
                "forwarded unchanged"
            );
            assert_eq!(s.message.attr("qtrace_traceparent"), Some(TRACEPARENT));
            assert_eq!(
                s.message.attr("qtrace_tracestate"),
                Some("congo=t61rcWkgMzE")
            );
        }
    }
    let engine = server.engine().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.stats().dispatched < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(engine);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn java_capture_goes_through_as_the_java_delay_server_forwards_it() {
    let read = |name: &str| {
        let mut buf = BytesMut::from(&std::fs::read(format!("{VECTORS}/{name}")).unwrap()[..]);
        let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    };
    let send = read("conn05_port20801_c2s_34366.bin");
    let java_answer = read("conn05_port20801_s2c_20801.bin");
    let java_forward = std::fs::read(format!("{VECTORS}/conn10_port20881_c2s_55014.bin")).unwrap();
    let sent = decode_send_request(&send.body).unwrap();
    let schedule = sent[0].message.expire_or_schedule;
    assert!(sent[0].message.flags.is_delay());

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(sent[0].message.created_time);
    let (broker, broker_addr) = FakeBroker::start(vec![]).await;
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let server = serve(
        cfg,
        Arc::new(clock.clone()),
        Arc::new(BrokerForwarder::new(broker_addr)),
    )
    .await
    .unwrap();
    let mut conn = Framed::new(
        TcpStream::connect(server.local_addr()).await.unwrap(),
        FrameCodec::default(),
    );
    let answer = request(&mut conn, send.clone()).await;
    assert_eq!(answer.header, java_answer.header);
    assert_eq!(answer.body, java_answer.body);

    clock.set(schedule + 10);
    broker.wait_frames(1).await;
    let (raw, _) = broker.frames.lock()[0].clone();
    assert_eq!(raw.len(), java_forward.len());
    // Byte for byte as the Java delay server forwarded it, request id aside.
    assert_eq!(raw[..14], java_forward[..14]);
    assert_eq!(raw[18..], java_forward[18..]);
    server.shutdown().await.unwrap();
}
