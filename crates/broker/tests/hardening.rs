//! Hardening: the broker's retry delay, new-group start, byte budgets, ack checks, in-flight
//! limits and name checks, each driven over the QMQ wire protocol against a real broker on a
//! free loopback port.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use qmq_broker::subjects::retry_subject;
use qmq_broker::BrokerConfig;
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::encode_send_request;
use qmq_protocol::*;
use qmq_store::{ConsumerKey, ResetTo};
use qmq_transport::Connection;

mod common;
use common::*;

fn config(dir: &std::path::Path) -> BrokerConfig {
    qmq_config(dir)
}

fn msg(subject: &str, id: &str, body: &str) -> Message {
    message(subject, id, &[], body)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn key(subject: &str, group: &str, consumer: &str) -> ConsumerKey {
    ConsumerKey {
        subject: subject.into(),
        group: group.into(),
        consumer: consumer.into(),
    }
}

/// Waits (with a deadline) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_nacked_message_is_served_from_the_retry_subject_only_after_the_retry_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.retry_delay = Duration::from_secs(1);
    let (broker, conn) = start_with(c).await;
    let retry = retry_subject("orders", "g");
    // A long poll on the group's (empty) retry subject, parked before the nack arrives.
    let poll = {
        let conn = conn.clone();
        let retry = retry.clone();
        tokio::spawn(async move {
            let got = pull(&conn, &pull_request(&retry, "g", "c1", 10, 20_000)).await;
            (got, now_ms())
        })
    };
    wait_until("the poll to park", || broker.parked_subjects() == 1).await;
    // The consumer's handler failed: QMQ clients send the message back under the retry subject.
    assert!(send(&conn, &[msg(&retry, "m1", "again")]).await.is_empty());
    let stored = broker.store().read(&retry, 0, 1).unwrap()[0].appended_at_ms;
    let ((first, got), arrived) = poll.await.unwrap();
    assert_eq!((first, bodies(&got)), (0, vec!["again".to_owned()]));
    assert!(
        arrived >= stored + 1000,
        "served {} ms after it was stored, before the 1 s retry delay",
        arrived - stored
    );
    // Nothing was appended after the nack: the poll woke by itself when the message became due,
    // not when its 20 s wait ran out.
    assert!(
        arrived < stored + 15_000,
        "the long poll was not woken when the message became due"
    );
    assert_eq!(broker.store().subject_len(&retry), 1);
}

#[tokio::test]
async fn a_new_group_starts_at_the_latest_message_unless_asked_for_the_earliest() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start_with(config(dir.path())).await;
    let old: Vec<Message> = (0..3)
        .map(|i| msg("ng", &format!("old{i}"), &format!("old{i}")))
        .collect();
    assert!(send(&conn, &old).await.is_empty());
    // Default (QMQ): a new group sees nothing stored before its first pull...
    assert!(pull(&conn, &pull_request("ng", "late", "c", 10, -1))
        .await
        .1
        .is_empty());
    // ... and everything after it, even across a restart before it pulls anything.
    assert!(send(&conn, &[msg("ng", "new0", "new0")]).await.is_empty());
    drop(conn);
    broker.shutdown().await.unwrap();
    let (broker, conn) = start_with(config(dir.path())).await;
    let (_, got) = pull(&conn, &pull_request("ng", "late", "c", 10, -1)).await;
    assert_eq!(bodies(&got), ["new0"]);
    // A pull may ask for the earliest explicitly (what `qmq consume` does by default).
    let mut req = pull_request("ng", "early", "c", 10, -1);
    req.offset = pull::START_EARLIEST;
    let (_, got) = pull(&conn, &req).await;
    assert_eq!(bodies(&got), ["old0", "old1", "old2", "new0"]);
    // A new group's retry subject starts at the earliest: no retry is lost.
    let retry = retry_subject("ng", "fresh");
    assert!(send(&conn, &[msg(&retry, "r0", "r0")]).await.is_empty());
    let (_, got) = pull(&conn, &pull_request(&retry, "fresh", "c", 10, 10_000)).await;
    assert_eq!(bodies(&got), ["r0"]);
    broker.shutdown().await.unwrap();

    // Configured to start at the earliest, a new group gets everything.
    let mut c = config(dir.path());
    c.new_group_start = ResetTo::Earliest;
    let (broker, conn) = start_with(c).await;
    let (_, got) = pull(&conn, &pull_request("ng", "other", "c", 10, -1)).await;
    assert_eq!(got.len(), 4);
    broker.shutdown().await.unwrap();
}

/// Messages of ~200 KB, ten of them: more than one 1 MiB frame can carry.
fn big_messages(subject: &str) -> Vec<Message> {
    (0..10)
        .map(|i| {
            let mut m = msg(subject, &format!("big{i}"), &format!("{i:02}"));
            for a in 0..4 {
                m.attrs.push((format!("pad{a}"), "x".repeat(50_000)));
            }
            m
        })
        .collect()
}

#[tokio::test]
async fn pulls_and_redeliveries_larger_than_a_frame_come_in_several_responses() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_frame_bytes = 1024 * 1024;
    c.new_group_start = ResetTo::Earliest;
    let (broker, conn) = start_with(c).await;
    for m in big_messages("big") {
        assert!(send(&conn, &[m]).await.is_empty());
    }
    // New messages: every one arrives, in order, over several responses.
    let mut req = pull_request("big", "g", "c1", 100, -1);
    let mut got = Vec::new();
    let mut responses = 0;
    while got.len() < 10 {
        let (first, ms) = pull(&conn, &req).await;
        assert_eq!(first, got.len() as i64, "pull-log offsets stay contiguous");
        assert!(!ms.is_empty() && ms.len() < 10);
        req.pull_offset_last = first + ms.len() as i64 - 1;
        got.extend(ms);
        responses += 1;
    }
    assert!(responses >= 3);
    let ids: Vec<_> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, (0..10).map(|i| format!("big{i}")).collect::<Vec<_>>());
    // Redelivery of all ten unacked ones (the consumer restarted and knows nothing).
    let mut req = pull_request("big", "g", "c1", 100, -1);
    let mut again = Vec::new();
    while again.len() < 10 {
        let (first, ms) = pull(&conn, &req).await;
        assert_eq!(first, again.len() as i64);
        assert!(!ms.is_empty() && ms.len() < 10);
        req.pull_offset_last = first + ms.len() as i64 - 1;
        again.extend(ms);
    }
    assert_eq!(again, got);
    assert_eq!(
        ack_code(&conn, "big", "g", "c1", 0, 9).await,
        response::SUCCESS
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ack_beyond_what_was_pulled_changes_nothing_and_later_acks_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.new_group_start = ResetTo::Earliest;
    let (broker, conn) = start_with(c).await;
    let batch: Vec<Message> = (0..3)
        .map(|i| msg("acks", &format!("id{i}"), &format!("m{i}")))
        .collect();
    assert!(send(&conn, &batch).await.is_empty());
    let (first, got) = pull(&conn, &pull_request("acks", "g", "c1", 10, -1)).await;
    assert_eq!((first, got.len()), (0, 3));
    for _ in 0..3 {
        // A client resending the bad ack gets the same clear answer, with no side effects.
        let code = ack_code(&conn, "acks", "g", "c1", 5, 7).await;
        assert_eq!(code, response::PARAM_ERROR);
    }
    let retry = retry_subject("acks", "g");
    assert_eq!(
        broker.store().subject_len(&retry),
        0,
        "nothing went to retry"
    );
    assert_eq!(broker.store().progress(&key("acks", "g", "c1")).acked, -1);
    // An ack that ends past the pulled end is cut to it.
    assert_eq!(
        ack_code(&conn, "acks", "g", "c1", 0, 1).await,
        response::SUCCESS
    );
    assert_eq!(
        ack_code(&conn, "acks", "g", "c1", 2, 9).await,
        response::SUCCESS
    );
    assert_eq!(broker.store().progress(&key("acks", "g", "c1")).acked, 2);
    assert_eq!(broker.store().subject_len(&retry), 0);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn pipelined_acks_are_applied_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.new_group_start = ResetTo::Earliest;
    let (broker, conn) = start_with(c).await;
    let n = 200;
    let batch: Vec<Message> = (0..n)
        .map(|i| msg("pipe", &format!("id{i}"), &format!("m{i}")))
        .collect();
    assert!(send(&conn, &batch).await.is_empty());
    let (_, got) = pull(&conn, &pull_request("pipe", "g", "c1", n, -1)).await;
    assert_eq!(got.len(), n as usize);
    // One ack per message, written in order before any answer comes back: each future is
    // polled once, in order, which queues its frame, and only then are they awaited.
    let mut acks: Vec<_> = (0..n as i64)
        .map(|i| {
            // Unconstrained: tokio's co-operative budget must not defer a send to a later poll.
            Box::pin(tokio::task::unconstrained(ack_code(
                &conn, "pipe", "g", "c1", i, i,
            )))
        })
        .collect();
    for a in &mut acks {
        assert!(futures::poll!(a.as_mut()).is_pending());
    }
    let codes = futures::future::join_all(acks).await;
    assert!(codes.iter().all(|c| *c == response::SUCCESS));
    // Applied out of order, a later ack would have sent the earlier, unacked ones to retry.
    let moved = broker
        .store()
        .read(&retry_subject("pipe", "g"), 0, 1000)
        .unwrap();
    let ids: Vec<String> = moved
        .iter()
        .map(|m| {
            let m = Message::decode_stored(&mut wire::Reader::new(&m.message)).unwrap();
            m.message_id
        })
        .collect();
    assert!(ids.is_empty(), "sent to retry: {ids:?}");
    assert_eq!(
        broker.store().progress(&key("pipe", "g", "c1")).acked,
        n as i64 - 1
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_stops_being_read_at_its_in_flight_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_in_flight = 4;
    let (broker, conn) = start_with(c).await;
    // Four long polls fill the connection's allowance.
    let polls: Vec<_> = (0..4)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                pull(
                    &conn,
                    &pull_request(&format!("idle{i}"), "g", "c", 1, 30_000),
                )
                .await
            })
        })
        .collect();
    wait_until("four parked polls", || broker.parked_subjects() == 4).await;
    // The fifth request is not read, so not answered, while they are in progress.
    let hb = conn
        .request(
            command::HEARTBEAT,
            bytes::Bytes::new(),
            Duration::from_millis(500),
        )
        .await;
    assert!(
        hb.is_err(),
        "a request beyond the in-flight limit was served"
    );
    // Messages end the polls; the connection is read again.
    let other = Connection::connect(&broker.addr().to_string())
        .await
        .unwrap();
    for i in 0..4 {
        assert!(send(&other, &[msg(&format!("idle{i}"), "x", "x")])
            .await
            .is_empty());
    }
    for p in polls {
        p.await.unwrap();
    }
    let hb = conn
        .request(command::HEARTBEAT, bytes::Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(hb.header.code, response::SUCCESS);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_send_frame_that_decodes_too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_decoded_send_bytes = 1024 * 1024;
    let (broker, conn) = start_with(c).await;
    // 400 KB on the wire, ~5 MB once decoded: 100,000 empty attributes.
    let mut m = msg("attrs", "many", "x");
    m.attrs = vec![(String::new(), String::new()); 100_000];
    let mut body = BytesMut::new();
    encode_send_request(&[m], &mut body).unwrap();
    assert!(body.len() < 1024 * 1024);
    let resp = conn
        .request(command::SEND_MESSAGE, body.freeze(), T)
        .await
        .unwrap();
    assert_eq!(resp.header.code, response::BROKER_ERROR);
    assert_eq!(broker.store().subject_len("attrs"), 0);
    // The connection goes on.
    assert!(send(&conn, &[msg("attrs", "ok", "ok")]).await.is_empty());
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_names_leave_nothing_behind_and_idle_consumers_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.consumer_lease = Duration::from_secs(1);
    c.consumer_forget = Duration::from_secs(1);
    c.consumer_check_interval = Duration::from_millis(50);
    let (broker, conn) = start_with(c).await;
    let long = |i: usize| format!("{i:08}{}", "n".repeat(600));
    for i in 0..1500 {
        let req = match i % 3 {
            0 => pull_request(&long(i), "g", "c", 1, 1000),
            1 => pull_request("s", &long(i), "c", 1, 1000),
            _ => pull_request("s", "g", &long(i), 1, 1000),
        };
        let (code, _, _) = pull_raw(&conn, &req).await;
        assert_eq!(code, response::NO_MESSAGE);
    }
    for i in 0..30 {
        assert_eq!(
            ack_code(&conn, "s", &long(i), "c", 0, 0).await,
            response::PARAM_ERROR
        );
    }
    assert_eq!(broker.tracked_consumers(), 0);
    assert_eq!(broker.parked_subjects(), 0);
    assert!(broker.store().groups().is_empty() && broker.store().consumers().is_empty());
    // An over-long subject in a batch is refused alone; the rest is stored.
    let batch = [
        msg("ok", "a", "a"),
        msg(&long(0), "b", "b"),
        msg("ok", "c", "c"),
    ];
    let failures = send(&conn, &batch).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].message_id, "b");
    assert_eq!(failures[0].code, ProducerCode::SubjectNotAssigned);
    assert!(
        failures[0].remark.contains("too long"),
        "{}",
        failures[0].remark
    );
    assert_eq!(broker.store().subject_len("ok"), 2);
    // A valid consumer is remembered, then forgotten once idle; a long poll on a subject never
    // written leaves no watcher behind once it ends.
    let (code, _, _) = pull_raw(&conn, &pull_request("never", "g", "c", 1, 100)).await;
    assert_eq!(code, response::NO_MESSAGE);
    assert!(broker.tracked_consumers() >= 1);
    wait_until("the idle consumer to be forgotten", || {
        broker.tracked_consumers() == 0
    })
    .await;
    assert_eq!(broker.parked_subjects(), 0);
    broker.shutdown().await.unwrap();
}
