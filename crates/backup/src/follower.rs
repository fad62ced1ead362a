//! Following one broker group's message index over sync type 5 (spec §1.5): ask the group's
//! sync address for the records from the stored offset, store them with the offset past them
//! in one transaction, ask again. The broker long-polls when there is nothing new, so an idle
//! follower costs one request per poll period.
//!
//! A restart resumes from the stored offset, so nothing is missed and nothing indexed twice.
//! When the broker is down (or answers garbage) the follower logs it, waits with a doubling
//! back-off and tries again with a new connection, then catches up.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{SyncIndexChunk, SyncLogRequest, SyncType};
use qmq_transport::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Applied, BackupError, IndexStore, INDEX_STREAM};

/// Where and how to follow one broker group.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The broker group's name (stored with every entry).
    pub group: String,
    /// The sync address (`host:port`) to ask: the group's slave if it has one, else its master.
    pub sync_addr: String,
    /// How long one request may take; longer than the broker's long-poll wait.
    pub request_timeout: Duration,
    /// The first wait after a failure.
    pub backoff_min: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
}

impl FollowerConfig {
    /// Defaults for `group` at `sync_addr`: 10 s requests, back-off from 100 ms to 5 s.
    pub fn new(group: impl Into<String>, sync_addr: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            sync_addr: sync_addr.into(),
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A running follower.
#[derive(Debug)]
pub struct FollowerHandle {
    offset: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl FollowerHandle {
    /// The stored offset, updated after every stored chunk (wait on it with
    /// [`watch::Receiver::wait_for`]).
    pub fn offset(&self) -> watch::Receiver<u64> {
        self.offset.clone()
    }

    /// Stops the task at once (as a crash would: what is stored stays stored).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits for the task to end (after its stop token was cancelled, or an abort).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts following `config.group` into `store` until `stop` is cancelled.
pub fn spawn(
    store: Arc<IndexStore>,
    config: FollowerConfig,
    stop: CancellationToken,
) -> Result<FollowerHandle, BackupError> {
    let start = store.offset(&config.group, INDEX_STREAM)?.unwrap_or(0);
    let (tx, rx) = watch::channel(start);
    let task = tokio::spawn(run(store, config, stop, tx));
    Ok(FollowerHandle { offset: rx, task })
}

async fn run(
    store: Arc<IndexStore>,
    config: FollowerConfig,
    stop: CancellationToken,
    offset_tx: watch::Sender<u64>,
) {
    let group = config.group.clone();
    info!(
        group,
        addr = config.sync_addr,
        offset = *offset_tx.borrow(),
        "following the index"
    );
    let mut conn: Option<Connection> = None;
    let mut backoff = config.backoff_min;
    let mut failing = false;
    loop {
        // Only the network wait is cut short by `stop`: a store call always completes, so the
        // store is free once the task has ended.
        let result = follow_once(&store, &config, &mut conn, &stop).await;
        if stop.is_cancelled() {
            break;
        }
        match result {
            Ok((next, applied)) => {
                if failing {
                    info!(
                        group,
                        addr = config.sync_addr,
                        offset = next,
                        "index sync resumed"
                    );
                    failing = false;
                }
                backoff = config.backoff_min;
                if applied.indexed > 0 || *offset_tx.borrow() != next {
                    offset_tx.send_replace(next);
                }
            }
            Err(e) => {
                conn = None;
                if failing {
                    tracing::debug!(group, error = %e, "index sync still failing");
                } else {
                    warn!(group, error = %e, retry_in = ?backoff, "index sync failed; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
    info!(group, "index follower stopped");
}

/// One request and its storing: returns the new offset.
async fn follow_once(
    store: &Arc<IndexStore>,
    config: &FollowerConfig,
    conn: &mut Option<Connection>,
    stop: &CancellationToken,
) -> Result<(u64, Applied), BackupError> {
    let group = config.group.clone();
    let from = {
        let store = store.clone();
        let group = group.clone();
        blocking(move || store.offset(&group, INDEX_STREAM)).await?
    }
    .unwrap_or(0);
    let request = async {
        let c = match conn {
            Some(c) if c.is_open() => c.clone(),
            _ => {
                let c = Connection::connect(&config.sync_addr)
                    .await
                    .map_err(|source| BackupError::Connection {
                        addr: config.sync_addr.clone(),
                        source,
                    })?;
                *conn = Some(c.clone());
                c
            }
        };
        fetch(&c, &config.sync_addr, from, config.request_timeout).await
    };
    let chunk = tokio::select! {
        _ = stop.cancelled() => return Ok((from, Applied::default())),
        chunk = request => chunk?,
    };
    let next = chunk.next as u64;
    let store = store.clone();
    let applied = blocking(move || store.apply(&group, from, &chunk)).await?;
    Ok((next, applied))
}

/// Asks `addr` for the index records from `from` on `conn`, and checks the answer.
pub async fn fetch(
    conn: &Connection,
    addr: &str,
    from: u64,
    timeout: Duration,
) -> Result<SyncIndexChunk, BackupError> {
    let offset = i64::try_from(from).map_err(|_| BackupError::Refused {
        addr: addr.to_owned(),
        offset: from,
        code: response::PARAM_ERROR,
    })?;
    let mut body = BytesMut::new();
    SyncLogRequest {
        sync_type: SyncType::Index,
        message_offset: offset,
        // A QMQ backup puts its index position in both fields.
        action_offset: offset,
    }
    .encode(&mut body);
    let resp = conn
        .request(command::SYNC_LOG_REQUEST, body.freeze(), timeout)
        .await
        .map_err(|source| BackupError::Connection {
            addr: addr.to_owned(),
            source,
        })?;
    if resp.header.code == response::PARAM_ERROR {
        return Err(BackupError::BeyondEnd {
            addr: addr.to_owned(),
            offset: from,
        });
    }
    if resp.header.code != response::SUCCESS {
        return Err(BackupError::Refused {
            addr: addr.to_owned(),
            offset: from,
            code: resp.header.code,
        });
    }
    let chunk = SyncIndexChunk::decode(&resp.body).map_err(|source| BackupError::BadAnswer {
        addr: addr.to_owned(),
        source,
    })?;
    if chunk.next < offset {
        return Err(BackupError::WentBackwards {
            addr: addr.to_owned(),
            offset: from,
            next: chunk.next,
        });
    }
    Ok(chunk)
}

/// Runs a store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Task(e.to_string()))?
}
