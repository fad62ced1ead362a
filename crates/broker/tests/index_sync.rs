//! Sync type 5 (the backup server's index) on a broker's sync port, spoken over TCP as a QMQ
//! backup server does: the records of the sent messages in QMQ's layout, from the start or
//! from a message in the middle; `PARAM_ERROR` beyond the log's end; a long poll that answers
//! when a message arrives; and an index request is no slave's proof of replication.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use qmq_broker::replication::sync_server::{SyncSettings, INDEX_MAX_RECORDS};
use qmq_broker::replication::{ReplicationMode, SyncTimeout};
use qmq_protocol::codes::{command, response};
use qmq_protocol::*;
use qmq_store::LogStream;
use qmq_transport::Connection;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

mod common;
use common::{backup_request_body, backup_sync_on, message, send, SyncMaster, T};

/// The message-log offset of `subject`'s message `sequence`.
fn offset_of(m: &SyncMaster, subject: &str, sequence: u64) -> u64 {
    m.broker.store().read(subject, sequence, 1).unwrap()[0].offset
}

/// One SYNC_LOG_REQUEST on a new connection; returns the response code and body.
async fn sync(addr: &str, sync_type: SyncType, offset: i64) -> (i16, Bytes) {
    let conn = Connection::connect(addr).await.unwrap();
    backup_sync_on(&conn, sync_type, offset).await
}

/// A type-5 request that must succeed; returns the decoded chunk.
async fn index(addr: &str, offset: u64) -> SyncIndexChunk {
    let (code, body) = sync(addr, SyncType::Index, offset as i64).await;
    assert_eq!(code, response::SUCCESS);
    SyncIndexChunk::decode(&body).unwrap()
}

/// `id` of `subject`, created at `created`.
fn msg(subject: &str, id: &str, created: i64) -> Message {
    let mut m = message(subject, id, &[], "body");
    m.created_time = created;
    m
}

fn record(sequence: i64, created_time: i64, subject: &str, id: &str) -> SyncIndexRecord {
    SyncIndexRecord {
        sequence,
        created_time,
        subject: subject.into(),
        message_id: id.into(),
    }
}

#[tokio::test]
async fn the_index_lists_every_message_from_any_message() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        SyncSettings::default().batch_bytes,
    )
    .await;
    let sent = [
        msg("orders", "o-1", 1_700_000_000_001),
        msg("payments", "p-1", 1_700_000_000_002),
        msg("orders", "o-2", 1_700_000_000_003),
    ];
    assert!(send(&m.client, &sent[..2]).await.is_empty());
    assert!(send(&m.client, &sent[2..]).await.is_empty());
    // Sent in a later frame, with tags: the index does not depend on them.
    let mut tagged = message("payments", "p-2", &["vip"], "b");
    tagged.created_time = 1_700_000_000_004;
    assert!(send(&m.client, &[tagged]).await.is_empty());
    let end = m.log_end();
    let all = vec![
        record(0, 1_700_000_000_001, "orders", "o-1"),
        record(0, 1_700_000_000_002, "payments", "p-1"),
        record(1, 1_700_000_000_003, "orders", "o-2"),
        record(1, 1_700_000_000_004, "payments", "p-2"),
    ];

    let chunk = index(&m.sync_addr, 0).await;
    assert_eq!(chunk.records, all);
    assert_eq!(chunk.next, end as i64, "the offset to ask for next");

    // From the third message (orders #1): the records from it on.
    let from = offset_of(&m, "orders", 1);
    assert!(from > 0);
    let chunk = index(&m.sync_addr, from).await;
    assert_eq!(chunk.records, all[2..]);
    assert_eq!(chunk.next, end as i64);

    // Nothing new: after the poll, no records and the asked offset.
    let (code, body) = sync(&m.sync_addr, SyncType::Index, end as i64).await;
    assert_eq!(code, response::SUCCESS);
    assert_eq!(body.len(), 12, "i32 size 0 ; i64 offset");
    let chunk = SyncIndexChunk::decode(&body).unwrap();
    assert_eq!((chunk.next, chunk.records.len()), (end as i64, 0));

    // A backup is no slave: nothing of this counts as replicated.
    assert_eq!(m.gate.slave_end(), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn at_most_5000_records_per_answer() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        SyncSettings::default().batch_bytes,
    )
    .await;
    let n = INDEX_MAX_RECORDS + 3;
    assert_eq!(INDEX_MAX_RECORDS, 5000);
    let all: Vec<Message> = (0..n)
        .map(|i| msg("bulk", &format!("id-{i}"), 1_700_000_000_000 + i as i64))
        .collect();
    for batch in all.chunks(1000) {
        assert!(send(&m.client, batch).await.is_empty());
    }
    let first = index(&m.sync_addr, 0).await;
    assert_eq!(first.records.len(), INDEX_MAX_RECORDS);
    assert_eq!(
        first.next as u64,
        offset_of(&m, "bulk", INDEX_MAX_RECORDS as u64)
    );
    let rest = index(&m.sync_addr, first.next as u64).await;
    assert_eq!(rest.records.len(), 3);
    assert_eq!(rest.next as u64, m.log_end());
    for (i, r) in first.records.iter().chain(&rest.records).enumerate() {
        assert_eq!(r.sequence, i as i64);
        assert_eq!(r.message_id, format!("id-{i}"));
    }
    m.shutdown().await;
}

#[tokio::test]
async fn beyond_the_end_is_a_param_error() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        SyncSettings::default().batch_bytes,
    )
    .await;
    assert!(send(&m.client, &[msg("s", "1", 1)]).await.is_empty());
    let end = m.log_end() as i64;
    for offset in [end + 1, end + 1_000_000, -1] {
        let (code, body) = sync(&m.sync_addr, SyncType::Index, offset).await;
        assert_eq!(code, response::PARAM_ERROR, "offset {offset}");
        assert!(body.is_empty());
    }
    // The connection and the server go on serving.
    assert_eq!(index(&m.sync_addr, 0).await.records.len(), 1);
    m.shutdown().await;
}

#[tokio::test]
async fn a_waiting_request_answers_when_a_message_arrives() {
    // The poll outlasts the request's deadline: only the new message can answer it in time.
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_secs(600),
        SyncSettings::default().batch_bytes,
    )
    .await;
    assert!(send(&m.client, &[msg("s", "first", 1)]).await.is_empty());
    let end = m.log_end();

    let stream = TcpStream::connect(&m.sync_addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let header = frame::Header::request(command::SYNC_LOG_REQUEST, frame::VERSION_9, 1);
    framed
        .send(Frame::new(
            header,
            backup_request_body(SyncType::Index, end as i64),
        ))
        .await
        .unwrap();
    // The request is on its way (flushed); now the message it waits for.
    assert!(send(&m.client, &[msg("s", "second", 2)]).await.is_empty());

    let resp = tokio::time::timeout(T, framed.next())
        .await
        .expect("the waiting request was not answered")
        .unwrap()
        .unwrap();
    assert_eq!(resp.header.opaque, 1);
    assert_eq!(resp.header.code, response::SUCCESS);
    let chunk = SyncIndexChunk::decode(&resp.body).unwrap();
    assert_eq!(chunk.records, [record(1, 2, "s", "second")]);
    assert_eq!(chunk.next as u64, m.log_end());
    m.shutdown().await;
}

#[tokio::test]
async fn index_requests_release_no_send_waiting_for_the_slave() {
    let m = SyncMaster::start(
        ReplicationMode::Sync {
            timeout: Duration::from_secs(600),
            on_timeout: SyncTimeout::Fail,
        },
        Duration::from_millis(200),
        SyncSettings::default().batch_bytes,
    )
    .await;
    let client = m.client.clone();
    let waiting = tokio::spawn(async move { send(&client, &[msg("s", "held", 1)]).await });
    // Stored (and shippable), now waiting for a slave.
    let mut end = m.broker.store().watch_log_end(LogStream::Message);
    tokio::time::timeout(T, end.wait_for(|e| *e > 0))
        .await
        .unwrap()
        .unwrap();
    let stored = m.log_end();

    // The backup reads the held message and asks from past it.
    let chunk = index(&m.sync_addr, 0).await;
    assert_eq!(chunk.records, [record(0, 1, "s", "held")]);
    assert_eq!(chunk.next as u64, stored);
    let chunk = index(&m.sync_addr, stored).await;
    assert!(chunk.records.is_empty());
    assert_eq!(
        m.gate.slave_end(),
        0,
        "an index request moved the slave's end"
    );
    assert!(!waiting.is_finished(), "an index request released a send");

    // A slave's message request does release it.
    let (code, _) = sync(&m.sync_addr, SyncType::Message, stored as i64).await;
    assert_eq!(code, response::SUCCESS);
    assert_eq!(m.gate.slave_end(), stored);
    let failures = tokio::time::timeout(T, waiting).await.unwrap().unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    m.shutdown().await;
}
