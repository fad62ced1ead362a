//! Following one broker group's stored messages over sync type 6 (qmq-rs's richer form of QMQ's
//! index type 5, spec §1.5) and its action log over sync type 1 (a second follower of the same
//! group, [`Stream::Action`]): ask the group's
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
use qmq_protocol::{SyncChunk, SyncLogRequest, SyncMessagesChunk, SyncType};
use qmq_transport::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::BackupMetrics;
use crate::{Applied, BackupError, IndexStore, ACTION_STREAM, INDEX_STREAM};

/// What serves a followed group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupKind {
    /// Realtime brokers: stored messages and the action log are followed.
    #[default]
    Broker,
    /// Delay servers: their message log (messages waiting for their time) is followed; they
    /// have no consumers, so no action log.
    Delay,
}

/// Where and how to follow one broker group.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The broker group's name (stored with every entry).
    pub group: String,
    /// Broker or delay group.
    pub kind: GroupKind,
    /// The sync address (`host:port`) to ask: the group's slave if it has one, else its master.
    pub sync_addr: String,
    /// The master's client address (`host:port`), where dead letters are replayed; `None`:
    /// the group's dead letters cannot be replayed.
    pub client_addr: Option<String>,
    /// How long one request may take; longer than the broker's long-poll wait.
    pub request_timeout: Duration,
    /// The first wait after a failure.
    pub backoff_min: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// Where the follower records what it did ([`BackupServer`](crate::server::BackupServer)
    /// sets its own; by default metrics no registry serves).
    pub metrics: Arc<BackupMetrics>,
}

impl FollowerConfig {
    /// Defaults for `group` at `sync_addr`: 10 s requests, back-off from 100 ms to 5 s.
    pub fn new(group: impl Into<String>, sync_addr: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            kind: GroupKind::Broker,
            sync_addr: sync_addr.into(),
            client_addr: None,
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            metrics: Arc::new(BackupMetrics::default()),
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

/// Which of a group's logs a follower follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The message index from the stored messages (sync type 6), offset stream
    /// [`INDEX_STREAM`].
    Index,
    /// The action log (sync type 1): consumption records, offset stream [`ACTION_STREAM`].
    Action,
}

impl Stream {
    /// The stream's offset name in the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Index => INDEX_STREAM,
            Self::Action => ACTION_STREAM,
        }
    }
}

/// Starts following `config.group`'s message index into `store` until `stop` is cancelled.
pub fn spawn(
    store: Arc<IndexStore>,
    config: FollowerConfig,
    stop: CancellationToken,
) -> Result<FollowerHandle, BackupError> {
    spawn_stream(store, config, Stream::Index, stop)
}

/// Starts following `config.group`'s `stream` into `store` until `stop` is cancelled.
pub fn spawn_stream(
    store: Arc<IndexStore>,
    config: FollowerConfig,
    stream: Stream,
    stop: CancellationToken,
) -> Result<FollowerHandle, BackupError> {
    let start = store.offset(&config.group, stream.name())?.unwrap_or(0);
    config
        .metrics
        .following(&config.group, stream.name(), start);
    let (tx, rx) = watch::channel(start);
    let task = tokio::spawn(run(store, config, stream, stop, tx));
    Ok(FollowerHandle { offset: rx, task })
}

async fn run(
    store: Arc<IndexStore>,
    config: FollowerConfig,
    stream: Stream,
    stop: CancellationToken,
    offset_tx: watch::Sender<u64>,
) {
    let group = config.group.clone();
    let name = stream.name();
    info!(
        group,
        stream = name,
        addr = config.sync_addr,
        offset = *offset_tx.borrow(),
        "following"
    );
    let mut conn: Option<Connection> = None;
    let mut backoff = config.backoff_min;
    let mut failing = false;
    loop {
        // Only the network wait is cut short by `stop`: a store call always completes, so the
        // store is free once the task has ended.
        let result = match stream {
            Stream::Index => follow_once(&store, &config, &mut conn, &stop).await,
            Stream::Action => follow_actions_once(&store, &config, &mut conn, &stop).await,
        };
        if stop.is_cancelled() {
            break;
        }
        match result {
            Ok((next, items)) => {
                config.metrics.synced(&group, name, next, items);
                let applied = items > 0;
                if failing {
                    info!(
                        group,
                        stream = name,
                        addr = config.sync_addr,
                        offset = next,
                        "sync resumed"
                    );
                    failing = false;
                }
                backoff = config.backoff_min;
                if applied || *offset_tx.borrow() != next {
                    offset_tx.send_replace(next);
                }
            }
            Err(e) => {
                config.metrics.sync_failed(&group, name);
                conn = None;
                if failing {
                    tracing::debug!(group, stream = name, error = %e, "sync still failing");
                } else {
                    warn!(group, stream = name, error = %e, retry_in = ?backoff, "sync failed; retrying");
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
    info!(group, stream = name, "follower stopped");
}

/// Connects (or reuses the connection) to the group's sync address.
async fn connection(
    config: &FollowerConfig,
    conn: &mut Option<Connection>,
) -> Result<Connection, BackupError> {
    match conn {
        Some(c) if c.is_open() => Ok(c.clone()),
        _ => {
            let c = Connection::connect(&config.sync_addr)
                .await
                .map_err(|source| BackupError::Connection {
                    addr: config.sync_addr.clone(),
                    source,
                })?;
            *conn = Some(c.clone());
            Ok(c)
        }
    }
}

/// One action-log request and its storing: returns the new offset and whether anything was
/// stored.
async fn follow_actions_once(
    store: &Arc<IndexStore>,
    config: &FollowerConfig,
    conn: &mut Option<Connection>,
    stop: &CancellationToken,
) -> Result<(u64, usize), BackupError> {
    let group = config.group.clone();
    let from = stored_offset(store, &group, ACTION_STREAM).await?;
    let request = async {
        let c = connection(config, conn).await?;
        fetch_actions(&c, &config.sync_addr, from, config.request_timeout).await
    };
    let chunk = tokio::select! {
        _ = stop.cancelled() => return Ok((from, 0)),
        chunk = request => chunk?,
    };
    let start = chunk.start as u64;
    let next = start + chunk.bytes.len() as u64;
    let seen_at = chrono::Utc::now().timestamp_millis();
    let store = store.clone();
    let applied =
        blocking(move || store.apply_actions(&group, from, start, &chunk.bytes, seen_at)).await?;
    Ok((next, applied.records))
}

/// Asks `addr` for the action-log bytes from `from` on `conn`, and checks the answer's
/// envelope (the records are checked when stored).
pub async fn fetch_actions(
    conn: &Connection,
    addr: &str,
    from: u64,
    timeout: Duration,
) -> Result<SyncChunk, BackupError> {
    let body = request(conn, addr, from, SyncType::Action, timeout).await?;
    let chunk = SyncChunk::decode(&body).map_err(|source| BackupError::BadAnswer {
        addr: addr.to_owned(),
        source,
    })?;
    if chunk.start < from as i64 {
        return Err(BackupError::WentBackwards {
            addr: addr.to_owned(),
            offset: from,
            next: chunk.start,
        });
    }
    Ok(chunk)
}

/// One request and its storing: returns the new offset.
async fn follow_once(
    store: &Arc<IndexStore>,
    config: &FollowerConfig,
    conn: &mut Option<Connection>,
    stop: &CancellationToken,
) -> Result<(u64, usize), BackupError> {
    let group = config.group.clone();
    let from = stored_offset(store, &group, INDEX_STREAM).await?;
    let request = async {
        let c = connection(config, conn).await?;
        fetch(&c, &config.sync_addr, from, config.request_timeout).await
    };
    let chunk = tokio::select! {
        _ = stop.cancelled() => return Ok((from, 0)),
        chunk = request => chunk?,
    };
    let next = chunk.next as u64;
    let store = store.clone();
    let held = config.kind == GroupKind::Delay;
    let applied: Applied =
        blocking(move || store.apply_messages(&group, from, &chunk, held)).await?;
    Ok((next, applied.indexed))
}

/// Asks `addr` for the stored messages from `from` on `conn` (sync type 6), and checks the
/// answer.
pub async fn fetch(
    conn: &Connection,
    addr: &str,
    from: u64,
    timeout: Duration,
) -> Result<SyncMessagesChunk, BackupError> {
    let body = request(conn, addr, from, SyncType::Messages, timeout).await?;
    let chunk = SyncMessagesChunk::decode(&body).map_err(|source| BackupError::BadAnswer {
        addr: addr.to_owned(),
        source,
    })?;
    if chunk.next < from as i64 {
        return Err(BackupError::WentBackwards {
            addr: addr.to_owned(),
            offset: from,
            next: chunk.next,
        });
    }
    Ok(chunk)
}

/// One SYNC_LOG_REQUEST of `sync_type` from offset `from` to `addr`; the answer's body once its
/// code says SUCCESS (PARAM_ERROR: `from` is past the log's end).
async fn request(
    conn: &Connection,
    addr: &str,
    from: u64,
    sync_type: SyncType,
    timeout: Duration,
) -> Result<bytes::Bytes, BackupError> {
    let offset = i64::try_from(from).map_err(|_| BackupError::Refused {
        addr: addr.to_owned(),
        offset: from,
        code: response::PARAM_ERROR,
    })?;
    let (message_offset, action_offset) = match sync_type {
        SyncType::Action => (0, offset),
        // A QMQ backup puts its index position in both fields.
        _ => (offset, offset),
    };
    let mut body = BytesMut::new();
    SyncLogRequest {
        sync_type,
        message_offset,
        action_offset,
    }
    .encode(&mut body);
    let resp = conn
        .request(command::SYNC_LOG_REQUEST, body.freeze(), timeout)
        .await
        .map_err(|source| BackupError::Connection {
            addr: addr.to_owned(),
            source,
        })?;
    match resp.header.code {
        response::SUCCESS => Ok(resp.body),
        response::PARAM_ERROR => Err(BackupError::BeyondEnd {
            addr: addr.to_owned(),
            offset: from,
        }),
        code => Err(BackupError::Refused {
            addr: addr.to_owned(),
            offset: from,
            code,
        }),
    }
}

/// The offset `group`'s `stream` resumes from (0 before its first chunk).
async fn stored_offset(
    store: &Arc<IndexStore>,
    group: &str,
    stream: &'static str,
) -> Result<u64, BackupError> {
    let (store, group) = (store.clone(), group.to_owned());
    Ok(blocking(move || store.offset(&group, stream))
        .await?
        .unwrap_or(0))
}

/// Runs a store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Task(e.to_string()))?
}
