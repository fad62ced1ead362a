//! `qmq watchdog`: resends the transactional messages producers left in their outbox tables
//! (see the `qmq-watchdog` crate), one active instance at a time by a lease in the meta
//! database. `qmq standalone` runs one too, on its own meta database and meta server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use qmq_client::{MetaRouter, MetaRouterConfig, Producer, ProducerConfig};
use qmq_watchdog::{ScanOptions, WatchdogConfig, WatchdogHandle, WatchdogMetrics};

/// `watchdog` settings.
#[derive(Args, Debug)]
pub struct WatchdogArgs {
    /// Meta database (`sqlite://…`, `postgres://…` or `mysql://…`): the registered databases
    /// (`qmq tools add-db`) and the watchdogs' lease.
    #[arg(long, env = "QMQ_META_DATABASE_URL")]
    meta_database_url: String,
    /// Meta server HTTP address (`host:port`): resends are routed through it, as applications
    /// route.
    #[arg(long, env = "QMQ_WATCHDOG_META_HTTP")]
    meta_http: String,
    /// Application code resends are registered with.
    #[arg(long, default_value = "qmq-watchdog", env = "QMQ_WATCHDOG_APP_CODE")]
    app_code: String,
    /// Name of this instance in the lease (default: host and process id).
    #[arg(long, env = "QMQ_WATCHDOG_NODE")]
    node: Option<String>,
    /// An instance that has not renewed the lease for this long loses it to another one, in
    /// milliseconds.
    #[arg(long, default_value_t = 5000, env = "QMQ_WATCHDOG_LEASE_MS")]
    lease_ms: u64,
    /// Time between lease calls, in milliseconds; at most a third of `--lease-ms`.
    #[arg(long, default_value_t = 1000, env = "QMQ_WATCHDOG_RENEW_INTERVAL_MS")]
    renew_interval_ms: u64,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none unless given.
    #[arg(long, env = "QMQ_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    scan: ScanArgs,
}

/// What a watchdog scans and how, shared by `watchdog` and (prefixed `watchdog-`) `standalone`.
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Namespace: databases registered with this room are scanned; the lease is
    /// `qmq_watchdog_<namespace>`.
    #[arg(long, default_value = "default", env = "QMQ_WATCHDOG_NAMESPACE")]
    namespace: String,
    /// Outbox table on every registered database.
    #[arg(long, default_value = qmq_client::outbox::DEFAULT_TABLE, env = "QMQ_WATCHDOG_OUTBOX_TABLE")]
    outbox_table: String,
    /// Rows younger than this (by `update_time`) are left to their producer, in milliseconds.
    #[arg(long, default_value_t = 60_000, env = "QMQ_WATCHDOG_GRACE_MS")]
    grace_ms: u64,
    /// Time between scans of every database, in milliseconds.
    #[arg(long, default_value_t = 60_000, env = "QMQ_WATCHDOG_CHECK_INTERVAL_MS")]
    check_interval_ms: u64,
    /// Time between readings of the registered databases, in milliseconds.
    #[arg(
        long,
        default_value_t = 180_000,
        env = "QMQ_WATCHDOG_REFRESH_INTERVAL_MS"
    )]
    refresh_interval_ms: u64,
    /// Most rows resent per second per database.
    #[arg(long, default_value_t = 50, env = "QMQ_WATCHDOG_RATE")]
    rate: u32,
    /// Rows read per query.
    #[arg(long, default_value_t = 50, env = "QMQ_WATCHDOG_BATCH_SIZE")]
    batch_size: u32,
    /// Longest scan of one database, in milliseconds.
    #[arg(long, default_value_t = 180_000, env = "QMQ_WATCHDOG_SCAN_TIMEOUT_MS")]
    scan_timeout_ms: u64,
}

/// The watchdog settings of `standalone`: the same as `watchdog`'s, prefixed `watchdog-`.
#[derive(Args, Debug)]
pub struct StandaloneWatchdogArgs {
    /// Run the transactional-message watchdog in this process (`false`: it neither takes the
    /// lease nor resends; run `qmq watchdog` instead, or none). Standalone only.
    #[arg(
        long = "watchdog-enabled",
        default_value_t = true,
        action = clap::ArgAction::Set,
        env = "QMQ_WATCHDOG_ENABLED"
    )]
    enabled: bool,
    /// Outbox table on every registered database (`watchdog --outbox-table`).
    #[arg(long = "watchdog-outbox-table", default_value = qmq_client::outbox::DEFAULT_TABLE, env = "QMQ_WATCHDOG_OUTBOX_TABLE")]
    outbox_table: String,
    /// Rows younger than this are left to their producer, in milliseconds (`watchdog
    /// --grace-ms`).
    #[arg(
        long = "watchdog-grace-ms",
        default_value_t = 60_000,
        env = "QMQ_WATCHDOG_GRACE_MS"
    )]
    grace_ms: u64,
    /// Time between scans, in milliseconds (`watchdog --check-interval-ms`).
    #[arg(
        long = "watchdog-check-interval-ms",
        default_value_t = 60_000,
        env = "QMQ_WATCHDOG_CHECK_INTERVAL_MS"
    )]
    check_interval_ms: u64,
    /// Time between readings of the registered databases, in milliseconds (`watchdog
    /// --refresh-interval-ms`).
    #[arg(
        long = "watchdog-refresh-interval-ms",
        default_value_t = 180_000,
        env = "QMQ_WATCHDOG_REFRESH_INTERVAL_MS"
    )]
    refresh_interval_ms: u64,
}

impl ScanArgs {
    fn apply(&self, c: &mut WatchdogConfig) {
        c.namespace = self.namespace.clone();
        c.table = self.outbox_table.clone();
        c.check_interval = Duration::from_millis(self.check_interval_ms);
        c.refresh_interval = Duration::from_millis(self.refresh_interval_ms);
        c.scan = ScanOptions {
            grace: Duration::from_millis(self.grace_ms),
            batch_size: self.batch_size,
            rate: self.rate,
            timeout: Duration::from_millis(self.scan_timeout_ms),
        };
    }
}

/// A producer routing through the meta server at `meta_http`.
fn producer(meta_http: &str, app_code: &str) -> Arc<Producer> {
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(meta_http, app_code)));
    Arc::new(Producer::new(router, ProducerConfig::default()))
}

/// Prints a line on stdout whenever the instance becomes or stops being the leader.
fn announce(handle: &WatchdogHandle, node: String) -> tokio::task::JoinHandle<()> {
    let mut leadership = handle.leadership();
    tokio::spawn(async move {
        while leadership.changed().await.is_ok() {
            let role = if *leadership.borrow_and_update() {
                "leader"
            } else {
                "follower"
            };
            println!("qmq watchdog {role} node={node}");
        }
    })
}

/// Runs `qmq watchdog` until SIGINT/SIGTERM.
pub async fn run(args: WatchdogArgs) -> anyhow::Result<()> {
    if args.lease_ms == 0 || args.renew_interval_ms.saturating_mul(3) > args.lease_ms {
        bail!(
            "--renew-interval-ms {} must be at most a third of --lease-ms {} (a leader must \
             renew several times per lease)",
            args.renew_interval_ms,
            args.lease_ms
        );
    }
    qmq_client::outbox::check_table(&args.scan.outbox_table).context("--outbox-table")?;
    let store = qmq_meta::store::Store::connect(&args.meta_database_url)
        .await
        .context("opening the meta database")?;
    let mut config = WatchdogConfig {
        lease: Duration::from_millis(args.lease_ms),
        renew_interval: Duration::from_millis(args.renew_interval_ms),
        ..WatchdogConfig::default()
    };
    if let Some(node) = &args.node {
        config.node = node.clone();
    }
    args.scan.apply(&mut config);
    let registry = args.metrics_listen.map(|_| qmq_metrics::Registry::new());
    if let Some(r) = &registry {
        config.metrics = Arc::new(WatchdogMetrics::new(r));
    }
    let metrics = crate::servers::serve_metrics(args.metrics_listen, registry).await?;
    let node = config.node.clone();
    let producer = producer(&args.meta_http, &args.app_code);
    let handle = qmq_watchdog::start(config, store.clone(), producer.clone());
    let announcer = announce(&handle, node.clone());
    println!("qmq watchdog ready node={node}");
    crate::servers::wait_for_signal().await?;
    handle.shutdown().await;
    announcer.abort();
    producer.close().await;
    crate::servers::stop_metrics(metrics).await;
    store.close().await;
    Ok(())
}

/// The watchdog of `standalone`.
pub struct StandaloneWatchdog {
    handle: WatchdogHandle,
    producer: Arc<Producer>,
}

impl StandaloneWatchdog {
    /// Starts the watchdog of `standalone` on its meta database, resending through its meta
    /// server (namespace `default`, QMQ's lease and renewal times), with its metrics in
    /// `registry` when given; `None` with `--watchdog-enabled false`.
    pub fn start(
        args: &StandaloneWatchdogArgs,
        store: qmq_meta::store::Store,
        meta_http: &str,
        registry: Option<&qmq_metrics::Registry>,
    ) -> anyhow::Result<Option<Self>> {
        if !args.enabled {
            tracing::info!("the watchdog is off (--watchdog-enabled false)");
            return Ok(None);
        }
        qmq_client::outbox::check_table(&args.outbox_table).context("--watchdog-outbox-table")?;
        let mut config = WatchdogConfig {
            table: args.outbox_table.clone(),
            check_interval: Duration::from_millis(args.check_interval_ms),
            refresh_interval: Duration::from_millis(args.refresh_interval_ms),
            ..WatchdogConfig::default()
        };
        config.scan.grace = Duration::from_millis(args.grace_ms);
        if let Some(r) = registry {
            config.metrics = Arc::new(WatchdogMetrics::new(r));
        }
        let producer = producer(meta_http, "qmq-watchdog");
        Ok(Some(Self {
            handle: qmq_watchdog::start(config, store, producer.clone()),
            producer,
        }))
    }

    /// Stops the watchdog (giving the lease up) and closes its producer.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        self.producer.close().await;
    }
}
