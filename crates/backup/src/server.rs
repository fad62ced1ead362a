//! The backup server: the index store, one follower per broker group, the retention sweep and
//! the HTTP query API, started and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::follower::{self, blocking, FollowerConfig, FollowerHandle};
use crate::{BackupError, IndexStore};

/// The index file's name in the data directory.
pub const INDEX_FILE: &str = "index.redb";

/// Entries dropped per retention transaction.
const PURGE_BATCH: usize = 10_000;

/// What a backup server runs.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Where the index lives (`<data_dir>/index.redb`).
    pub data_dir: PathBuf,
    /// The HTTP query API's listen address (port 0: any free port).
    pub http_listen: SocketAddr,
    /// Entries older than this (by creation time) are dropped; `None` keeps everything.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs.
    pub purge_interval: Duration,
    /// The broker groups to follow.
    pub groups: Vec<FollowerConfig>,
}

impl BackupConfig {
    /// A server of `data_dir` listening on `http_listen`, 7-day retention swept every minute,
    /// following nothing yet.
    pub fn new(data_dir: impl Into<PathBuf>, http_listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_listen,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            purge_interval: Duration::from_secs(60),
            groups: Vec::new(),
        }
    }
}

/// A running backup server.
#[derive(Debug)]
pub struct BackupServer {
    store: Arc<IndexStore>,
    http_addr: SocketAddr,
    followers: Vec<(String, FollowerHandle)>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl BackupServer {
    /// Opens the index and starts the followers, the retention sweep and the HTTP API; they
    /// stop when `stop` is cancelled (or at [`BackupServer::shutdown`]).
    pub async fn start(config: BackupConfig, stop: CancellationToken) -> Result<Self, BackupError> {
        let path = config.data_dir.join(INDEX_FILE);
        let retention = config.retention;
        let store = Arc::new(blocking(move || IndexStore::open(&path, retention)).await?);
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| BackupError::Io {
                what: format!("cannot listen on {}", config.http_listen),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| BackupError::Io {
            what: "listener address".into(),
            source,
        })?;
        let stop = stop.child_token();
        let mut tasks = Vec::new();
        {
            let (store, stop) = (store.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::http::serve(listener, store, stop).await {
                    warn!(error = %e, "backup HTTP server failed");
                }
            }));
        }
        if config.retention.is_some() {
            tasks.push(tokio::spawn(sweep(
                store.clone(),
                config.purge_interval,
                stop.clone(),
            )));
        }
        let mut followers = Vec::new();
        for group in config.groups {
            let name = group.group.clone();
            followers.push((name, follower::spawn(store.clone(), group, stop.clone())?));
        }
        info!(http = %http_addr, index = %store.path().display(), groups = followers.len(), "backup server started");
        Ok(Self {
            store,
            http_addr,
            followers,
            tasks,
            stop,
        })
    }

    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The index.
    pub fn store(&self) -> &Arc<IndexStore> {
        &self.store
    }

    /// The follower of `group`, if followed.
    pub fn follower(&self, group: &str) -> Option<&FollowerHandle> {
        self.followers
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, f)| f)
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for (_, f) in self.followers {
            f.join().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Drops expired entries every `interval`, a batch per transaction.
async fn sweep(store: Arc<IndexStore>, interval: Duration, stop: CancellationToken) {
    loop {
        loop {
            let s = store.clone();
            match blocking(move || s.purge_expired(PURGE_BATCH)).await {
                Ok(n) if n == PURGE_BATCH => continue,
                Ok(n) => {
                    if n > 0 {
                        info!(dropped = n, "expired backup index entries dropped");
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "backup retention sweep failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
