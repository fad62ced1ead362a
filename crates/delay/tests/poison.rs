//! Poison messages and big batches: a message the broker refuses for good must not stall the
//! delivery of the others, and ends in the dead-letter subject; a batch larger than a frame is
//! forwarded in several frames. Against a fake broker on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use qmq_delay::{BrokerForwarder, DelayEngine, ManualClock, NewMessage};
use qmq_protocol::codes::response;
use qmq_protocol::send::{decode_send_request, encode_send_response};
use qmq_protocol::{Frame, FrameCodec, Message, MessageFlags, ProducerCode, SendFailure};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::codec::Framed;

const T0: i64 = 1_700_000_000_000;
const SUBJECT: &str = "order.timeout";

/// A broker that stores everything except messages whose id is in `poison` (refused with
/// BLOCK, as a too-large message is) unless they come under a dead-letter subject.
struct Broker {
    /// (subject, id) of every stored message, in order.
    stored: Mutex<Vec<(String, String)>>,
    /// Size of every frame received.
    frames: Mutex<Vec<usize>>,
    refusals: Mutex<usize>,
    poison: Vec<String>,
    notify: Notify,
}

impl Broker {
    async fn start(poison: &[&str]) -> (Arc<Self>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = Arc::new(Self {
            stored: Mutex::new(Vec::new()),
            frames: Mutex::new(Vec::new()),
            refusals: Mutex::new(0),
            poison: poison.iter().map(|s| s.to_string()).collect(),
            notify: Notify::new(),
        });
        let b = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    // The fake accepts any size, so that frame sizes can be checked.
                    let mut framed = Framed::new(stream, FrameCodec::new(256 << 20));
                    while let Some(Ok(f)) = framed.next().await {
                        b.frames.lock().push(f.body.len() + 24);
                        let mut failures = Vec::new();
                        for s in decode_send_request(&f.body).unwrap() {
                            let m = s.message;
                            if b.poison.contains(&m.message_id) && !m.subject.starts_with('%') {
                                *b.refusals.lock() += 1;
                                failures.push(SendFailure {
                                    message_id: m.message_id,
                                    code: ProducerCode::Block,
                                    remark: "message too large".into(),
                                });
                            } else {
                                b.stored.lock().push((m.subject, m.message_id));
                            }
                        }
                        let mut body = BytesMut::new();
                        encode_send_response(&failures, &mut body).unwrap();
                        let resp = Frame::new(f.header.response(response::SUCCESS), body.freeze());
                        b.notify.notify_waiters();
                        if framed.send(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (me, addr)
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&[(String, String)]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.notify.notified();
            if cond(&self.stored.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; stored {:?}",
                    self.stored.lock()
                );
            }
        }
    }
}

/// A message in QMQ's stored form, with about `body` bytes of attributes.
fn stored(id: &str, at_ms: i64, body: usize) -> NewMessage {
    let chunk = 60_000;
    let mut attrs = vec![("qmq_appCode".to_owned(), "test".to_owned())];
    let mut left = body;
    let mut i = 0;
    while left > 0 {
        let n = left.min(chunk);
        attrs.push((format!("part{i}"), "x".repeat(n)));
        left -= n;
        i += 1;
    }
    let m = Message {
        flags: MessageFlags::default().with_delay(true),
        created_time: T0,
        expire_or_schedule: at_ms,
        subject: SUBJECT.into(),
        message_id: id.into(),
        tags: vec![],
        attrs,
    };
    let mut out = BytesMut::new();
    m.encode_stored(&mut out).unwrap();
    NewMessage {
        subject: SUBJECT.into(),
        message_id: id.into(),
        schedule_ms: at_ms,
        message: Bytes::from(out),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_does_not_stall_the_others_and_ends_in_the_dead_letter_subject() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (broker, addr) = Broker::start(&["poison"]).await;
    let engine = DelayEngine::open(
        common::config(dir.path()),
        Arc::new(clock.clone()),
        Arc::new(BrokerForwarder::new(addr.clone())),
    )
    .await
    .unwrap();
    engine
        .schedule_one(stored("poison", T0 + 1_000, 100))
        .await
        .unwrap();
    let later: Vec<NewMessage> = (0..20)
        .map(|i| stored(&format!("m{i}"), T0 + 2_000 + i, 100))
        .collect();
    for r in engine.schedule(later).await {
        r.unwrap();
    }
    // The poison message alone is due: it is refused.
    clock.set(T0 + 1_500);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while *broker.refusals.lock() == 0 {
        let notified = broker.notify.notified();
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            panic!("the poison message was never offered");
        }
    }
    // Everything behind it is delivered all the same, and the poison ends as a dead letter.
    clock.set(T0 + 3_000);
    let dead = format!("%DEAD_DELAY%{SUBJECT}");
    broker
        .wait_for("the other messages", |s| {
            s.iter().filter(|(subj, _)| subj == SUBJECT).count() == 20
        })
        .await;
    broker
        .wait_for("the dead letter", |s| {
            s.iter().any(|(subj, id)| *subj == dead && id == "poison")
        })
        .await;
    let stored = broker.stored.lock().clone();
    assert!(
        !stored.iter().any(|(s, id)| s == SUBJECT && id == "poison"),
        "the poison message is not stored under its own subject"
    );
    // Refused `max_dispatch_attempts` times (the default), then dead-lettered.
    assert_eq!(*broker.refusals.lock(), 10);
    // The engine counts it once the broker's answer is back: poll that with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.dead_lettered() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letter never counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.dead_lettered(), 1);
    assert_eq!(engine.stats().dead_lettered, 1);
    engine.shutdown().await.unwrap();
    drop(engine);

    // Recorded as dispatched: it does not come back after a restart.
    let engine = DelayEngine::open(
        common::config(dir.path()),
        Arc::new(clock.clone()),
        Arc::new(BrokerForwarder::new(addr)),
    )
    .await
    .unwrap();
    let stats = engine.stats();
    assert_eq!(stats.scheduled, 21);
    assert_eq!(stats.dispatched, 21, "{stats:?}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_frame_goes_in_several_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (broker, addr) = Broker::start(&[]).await;
    let mut cfg = common::config(dir.path());
    cfg.max_message_bytes = 8 << 20;
    let engine = DelayEngine::open(
        cfg,
        Arc::new(clock.clone()),
        Arc::new(BrokerForwarder::new(addr)),
    )
    .await
    .unwrap();
    // Three 7 MiB messages due together: 21 MiB, more than one 16 MiB frame holds.
    let batch: Vec<NewMessage> = (0..3)
        .map(|i| stored(&format!("big{i}"), T0 + 1_000, 7 << 20))
        .collect();
    for r in engine.schedule(batch).await {
        r.unwrap();
    }
    clock.set(T0 + 2_000);
    broker
        .wait_for("three big messages", |s| s.len() == 3)
        .await;
    let frames = broker.frames.lock().clone();
    assert!(frames.len() >= 2, "{frames:?}");
    assert!(
        frames
            .iter()
            .all(|&n| n <= qmq_protocol::frame::DEFAULT_MAX_FRAME),
        "every frame within the limit: {frames:?}"
    );
    engine.shutdown().await.unwrap();
}
