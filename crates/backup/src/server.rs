//! The backup server: the index store, two followers per broker group (message index and
//! action log), the retention sweep and
//! the HTTP query API, started and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::brokers::{Brokers, GroupAddrs};
use crate::details::PropertyIndex;
use crate::follower::{self, blocking, FollowerConfig, FollowerHandle, GroupKind, Stream};
use crate::http::Api;
use crate::metrics::BackupMetrics;
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
    /// Admin tokens that may replay dead letters (none: replay is refused).
    pub admin_tokens: Vec<String>,
    /// Which properties are indexed for queries by value.
    pub property_index: PropertyIndex,
    /// The registry to put the backup's metrics in (a process's shared one, so they are also
    /// served with its other metrics); `None`: one of its own. `GET /metrics` on the backup's
    /// HTTP port serves this registry either way.
    pub registry: Option<qmq_metrics::Registry>,
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
            admin_tokens: Vec::new(),
            property_index: PropertyIndex::All,
            registry: None,
        }
    }
}

/// One followed group.
#[derive(Debug)]
struct Following {
    group: String,
    addr: String,
    stop: CancellationToken,
    handle: FollowerHandle,
    /// None for a delay group.
    actions: Option<FollowerHandle>,
}

/// A running backup server.
#[derive(Debug)]
pub struct BackupServer {
    store: Arc<IndexStore>,
    brokers: Arc<Brokers>,
    metrics: Arc<BackupMetrics>,
    http_addr: SocketAddr,
    followers: Vec<Following>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl BackupServer {
    /// Opens the index and starts the followers, the retention sweep and the HTTP API; they
    /// stop when `stop` is cancelled (or at [`BackupServer::shutdown`]).
    pub async fn start(config: BackupConfig, stop: CancellationToken) -> Result<Self, BackupError> {
        let path = config.data_dir.join(INDEX_FILE);
        let retention = config.retention;
        let properties = config.property_index.clone();
        let store = Arc::new(
            blocking(move || {
                Ok(IndexStore::open(&path, retention)?.with_property_index(properties))
            })
            .await?,
        );
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
        let brokers = Arc::new(Brokers::default());
        let registry = config.registry.clone().unwrap_or_default();
        let metrics = Arc::new(BackupMetrics::new(&registry));
        {
            let api = Api {
                store: store.clone(),
                brokers: brokers.clone(),
                admin_tokens: Arc::new(config.admin_tokens.clone()),
                registry,
                metrics: metrics.clone(),
            };
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::http::serve(listener, api, stop).await {
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
        let mut server = Self {
            store,
            brokers,
            metrics,
            http_addr,
            followers: Vec::new(),
            tasks,
            stop,
        };
        for group in config.groups {
            if let Err(e) = server.follow(group).await {
                server.stop.cancel();
                return Err(e);
            }
        }
        info!(http = %http_addr, index = %server.store.path().display(), groups = server.followers.len(), "backup server started");
        Ok(server)
    }

    /// Follows `config.group` at `config.sync_addr` from now on: a group not followed yet gets
    /// a follower; one followed at another address (its slave changed, or it lost its slave)
    /// is stopped and followed again at the new one, from its stored offset (a group's
    /// members hold the same log at the same offsets); one followed at that address is left
    /// alone.
    pub async fn follow(&mut self, mut config: FollowerConfig) -> Result<(), BackupError> {
        config.metrics = self.metrics.clone();
        self.brokers.set(
            &config.group,
            GroupAddrs {
                sync: config.sync_addr.clone(),
                client: config.client_addr.clone(),
            },
        );
        if let Some(i) = self.followers.iter().position(|f| f.group == config.group) {
            if self.followers[i].addr == config.sync_addr {
                return Ok(());
            }
            let old = self.followers.remove(i);
            info!(
                group = old.group,
                from = old.addr,
                to = config.sync_addr,
                "following the group elsewhere"
            );
            old.stop.cancel();
            old.handle.join().await;
            if let Some(a) = old.actions {
                a.join().await;
            }
        }
        let stop = self.stop.child_token();
        let following = Following {
            group: config.group.clone(),
            addr: config.sync_addr.clone(),
            stop: stop.clone(),
            handle: follower::spawn(self.store.clone(), config.clone(), stop.clone())?,
            actions: match config.kind {
                GroupKind::Broker => Some(follower::spawn_stream(
                    self.store.clone(),
                    config,
                    Stream::Action,
                    stop,
                )?),
                GroupKind::Delay => None,
            },
        };
        self.followers.push(following);
        Ok(())
    }

    /// The followed groups and their sync addresses.
    pub fn followed(&self) -> Vec<(String, String)> {
        self.followers
            .iter()
            .map(|f| (f.group.clone(), f.addr.clone()))
            .collect()
    }

    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The index.
    pub fn store(&self) -> &Arc<IndexStore> {
        &self.store
    }

    /// The index follower of `group`, if followed.
    pub fn follower(&self, group: &str) -> Option<&FollowerHandle> {
        self.followers
            .iter()
            .find(|f| f.group == group)
            .map(|f| &f.handle)
    }

    /// The action-log follower of `group`, if followed.
    pub fn action_follower(&self, group: &str) -> Option<&FollowerHandle> {
        self.followers
            .iter()
            .find(|f| f.group == group)
            .and_then(|f| f.actions.as_ref())
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for f in self.followers {
            f.handle.join().await;
            if let Some(a) = f.actions {
                a.join().await;
            }
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Drops expired consumption records, a batch per transaction, until none is left.
async fn sweep_records(store: &Arc<IndexStore>) {
    loop {
        let s = store.clone();
        match blocking(move || s.purge_expired_records(PURGE_BATCH)).await {
            Ok(n) if n >= PURGE_BATCH => continue,
            Ok(n) => {
                if n > 0 {
                    info!(dropped = n, "expired consumption records dropped");
                }
                break;
            }
            Err(e) => {
                warn!(error = %e, "backup record retention sweep failed");
                break;
            }
        }
    }
}

/// Drops expired entries every `interval`, a batch per transaction.
async fn sweep(store: Arc<IndexStore>, interval: Duration, stop: CancellationToken) {
    loop {
        sweep_records(&store).await;
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
