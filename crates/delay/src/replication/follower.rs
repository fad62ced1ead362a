//! The slave's copy loops against the master's sync port: the message log (long-polled, one
//! chunk after the other), the dispatch state (every [`DISPATCH_POLL`]), a heartbeat, and a
//! flush of the derived schedule logs and the checkpoint every second.
//!
//! A chunk that does not start at the replica's end, or is not whole intact records, is never
//! appended: the loop logs it, counts it ([`qmq_replication::ReplicationStats::diverged`]) and
//! retries slowly (a resync needs an operator). Network errors are retried after a pause
//! growing from 100 ms to 2 s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{SyncChunk, SyncLogRequest, SyncType};
use qmq_transport::Connection;
use tokio_util::sync::CancellationToken;

use super::{DispatchChunk, DispatchSyncRequest, Gate, Replica, ReplicaError};

/// How often the slave polls the master's dispatch state (the bound on how much a promoted
/// slave delivers again, see the module docs of [`super`]).
pub const DISPATCH_POLL: Duration = Duration::from_millis(500);
/// How long one sync request may take (the master holds an empty one up to its poll time).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Time between heartbeats and flushes.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A copy step failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Net(String),
    #[error(transparent)]
    Refused(#[from] ReplicaError),
}

fn net(op: &str, e: impl std::fmt::Display) -> StepError {
    StepError::Net(format!("{op}: {e}"))
}

/// Runs the loops against `master` (its sync address) until `stop` is cancelled, then returns
/// once they have ended (no append is in progress after that) and the replica was flushed.
pub async fn follow(
    master: String,
    replica: Arc<Mutex<Replica>>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    tracing::info!(master, "delay server replicating from the master");
    let tasks = [
        tokio::spawn(wal_loop(
            master.clone(),
            replica.clone(),
            gate.clone(),
            stop.clone(),
        )),
        tokio::spawn(dispatch_loop(master.clone(), replica.clone(), stop.clone())),
        tokio::spawn(heartbeat_loop(master, replica.clone(), stop)),
    ];
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "a replication loop failed");
        }
    }
    flush(&replica).await;
}

async fn flush(replica: &Arc<Mutex<Replica>>) {
    let r = replica.clone();
    match tokio::task::spawn_blocking(move || r.lock().flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the replica failed"),
        Err(e) => tracing::warn!(error = %e, "flushing the replica failed"),
    }
}

async fn connection<'a>(
    master: &str,
    conn: &'a mut Option<Connection>,
) -> Result<&'a Connection, StepError> {
    if conn.as_ref().is_none_or(|c| !c.is_open()) {
        let c = Connection::connect_with(
            master,
            qmq_protocol::frame::VERSION_8,
            qmq_protocol::frame::DEFAULT_MAX_FRAME,
        )
        .await
        .map_err(|e| net("connect to the master's sync port", e))?;
        *conn = Some(c);
    }
    conn.as_ref().ok_or_else(|| net("connect", "no connection"))
}

async fn wal_loop(
    master: String,
    replica: Arc<Mutex<Replica>>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    let mut pause = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match copy_once(&master, &mut conn, &replica, &stop).await {
            Ok(()) => pause = Duration::from_millis(100),
            Err(e) => {
                conn = None;
                if let StepError::Refused(r) = &e {
                    gate.stats.diverged.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(master, error = %r,
                        "this delay slave's message log cannot continue the master's; a resync is needed");
                    pause = Duration::from_secs(2);
                } else {
                    tracing::warn!(master, error = %e, "delay replication request failed; retrying");
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

async fn copy_once(
    master: &str,
    conn: &mut Option<Connection>,
    replica: &Arc<Mutex<Replica>>,
    stop: &CancellationToken,
) -> Result<(), StepError> {
    let end = replica.lock().wal_end();
    let req = SyncLogRequest {
        sync_type: SyncType::Message,
        message_offset: end as i64,
        action_offset: 0,
    };
    let mut body = bytes::BytesMut::new();
    req.encode(&mut body);
    let c = connection(master, conn).await?;
    let resp = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        r = c.request(command::SYNC_LOG_REQUEST, body.freeze(), REQUEST_TIMEOUT) => {
            r.map_err(|e| net("sync request", e))?
        }
    };
    match resp.header.code {
        response::SUCCESS => {}
        response::PARAM_ERROR => {
            return Err(StepError::Refused(ReplicaError::Diverged { start: 0, end }))
        }
        code => return Err(net("sync request", format!("master answered code {code}"))),
    }
    let chunk = SyncChunk::decode(&resp.body).map_err(|e| net("sync chunk", e))?;
    if chunk.bytes.is_empty() {
        return Ok(());
    }
    let start = u64::try_from(chunk.start).map_err(|_| net("sync chunk", "negative start"))?;
    let r = replica.clone();
    tokio::task::spawn_blocking(move || r.lock().append_wal(start, &chunk.bytes))
        .await
        .map_err(|e| net("append", e))??;
    Ok(())
}

async fn dispatch_loop(master: String, replica: Arc<Mutex<Replica>>, stop: CancellationToken) {
    let mut conn: Option<Connection> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(DISPATCH_POLL) => {}
        }
        let cursors = replica.lock().dispatch_cursors().clone();
        let body = DispatchSyncRequest { cursors }.encode();
        let asked = async {
            let c = connection(&master, &mut conn).await?;
            let resp = c
                .request(command::SYNC_LOG_REQUEST, body, REQUEST_TIMEOUT)
                .await
                .map_err(|e| net("dispatch sync request", e))?;
            if resp.header.code != response::SUCCESS {
                return Err(net("dispatch sync", resp.header.code));
            }
            DispatchChunk::decode(&resp.body).map_err(|e| net("dispatch sync", e))
        };
        let chunk = tokio::select! {
            () = stop.cancelled() => return,
            r = asked => r,
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                conn = None;
                tracing::debug!(master, error = %e, "dispatch state request failed");
                continue;
            }
        };
        if chunk.parts.is_empty() {
            continue;
        }
        // Applied once the message log holds every record the chunk names (bounded wait).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = replica.clone();
            let c = chunk.clone();
            let applied = tokio::task::spawn_blocking(move || r.lock().apply_dispatch(&c)).await;
            match applied {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) if tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                Ok(Ok(false)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "recording dispatch state failed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recording dispatch state failed");
                    break;
                }
            }
        }
    }
}

async fn heartbeat_loop(master: String, replica: Arc<Mutex<Replica>>, stop: CancellationToken) {
    let mut conn: Option<Connection> = None;
    loop {
        let req = SyncLogRequest {
            sync_type: SyncType::Heartbeat,
            message_offset: replica.lock().wal_end() as i64,
            action_offset: 0,
        };
        let mut body = bytes::BytesMut::new();
        req.encode(&mut body);
        let sent = async {
            let c = connection(&master, &mut conn).await?;
            c.request(command::SYNC_LOG_REQUEST, body.freeze(), REQUEST_TIMEOUT)
                .await
                .map_err(|e| net("sync heartbeat", e))
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = sent => r,
        };
        if let Err(e) = result {
            conn = None;
            tracing::debug!(master, error = %e, "sync heartbeat failed");
        }
        flush(&replica).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}
