//! qmq-rs's backup additions on a broker's sync port, spoken over TCP as the backup server
//! does: sync type 6 (the stored messages from a message-log offset, each with its subject and
//! consume-log sequence) and FETCH_MESSAGES (a subject's stored messages at given sequences).

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use qmq_broker::replication::ReplicationMode;
use qmq_protocol::backup::MAX_FETCH;
use qmq_protocol::codes::{command, response};
use qmq_protocol::wire::{put_string, Reader};
use qmq_protocol::*;
use qmq_transport::Connection;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

mod common;
use common::{backup_request_body, backup_sync_on, message, send, SyncMaster, T};

/// What the store holds for `subject`'s message `sequence`: its message-log offset and
/// stored bytes.
fn stored(m: &SyncMaster, subject: &str, sequence: u64) -> (u64, Bytes) {
    let found = m.broker.store().read(subject, sequence, 1).unwrap();
    assert_eq!(found.len(), 1, "{subject} #{sequence} is not stored");
    assert_eq!(found[0].sequence, sequence);
    (found[0].offset, found[0].message.clone())
}

/// A type-6 request on `conn` that must succeed; returns the decoded chunk.
async fn messages_on(conn: &Connection, offset: u64) -> SyncMessagesChunk {
    let (code, body) = backup_sync_on(conn, SyncType::Messages, offset as i64).await;
    assert_eq!(code, response::SUCCESS);
    SyncMessagesChunk::decode(&body).unwrap()
}

/// A type-6 request on a new connection that must succeed.
async fn messages(addr: &str, offset: u64) -> SyncMessagesChunk {
    messages_on(&Connection::connect(addr).await.unwrap(), offset).await
}

/// One FETCH_MESSAGES with `body` on `conn`; returns the response code and body.
async fn fetch_raw(conn: &Connection, body: Bytes) -> (i16, Bytes) {
    let resp = conn.request(FETCH_MESSAGES, body, T).await.unwrap();
    (resp.header.code, resp.body)
}

/// A FETCH_MESSAGES that must succeed; returns the records.
async fn fetch(conn: &Connection, subject: &str, sequences: &[i64]) -> Vec<StoredRecord> {
    let mut body = BytesMut::new();
    FetchMessagesRequest {
        subject: subject.into(),
        sequences: sequences.to_vec(),
    }
    .encode(&mut body)
    .unwrap();
    let (code, body) = fetch_raw(conn, body.freeze()).await;
    assert_eq!(code, response::SUCCESS);
    FetchMessagesResponse::decode(&body).unwrap().records
}

fn decode(stored: &Bytes) -> Message {
    let mut r = Reader::new(stored);
    let m = Message::decode_stored(&mut r).unwrap();
    assert!(r.is_empty(), "bytes after the stored message");
    m
}

/// `id` of `subject` with tags, a property and a body.
fn rich(subject: &str, id: &str, tags: &[&str]) -> Message {
    let mut m = message(subject, id, tags, &format!("body of {id}"));
    m.attrs.push(("color".into(), format!("{id}-blue")));
    m
}

/// Checks that `stored` is `sent` as the broker keeps it: same id, subject, times, tags and
/// attributes (the broker may add attributes of its own, never drop or change the sent ones).
fn assert_same(stored: &Message, sent: &Message) {
    assert_eq!(stored.message_id, sent.message_id);
    assert_eq!(stored.subject, sent.subject);
    assert_eq!(stored.created_time, sent.created_time);
    assert_eq!(stored.tags, sent.tags);
    assert_eq!(stored.flags.has_tags(), sent.flags.has_tags());
    for (key, value) in &sent.attrs {
        assert!(
            stored.attrs.iter().any(|(k, v)| k == key && v == value),
            "{key}={value} missing from {:?}",
            stored.attrs
        );
    }
}

#[tokio::test]
async fn type_6_carries_every_stored_message_with_its_subject_and_sequence() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        1024 * 1024,
    )
    .await;
    let retry = "%RETRY%orders%g";
    let dead = "%DEAD_RETRY%orders%g";
    let sent = [
        rich("orders", "o-1", &["vip", "eu"]),
        rich("payments", "p-1", &[]),
        rich("orders", "o-2", &[]),
        rich(retry, "o-1", &["vip", "eu"]),
        rich("orders", "o-3", &["eu"]),
        rich(dead, "o-1", &["vip", "eu"]),
    ];
    assert!(send(&m.client, &sent[..3]).await.is_empty());
    assert!(send(&m.client, &sent[3..4]).await.is_empty());
    assert!(send(&m.client, &sent[4..]).await.is_empty());
    let end = m.log_end();

    let chunk = messages(&m.sync_addr, 0).await;
    assert_eq!(chunk.next, end as i64, "the offset to ask for next");
    assert_eq!(chunk.records.len(), sent.len());
    let mut next_seq: HashMap<String, i64> = HashMap::new();
    let mut last_offset = None;
    for (record, sent) in chunk.records.iter().zip(&sent) {
        assert_eq!(record.subject, sent.subject, "the store's subject");
        let expected = next_seq.entry(record.subject.clone()).or_default();
        assert_eq!(record.sequence, *expected, "{} sequence", record.subject);
        *expected += 1;
        // The consume log says the same: this sequence of this subject is this message.
        let (offset, bytes) = stored(&m, &record.subject, record.sequence as u64);
        assert_eq!(record.stored, bytes);
        assert!(last_offset < Some(offset), "records in log order");
        last_offset = Some(offset);
        assert_same(&decode(&record.stored), sent);
    }
    assert_eq!(next_seq[retry], 1);
    assert_eq!(next_seq[dead], 1);

    // From the middle (the retry copy on): the records from it on.
    let (from, _) = stored(&m, retry, 0);
    let chunk = messages(&m.sync_addr, from).await;
    assert_eq!(
        chunk
            .records
            .iter()
            .map(|r| (r.subject.as_str(), r.sequence))
            .collect::<Vec<_>>(),
        [(retry, 0), ("orders", 2), (dead, 0)]
    );
    assert_eq!(chunk.next, end as i64);

    // A backup is no slave: nothing of this counts as replicated.
    assert_eq!(m.gate.slave_end(), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn next_resumes_over_small_chunks_without_duplicates_or_gaps() {
    let batch = 600;
    let m = SyncMaster::start(ReplicationMode::Async, Duration::from_millis(200), batch).await;
    let mut sent: Vec<Message> = (0..30)
        .map(|i| rich(if i % 3 == 0 { "b" } else { "a" }, &format!("id-{i}"), &[]))
        .collect();
    // One message larger than a whole chunk: it comes alone.
    sent.insert(17, message("a", "big", &[], &"x".repeat(3 * batch)));
    for part in sent.chunks(7) {
        assert!(send(&m.client, part).await.is_empty());
    }
    let end = m.log_end() as i64;

    let conn = Connection::connect(&m.sync_addr).await.unwrap();
    let mut got = Vec::new();
    let mut offset = 0i64;
    let mut chunks = 0;
    while offset != end {
        let chunk = messages_on(&conn, offset as u64).await;
        assert!(!chunk.records.is_empty(), "no records before the end");
        assert!(chunk.next > offset, "next moves on");
        let size: usize = chunk.records.iter().map(StoredRecord::encoded_len).sum();
        assert!(
            chunk.records.len() == 1 || size <= batch,
            "{} records of {size} bytes in one chunk",
            chunk.records.len()
        );
        // `next` is where the next record of the log starts.
        if chunk.next != end {
            let after = chunk.records.last().unwrap();
            let (at, _) = stored(&m, &after.subject, after.sequence as u64);
            assert!(at < chunk.next as u64);
        }
        got.extend(chunk.records);
        offset = chunk.next;
        chunks += 1;
    }
    assert!(
        chunks > 3,
        "only {chunks} chunks: the batch size was not applied"
    );
    let ids: Vec<String> = got.iter().map(|r| decode(&r.stored).message_id).collect();
    let expected: Vec<String> = sent.iter().map(|s| s.message_id.clone()).collect();
    assert_eq!(ids, expected, "every message once, in order");
    let big = got.iter().find(|r| decode(&r.stored).message_id == "big");
    assert_eq!(big.unwrap().sequence, 11, "the 12th message of a");
    m.shutdown().await;
}

#[tokio::test]
async fn an_idle_request_waits_then_answers_nothing_new_and_wakes_on_a_message() {
    let poll = Duration::from_millis(300);
    let m = SyncMaster::start(ReplicationMode::Async, poll, 1024 * 1024).await;
    assert!(send(&m.client, &[rich("s", "first", &[])]).await.is_empty());
    let end = m.log_end() as i64;

    let started = tokio::time::Instant::now();
    let (code, body) = backup_sync_on(
        &Connection::connect(&m.sync_addr).await.unwrap(),
        SyncType::Messages,
        end,
    )
    .await;
    assert!(started.elapsed() >= poll, "answered before the poll ended");
    assert_eq!(code, response::SUCCESS);
    assert_eq!(body.len(), 12, "i32 size 0 ; i64 offset");
    assert_eq!(
        SyncMessagesChunk::decode(&body).unwrap(),
        SyncMessagesChunk {
            next: end,
            records: Vec::new()
        }
    );
    m.shutdown().await;

    // The poll outlasts the request's deadline: only the new message can answer it in time.
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_secs(600),
        1024 * 1024,
    )
    .await;
    assert!(send(&m.client, &[rich("s", "first", &[])]).await.is_empty());
    let end = m.log_end();
    let stream = TcpStream::connect(&m.sync_addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let header = frame::Header::request(command::SYNC_LOG_REQUEST, frame::VERSION_9, 7);
    framed
        .send(Frame::new(
            header,
            backup_request_body(SyncType::Messages, end as i64),
        ))
        .await
        .unwrap();
    let second = rich("s", "second", &["t"]);
    assert!(send(&m.client, std::slice::from_ref(&second))
        .await
        .is_empty());
    let resp = tokio::time::timeout(T, framed.next())
        .await
        .expect("the waiting request was not answered")
        .unwrap()
        .unwrap();
    assert_eq!(resp.header.opaque, 7);
    assert_eq!(resp.header.code, response::SUCCESS);
    let chunk = SyncMessagesChunk::decode(&resp.body).unwrap();
    assert_eq!(chunk.records.len(), 1);
    assert_eq!(
        (chunk.records[0].subject.as_str(), chunk.records[0].sequence),
        ("s", 1)
    );
    assert_same(&decode(&chunk.records[0].stored), &second);
    assert_eq!(chunk.next as u64, m.log_end());
    m.shutdown().await;
}

#[tokio::test]
async fn beyond_the_end_or_negative_is_a_param_error() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        1024 * 1024,
    )
    .await;
    assert!(send(&m.client, &[rich("s", "1", &[])]).await.is_empty());
    let end = m.log_end() as i64;
    let conn = Connection::connect(&m.sync_addr).await.unwrap();
    for offset in [end + 1, end + 1_000_000, -1] {
        let (code, body) = backup_sync_on(&conn, SyncType::Messages, offset).await;
        assert_eq!(code, response::PARAM_ERROR, "offset {offset}");
        assert!(body.is_empty());
    }
    // The connection goes on serving.
    assert_eq!(messages_on(&conn, 0).await.records.len(), 1);
    m.shutdown().await;
}

#[tokio::test]
async fn fetch_answers_the_found_messages_in_the_asked_order() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        1024 * 1024,
    )
    .await;
    let sent: Vec<Message> = (0..5)
        .map(|i| rich("s", &format!("s-{i}"), &["t"]))
        .collect();
    assert!(send(&m.client, &sent).await.is_empty());
    let retry = "%RETRY%s%g";
    let retried = rich(retry, "s-1", &["t"]);
    assert!(send(&m.client, std::slice::from_ref(&retried))
        .await
        .is_empty());
    let conn = Connection::connect(&m.sync_addr).await.unwrap();

    // Out of order, with a run, a repeat, a sequence never stored and a negative one.
    let asked = [3, 0, 1, 2, 99, -1, 4, 3];
    let found = fetch(&conn, "s", &asked).await;
    let seqs: Vec<i64> = found.iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, [3, 0, 1, 2, 4, 3], "found ones in the asked order");
    for r in &found {
        assert_eq!(r.subject, "s");
        assert_eq!(r.stored, stored(&m, "s", r.sequence as u64).1);
        assert_same(&decode(&r.stored), &sent[r.sequence as usize]);
    }

    // A retry subject's own sequences.
    let found = fetch(&conn, retry, &[0, 1]).await;
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].subject.as_str(), found[0].sequence), (retry, 0));
    assert_same(&decode(&found[0].stored), &retried);

    // Nothing to find: SUCCESS, empty.
    assert!(fetch(&conn, "unknown", &[0, 1]).await.is_empty());
    assert!(fetch(&conn, "s", &[]).await.is_empty());
    assert!(fetch(&conn, "s", &[i64::MAX - 1, i64::MAX])
        .await
        .is_empty());
    m.shutdown().await;
}

#[tokio::test]
async fn a_malformed_or_oversized_fetch_is_a_param_error_and_the_connection_goes_on() {
    let m = SyncMaster::start(
        ReplicationMode::Async,
        Duration::from_millis(200),
        1024 * 1024,
    )
    .await;
    assert!(send(&m.client, &[rich("s", "only", &[])]).await.is_empty());
    let conn = Connection::connect(&m.sync_addr).await.unwrap();

    let mut truncated = BytesMut::new();
    put_string(&mut truncated, "s", "subject").unwrap();
    truncated.put_i32(2);
    truncated.put_i64(0);
    let mut too_many = BytesMut::new();
    put_string(&mut too_many, "s", "subject").unwrap();
    too_many.put_i32(MAX_FETCH as i32 + 1);
    for _ in 0..=MAX_FETCH {
        too_many.put_i64(0);
    }
    let mut empty_subject = BytesMut::new();
    put_string(&mut empty_subject, "", "subject").unwrap();
    empty_subject.put_i32(0);
    let bodies = [
        Bytes::new(),
        Bytes::from_static(b"\x00"),
        truncated.freeze(),
        too_many.freeze(),
        empty_subject.freeze(),
    ];
    for body in bodies {
        let (code, answer) = fetch_raw(&conn, body.clone()).await;
        assert_eq!(code, response::PARAM_ERROR, "{body:?}");
        assert!(answer.is_empty());
        // The same connection serves the next request.
        let found = fetch(&conn, "s", &[0]).await;
        assert_eq!(found.len(), 1);
        assert_eq!(decode(&found[0].stored).message_id, "only");
    }

    // Exactly MAX_FETCH is served.
    let all = vec![0i64; MAX_FETCH];
    assert_eq!(fetch(&conn, "s", &all).await.len(), MAX_FETCH);
    m.shutdown().await;
}
