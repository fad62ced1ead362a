//! The sync port: serves this broker's message and action logs to a slave and its messages to
//! a backup server (QMQ's SYNC_LOG_REQUEST, code 20, types 1, 2, 3 and 5, qmq-rs's type 6,
//! SYNC_CHECKPOINT_REQUEST, code 21, and qmq-rs's FETCH_MESSAGES, code 28).
//!
//! - Types 1 (action) and 2 (message): whole records from the asked offset (raised to the
//!   oldest retained one when the log no longer holds it), never across a segment, at most
//!   `batch_bytes`. When there is nothing new the request waits up to `poll` for the log to
//!   grow (QMQ waits 10 ms and polls; waiting on the log's end answers as soon as a commit
//!   lands, which is what synchronous replication needs), then answers an empty chunk.
//!   A type-2 request's offset is the slave's proof of how far it has written: it releases
//!   sends waiting for the slave ([`super::Gate::slave_reached`]).
//! - Type 3 (heartbeat): answers both log ends (the action end read first); the master
//!   records the slave's lag.
//! - Types 5 (index, for a QMQ backup server, which asks a slave's sync port) and 6 (stored
//!   messages, for qmq-rs's backup server): one record per message from the asked message-log
//!   offset (raised to the oldest retained one), at most [`INDEX_MAX_RECORDS`] and about
//!   `batch_bytes` of them (always at least one), read by one chunk reader and encoded per
//!   type: type 5 in QMQ's layout ([`SyncIndexChunk`]), type 6 as a [`SyncMessagesChunk`]; in
//!   both the `i64` is the offset to ask for next. They long-poll like types 1 and 2 and then
//!   answer no records and the asked offset. A backup is not a slave: its offset is no proof
//!   of replication and releases no waiting send. Records carry the store's subject (the one
//!   the sequence counts in, a retry or dead-letter subject for those copies) and consume-log
//!   sequence; a type-5 record the message id and creation time of the stored message (its
//!   append time when the creation time is not positive, which a Java backup would take for
//!   the end of its index), a type-6 record the whole stored message. A message whose stored
//!   form gives no subject or id is passed over by both.
//! - An offset beyond the log's end means the slave (or backup) holds data this log never
//!   had: answered `PARAM_ERROR` (the slave stops and reports divergence); so is a negative
//!   one. Other failures: `BROKER_ERROR`.
//!
//! - SYNC_CHECKPOINT_REQUEST: a resync snapshot of the store ([`Store::snapshot`]) in QMQ's
//!   response shape with qmq-rs's content ([`SyncCheckpoint`]), for a slave that cannot
//!   continue from its own logs (see [`super::follower`]).
//! - FETCH_MESSAGES ([`FetchMessagesRequest`]): the stored messages of one subject at the asked
//!   consume-log sequences, found ones in the asked order, the rest left out (an unknown
//!   subject: none); what QMQ's slaves serve over HTTP, which qmq-rs's backup uses to show a
//!   message's body. Served by masters and slaves alike. A malformed request is answered
//!   `PARAM_ERROR`; an answer too large for one frame `BROKER_ERROR` (ask for fewer).
//!
//! Each connection is served in order (a slave uses one connection per stream); reads run on
//! blocking threads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use qmq_protocol::codes::{command, response};
use qmq_protocol::{
    frame, EncodeError, FetchMessagesRequest, FetchMessagesResponse, Frame, FrameCodec,
    StoredRecord, SyncCheckpoint, SyncChunk, SyncHeartbeat, SyncIndexChunk, SyncIndexRecord,
    SyncLogRequest, SyncMessagesChunk, SyncType, FETCH_MESSAGES,
};
use qmq_store::{IndexChunk, IndexRecord, LogStream, Store, StoreError};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::Gate;
use crate::BrokerError;

/// Most records in one answer to a type-5 or type-6 request (QMQ's `MessageIndexSyncWorker`
/// sends at most 5000).
pub const INDEX_MAX_RECORDS: usize = 5000;

/// Sync server settings.
#[derive(Debug, Clone, Copy)]
pub struct SyncSettings {
    /// Most bytes per chunk.
    pub batch_bytes: usize,
    /// How long a request for new bytes waits when there are none.
    pub poll: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            batch_bytes: 1024 * 1024,
            poll: Duration::from_millis(500),
            max_frame: qmq_protocol::frame::DEFAULT_MAX_FRAME,
        }
    }
}

/// The slave's lag as its last heartbeat showed it (bytes; -1: no heartbeat yet).
#[derive(Debug)]
pub struct SlaveLag {
    /// Message-log bytes the slave is behind.
    pub message: AtomicI64,
    /// Action-log bytes the slave is behind.
    pub action: AtomicI64,
}

impl Default for SlaveLag {
    fn default() -> Self {
        Self {
            message: AtomicI64::new(-1),
            action: AtomicI64::new(-1),
        }
    }
}

struct State {
    store: Store,
    gate: Arc<Gate>,
    lag: Arc<SlaveLag>,
    settings: SyncSettings,
}

/// Binds `addr` and serves the sync protocol until `stop` is cancelled. Returns the bound
/// address and the serving task.
pub async fn spawn(
    addr: SocketAddr,
    store: Store,
    gate: Arc<Gate>,
    lag: Arc<SlaveLag>,
    settings: SyncSettings,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BrokerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Io {
            op: "bind sync port",
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| BrokerError::Io {
        op: "sync port address",
        source,
    })?;
    let state = Arc::new(State {
        store,
        gate,
        lag,
        settings,
    });
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let (state, stop) = (state.clone(), stop.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, state, stop).await {
                            tracing::debug!(%peer, error = %e, "sync connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sync accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tracing::info!(addr = %bound, "sync port listening");
    Ok((bound, task))
}

async fn serve(
    stream: TcpStream,
    state: Arc<State>,
    stop: CancellationToken,
) -> Result<(), qmq_protocol::FrameError> {
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, FrameCodec::new(state.settings.max_frame));
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            n = framed.next() => n,
        };
        let frame = match next {
            None => return Ok(()),
            Some(f) => f?,
        };
        if frame.header.is_response() {
            continue;
        }
        let (code, body) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = answer(&state, &frame) => r,
        };
        framed
            .send(Frame::new(frame.header.response(code), body))
            .await?;
    }
}

async fn answer(state: &State, frame: &Frame) -> (i16, Bytes) {
    if frame.header.code == command::SYNC_CHECKPOINT_REQUEST {
        return checkpoint(state).await;
    }
    if frame.header.code == FETCH_MESSAGES {
        return fetch(state, &frame.body).await;
    }
    if frame.header.code != command::SYNC_LOG_REQUEST {
        return (response::UNKNOWN_CODE, Bytes::new());
    }
    let req = match SyncLogRequest::decode(&frame.body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed sync request");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    let (stream, offset) = match req.sync_type {
        SyncType::Message => (LogStream::Message, req.message_offset),
        SyncType::Action => (LogStream::Action, req.action_offset),
        SyncType::Heartbeat => return heartbeat(state, &req),
        // Not a slave's proof of replication: no `slave_reached`.
        SyncType::Index => return backup_sync(state, req.message_offset, BackupSync::Index).await,
        SyncType::Messages => {
            return backup_sync(state, req.message_offset, BackupSync::Messages).await
        }
    };
    let Ok(offset) = u64::try_from(offset) else {
        return (response::PARAM_ERROR, Bytes::new());
    };
    if stream == LogStream::Message {
        state.gate.slave_reached(offset);
    }
    match chunk(state, stream, offset).await {
        Ok(c) => {
            let mut out = BytesMut::with_capacity(12 + c.bytes.len());
            match c.encode(&mut out) {
                Ok(()) => (response::SUCCESS, out.freeze()),
                Err(e) => {
                    tracing::error!(error = %e, "encoding a sync chunk failed");
                    (response::BROKER_ERROR, Bytes::new())
                }
            }
        }
        Err(BrokerError::Store(e @ StoreError::Ahead { .. })) => {
            tracing::error!(error = %e, "a slave asks beyond this log's end: its data diverged");
            (response::PARAM_ERROR, Bytes::new())
        }
        Err(e) => {
            tracing::error!(error = %e, ?stream, offset, "serving a sync request failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

/// The chunk at `offset`, waiting up to the poll time for one when the log has nothing new.
async fn chunk(state: &State, stream: LogStream, offset: u64) -> Result<SyncChunk, BrokerError> {
    let mut end = state.store.watch_log_end(stream);
    let deadline = tokio::time::Instant::now() + state.settings.poll;
    loop {
        end.borrow_and_update();
        let store = state.store.clone();
        let max = state.settings.batch_bytes;
        let c = tokio::task::spawn_blocking(move || store.read_log_chunk(stream, offset, max))
            .await??;
        if !c.bytes.is_empty() {
            return Ok(SyncChunk {
                start: c.start as i64,
                bytes: c.bytes,
            });
        }
        let waited = tokio::time::timeout_at(deadline, end.changed()).await;
        if !matches!(waited, Ok(Ok(()))) {
            return Ok(SyncChunk {
                start: c.start as i64,
                bytes: Bytes::new(),
            });
        }
    }
}

/// What a backup server asks a [`SyncLogRequest`] for: both answer the messages from a
/// message-log offset, read by one chunk reader ([`backup_chunk`]), in their own layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackupSync {
    /// Type 5: QMQ's index records ([`SyncIndexChunk`]).
    Index,
    /// Type 6: qmq-rs's stored messages ([`SyncMessagesChunk`]).
    Messages,
}

impl BackupSync {
    /// What the logs call it.
    fn name(self) -> &'static str {
        match self {
            Self::Index => "index",
            Self::Messages => "messages",
        }
    }

    /// The answer body for `c`: about `max_bytes` of records (always the first).
    fn encode(self, c: &IndexChunk, max_bytes: usize) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        match self {
            Self::Index => {
                let (next, records, size) =
                    budgeted(c, max_bytes, index_record, SyncIndexRecord::encoded_len);
                out.reserve(12 + size);
                SyncIndexChunk { next, records }.encode(&mut out)?;
            }
            Self::Messages => {
                let (next, records, size) =
                    budgeted(c, max_bytes, stored_record, StoredRecord::encoded_len);
                out.reserve(12 + size);
                SyncMessagesChunk { next, records }.encode(&mut out)?;
            }
        }
        Ok(out.freeze())
    }
}

/// Answers a type-5 or type-6 request: the records from message-log offset `offset`.
async fn backup_sync(state: &State, offset: i64, kind: BackupSync) -> (i16, Bytes) {
    let what = kind.name();
    let Ok(from) = u64::try_from(offset) else {
        tracing::warn!(offset, what, "backup sync from a negative offset");
        return (response::PARAM_ERROR, Bytes::new());
    };
    match backup_chunk(state, from).await {
        Ok(c) => match kind.encode(&c, state.settings.batch_bytes) {
            Ok(body) => (response::SUCCESS, body),
            Err(e) => {
                tracing::error!(error = %e, what, "encoding a backup sync chunk failed");
                (response::BROKER_ERROR, Bytes::new())
            }
        },
        Err(BrokerError::Store(e @ StoreError::Ahead { .. })) => {
            tracing::error!(error = %e, what, "a backup asks beyond this log's end");
            (response::PARAM_ERROR, Bytes::new())
        }
        Err(e) => {
            tracing::error!(error = %e, offset, what, "serving a backup sync request failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

/// The messages from message-log offset `from` for a backup (types 5 and 6), waiting up to
/// the poll time for some when the log has nothing new; then no records and `next == from`.
async fn backup_chunk(state: &State, from: u64) -> Result<IndexChunk, BrokerError> {
    let mut end = state.store.watch_log_end(LogStream::Message);
    let deadline = tokio::time::Instant::now() + state.settings.poll;
    let max_bytes = state.settings.batch_bytes;
    loop {
        end.borrow_and_update();
        let store = state.store.clone();
        let c = tokio::task::spawn_blocking(move || {
            store.read_index_chunk(from, INDEX_MAX_RECORDS, max_bytes)
        })
        .await??;
        if c.next != from || !c.records.is_empty() {
            return Ok(c);
        }
        let waited = tokio::time::timeout_at(deadline, end.changed()).await;
        if !matches!(waited, Ok(Ok(()))) {
            return Ok(c);
        }
    }
}

/// The records a backup gets from `c`, as `build` makes them from a message and the head of
/// its stored form, about `max_bytes` of them by `len` (always the first), the offset to ask
/// for next and their size. A message whose stored head (subject, id) cannot be read, or whose sequence
/// does not fit an `i64`, is passed over, for both types alike.
fn budgeted<R>(
    c: &IndexChunk,
    max_bytes: usize,
    build: impl Fn(&IndexRecord, SyncIndexRecord) -> R,
    len: impl Fn(&R) -> usize,
) -> (i64, Vec<R>, usize) {
    let mut records = Vec::with_capacity(c.records.len());
    let mut size = 0usize;
    let mut next = c.next;
    for r in &c.records {
        let Some(head) = readable_head(r) else {
            continue;
        };
        let record = build(r, head);
        if size > 0 && size + len(&record) > max_bytes {
            next = r.offset;
            break;
        }
        size += len(&record);
        records.push(record);
    }
    (next as i64, records, size)
}

/// The head of `r`'s stored message as an index record, if it reads.
fn readable_head(r: &IndexRecord) -> Option<SyncIndexRecord> {
    let sequence = i64::try_from(r.sequence).ok()?;
    match SyncIndexRecord::from_stored(sequence, &r.message) {
        Ok(head) => Some(head),
        Err(e) => {
            tracing::warn!(
                error = %e,
                subject = %r.subject,
                sequence = r.sequence,
                "backup sync: passing over a message without a readable subject and id"
            );
            None
        }
    }
}

/// A type-5 record: the stored message gives the id and creation time, the store the subject
/// and sequence.
fn index_record(r: &IndexRecord, mut record: SyncIndexRecord) -> SyncIndexRecord {
    if record.subject != r.subject {
        // The store's subject is the one the sequence counts in.
        record.subject.clone_from(&r.subject);
    }
    if record.created_time <= 0 {
        record.created_time = i64::try_from(r.appended_at_ms).unwrap_or(i64::MAX);
    }
    record
}

/// A type-6 record: the store's subject and sequence and the whole stored message.
fn stored_record(r: &IndexRecord, head: SyncIndexRecord) -> StoredRecord {
    StoredRecord {
        sequence: head.sequence,
        subject: r.subject.clone(),
        stored: r.message.clone(),
    }
}

/// Answers FETCH_MESSAGES: the stored messages of the asked subject at the asked sequences,
/// in the asked order, leaving out those the store does not hold.
async fn fetch(state: &State, body: &Bytes) -> (i16, Bytes) {
    let req = match FetchMessagesRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed fetch messages request");
            return (response::PARAM_ERROR, Bytes::new());
        }
    };
    let store = state.store.clone();
    let subject = req.subject.clone();
    let found = match tokio::task::spawn_blocking(move || fetch_records(&store, req)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %e, %subject, "fetching messages failed");
            return (response::BROKER_ERROR, Bytes::new());
        }
        Err(e) => {
            tracing::error!(error = %e, %subject, "the fetch messages task failed");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    let size: usize = found.records.iter().map(StoredRecord::encoded_len).sum();
    if 2 + frame::HEADER_LEN as usize + size > state.settings.max_frame {
        tracing::warn!(
            %subject,
            size,
            max_frame = state.settings.max_frame,
            "fetched messages do not fit one frame; ask for fewer"
        );
        return (response::BROKER_ERROR, Bytes::new());
    }
    let mut out = BytesMut::with_capacity(size);
    match found.encode(&mut out) {
        Ok(()) => (response::SUCCESS, out.freeze()),
        Err(e) => {
            tracing::error!(error = %e, %subject, "encoding fetched messages failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

/// Reads `req`'s sequences of its subject, each run of consecutive ones in one store read.
/// Blocking I/O: call it from a blocking thread.
fn fetch_records(
    store: &Store,
    req: FetchMessagesRequest,
) -> Result<FetchMessagesResponse, StoreError> {
    let seqs = &req.sequences;
    let mut records = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let Ok(first) = u64::try_from(seqs[i]) else {
            // A negative sequence: never stored.
            i += 1;
            continue;
        };
        let mut n = 1;
        while i + n < seqs.len() && seqs[i + n - 1].checked_add(1) == Some(seqs[i + n]) {
            n += 1;
        }
        for m in store.read(&req.subject, first, n)? {
            let Ok(sequence) = i64::try_from(m.sequence) else {
                continue;
            };
            records.push(StoredRecord {
                sequence,
                subject: req.subject.clone(),
                stored: m.message,
            });
        }
        i += n;
    }
    Ok(FetchMessagesResponse { records })
}

/// A resync snapshot of the store, encoded as a [`SyncCheckpoint`].
async fn checkpoint(state: &State) -> (i16, Bytes) {
    let store = state.store.clone();
    let taken = tokio::task::spawn_blocking(move || store.snapshot()).await;
    let snapshot = match taken {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "taking a resync snapshot failed");
            return (response::BROKER_ERROR, Bytes::new());
        }
        Err(e) => {
            tracing::error!(error = %e, "the resync snapshot task failed");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    let encoded =
        snapshot
            .encode_parts()
            .map_err(|e| e.to_string())
            .and_then(|(message, action)| {
                let mut out = BytesMut::with_capacity(9 + message.len() + action.len());
                SyncCheckpoint {
                    version: SyncCheckpoint::VERSION,
                    message: message.into(),
                    action: action.into(),
                }
                .encode(&mut out)
                .map_err(|e| e.to_string())?;
                Ok(out.freeze())
            });
    match encoded {
        Ok(body) => {
            tracing::info!(
                bytes = body.len(),
                message_start = snapshot.messages.start,
                action_end = snapshot.consumers.action_end,
                "served a resync snapshot to a slave"
            );
            (response::SUCCESS, body)
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding a resync snapshot failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

fn heartbeat(state: &State, req: &SyncLogRequest) -> (i16, Bytes) {
    // The action end first: every action before it refers only to messages before the message
    // end read after it, which is what a slave's action copy relies on (see `follower`).
    let action_end = state.store.log_end(LogStream::Action) as i64;
    let message_end = state.store.log_end(LogStream::Message) as i64;
    state
        .lag
        .message
        .store((message_end - req.message_offset).max(0), Ordering::Relaxed);
    state
        .lag
        .action
        .store((action_end - req.action_offset).max(0), Ordering::Relaxed);
    let mut out = BytesMut::new();
    SyncHeartbeat {
        message_end,
        action_end,
    }
    .encode(&mut out);
    (response::SUCCESS, out.freeze())
}
