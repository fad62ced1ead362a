//! The slave's copy loops: one per log (message, action) asking the master's sync port for
//! the bytes after this store's end and appending them (the store verifies, indexes and
//! replays them), and a heartbeat telling the master how far both logs are.
//!
//! A chunk that does not start at this store's end is never appended. When it starts above
//! the end, the master no longer holds what this slave needs (it is behind the master's
//! retention, or joined empty after the master's logs stopped starting at 0); when the master
//! answers that this slave asks beyond its end, the slave holds what the master never had
//! (and the epoch history did not explain it, or it would have been cut before copying).
//! Both need a resync: the loops stop, the divergence is logged and counted
//! ([`qmq_replication::ReplicationStats::diverged`]), and [`follow`] returns
//! [`Followed::ResyncNeeded`]; the node closes the store, installs the master's snapshot
//! ([`fetch_snapshot`], [`qmq_store::Store::install_snapshot`]) and follows again (see
//! [`super::node`]). Network errors are retried after a pause that grows from 100 ms to 2 s.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{SyncCheckpoint, SyncChunk, SyncHeartbeat, SyncLogRequest, SyncType};
use qmq_store::{LogStream, Snapshot, Store, StoreError};
use qmq_transport::Connection;
use tokio_util::sync::CancellationToken;

use super::Gate;
use crate::BrokerError;

/// How long one sync request may take (the master holds an empty one up to its poll time).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Time between heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long fetching a resync snapshot may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How [`follow`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// `stop` was cancelled.
    Stopped,
    /// This store cannot continue copying from its own logs (see the module docs): the
    /// caller should close it, install the master's snapshot and follow again.
    ResyncNeeded {
        /// What the copy loop met.
        reason: String,
    },
}

/// Runs the three loops against `master` (its sync address) until `stop` is cancelled or a
/// copy loop finds that a resync is needed, then returns once they have ended (no append is
/// in progress after that). A resync is never asked for once `stop` is cancelled (a slave
/// being promoted keeps its data).
pub async fn follow(
    master: String,
    store: Store,
    gate: Arc<Gate>,
    stop: CancellationToken,
) -> Followed {
    tracing::info!(master, "replicating from the master");
    let loops = stop.child_token();
    let resync: Arc<Mutex<Option<String>>> = Arc::default();
    let message = tokio::spawn(copy_loop(
        master.clone(),
        store.clone(),
        gate.clone(),
        LogStream::Message,
        loops.clone(),
        resync.clone(),
    ));
    let action = tokio::spawn(copy_loop(
        master.clone(),
        store.clone(),
        gate,
        LogStream::Action,
        loops.clone(),
        resync.clone(),
    ));
    let beat = tokio::spawn(heartbeat_loop(master, store, loops));
    for t in [message, action, beat] {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "a replication loop failed");
        }
    }
    let reason = resync.lock().ok().and_then(|mut r| r.take());
    match reason {
        Some(reason) if !stop.is_cancelled() => Followed::ResyncNeeded { reason },
        _ => Followed::Stopped,
    }
}

/// Asks `master`'s sync port for a resync snapshot (SYNC_CHECKPOINT_REQUEST).
pub async fn fetch_snapshot(master: &str) -> Result<Snapshot, BrokerError> {
    let mut conn = None;
    let c = connection(master, &mut conn).await?;
    let resp = c
        .request(
            command::SYNC_CHECKPOINT_REQUEST,
            bytes::Bytes::new(),
            SNAPSHOT_TIMEOUT,
        )
        .await
        .map_err(|e| io("resync snapshot request", e))?;
    if resp.header.code != response::SUCCESS {
        return Err(io(
            "resync snapshot request",
            format!("master answered code {}", resp.header.code),
        ));
    }
    let cp = SyncCheckpoint::decode(&resp.body)?;
    if cp.version != SyncCheckpoint::VERSION {
        return Err(io(
            "resync snapshot",
            format!("unknown snapshot version {}", cp.version),
        ));
    }
    Ok(Snapshot::decode_parts(&cp.message, &cp.action)?)
}

/// Whether a copy error means this store cannot continue from its own logs.
fn needs_resync(e: &BrokerError) -> bool {
    match e {
        // The master's bytes start above this store's end: behind its retention.
        BrokerError::Store(StoreError::Diverged { expected, got, .. }) => got > expected,
        // This store asks beyond the master's end: it holds what the master never had.
        BrokerError::Store(StoreError::Ahead { .. }) => true,
        _ => false,
    }
}

/// What one copy round did.
enum Round {
    /// Appended a chunk.
    Copied,
    /// The master had nothing new.
    Idle,
}

async fn copy_loop(
    master: String,
    store: Store,
    gate: Arc<Gate>,
    stream: LogStream,
    stop: CancellationToken,
    resync: Arc<Mutex<Option<String>>>,
) {
    let mut conn: Option<Connection> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        // Not cancelled mid-append: only the request itself stops early (see `copy_once`).
        let round = copy_once(&master, &mut conn, &store, stream, &stop).await;
        match round {
            Ok(Round::Copied | Round::Idle) => pause = Duration::from_millis(100),
            Err(e) => {
                conn = None;
                if let BrokerError::Store(StoreError::Diverged { .. } | StoreError::Ahead { .. }) =
                    &e
                {
                    gate.stats.diverged.fetch_add(1, Ordering::Relaxed);
                    if needs_resync(&e) {
                        tracing::warn!(?stream, master, error = %e,
                            "this slave fell behind the master's retention or holds what the master never had; resyncing from the master's snapshot");
                        if let Ok(mut r) = resync.lock() {
                            r.get_or_insert_with(|| format!("{stream}: {e}"));
                        }
                        stop.cancel();
                        return;
                    }
                    tracing::error!(?stream, master, error = %e,
                        "this slave's log diverged from the master's; retrying");
                    pause = Duration::from_secs(2);
                } else {
                    tracing::warn!(?stream, master, error = %e, "replication request failed; retrying");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn connection<'a>(
    master: &str,
    conn: &'a mut Option<Connection>,
) -> Result<&'a Connection, BrokerError> {
    if conn.as_ref().is_none_or(|c| !c.is_open()) {
        let c = Connection::connect_with(
            master,
            qmq_protocol::frame::VERSION_8,
            qmq_protocol::frame::DEFAULT_MAX_FRAME,
        )
        .await
        .map_err(|e| io("connect to the master's sync port", e))?;
        *conn = Some(c);
    }
    conn.as_ref().ok_or_else(|| io("connect", "no connection"))
}

fn io(op: &'static str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Io {
        op,
        source: std::io::Error::other(e.to_string()),
    }
}

async fn copy_once(
    master: &str,
    conn: &mut Option<Connection>,
    store: &Store,
    stream: LogStream,
    stop: &CancellationToken,
) -> Result<Round, BrokerError> {
    let end = store.log_end(stream);
    let req = match stream {
        LogStream::Message => SyncLogRequest {
            sync_type: SyncType::Message,
            message_offset: end as i64,
            action_offset: 0,
        },
        LogStream::Action => SyncLogRequest {
            sync_type: SyncType::Action,
            message_offset: 0,
            action_offset: end as i64,
        },
    };
    let mut body = BytesMut::new();
    req.encode(&mut body);
    let c = connection(master, conn).await?.clone();
    // Actions are copied only up to a bound whose messages this store already holds (see
    // `action_bound`); `None` for the message log, and while no new action is known.
    let bound = match stream {
        LogStream::Message => None,
        LogStream::Action => match action_bound(&c, store, end, stop).await? {
            Bound::Stopped => return Ok(Round::Idle),
            Bound::Upto(a) => Some(a),
            Bound::Nothing => None,
        },
    };
    let resp = tokio::select! {
        () = stop.cancelled() => return Ok(Round::Idle),
        r = c.request(command::SYNC_LOG_REQUEST, body.freeze(), REQUEST_TIMEOUT) => {
            r.map_err(|e| io("sync request", e))?
        }
    };
    match resp.header.code {
        response::SUCCESS => {}
        response::PARAM_ERROR => {
            return Err(BrokerError::Store(StoreError::Ahead {
                stream,
                offset: end,
                end: 0,
            }))
        }
        code => return Err(io("sync request", format!("master answered code {code}"))),
    }
    let chunk = SyncChunk::decode(&resp.body)?;
    if chunk.bytes.is_empty() || (stream == LogStream::Action && bound.is_none()) {
        // Nothing new, or new actions whose messages may not be here yet: the next round
        // asks for the master's ends first.
        return Ok(Round::Idle);
    }
    let start = u64::try_from(chunk.start).map_err(|_| io("sync chunk", "negative start"))?;
    let bytes = match bound {
        Some(upto) => chunk
            .bytes
            .slice(..records_before(&chunk.bytes, start, upto)),
        None => chunk.bytes,
    };
    if bytes.is_empty() {
        return Ok(Round::Idle);
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.append_replicated(stream, start, &bytes)).await??;
    Ok(Round::Copied)
}

/// How far the action log may be copied now.
enum Bound {
    /// Up to this action-log offset: this store holds every message those actions refer to.
    Upto(u64),
    /// The master has no action past this store's end.
    Nothing,
    /// Stopped while waiting.
    Stopped,
}

/// The action-log offset up to which this slave may copy: the master's action end, once this
/// store's message log reaches the master's message end read after it (the master reads its
/// action end first, so every action before it refers to messages before that message end).
/// Consumer state on a slave then never points past its own consume logs, and a slave that
/// restarts does not have to move any group back.
async fn action_bound(
    c: &Connection,
    store: &Store,
    action_end: u64,
    stop: &CancellationToken,
) -> Result<Bound, BrokerError> {
    let req = SyncLogRequest {
        sync_type: SyncType::Heartbeat,
        message_offset: store.log_end(LogStream::Message) as i64,
        action_offset: action_end as i64,
    };
    let mut body = BytesMut::new();
    req.encode(&mut body);
    let resp = tokio::select! {
        () = stop.cancelled() => return Ok(Bound::Stopped),
        r = c.request(command::SYNC_LOG_REQUEST, body.freeze(), REQUEST_TIMEOUT) => {
            r.map_err(|e| io("sync heartbeat", e))?
        }
    };
    if resp.header.code != response::SUCCESS {
        return Err(io(
            "sync heartbeat",
            format!("master answered code {}", resp.header.code),
        ));
    }
    let ends = SyncHeartbeat::decode(&resp.body)?;
    let (messages, actions) = (
        u64::try_from(ends.message_end).unwrap_or(0),
        u64::try_from(ends.action_end).unwrap_or(0),
    );
    if actions <= action_end {
        return Ok(Bound::Nothing);
    }
    let mut copied = store.watch_log_end(LogStream::Message);
    tokio::select! {
        () = stop.cancelled() => Ok(Bound::Stopped),
        r = copied.wait_for(|end| *end >= messages) => match r {
            Ok(_) => Ok(Bound::Upto(actions)),
            Err(_) => Ok(Bound::Stopped),
        },
    }
}

/// How many bytes of `bytes` (whole records, the first at log offset `start`) end at or
/// before log offset `upto`.
fn records_before(bytes: &[u8], start: u64, upto: u64) -> usize {
    let mut at = 0usize;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let next = at + 8 + len;
        if next > bytes.len() || start + next as u64 > upto {
            break;
        }
        at = next;
    }
    at
}

async fn heartbeat_loop(master: String, store: Store, stop: CancellationToken) {
    let mut conn: Option<Connection> = None;
    loop {
        let req = SyncLogRequest {
            sync_type: SyncType::Heartbeat,
            message_offset: store.log_end(LogStream::Message) as i64,
            action_offset: store.log_end(LogStream::Action) as i64,
        };
        let mut body = BytesMut::new();
        req.encode(&mut body);
        let sent = async {
            let c = connection(&master, &mut conn).await?;
            c.request(command::SYNC_LOG_REQUEST, body.freeze(), REQUEST_TIMEOUT)
                .await
                .map_err(|e| io("sync heartbeat", e))
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = sent => r,
        };
        if let Err(e) = result {
            conn = None;
            tracing::debug!(master, error = %e, "sync heartbeat failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::records_before;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = (payload.len() as u32).to_be_bytes().to_vec();
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(payload);
        r
    }

    #[test]
    fn a_chunk_is_cut_at_the_last_whole_record_before_the_bound() {
        let mut bytes = record(b"abc"); // 11 bytes: offsets 100..111
        bytes.extend(record(b"defgh")); // 13 bytes: 111..124
        assert_eq!(records_before(&bytes, 100, 124), 24);
        assert_eq!(records_before(&bytes, 100, 200), 24);
        assert_eq!(records_before(&bytes, 100, 123), 11);
        assert_eq!(records_before(&bytes, 100, 111), 11);
        assert_eq!(records_before(&bytes, 100, 110), 0);
        assert_eq!(
            records_before(&bytes[..20], 100, 200),
            11,
            "a torn record is left out"
        );
    }
}
