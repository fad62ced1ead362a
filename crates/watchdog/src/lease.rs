//! The watchdog service: the lease in the meta database, the registry of outbox databases and
//! the periodic scans the lease holder runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qmq_client::outbox::DEFAULT_TABLE;
use qmq_client::Producer;
use qmq_meta::model::ClientDb;
use qmq_meta::store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::WatchdogMetrics;
use crate::scan::{Outbox, ScanOptions};
use crate::WatchdogError;

/// Watchdog settings; the defaults are QMQ's where QMQ has one.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// Namespace: only databases registered with this room are scanned, and the lease is
    /// `qmq_watchdog_<namespace>` (QMQ: `default`).
    pub namespace: String,
    /// This instance's name in the lease row (default: host and process id).
    pub node: String,
    /// A holder that has not renewed for this long loses the lease to another instance
    /// (QMQ: 5 s).
    pub lease: Duration,
    /// Time between lease calls (QMQ: 1 s); keep it well under `lease`.
    pub renew_interval: Duration,
    /// Time between scans of every database (QMQ: 60 s).
    pub check_interval: Duration,
    /// Time between readings of the registry (QMQ: 180 s).
    pub refresh_interval: Duration,
    /// The outbox table on every registered database.
    pub table: String,
    /// How each scan goes.
    pub scan: ScanOptions,
    /// Where the lease and the scans are counted (default: metrics no registry serves; give
    /// [`WatchdogMetrics::new`] to serve them).
    pub metrics: Arc<WatchdogMetrics>,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            node: qmq_transport::identity::client_id(),
            lease: Duration::from_secs(5),
            renew_interval: Duration::from_secs(1),
            check_interval: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(180),
            table: DEFAULT_TABLE.into(),
            scan: ScanOptions::default(),
            metrics: Arc::default(),
        }
    }
}

impl WatchdogConfig {
    /// The lease row's name.
    pub fn lease_name(&self) -> String {
        format!("qmq_watchdog_{}", self.namespace)
    }
}

/// A running watchdog.
#[derive(Debug)]
pub struct WatchdogHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
    leader: watch::Receiver<bool>,
}

impl WatchdogHandle {
    /// Whether this instance holds the lease (and so scans) now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Changes of [`WatchdogHandle::is_leader`].
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops scanning, waits for the scan in hand and gives the lease up.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "watchdog task failed");
        }
    }
}

/// Starts a watchdog contending for the lease in `store` (the meta database) and resending with
/// `producer` (which routes as applications do: usually a [`qmq_client::MetaRouter`]).
pub fn start(config: WatchdogConfig, store: Store, producer: Arc<Producer>) -> WatchdogHandle {
    let stop = CancellationToken::new();
    let (tx, leader) = watch::channel(false);
    let task = tokio::spawn(contend(config, store, producer, stop.clone(), tx));
    WatchdogHandle { stop, task, leader }
}

/// The lease loop: take or renew the lease every `renew_interval`; run the scans while held.
async fn contend(
    config: WatchdogConfig,
    store: Store,
    producer: Arc<Producer>,
    stop: CancellationToken,
    leader: watch::Sender<bool>,
) {
    let name = config.lease_name();
    let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    // Scans stop when a renewal fails or is late, well before the lease can expire.
    let call_timeout = config.renew_interval.min(config.lease / 3);
    let mut work: Option<(CancellationToken, JoinHandle<()>)> = None;
    loop {
        let held = tokio::time::timeout(
            call_timeout,
            store.acquire_lease(&name, &config.node, lease_ms),
        )
        .await;
        let holds = match held {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(lease = name, error = %e, "lease call failed");
                config.metrics.lease_error();
                false
            }
            Err(_) => {
                tracing::warn!(lease = name, "lease call timed out");
                config.metrics.lease_error();
                false
            }
        };
        match (holds, work.is_some()) {
            (true, false) => {
                tracing::info!(lease = name, node = config.node, "watchdog is the leader");
                config.metrics.leader(true);
                let token = stop.child_token();
                let task = tokio::spawn(run_scans(
                    config.clone(),
                    store.clone(),
                    producer.clone(),
                    token.clone(),
                ));
                work = Some((token, task));
                leader.send_replace(true);
            }
            (false, true) => {
                tracing::warn!(
                    lease = name,
                    node = config.node,
                    "watchdog lost the lease; scans stop"
                );
                stop_work(work.take()).await;
                config.metrics.leader(false);
                leader.send_replace(false);
            }
            _ => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(config.renew_interval) => {}
        }
    }
    let was_leader = work.is_some();
    stop_work(work.take()).await;
    if was_leader {
        if let Err(e) = store.release_lease(&name, &config.node).await {
            tracing::warn!(lease = name, error = %e, "lease not released; it expires instead");
        }
        config.metrics.leader(false);
    }
    leader.send_replace(false);
}

async fn stop_work(work: Option<(CancellationToken, JoinHandle<()>)>) {
    if let Some((token, task)) = work {
        token.cancel();
        if let Err(e) = task.await {
            tracing::error!(error = %e, "watchdog scan task failed");
        }
    }
}

/// The sqlx URL of a registered database, and its name for logs; `None` for an unsupported
/// scheme.
pub(crate) fn sqlx_url(db: &ClientDb) -> Option<(String, String)> {
    let (scheme, rest) = db.url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "mysql" | "mariadb" | "mmm" => "mysql",
        "postgres" | "postgresql" | "pg" => "postgres",
        _ => return None,
    };
    let user = encode(&db.user_name);
    let auth = if db.password.is_empty() {
        user
    } else {
        format!("{user}:{}", encode(&db.password))
    };
    Some((
        format!("{scheme}://{auth}@{rest}"),
        format!("{scheme}://{}@{rest}", encode(&db.user_name)),
    ))
}

/// Percent-encodes a URL user name or password.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The lease holder's work: every `check_interval`, scan every registered database in
/// parallel; re-read the registry every `refresh_interval`.
async fn run_scans(
    config: WatchdogConfig,
    store: Store,
    producer: Arc<Producer>,
    stop: CancellationToken,
) {
    let mut outboxes: HashMap<String, Outbox> = HashMap::new();
    let mut refreshed: Option<Instant> = None;
    loop {
        if refreshed.is_none_or(|t| t.elapsed() >= config.refresh_interval) {
            match refresh(&config, &store, &mut outboxes).await {
                Ok(()) => refreshed = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "reading the registered databases failed"),
            }
        }
        let scans = outboxes.values().map(|outbox| {
            let (producer, stop, options) = (&producer, &stop, &config.scan);
            async move {
                match outbox.scan(producer, options, stop).await {
                    Ok(r) if r == Default::default() => {}
                    Ok(r) => tracing::info!(db = outbox.name(), report = ?r, "outbox scanned"),
                    Err(e) => tracing::warn!(db = outbox.name(), error = %e, "outbox scan failed"),
                }
            }
        });
        futures::future::join_all(scans).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(config.check_interval) => {}
        }
    }
    for outbox in outboxes.values() {
        outbox.close().await;
    }
}

/// Brings `outboxes` in line with the registry: new databases connected, removed ones closed.
async fn refresh(
    config: &WatchdogConfig,
    store: &Store,
    outboxes: &mut HashMap<String, Outbox>,
) -> Result<(), WatchdogError> {
    let dbs: Vec<ClientDb> = store
        .client_dbs()
        .await?
        .into_iter()
        .filter(|d| d.room == config.namespace)
        .collect();
    let mut keep = HashMap::new();
    for db in dbs {
        let key = format!("{}\u{0}{}\u{0}{}", db.url, db.user_name, db.password);
        if let Some(o) = outboxes.remove(&key) {
            keep.insert(key, o);
            continue;
        }
        let Some((url, name)) = sqlx_url(&db) else {
            tracing::warn!(
                url = db.url,
                "registered database has an unsupported URL; skipped"
            );
            continue;
        };
        match Outbox::connect(&url, &config.table, &name).await {
            Ok(o) => {
                let o = o.with_metrics(config.metrics.clone());
                tracing::info!(db = name, table = config.table, "watching outbox");
                keep.insert(key, o);
            }
            Err(e) => tracing::warn!(db = name, error = %e, "outbox database not usable"),
        }
    }
    for gone in outboxes.values() {
        tracing::info!(db = gone.name(), "database no longer registered");
        gone.close().await;
    }
    *outboxes = keep;
    config.metrics.databases(outboxes.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(url: &str, user: &str, password: &str) -> ClientDb {
        ClientDb {
            url: url.into(),
            user_name: user.into(),
            password: password.into(),
            room: "default".into(),
        }
    }

    #[test]
    fn registered_urls_become_sqlx_urls() {
        assert_eq!(
            sqlx_url(&db("mmm://db1:3306", "u", "p@ss/w")).unwrap(),
            (
                "mysql://u:p%40ss%2Fw@db1:3306".to_owned(),
                "mysql://u@db1:3306".to_owned()
            )
        );
        assert_eq!(
            sqlx_url(&db("postgres://db2:5432/shop", "app", ""))
                .unwrap()
                .0,
            "postgres://app@db2:5432/shop"
        );
        assert_eq!(sqlx_url(&db("oracle://db3:1521", "u", "p")), None);
        assert_eq!(sqlx_url(&db("garbage", "u", "p")), None);
    }
}
