//! End-to-end: a real broker on a free loopback port, driven over the QMQ wire protocol.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qmq_broker::{BrokerConfig, BrokerHandle};
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_response, encode_send_request};
use qmq_protocol::*;
use qmq_transport::Connection;

mod common;
use common::*;

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut c = qmq_config(dir);
    // These tests send first and pull with new groups, and retry without waiting.
    c.new_group_start = qmq_store::ResetTo::Earliest;
    c.retry_delay = Duration::ZERO;
    c
}

async fn start(dir: &std::path::Path) -> (BrokerHandle, Connection) {
    start_with(config(dir)).await
}

#[tokio::test]
async fn send_pull_ack_and_resume_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(dir.path()).await;
    let mut batch: Vec<Message> = (0..10)
        .map(|i| message("orders", &format!("id{i}"), &[], &format!("m{i}")))
        .collect();
    // Trace context as the client carries it (W3C, `qtrace_` prefix).
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    batch[0].set_attr("qtrace_traceparent", traceparent);
    batch[0].set_attr("qtrace_tracestate", "congo=t61rcWkgMzE");
    assert!(send(&conn, &batch).await.is_empty());
    let (first, got) = pull(&conn, &pull_request("orders", "g", "c1", 4, -1)).await;
    assert_eq!(first, 0);
    assert_eq!(bodies(&got), ["m0", "m1", "m2", "m3"]);
    assert_eq!(got[0], batch[0], "message comes back exactly as sent");
    assert_eq!(got[0].attr("qtrace_traceparent"), Some(traceparent));
    assert_eq!(got[0].attr("qtrace_tracestate"), Some("congo=t61rcWkgMzE"));
    ack(&conn, "orders", "g", "c1", 0, 3).await;
    broker.shutdown().await.unwrap();

    let (broker, conn) = start(dir.path()).await;
    let mut req = pull_request("orders", "g", "c1", 100, -1);
    req.pull_offset_last = 3;
    let (first, got) = pull(&conn, &req).await;
    assert_eq!(first, 4);
    assert_eq!(
        bodies(&got),
        (4..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn pulled_but_unacked_messages_are_redelivered_to_a_restarted_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(dir.path()).await;
    let batch: Vec<Message> = (0..5)
        .map(|i| message("s", &format!("id{i}"), &[], &format!("m{i}")))
        .collect();
    send(&conn, &batch).await;
    let (_, got) = pull(&conn, &pull_request("s", "g", "c1", 5, -1)).await;
    assert_eq!(got.len(), 5);
    ack(&conn, "s", "g", "c1", 0, 1).await;
    // The consumer restarts knowing nothing (pull_offset_last -1): it gets m2..m4 again.
    let (first, again) = pull(&conn, &pull_request("s", "g", "c1", 10, -1)).await;
    assert_eq!(first, 2);
    assert_eq!(bodies(&again), ["m2", "m3", "m4"]);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn reset_offset_replays_or_skips_a_groups_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(dir.path()).await;
    let batch: Vec<Message> = (0..5)
        .map(|i| message("r", &format!("{i}"), &[], &format!("m{i}")))
        .collect();
    send(&conn, &batch).await;
    let (_, got) = pull(&conn, &pull_request("r", "g", "c", 10, -1)).await;
    ack(&conn, "r", "g", "c", 0, 4).await;
    assert_eq!(got.len(), 5);
    assert_eq!(
        broker
            .control()
            .reset_offset("r", "g", qmq_store::ResetTo::Earliest)
            .await
            .unwrap(),
        0
    );
    let mut req = pull_request("r", "g", "c", 10, -1);
    req.pull_offset_last = 4;
    let (_, again) = pull(&conn, &req).await;
    assert_eq!(bodies(&again), bodies(&got));
    assert_eq!(
        broker
            .control()
            .reset_offset("r", "g", qmq_store::ResetTo::Latest)
            .await
            .unwrap(),
        5
    );
    send(&conn, &[message("r", "5", &[], "m5")]).await;
    req.pull_offset_last = 9;
    let (_, after) = pull(&conn, &req).await;
    assert_eq!(bodies(&after), ["m5"]);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn tag_filters_and_or() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(dir.path()).await;
    send(
        &conn,
        &[
            message("t", "1", &["a"], "a"),
            message("t", "2", &["a", "b"], "ab"),
            message("t", "3", &["b"], "b"),
            message("t", "4", &[], "none"),
        ],
    )
    .await;
    let with = |tag_type, tags: &[&str], group: &str| {
        let mut r = pull_request("t", group, "c", 10, -1);
        r.filters = vec![PullFilter::Tag {
            tag_type,
            tags: tags.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }];
        r
    };
    let (_, and) = pull(&conn, &with(TagType::And, &["a", "b"], "g-and")).await;
    assert_eq!(bodies(&and), ["ab"]);
    let (_, or) = pull(&conn, &with(TagType::Or, &["a", "b"], "g-or")).await;
    assert_eq!(bodies(&or), ["a", "ab", "b"]);
    let (_, all) = pull(&conn, &with(TagType::NoTag, &["a"], "g-all")).await;
    assert_eq!(all.len(), 4);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_is_answered_when_a_message_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(dir.path()).await;
    let consumer = conn.clone();
    let waiting =
        tokio::spawn(
            async move { pull(&consumer, &pull_request("lp", "g", "c", 10, 30_000)).await },
        );
    // The pull is parked (nothing to deliver) until the send; no sleep: the send happens-before
    // the answer can contain the message, whenever the pull got parked.
    send(&conn, &[message("lp", "1", &[], "hello")]).await;
    let (_, got) = tokio::time::timeout(T, waiting).await.unwrap().unwrap();
    assert_eq!(bodies(&got), ["hello"]);
    // And a long poll with nothing to deliver ends with NO_MESSAGE when its wait runs out.
    // (The consumer says it received pull-log offset 0, so nothing is re-delivered.)
    let mut req = pull_request("lp", "g", "c", 10, 200);
    req.pull_offset_last = 0;
    let (first, none) = pull(&conn, &req).await;
    assert_eq!((first, none.len()), (-1, 0));
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_messages_are_refused_one_by_one_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_message_bytes = 1024;
    let (broker, conn) = start_with(c).await;
    let ok = message("b", "ok", &[], "fine");
    let big = message("b", "big", &[], &"x".repeat(5000));
    let mut body = BytesMut::new();
    encode_send_request(&[ok.clone(), big], &mut body).unwrap();
    // A third message whose CRC is wrong.
    let at = body.len();
    message("b", "crc", &[], "bad")
        .encode_with_crc(&mut body)
        .unwrap();
    body[at + 7] ^= 0xff;
    let resp = conn
        .request(command::SEND_MESSAGE, body.freeze(), T)
        .await
        .unwrap();
    let failures = decode_send_response(&resp.body).unwrap();
    let codes: Vec<(&str, ProducerCode)> = failures
        .iter()
        .map(|f| (f.message_id.as_str(), f.code))
        .collect();
    assert_eq!(
        codes,
        [("big", ProducerCode::Block), ("crc", ProducerCode::Block)]
    );
    let (_, got) = pull(&conn, &pull_request("b", "g", "c", 10, -1)).await;
    assert_eq!(got, vec![ok]);
    // A truncated batch is refused whole.
    let resp = conn
        .request(
            command::SEND_MESSAGE,
            Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1, 0]),
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.header.code, response::BROKER_ERROR);
    // Read-only subjects are refused per message; other subjects are still accepted.
    broker.control().set_readonly_subjects(vec!["b".into()]);
    let f = send(
        &conn,
        &[
            message("b", "ro", &[], "x"),
            message("other", "ok2", &[], "y"),
        ],
    )
    .await;
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].message_id.as_str(), f[0].code),
        ("ro", ProducerCode::ReadOnly)
    );
    broker.control().set_readonly(true);
    let f = send(&conn, &[message("other", "ro2", &[], "x")]).await;
    assert_eq!(f[0].code, ProducerCode::ReadOnly);
    broker.control().set_readonly(false);
    assert!(send(&conn, &[message("b", "ok3", &[], "x")])
        .await
        .is_empty());
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn consumers_join_a_backlog_and_a_departed_consumers_messages_go_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.consumer_lease = Duration::from_millis(300);
    c.consumer_check_interval = Duration::from_millis(50);
    let (broker, conn) = start_with(c).await;
    let batch: Vec<Message> = (0..60)
        .map(|i| message("bk", &format!("{i}"), &[], &format!("{i}")))
        .collect();
    send(&conn, &batch).await;
    // c1 takes 20 and vanishes without acking; c2 and c3 join with no rebalance and drain the rest.
    let (_, lost) = pull(&conn, &pull_request("bk", "g", "c1", 20, -1)).await;
    assert_eq!(lost.len(), 20);
    let mut seen = std::collections::BTreeSet::new();
    for consumer in ["c2", "c3"].iter().cycle().take(4) {
        let (first, got) = pull(&conn, &pull_request("bk", "g", consumer, 10, -1)).await;
        if got.is_empty() {
            continue;
        }
        ack(
            &conn,
            "bk",
            "g",
            consumer,
            first,
            first + got.len() as i64 - 1,
        )
        .await;
        seen.extend(bodies(&got));
    }
    assert_eq!(seen.len(), 40);
    // c1's 20 reappear on the group's retry subject once c1's lease ends.
    let retry = qmq_broker::subjects::retry_subject("bk", "g");
    let (_, again) = pull(&conn, &pull_request(&retry, "g", "c2", 100, 5_000)).await;
    let again_bodies = bodies(&again);
    assert_eq!(again_bodies, bodies(&lost));
    seen.extend(again_bodies);
    assert_eq!(seen.len(), 60, "every message delivered");
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn acked_messages_survive_a_crash_with_fsync_before_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(dir.path()).await;
    let batch: Vec<Message> = (0..50)
        .map(|i| message("d", &format!("{i}"), &[], &format!("{i}")))
        .collect();
    assert!(send(&conn, &batch).await.is_empty());
    // No shutdown, no checkpoint: the files as they are now are what a crash would leave.
    // (The broker keeps the directory locked, as a dead process would not, so a copy of it is
    // reopened.)
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let (after, conn) = start(crashed.path()).await;
    let (_, got) = pull(&conn, &pull_request("d", "g", "c", 100, -1)).await;
    assert_eq!(got, batch);
    after.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// Copies a directory tree's files as they are.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_crowded_group_does_not_starve_a_small_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.pull_workers = 1;
    let (broker, conn) = start_with(c).await;
    for round in 0..10 {
        // Distinct ids: the same ids again would be duplicates, not stored.
        let batch: Vec<Message> = (0..30)
            .map(|i| message("fair", &format!("{round}-{i}"), &[], "x"))
            .collect();
        assert!(send(&conn, &batch).await.is_empty());
    }
    // 100 consumers of group "big" and 2 of group "small" pull at once, on one connection.
    let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (group, consumers) in [("big", 100), ("small", 2)] {
        for i in 0..consumers {
            let (conn, order) = (conn.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let (_, got) =
                    pull(&conn, &pull_request("fair", group, &format!("c{i}"), 1, -1)).await;
                assert_eq!(got.len(), 1);
                order.lock().push(group);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().clone();
    let last_small = order.iter().rposition(|g| *g == "small").unwrap();
    // Served in turns by group, "small" finishes among the first answers, not after "big"'s 100.
    assert!(
        last_small < 30,
        "small group's last answer was #{last_small} of {}",
        order.len()
    );
    broker.shutdown().await.unwrap();
}
