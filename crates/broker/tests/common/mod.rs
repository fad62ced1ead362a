//! Shared helpers for the broker's wire-level tests: a real broker on a free loopback port,
//! and the QMQ requests the tests send it.
#![allow(dead_code)]

use std::time::Duration;

use bytes::BytesMut;
use qmq_broker::{serve, BrokerConfig, BrokerHandle};
use qmq_protocol::codes::{command, response};
use qmq_protocol::send::{decode_send_response, encode_send_request};
use qmq_protocol::*;
use qmq_store::{FlushPolicy, StoreConfig};
use qmq_transport::Connection;

/// How long a test waits for one answer.
pub const T: Duration = Duration::from_secs(10);

/// A broker on a free loopback port that fsyncs before it acks, with QMQ's defaults otherwise
/// (new groups start at the latest message, retries wait the retry delay).
pub fn qmq_config(dir: &std::path::Path) -> BrokerConfig {
    let mut store = StoreConfig::new(dir);
    store.flush = FlushPolicy::SyncBeforeAck;
    let mut c = BrokerConfig::new(store);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// Starts a broker and connects to it.
pub async fn start_with(c: BrokerConfig) -> (BrokerHandle, Connection) {
    let broker = serve(c).await.unwrap();
    let conn = Connection::connect(&broker.addr().to_string())
        .await
        .unwrap();
    (broker, conn)
}

/// A message with `body` in its `body` attribute.
pub fn message(subject: &str, id: &str, tags: &[&str], body: &str) -> Message {
    Message {
        flags: MessageFlags(0).with_tags(!tags.is_empty()),
        created_time: 1_700_000_000_000,
        expire_or_schedule: 1_700_000_000_000,
        subject: subject.into(),
        message_id: id.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        attrs: vec![("body".into(), body.into())],
    }
}

/// Sends one SEND frame; returns the per-message failures.
pub async fn send(conn: &Connection, messages: &[Message]) -> Vec<SendFailure> {
    let mut body = BytesMut::new();
    encode_send_request(messages, &mut body).unwrap();
    let resp = conn
        .request(command::SEND_MESSAGE, body.freeze(), T)
        .await
        .unwrap();
    assert_eq!(resp.header.code, response::SUCCESS);
    decode_send_response(&resp.body).unwrap()
}

/// A shared-mode pull request of up to `n` messages, waiting up to `timeout_ms`.
pub fn pull_request(
    subject: &str,
    group: &str,
    consumer: &str,
    n: i32,
    timeout_ms: i64,
) -> PullRequest {
    PullRequest {
        subject: subject.into(),
        group: group.into(),
        consumer_id: consumer.into(),
        request_num: n,
        offset: -1,
        pull_offset_begin: -1,
        pull_offset_last: -1,
        timeout_ms,
        broadcast: false,
        filters: Vec::new(),
    }
}

/// Pulls; returns the response code, the first pull-log offset and the messages.
pub async fn pull_raw(conn: &Connection, req: &PullRequest) -> (i16, i64, Vec<Message>) {
    let mut body = BytesMut::new();
    req.encode(frame::VERSION_9, &mut body).unwrap();
    let wait = T + Duration::from_millis(req.timeout_ms.max(0) as u64);
    let resp = conn
        .request(command::PULL_MESSAGE, body.freeze(), wait)
        .await
        .unwrap();
    if resp.header.code != response::SUCCESS {
        return (resp.header.code, -1, Vec::new());
    }
    let r = PullResponse::decode(&resp.body).unwrap();
    (resp.header.code, r.pull_log_offset, r.messages)
}

/// Pulls; returns the first pull-log offset and the messages (empty on NO_MESSAGE).
pub async fn pull(conn: &Connection, req: &PullRequest) -> (i64, Vec<Message>) {
    let (code, first, messages) = pull_raw(conn, req).await;
    assert!(
        code == response::SUCCESS || code == response::NO_MESSAGE,
        "pull answered {code}"
    );
    (first, messages)
}

/// Acks pull-log offsets `first..=last`; returns the response code.
pub async fn ack_code(
    conn: &Connection,
    subject: &str,
    group: &str,
    consumer: &str,
    first: i64,
    last: i64,
) -> i16 {
    let mut body = BytesMut::new();
    AckRequest {
        subject: subject.into(),
        group: group.into(),
        consumer_id: consumer.into(),
        pull_offset_begin: first,
        pull_offset_last: last,
        broadcast: false,
    }
    .encode(&mut body)
    .unwrap();
    conn.request(command::ACK_REQUEST, body.freeze(), T)
        .await
        .unwrap()
        .header
        .code
}

/// Acks and checks the broker took it.
pub async fn ack(
    conn: &Connection,
    subject: &str,
    group: &str,
    consumer: &str,
    first: i64,
    last: i64,
) {
    let code = ack_code(conn, subject, group, consumer, first, last).await;
    assert_eq!(code, response::SUCCESS);
}

/// The `body` attributes of `ms`.
pub fn bodies(ms: &[Message]) -> Vec<String> {
    ms.iter()
        .map(|m| m.attr("body").unwrap().to_owned())
        .collect()
}

/// A master broker (leased for the whole test) with its sync port, as a slave or a backup
/// server sees it.
pub struct SyncMaster {
    _dir: tempfile::TempDir,
    /// The broker.
    pub broker: BrokerHandle,
    /// Its replication gate.
    pub gate: std::sync::Arc<qmq_broker::replication::Gate>,
    /// A client connection.
    pub client: Connection,
    /// The sync port's address.
    pub sync_addr: String,
    stop: tokio_util::sync::CancellationToken,
}

impl SyncMaster {
    /// A master in `mode` whose sync port long-polls for `poll` and answers about
    /// `batch_bytes` per chunk.
    pub async fn start(
        mode: qmq_broker::replication::ReplicationMode,
        poll: Duration,
        batch_bytes: usize,
    ) -> Self {
        use qmq_broker::replication::sync_server::{self, SlaveLag, SyncSettings};
        let dir = tempfile::tempdir().unwrap();
        let gate = std::sync::Arc::new(qmq_broker::replication::Gate::new(mode));
        gate.become_master(1);
        gate.extend_lease(tokio::time::Instant::now(), Duration::from_secs(3600));
        let broker = qmq_broker::serve_with(qmq_config(dir.path()), Some(gate.clone()))
            .await
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let settings = SyncSettings {
            poll,
            batch_bytes,
            ..SyncSettings::default()
        };
        let (addr, _task) = sync_server::spawn(
            "127.0.0.1:0".parse().unwrap(),
            broker.store().clone(),
            gate.clone(),
            std::sync::Arc::new(SlaveLag::default()),
            settings,
            stop.clone(),
        )
        .await
        .unwrap();
        let client = Connection::connect(&broker.addr().to_string())
            .await
            .unwrap();
        Self {
            _dir: dir,
            broker,
            gate,
            client,
            sync_addr: addr.to_string(),
            stop,
        }
    }

    /// The message log's end.
    pub fn log_end(&self) -> u64 {
        self.broker.store().log_end(qmq_store::LogStream::Message)
    }

    /// Stops the sync port and the broker.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.broker.shutdown().await.unwrap();
    }
}

/// A backup's SYNC_LOG_REQUEST body of `sync_type` from `message_offset` (a QMQ backup puts
/// its index position in both fields).
pub fn backup_request_body(sync_type: SyncType, message_offset: i64) -> bytes::Bytes {
    let mut body = BytesMut::new();
    SyncLogRequest {
        sync_type,
        message_offset,
        action_offset: message_offset,
    }
    .encode(&mut body);
    body.freeze()
}

/// One backup SYNC_LOG_REQUEST on `conn`; returns the response code and body.
pub async fn backup_sync_on(
    conn: &Connection,
    sync_type: SyncType,
    offset: i64,
) -> (i16, bytes::Bytes) {
    let resp = conn
        .request(
            command::SYNC_LOG_REQUEST,
            backup_request_body(sync_type, offset),
            T,
        )
        .await
        .unwrap();
    (resp.header.code, resp.body)
}
