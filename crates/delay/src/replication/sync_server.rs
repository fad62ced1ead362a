//! The master's sync port: serves the message log and the dispatch state to a slave.
//!
//! SYNC_LOG_REQUEST (code 20), with the broker's 17-byte body (`u8 type | i64 message offset |
//! i64 action offset`, wire-protocol §7.1) except where noted:
//! - **type 2 (message log)**: whole records from the asked offset (or from the next offset the
//!   log holds when it no longer holds that one: the slave then sees a start that is not its
//!   end and stops), at most `batch_bytes`, never across a segment, answered as the broker's
//!   `SyncChunk` (`i32 size | i64 start | bytes`). With nothing new the request waits up to
//!   `poll` for the log to grow. The asked offset is the slave's proof of how far it has
//!   written: it releases sends waiting for the slave ([`Gate::slave_reached`]). An offset
//!   beyond the log's end is answered `PARAM_ERROR` (the slave holds data this log never had).
//! - **type 1 (dispatch state)**: the longer body of [`DispatchSyncRequest`], answered with a
//!   [`DispatchChunk`](crate::replication::DispatchChunk).
//! - **type 3 (heartbeat)**: answers `i64 message-log end | i64 0`; the master records the
//!   slave's lag.
//! - **type 6 (stored messages, for a qmq-rs backup server)**: the message log from the asked
//!   offset like type 2 (long-poll, `PARAM_ERROR` beyond the end), answered as a
//!   [`SyncMessagesChunk`]: per record its message-log offset (as the `sequence`), subject and
//!   stored message, and the offset to ask for next. Not a slave's proof of anything: it
//!   releases no send.
//!
//! While this server has no engine (it is a slave, or between roles) every request is answered
//! `BROKER_REJECT`, except a slave's heartbeat, answered with its replica's message-log end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{
    Frame, FrameCodec, StoredRecord, SyncChunk, SyncHeartbeat, SyncLogRequest, SyncMessagesChunk,
    SyncType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{DispatchSyncRequest, Gate};
use crate::engine::DelayEngine;
use crate::error::DelayError;
use crate::wal::WalChunk;

/// Sync port settings.
#[derive(Debug, Clone, Copy)]
pub struct SyncSettings {
    /// Most bytes per chunk (message log and dispatch state).
    pub batch_bytes: usize,
    /// How long a request for new message-log bytes waits when there are none.
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

struct State {
    engine: RwLock<Option<Arc<DelayEngine>>>,
    /// The slave's replica (heartbeats then answer its message-log end, for operators).
    replica: RwLock<Option<Arc<parking_lot::Mutex<super::Replica>>>>,
    gate: Arc<Gate>,
    /// Message-log bytes the slave is behind, as its last heartbeat showed (-1: none yet).
    lag: AtomicI64,
    settings: SyncSettings,
}

/// A bound sync port.
pub struct SyncServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SyncServer {
    /// Binds `addr` and serves it until [`Self::shutdown`].
    pub async fn bind(
        addr: SocketAddr,
        gate: Arc<Gate>,
        settings: SyncSettings,
    ) -> Result<Self, DelayError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| DelayError::io("bind sync port", addr.to_string(), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| DelayError::io("bind sync port", addr.to_string(), e))?;
        let state = Arc::new(State {
            engine: RwLock::new(None),
            replica: RwLock::new(None),
            gate,
            lag: AtomicI64::new(-1),
            settings,
        });
        let stop = CancellationToken::new();
        let (st, sp) = (state.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = sp.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let (st, sp) = (st.clone(), sp.clone());
                        tokio::spawn(async move {
                            if let Err(e) = serve(stream, st, sp).await {
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
        tracing::info!(addr = %bound, "delay sync port listening");
        Ok(Self {
            addr: bound,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `engine`'s logs (None: refuse every request).
    pub fn set_engine(&self, engine: Option<Arc<DelayEngine>>) {
        *self.state.engine.write() = engine;
    }

    /// While a slave: answer heartbeats with this replica's message-log end (None: refuse).
    pub fn set_replica(&self, replica: Option<Arc<parking_lot::Mutex<super::Replica>>>) {
        *self.state.replica.write() = replica;
    }

    /// Message-log bytes the slave was behind at its last heartbeat (-1: none yet).
    pub fn slave_lag(&self) -> i64 {
        self.state.lag.load(Ordering::Relaxed)
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SyncServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
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
    if frame.header.code != command::SYNC_LOG_REQUEST {
        return (response::UNKNOWN_CODE, Bytes::new());
    }
    let Some(engine) = state.engine.read().clone() else {
        let replica = state.replica.read().clone();
        let heartbeat = frame.body.first() == Some(&SyncType::Heartbeat.code());
        return match replica {
            Some(r) if heartbeat => {
                let mut out = BytesMut::new();
                SyncHeartbeat {
                    message_end: r.lock().wal_end() as i64,
                    action_end: 0,
                }
                .encode(&mut out);
                (response::SUCCESS, out.freeze())
            }
            _ => (response::BROKER_REJECT, Bytes::new()),
        };
    };
    if frame.body.first() == Some(&SyncType::Action.code()) {
        return dispatch_state(state, engine, &frame.body).await;
    }
    let req = match SyncLogRequest::decode(&frame.body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed sync request");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    match req.sync_type {
        SyncType::Message => {}
        SyncType::Heartbeat => {
            let end = engine.wal_end() as i64;
            state
                .lag
                .store((end - req.message_offset).max(0), Ordering::Relaxed);
            let mut out = BytesMut::new();
            SyncHeartbeat {
                message_end: end,
                action_end: 0,
            }
            .encode(&mut out);
            return (response::SUCCESS, out.freeze());
        }
        SyncType::Messages => return stored_messages(state, engine, req.message_offset).await,
        _ => return (response::BROKER_ERROR, Bytes::new()),
    }
    let Ok(offset) = u64::try_from(req.message_offset) else {
        return (response::PARAM_ERROR, Bytes::new());
    };
    state.gate.slave_reached(offset);
    let chunk = match wal_chunk(state, engine, offset).await {
        Ok(WalChunk::Records { start, bytes }) => SyncChunk {
            start: start as i64,
            bytes,
        },
        Ok(WalChunk::AtEnd) => SyncChunk {
            start: offset as i64,
            bytes: Bytes::new(),
        },
        Ok(WalChunk::Ahead { end }) => {
            tracing::error!(
                offset,
                end,
                "a slave asks beyond this message log's end: its data diverged"
            );
            return (response::PARAM_ERROR, Bytes::new());
        }
        Err(e) => {
            tracing::error!(error = %e, offset, "serving a sync request failed");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    let mut out = BytesMut::with_capacity(12 + chunk.bytes.len());
    match chunk.encode(&mut out) {
        Ok(()) => (response::SUCCESS, out.freeze()),
        Err(e) => {
            tracing::error!(error = %e, "encoding a sync chunk failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

/// Answers a type-6 request: the message-log records from `offset` as stored messages.
async fn stored_messages(state: &State, engine: Arc<DelayEngine>, offset: i64) -> (i16, Bytes) {
    let Ok(from) = u64::try_from(offset) else {
        return (response::PARAM_ERROR, Bytes::new());
    };
    let chunk = match wal_chunk(state, engine, from).await {
        Ok(WalChunk::Records { start, bytes }) => messages_of(start, &bytes),
        Ok(WalChunk::AtEnd) => SyncMessagesChunk {
            next: offset,
            records: Vec::new(),
        },
        Ok(WalChunk::Ahead { end }) => {
            tracing::error!(offset, end, "a backup asks beyond this message log's end");
            return (response::PARAM_ERROR, Bytes::new());
        }
        Err(e) => {
            tracing::error!(error = %e, offset, "serving a backup's sync request failed");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    let mut out = BytesMut::new();
    match chunk.encode(&mut out) {
        Ok(()) => (response::SUCCESS, out.freeze()),
        Err(e) => {
            tracing::error!(error = %e, "encoding a stored-messages chunk failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

/// The stored messages of whole message-log records `bytes` starting at offset `start`; a
/// record that is not a message-log payload is passed over (with a warning).
fn messages_of(start: u64, bytes: &Bytes) -> SyncMessagesChunk {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + crate::record::FRAME_HEADER) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(payload) =
            bytes.get(at + crate::record::FRAME_HEADER..at + crate::record::FRAME_HEADER + len)
        else {
            break;
        };
        let offset = start + at as u64;
        match crate::record::DelayRecord::decode_payload(payload) {
            Some(r) => records.push(StoredRecord {
                sequence: offset as i64,
                subject: r.subject,
                stored: r.message,
            }),
            None => tracing::warn!(offset, "backup sync: passing over an unreadable record"),
        }
        at += crate::record::FRAME_HEADER + len;
    }
    SyncMessagesChunk {
        next: (start + at as u64) as i64,
        records,
    }
}

/// The chunk at `offset`, waiting up to the poll time for one when the log has nothing new.
async fn wal_chunk(
    state: &State,
    engine: Arc<DelayEngine>,
    offset: u64,
) -> Result<WalChunk, DelayError> {
    let mut end = engine.watch_wal_end();
    let deadline = tokio::time::Instant::now() + state.settings.poll;
    loop {
        end.borrow_and_update();
        let e = engine.clone();
        let max = state.settings.batch_bytes;
        let c = tokio::task::spawn_blocking(move || e.read_wal_chunk(offset, max))
            .await
            .map_err(|e| DelayError::io("sync read", "", std::io::Error::other(e.to_string())))??;
        if c != WalChunk::AtEnd {
            return Ok(c);
        }
        let waited = tokio::time::timeout_at(deadline, end.changed()).await;
        if !matches!(waited, Ok(Ok(()))) {
            return Ok(c);
        }
    }
}

async fn dispatch_state(state: &State, engine: Arc<DelayEngine>, body: &[u8]) -> (i16, Bytes) {
    let req = match DispatchSyncRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed dispatch sync request");
            return (response::BROKER_ERROR, Bytes::new());
        }
    };
    let max = state.settings.batch_bytes;
    let read =
        tokio::task::spawn_blocking(move || engine.read_dispatch_chunk(&req.cursors, max)).await;
    match read {
        Ok(Ok(chunk)) => (response::SUCCESS, chunk.encode()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading dispatch logs for a slave failed");
            (response::BROKER_ERROR, Bytes::new())
        }
        Err(e) => {
            tracing::error!(error = %e, "reading dispatch logs for a slave failed");
            (response::BROKER_ERROR, Bytes::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_messages_are_read_from_whole_records() {
        let mut log = Vec::new();
        let mut payload = Vec::new();
        crate::record::encode_payload(&mut payload, 5_000, "a.b", "id-1", b"first");
        crate::record::put_frame(&mut log, &[&payload]);
        let second_at = log.len() as u64;
        crate::record::put_frame(&mut log, &[b"not a payload"]);
        let third_at = log.len() as u64;
        payload.clear();
        crate::record::encode_payload(&mut payload, 6_000, "c", "id-2", b"second");
        crate::record::put_frame(&mut log, &[&payload]);
        let chunk = messages_of(100, &Bytes::from(log.clone()));
        assert_eq!(chunk.next, 100 + log.len() as i64);
        assert_eq!(
            chunk.records.len(),
            2,
            "the unreadable record is passed over"
        );
        assert_eq!(chunk.records[0].sequence, 100);
        assert_eq!(chunk.records[0].subject, "a.b");
        assert_eq!(&chunk.records[0].stored[..], b"first");
        assert_eq!(chunk.records[1].sequence, (100 + third_at) as i64);
        assert_eq!(&chunk.records[1].stored[..], b"second");
        assert!(second_at < third_at);
    }
}
