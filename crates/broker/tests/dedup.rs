//! The duplicate window over the wire: a message id sent again is answered DUPLICATE and stored
//! once, across retries, concurrent sends and restarts; after the window it is stored again.

use std::time::Duration;

use bytes::BytesMut;
use futures::SinkExt;
use qmq_broker::{BrokerConfig, BrokerHandle};
use qmq_protocol::codes::command;
use qmq_protocol::send::encode_send_request;
use qmq_protocol::*;
use qmq_transport::Connection;
use tokio_util::codec::Framed;

mod common;
use common::*;

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut c = qmq_config(dir);
    c.new_group_start = qmq_store::ResetTo::Earliest;
    c.retry_delay = Duration::ZERO;
    c
}

/// Every message stored on `subject`, read by a consumer group never seen before (what was
/// stored, not redeliveries).
async fn stored(conn: &Connection, subject: &str) -> Vec<String> {
    let group = format!("fresh-{}", rand_suffix());
    let (_, got) = pull(conn, &pull_request(subject, &group, "c", 1000, -1)).await;
    bodies(&got)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn codes(failures: &[SendFailure]) -> Vec<(String, ProducerCode)> {
    failures
        .iter()
        .map(|f| (f.message_id.clone(), f.code))
        .collect()
}

async fn start(c: BrokerConfig) -> (BrokerHandle, Connection) {
    start_with(c).await
}

#[tokio::test]
async fn the_same_id_twice_is_answered_duplicate_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(config(dir.path())).await;
    assert!(send(&conn, &[message("s", "id1", &[], "first")])
        .await
        .is_empty());
    let again = send(&conn, &[message("s", "id1", &[], "second")]).await;
    assert_eq!(codes(&again), [("id1".to_owned(), ProducerCode::Duplicate)]);
    // The same id on another subject is another message.
    assert!(send(&conn, &[message("t", "id1", &[], "other")])
        .await
        .is_empty());
    // Repeats within one batch: stored once, the id answered once (here: success).
    let batch = [
        message("s", "id2", &[], "a"),
        message("s", "id3", &[], "b"),
        message("s", "id2", &[], "c"),
        message("s", "id1", &[], "d"),
    ];
    let answer = send(&conn, &batch).await;
    assert_eq!(
        codes(&answer),
        [("id1".to_owned(), ProducerCode::Duplicate)]
    );
    assert_eq!(stored(&conn, "s").await, ["first", "a", "b"]);
    assert_eq!(stored(&conn, "t").await, ["other"]);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_a_dropped_answer_stores_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(config(dir.path())).await;
    // A producer sends, and its connection goes before it reads the answer.
    let stream = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::new(frame::DEFAULT_MAX_FRAME));
    let mut body = BytesMut::new();
    encode_send_request(&[message("s", "lost", &[], "try 1")], &mut body).unwrap();
    let header = Header::request(command::SEND_MESSAGE, frame::VERSION_9, 1);
    framed
        .send(Frame::new(header, body.freeze()))
        .await
        .unwrap();
    drop(framed);
    // It retries with the same id (on another connection) until answered: whichever try is
    // stored, the others are duplicates.
    let retry = send(&conn, &[message("s", "lost", &[], "try 2")]).await;
    assert!(
        retry.is_empty() || codes(&retry) == [("lost".to_owned(), ProducerCode::Duplicate)],
        "{retry:?}"
    );
    let again = send(&conn, &[message("s", "lost", &[], "try 3")]).await;
    assert_eq!(
        codes(&again),
        [("lost".to_owned(), ProducerCode::Duplicate)]
    );
    assert_eq!(stored(&conn, "s").await.len(), 1);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_of_one_id_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(config(dir.path())).await;
    let addr = broker.addr().to_string();
    for round in 0..20 {
        let id = format!("race-{round}");
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (addr, id) = (addr.clone(), id.clone());
            sends.spawn(async move {
                let c = Connection::connect(&addr).await.unwrap();
                send(&c, &[message("race", &id, &[], &format!("{i}"))]).await
            });
        }
        let mut successes = 0;
        while let Some(r) = sends.join_next().await {
            let failures = r.unwrap();
            match codes(&failures).as_slice() {
                [] => successes += 1,
                [(_, ProducerCode::Duplicate)] => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!(successes, 1, "round {round}: exactly one send stores it");
    }
    assert_eq!(stored(&conn, "race").await.len(), 20);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_window_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn) = start(config(dir.path())).await;
    let first: Vec<Message> = (0..50)
        .map(|i| message("s", &format!("id{i}"), &[], &format!("m{i}")))
        .collect();
    assert!(send(&conn, &first).await.is_empty());
    broker.shutdown().await.unwrap();

    let (broker, conn) = start(config(dir.path())).await;
    let answer = send(&conn, &first).await;
    assert_eq!(answer.len(), 50);
    assert!(answer.iter().all(|f| f.code == ProducerCode::Duplicate));
    assert_eq!(stored(&conn, "s").await.len(), 50);
    // What a crash leaves (the files as they are while the broker runs, no close and no
    // checkpoint: a copy of them) works the same.
    assert!(send(&conn, &[message("s", "late", &[], "late")])
        .await
        .is_empty());
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    broker.shutdown().await.unwrap();
    let (broker, conn) = start(config(crashed.path())).await;
    let answer = send(&conn, &[message("s", "late", &[], "late")]).await;
    assert_eq!(
        codes(&answer),
        [("late".to_owned(), ProducerCode::Duplicate)]
    );
    assert_eq!(stored(&conn, "s").await.len(), 51);
    broker.shutdown().await.unwrap();
}

/// Copies the files under `from` to `to` (the store's `LOCK` is a `flock`, not copied state).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_id_evicted_by_count_is_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.dedup_window_max_ids = 2;
    let (broker, conn) = start(c).await;
    for id in ["a", "b", "c"] {
        assert!(send(&conn, &[message("s", id, &[], id)]).await.is_empty());
    }
    // "a" was the oldest of three in a window of two.
    assert!(send(&conn, &[message("s", "a", &[], "a again")])
        .await
        .is_empty());
    let answer = send(&conn, &[message("s", "c", &[], "c again")]).await;
    assert_eq!(codes(&answer), [("c".to_owned(), ProducerCode::Duplicate)]);
    assert_eq!(stored(&conn, "s").await, ["a", "b", "c", "a again"]);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_id_reused_after_the_window_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.dedup_window = Duration::from_millis(200);
    let (broker, conn) = start(c.clone()).await;
    let sent_at = qmq_broker::dedup::now_ms();
    let both = [message("s", "x", &[], "x1"), message("s", "y", &[], "y1")];
    assert!(send(&conn, &both).await.is_empty());
    let stored_by = qmq_broker::dedup::now_ms();
    // Within the window (checked against the clock: skipped if this machine was too slow).
    let answer = send(&conn, &[message("s", "x", &[], "x2")]).await;
    if qmq_broker::dedup::now_ms() < sent_at + 200 {
        assert_eq!(codes(&answer), [("x".to_owned(), ProducerCode::Duplicate)]);
    }
    // Once the wall clock is past the window (the condition itself, not a guessed delay).
    while qmq_broker::dedup::now_ms() <= stored_by + 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(send(&conn, &[message("s", "x", &[], "x3")])
        .await
        .is_empty());
    // After a restart too: the rebuild keeps only what was stored within the window.
    broker.shutdown().await.unwrap();
    let (broker, conn) = start(c).await;
    assert!(send(&conn, &[message("s", "y", &[], "y2")])
        .await
        .is_empty());
    let got = stored(&conn, "s").await;
    assert_eq!(got.iter().filter(|b| b.starts_with('y')).count(), 2);
    assert!(got.contains(&"x3".to_owned()));
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_subjects_and_a_window_turned_off_store_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.dedup_window = Duration::ZERO;
    let (broker, conn) = start(c).await;
    for _ in 0..2 {
        assert!(send(&conn, &[message("s", "a", &[], "a")]).await.is_empty());
    }
    assert_eq!(stored(&conn, "s").await.len(), 2);
    broker.shutdown().await.unwrap();

    // A consumer sends each failed try back to the retry subject with the same id.
    let (broker, conn) = start(config(dir.path())).await;
    let retry = "%RETRY%s%g";
    for _ in 0..2 {
        assert!(send(&conn, &[message(retry, "a", &[], "a")])
            .await
            .is_empty());
    }
    assert_eq!(stored(&conn, retry).await.len(), 2);
    broker.shutdown().await.unwrap();
}
