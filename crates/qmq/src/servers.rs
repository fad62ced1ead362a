//! Server subcommands: `standalone`, `meta` and `broker`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use qmq_broker::{BrokerConfig, BrokerControl};
use qmq_meta::MetaConfig;
use qmq_protocol::{BrokerRequestType, BrokerRole, BrokerState};
use qmq_store::{FlushPolicy, ResetTo, StoreConfig};

use crate::directives;
use crate::otlp::{self, Export, OtlpArgs};

/// When an acknowledged send is durable.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Flush {
    /// Acknowledge after writing; fsync every `--flush-interval-ms` (fast; a machine crash may
    /// lose the last interval of messages).
    Async,
    /// Acknowledge only after fsync (a crash loses nothing acknowledged).
    Sync,
}

/// The cluster secret, shared by `meta`, `broker`, `delay` and `standalone`.
#[derive(Args, Debug)]
pub struct SecretArgs {
    /// Secret that brokers and delay servers present when they register with the meta server.
    /// A meta server with a secret refuses registrations (online, heartbeat, offline) without
    /// it, except from `--trusted-broker-addr`. `standalone` generates one when none is given.
    #[arg(long, env = "QMQ_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
}

/// Broker settings shared by `broker` and `standalone`.
#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// Data directory.
    #[arg(long, default_value = "./qmq-data", env = "QMQ_DATA_DIR")]
    data_dir: PathBuf,
    /// Address for clients.
    #[arg(long, default_value = "0.0.0.0:20881", env = "QMQ_BROKER_LISTEN")]
    listen: SocketAddr,
    /// Address registered with the meta server (default: the meta server's advertised host and
    /// the listen port).
    #[arg(long)]
    advertise: Option<String>,
    /// Broker group name.
    #[arg(long, default_value = "broker-1")]
    group: String,
    /// Durability of acknowledged sends.
    #[arg(long, value_enum, default_value = "async")]
    flush: Flush,
    /// fsync interval for `--flush async`, in milliseconds.
    #[arg(long, default_value_t = 10)]
    flush_interval_ms: u64,
    /// Message-log retention, in hours.
    #[arg(long, default_value_t = 72)]
    retention_hours: u64,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Seconds a message stays in a `%RETRY%` subject before it is served (QMQ's
    /// `message.retry.delay.seconds`).
    #[arg(long, default_value_t = 5)]
    retry_delay_secs: u64,
    /// Seconds a stored message id is remembered per subject: the same id sent again within
    /// them is answered DUPLICATE (a success to QMQ clients) and not stored twice. 0 turns the
    /// duplicate window off.
    #[arg(long, default_value_t = 120)]
    dedup_window_secs: u64,
    /// Most message ids the duplicate window holds across subjects (oldest evicted first;
    /// at most about 72 bytes each).
    #[arg(long, default_value_t = 1_000_000)]
    dedup_window_max_ids: usize,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none unless given. `standalone`
    /// serves the metrics of all its servers there.
    #[arg(long, env = "QMQ_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Where a consumer group new to this broker starts, unless its pull asks (QMQ: latest).
    #[arg(long, value_enum, default_value = "latest")]
    new_group_start: StartFrom,
    /// Testing only (hidden): message-log retention in seconds, overriding `--retention-hours`,
    /// so a process test can see segments deleted.
    #[arg(long, hide = true)]
    test_retention_secs: Option<u64>,
    /// Testing only (hidden): message-log and action-log segment size in bytes (tiny
    /// segments let retention delete some quickly).
    #[arg(long, hide = true)]
    test_segment_bytes: Option<u64>,
    /// Testing only (hidden): time between checkpoints (and retention passes), in
    /// milliseconds.
    #[arg(long, hide = true)]
    test_checkpoint_interval_ms: Option<u64>,
}

/// Where a new consumer group starts.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StartFrom {
    /// At the oldest stored message.
    Earliest,
    /// After the newest message: only messages stored from now on.
    Latest,
}

impl From<StartFrom> for ResetTo {
    fn from(s: StartFrom) -> Self {
        match s {
            StartFrom::Earliest => ResetTo::Earliest,
            StartFrom::Latest => ResetTo::Latest,
        }
    }
}

/// `broker` settings.
#[derive(Args, Debug)]
pub struct BrokerOnlyArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    secret: SecretArgs,
    /// Meta server TCP address to register and heartbeat with (host:port).
    #[arg(long)]
    meta: Option<String>,
    /// Meta server HTTP address (host:port) to take readonly marks and reset-offset requests from.
    #[arg(long)]
    meta_http: Option<String>,
    #[command(flatten)]
    replication: ReplicationArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
}

/// Replication of a broker group (`broker` only; `standalone` never replicates).
#[derive(Args, Debug)]
pub struct ReplicationArgs {
    /// `off`: an unreplicated master registering itself with `--meta` (as before).
    /// `async`/`sync`: a member of a replicated group whose role (master or slave) the meta
    /// server assigns from its `broker` rows (`qmq tools add-broker`); needs `--meta`.
    /// `sync` answers a send only once the slave has written it.
    #[arg(long, value_enum, default_value = "off")]
    replication: Replication,
    /// With `--replication sync`: how long a send waits for the slave, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    replication_timeout_ms: u64,
    /// With `--replication sync`: what a send that waited that long gets: `fail` (an error per
    /// message: stored on the master only, a retry may duplicate) or `async` (acknowledged, with a
    /// warning, until the slave catches up).
    #[arg(long, value_enum, default_value = "fail")]
    on_replication_timeout: OnTimeout,
    /// Address of the sync port (slaves copy from it).
    #[arg(long, default_value = "0.0.0.0:20882")]
    sync_listen: SocketAddr,
    /// Hostname of this server's `broker` row (default: $HOSTNAME, else 127.0.0.1).
    #[arg(long)]
    hostname: Option<String>,
    /// Client port of this server's `broker` row (default: the listen port).
    #[arg(long)]
    serve_port: Option<u16>,
    /// Time between lease calls to the meta server, in milliseconds.
    #[arg(long, default_value_t = 500)]
    lease_renew_ms: u64,
}

/// Replication mode of `broker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Replication {
    /// No replication.
    Off,
    /// Acknowledge once stored on the master.
    Async,
    /// Acknowledge once the slave has written it too.
    Sync,
}

/// What a synchronously replicated send gets when the slave is late.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnTimeout {
    /// An error per message.
    Fail,
    /// Success, running asynchronously until the slave catches up.
    Async,
}

/// Meta server settings shared by `meta` and `standalone`.
#[derive(Args, Debug)]
pub struct MetaArgs {
    /// HTTP address: client discovery (`GET /meta/address`) and the admin API.
    #[arg(long, default_value = "0.0.0.0:8080", env = "QMQ_META_HTTP_LISTEN")]
    meta_http_listen: SocketAddr,
    /// TCP address for the QMQ meta protocol.
    #[arg(long, default_value = "0.0.0.0:20880", env = "QMQ_META_TCP_LISTEN")]
    meta_tcp_listen: SocketAddr,
    /// Meta database: `postgres://…` or `mysql://…`; default: SQLite under the data directory.
    #[arg(long, env = "QMQ_META_DATABASE_URL")]
    database_url: Option<String>,
    /// Host clients use to reach this machine (default: the bind IP, or the outbound IP).
    #[arg(long)]
    advertised_host: Option<String>,
    /// Admin API token (repeat for several); without one the admin API refuses every call.
    #[arg(long = "admin-token", env = "QMQ_ADMIN_TOKENS", value_delimiter = ',')]
    admin_tokens: Vec<String>,
    /// IP address allowed to register brokers without the cluster secret (repeat for several),
    /// for Java servers, which cannot send it. With neither a secret nor a trusted address,
    /// anyone reaching the TCP port may register brokers (as in QMQ).
    #[arg(
        long = "trusted-broker-addr",
        env = "QMQ_TRUSTED_BROKER_ADDRS",
        value_delimiter = ','
    )]
    trusted_broker_addrs: Vec<IpAddr>,
    /// Broker groups a realtime subject's route gets and is topped up to (QMQ's
    /// `min.group.num`); fewer while fewer are alive. A group an operator removed from a route
    /// with remove-subject-broker-group is never put back by the top-up.
    #[arg(
        long,
        default_value_t = 2,
        env = "QMQ_META_MIN_GROUP_NUM",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    min_group_num: u32,
}

/// `meta` settings.
#[derive(Args, Debug)]
pub struct MetaOnlyArgs {
    #[command(flatten)]
    meta: MetaArgs,
    #[command(flatten)]
    secret: SecretArgs,
    /// Data directory (for the embedded SQLite database).
    #[arg(long, default_value = "./qmq-data", env = "QMQ_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none unless given.
    #[arg(long, env = "QMQ_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// Delay server settings shared by `delay` and `standalone`.
#[derive(Args, Debug)]
pub struct DelayArgs {
    /// Address for delay/scheduled messages.
    #[arg(long, default_value = "0.0.0.0:20801", env = "QMQ_DELAY_LISTEN")]
    delay_listen: SocketAddr,
    /// Delay group name registered with the meta server.
    #[arg(long, default_value = "delay-1")]
    delay_group: String,
}

/// `standalone` settings.
#[derive(Args, Debug)]
pub struct StandaloneArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    meta: MetaArgs,
    #[command(flatten)]
    delay: DelayArgs,
    #[command(flatten)]
    secret: SecretArgs,
    /// Largest message the delay server accepts, in bytes (default: the broker's
    /// `--max-message-bytes`). Larger than the broker's is refused at start-up: such messages
    /// could never be delivered.
    #[arg(long)]
    delay_max_message_bytes: Option<usize>,
    #[command(flatten)]
    watchdog: crate::watchdog::StandaloneWatchdogArgs,
    #[command(flatten)]
    backup: crate::backup::StandaloneBackupArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
}

/// `delay` settings.
#[derive(Args, Debug)]
pub struct DelayOnlyArgs {
    #[command(flatten)]
    delay: DelayArgs,
    #[command(flatten)]
    secret: SecretArgs,
    /// Data directory.
    #[arg(long, default_value = "./qmq-data", env = "QMQ_DATA_DIR")]
    data_dir: PathBuf,
    /// Broker (host:port) that due messages are forwarded to, when no `--meta-http` is given.
    #[arg(long, default_value = "127.0.0.1:20881")]
    broker: String,
    /// Meta server HTTP address (host:port): forward each subject to the brokers it routes to.
    #[arg(long)]
    meta_http: Option<String>,
    /// Meta server TCP address to register with as a delay group.
    #[arg(long)]
    meta: Option<String>,
    /// Host registered with the meta server (with the listen port).
    #[arg(long, default_value = "127.0.0.1")]
    advertised_host: String,
    /// Largest message accepted, in bytes. Keep it at most the brokers' `--max-message-bytes`
    /// (default, as theirs, 4 MiB): a larger message could never be delivered and would end
    /// in its dead-letter subject.
    #[arg(long, default_value_t = qmq_delay::config::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none unless given.
    #[arg(long, env = "QMQ_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    replication: DelayReplicationArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
}

/// Replication of a delay group (`delay` only).
#[derive(Args, Debug)]
pub struct DelayReplicationArgs {
    /// `off`: an unreplicated delay server registering itself with `--meta` as a delay master
    /// (as before). `async`/`sync`: a member of a replicated delay group whose role the meta
    /// server assigns from its `broker` rows (roles 5 and 6, `qmq tools add-broker`); needs
    /// `--meta`. `sync` answers a send only once the slave has written it.
    #[arg(long, value_enum, default_value = "off")]
    replication: Replication,
    /// With `--replication sync`: how long a send waits for the slave, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    replication_timeout_ms: u64,
    /// With `--replication sync`: what a send that waited that long gets (`fail`: an error per
    /// message; `async`: acknowledged, with a warning, until the slave catches up).
    #[arg(long, value_enum, default_value = "fail")]
    on_replication_timeout: OnTimeout,
    /// Address of the sync port (the slave copies from it).
    #[arg(long, default_value = "0.0.0.0:20802")]
    sync_listen: SocketAddr,
    /// Hostname of this server's `broker` row (default: $HOSTNAME, else 127.0.0.1).
    #[arg(long)]
    hostname: Option<String>,
    /// Client port of this server's `broker` row (default: the `--delay-listen` port).
    #[arg(long)]
    serve_port: Option<u16>,
    /// Time between lease calls to the meta server, in milliseconds.
    #[arg(long, default_value_t = 500)]
    lease_renew_ms: u64,
}

/// A running delay server and its heartbeat to the meta server.
struct Delay {
    server: qmq_delay::ServerHandle,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The delay data directory's lock, released after the server has shut down.
    _lock: qmq_store::DirLock,
}

impl Delay {
    /// Starts a delay server handing due messages to `dispatcher` (and recording its metrics
    /// in `metrics`, if given); with a meta server (TCP address), registers it as a delay
    /// group at `host`:(bound port) before returning, presenting `secret` if there is one.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        args: &DelayArgs,
        max_message_bytes: usize,
        data_dir: &Path,
        dispatcher: Arc<dyn qmq_delay::Dispatcher>,
        meta: Option<String>,
        host: &str,
        secret: Option<String>,
        metrics: Option<Arc<qmq_delay::DelayMetrics>>,
        trace_spans: bool,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("delay");
        let lock = qmq_store::DirLock::acquire(&dir).context("starting the delay server")?;
        let mut config = qmq_delay::ServerConfig::new(dir);
        config.listen = args.delay_listen;
        config.delay.max_message_bytes = max_message_bytes;
        config.delay.metrics = metrics;
        config.delay.trace_spans = trace_spans;
        let server = qmq_delay::serve(config, Arc::new(qmq_delay::SystemClock), dispatcher)
            .await
            .context("starting the delay server")?;
        let heartbeat = match meta {
            Some(meta) => {
                let reg = qmq_broker::registration::Registration {
                    meta,
                    group: args.delay_group.clone(),
                    address: format!("{host}:{}", server.local_addr().port()),
                    role: BrokerRole::DelayMaster,
                    secret,
                };
                // Like the broker: a failed registration is retried by the heartbeat loop (for
                // example while the meta server still sees an earlier process alive).
                let online = reg
                    .register(BrokerRequestType::Online, BrokerState::ReadWrite)
                    .await;
                if let Err(e) = &online {
                    tracing::warn!(error = %e, "delay server registration failed; retrying");
                }
                let beat = reg.heartbeat_loop(Duration::from_secs(10), online.is_ok(), || {
                    BrokerState::ReadWrite
                });
                Some(tokio::spawn(beat))
            }
            None => None,
        };
        Ok(Self {
            server,
            heartbeat,
            _lock: lock,
        })
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(h) = self.heartbeat {
            h.abort();
        }
        self.server
            .shutdown()
            .await
            .context("shutting the delay server down")
    }
}

/// The delay server's largest message in `standalone`: `--delay-max-message-bytes`, else the
/// broker's `--max-message-bytes`. One larger than the broker's is refused before anything
/// starts, since the broker would refuse every such message when it falls due.
fn standalone_delay_max(delay: Option<usize>, broker: usize) -> anyhow::Result<usize> {
    let config = qmq_delay::DelayConfig {
        max_message_bytes: delay.unwrap_or(broker),
        ..qmq_delay::DelayConfig::default()
    };
    config
        .validate()
        .and_then(|()| config.check_broker_limits(broker))
        .context(
            "refusing to start: --delay-max-message-bytes must not exceed --max-message-bytes",
        )?;
    Ok(config.max_message_bytes)
}

/// A dispatcher sending each due message to the brokers the meta server at `meta_http` routes
/// its subject to.
fn routed(meta_http: &str) -> Arc<dyn qmq_delay::Dispatcher> {
    let config = qmq_client::MetaRouterConfig::new(meta_http, "qmq-delay");
    let router = Arc::new(qmq_client::MetaRouter::new(config));
    Arc::new(qmq_delay::RoutedForwarder::new(router))
}

/// Runs a delay server until SIGINT/SIGTERM (exporting spans over OTLP if asked to).
pub async fn delay(args: DelayOnlyArgs) -> anyhow::Result<()> {
    let export = Export::install(&args.otlp, "qmq-delay")?;
    let ran = delay_server(args).await;
    otlp::shutdown(export).await;
    ran
}

async fn delay_server(args: DelayOnlyArgs) -> anyhow::Result<()> {
    let dispatcher: Arc<dyn qmq_delay::Dispatcher> = match &args.meta_http {
        Some(http) => routed(http),
        None => Arc::new(qmq_delay::BrokerForwarder::new(args.broker.clone())),
    };
    if args.replication.replication != Replication::Off {
        return replicated_delay(args, dispatcher).await;
    }
    let registry = args.metrics_listen.map(|_| qmq_metrics::Registry::new());
    let delay = Delay::start(
        &args.delay,
        args.max_message_bytes,
        &args.data_dir,
        dispatcher,
        args.meta.clone(),
        &args.advertised_host,
        args.secret.cluster_secret.clone(),
        registry.as_ref().map(qmq_delay::DelayMetrics::new),
        args.otlp.enabled(),
    )
    .await?;
    let metrics = serve_metrics(args.metrics_listen, registry).await?;
    println!("qmq delay ready on {}", delay.server.local_addr());
    wait_for_signal().await?;
    stop_metrics(metrics).await;
    delay.shutdown().await
}

/// Runs a member of a replicated delay group until SIGINT/SIGTERM, printing a line each time
/// its role changes (`qmq delay master epoch=N addr=… sync=…`, `qmq delay slave epoch=N …`).
async fn replicated_delay(
    args: DelayOnlyArgs,
    dispatcher: Arc<dyn qmq_delay::Dispatcher>,
) -> anyhow::Result<()> {
    use qmq_delay::replication::{node, Gate};
    let r = &args.replication;
    let meta = args
        .meta
        .clone()
        .context("--replication needs --meta (the meta server assigns the roles)")?;
    let dir = args.data_dir.join("delay");
    let _lock = qmq_store::DirLock::acquire(&dir).context("starting the delay server")?;
    let mut server = qmq_delay::ServerConfig::new(dir);
    server.listen = args.delay.delay_listen;
    server.delay.max_message_bytes = args.max_message_bytes;
    let registry = args.metrics_listen.map(|_| qmq_metrics::Registry::new());
    server.delay.metrics = registry.as_ref().map(qmq_delay::DelayMetrics::new);
    server.delay.trace_spans = args.otlp.enabled();
    let mode = replication_mode(
        r.replication,
        r.replication_timeout_ms,
        r.on_replication_timeout,
    );
    let config = node::NodeConfig {
        lease: lease_client(
            meta,
            r.hostname.clone(),
            r.serve_port.unwrap_or(args.delay.delay_listen.port()),
            args.secret.cluster_secret.clone(),
        ),
        sync_listen: r.sync_listen,
        mode,
        renew_every: Duration::from_millis(r.lease_renew_ms.max(10)),
        sync: qmq_delay::replication::sync_server::SyncSettings::default(),
        server,
    };
    let gate = Arc::new(Gate::new(mode));
    let (status, changes) = tokio::sync::watch::channel(qmq_replication::NodeStatus::Starting);
    if let Some(m) = &config.server.delay.metrics {
        m.observe_replication(gate.clone(), changes.clone());
    }
    let metrics = serve_metrics(args.metrics_listen, registry).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(node::run(
        config,
        Arc::new(qmq_delay::SystemClock),
        dispatcher,
        gate,
        status,
        stop.clone(),
    ));
    let ran = run_node("delay", running, changes, stop).await;
    stop_metrics(metrics).await;
    ran
}

impl BrokerArgs {
    fn config(&self, meta: Option<String>, secret: Option<String>) -> BrokerConfig {
        let mut store = StoreConfig::new(self.data_dir.join("broker"));
        store.flush = match self.flush {
            Flush::Async => FlushPolicy::Async {
                interval: Duration::from_millis(self.flush_interval_ms),
            },
            Flush::Sync => FlushPolicy::SyncBeforeAck,
        };
        store.retention = Duration::from_secs(self.retention_hours * 3600);
        if let Some(secs) = self.test_retention_secs {
            store.retention = Duration::from_secs(secs);
        }
        if let Some(bytes) = self.test_segment_bytes {
            store.segment_size = bytes;
            store.action_segment_size = bytes;
        }
        if let Some(ms) = self.test_checkpoint_interval_ms {
            store.checkpoint_interval = Duration::from_millis(ms);
        }
        let mut c = BrokerConfig::new(store);
        c.listen = self.listen;
        c.advertised = self.advertise.clone();
        c.group = self.group.clone();
        c.meta = meta;
        c.cluster_secret = secret;
        c.max_message_bytes = self.max_message_bytes;
        c.retry_delay = Duration::from_secs(self.retry_delay_secs);
        c.dedup_window = Duration::from_secs(self.dedup_window_secs);
        c.dedup_window_max_ids = self.dedup_window_max_ids;
        c.new_group_start = self.new_group_start.into();
        c
    }

    /// With `--metrics-listen`: a registry with the broker's metrics in it, and `config` set
    /// to record them.
    fn metrics(&self, config: &mut BrokerConfig) -> Option<qmq_metrics::Registry> {
        self.metrics_listen?;
        let registry = qmq_metrics::Registry::new();
        config.metrics = Some(qmq_broker::BrokerMetrics::new(&registry));
        Some(registry)
    }
}

impl MetaArgs {
    fn config(&self, data_dir: &Path, secret: Option<String>) -> MetaConfig {
        MetaConfig {
            data_dir: data_dir.join("meta"),
            database_url: self.database_url.clone(),
            http_addr: self.meta_http_listen,
            tcp_addr: self.meta_tcp_listen,
            advertised_host: self.advertised_host.clone(),
            admin_tokens: self.admin_tokens.clone(),
            cluster_secret: secret,
            trusted_broker_addrs: self.trusted_broker_addrs.clone(),
            min_group_num: usize::try_from(self.min_group_num).unwrap_or(usize::MAX),
            ..MetaConfig::default()
        }
    }
}

/// With `--metrics-listen` (`listen`): serves `registry` there and prints `qmq metrics on
/// <bound address>` (operators and tests read it; port 0 picks a free port).
pub(crate) async fn serve_metrics(
    listen: Option<SocketAddr>,
    registry: Option<qmq_metrics::Registry>,
) -> anyhow::Result<Option<qmq_metrics::MetricsServer>> {
    let (Some(listen), Some(registry)) = (listen, registry) else {
        return Ok(None);
    };
    let server = qmq_metrics::serve(listen, registry)
        .await
        .with_context(|| format!("serving metrics on {listen} (--metrics-listen)"))?;
    println!("qmq metrics on {}", server.addr());
    Ok(Some(server))
}

/// Stops the metrics endpoint, if there is one.
pub(crate) async fn stop_metrics(server: Option<qmq_metrics::MetricsServer>) {
    if let Some(s) = server {
        s.shutdown().await;
    }
}

/// Runs a broker until SIGINT/SIGTERM, then shuts it down cleanly (flush + checkpoint; then
/// the spans still buffered for OTLP export, if asked to export).
pub async fn broker(args: BrokerOnlyArgs) -> anyhow::Result<()> {
    let export = Export::install(&args.otlp, "qmq-broker")?;
    let ran = broker_server(args).await;
    otlp::shutdown(export).await;
    ran
}

async fn broker_server(args: BrokerOnlyArgs) -> anyhow::Result<()> {
    if args.replication.replication != Replication::Off {
        return replicated_broker(args).await;
    }
    let mut config = args
        .broker
        .config(args.meta.clone(), args.secret.cluster_secret.clone());
    config.trace_spans = args.otlp.enabled();
    let registry = args.broker.metrics(&mut config);
    let data_dir = config.store.dir.clone();
    let handle = qmq_broker::serve(config)
        .await
        .context("starting the broker")?;
    let metrics = serve_metrics(args.broker.metrics_listen, registry).await?;
    let poller = args.meta_http.map(|http| {
        tokio::spawn(follow_directives(
            http,
            args.broker.group.clone(),
            data_dir,
            handle.control(),
        ))
    });
    println!("qmq broker ready on {}", handle.addr());
    wait_for_signal().await?;
    if let Some(p) = poller {
        p.abort();
    }
    stop_metrics(metrics).await;
    handle
        .shutdown()
        .await
        .context("shutting the broker down")?;
    Ok(())
}

/// Runs a member of a replicated broker group until SIGINT/SIGTERM, printing a line each time
/// its role changes.
async fn replicated_broker(args: BrokerOnlyArgs) -> anyhow::Result<()> {
    use qmq_broker::replication::{self, node};
    let r = &args.replication;
    let meta = args
        .meta
        .clone()
        .context("--replication needs --meta (the meta server assigns the roles)")?;
    let mut broker = args.broker.config(None, None);
    broker.trace_spans = args.otlp.enabled();
    let registry = args.broker.metrics(&mut broker);
    let metrics = serve_metrics(args.broker.metrics_listen, registry).await?;
    let mode = replication_mode(
        r.replication,
        r.replication_timeout_ms,
        r.on_replication_timeout,
    );
    let config = node::NodeConfig {
        lease: lease_client(
            meta,
            r.hostname.clone(),
            r.serve_port.unwrap_or(args.broker.listen.port()),
            args.secret.cluster_secret.clone(),
        ),
        sync_listen: r.sync_listen,
        mode,
        renew_every: Duration::from_millis(r.lease_renew_ms.max(10)),
        sync: replication::sync_server::SyncSettings::default(),
        broker,
    };
    let gate = Arc::new(replication::Gate::new(mode));
    let (status, changes) = tokio::sync::watch::channel(qmq_replication::NodeStatus::Starting);
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(node::run(config, gate, status, stop.clone()));
    let ran = run_node("broker", running, changes, stop).await;
    stop_metrics(metrics).await;
    ran
}

/// The acknowledgement mode `--replication`, `--replication-timeout-ms` and
/// `--on-replication-timeout` ask for (`off` never gets here).
fn replication_mode(
    replication: Replication,
    timeout_ms: u64,
    on_timeout: OnTimeout,
) -> qmq_replication::ReplicationMode {
    use qmq_replication::{ReplicationMode, SyncTimeout};
    match replication {
        Replication::Sync => ReplicationMode::Sync {
            timeout: Duration::from_millis(timeout_ms),
            on_timeout: match on_timeout {
                OnTimeout::Fail => SyncTimeout::Fail,
                OnTimeout::Async => SyncTimeout::Async,
            },
        },
        Replication::Async | Replication::Off => ReplicationMode::Async,
    }
}

/// Who this server is to the meta server: the `broker` row of `hostname` (default: $HOSTNAME,
/// else 127.0.0.1) and `serve_port`.
fn lease_client(
    meta: String,
    hostname: Option<String>,
    serve_port: u16,
    secret: Option<String>,
) -> qmq_replication::LeaseClient {
    qmq_replication::LeaseClient {
        meta,
        hostname: hostname.unwrap_or_else(|| qmq_transport::identity::local_host().to_owned()),
        serve_port: i32::from(serve_port),
        secret,
    }
}

/// Runs a replicated `what` server (`broker`, `delay`) until SIGINT/SIGTERM or until it fails,
/// printing its status line each time its role changes; then stops it and waits for it.
async fn run_node<E>(
    what: &str,
    mut running: tokio::task::JoinHandle<Result<(), E>>,
    mut changes: tokio::sync::watch::Receiver<qmq_replication::NodeStatus>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Some(line) = changes.borrow_and_update().line(what) {
                    println!("{line}");
                }
            }
            signal = wait_for_signal() => {
                signal?;
                break;
            }
            ended = &mut running => {
                return ended
                    .with_context(|| format!("{what} task failed"))?
                    .with_context(|| format!("running the {what} server"));
            }
        }
    }
    stop.cancel();
    running
        .await
        .with_context(|| format!("{what} task failed"))?
        .with_context(|| format!("shutting the {what} server down"))
}

/// Runs a meta server until SIGINT/SIGTERM.
pub async fn meta(args: MetaOnlyArgs) -> anyhow::Result<()> {
    let mut config = args
        .meta
        .config(&args.data_dir, args.secret.cluster_secret.clone());
    let registry = args.metrics_listen.map(|_| qmq_metrics::Registry::new());
    config.metrics = registry.as_ref().map(qmq_meta::MetaMetrics::new);
    let handle = qmq_meta::serve(config)
        .await
        .context("starting the meta server")?;
    let metrics = serve_metrics(args.metrics_listen, registry).await?;
    println!(
        "qmq meta ready: http {} tcp {}",
        handle.http_addr(),
        handle.advertised_tcp_address()
    );
    wait_for_signal().await?;
    stop_metrics(metrics).await;
    handle.shutdown().await;
    Ok(())
}

/// A random cluster secret (256 bits, hex) for a standalone process that was given none: its
/// broker and delay server use it, and nobody else can register with its meta server (except
/// from `--trusted-broker-addr`).
fn generated_secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs meta server + broker in one process until SIGINT/SIGTERM. The broker registers with
/// the meta server before "ready" is printed, so clients find a route at once.
pub async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let export = Export::install(&args.otlp, "qmq-standalone")?;
    let ran = standalone_servers(args).await;
    otlp::shutdown(export).await;
    ran
}

async fn standalone_servers(args: StandaloneArgs) -> anyhow::Result<()> {
    let delay_max =
        standalone_delay_max(args.delay_max_message_bytes, args.broker.max_message_bytes)?;
    let data_dir = args.broker.data_dir.clone();
    let secret = args
        .secret
        .cluster_secret
        .clone()
        .unwrap_or_else(generated_secret);
    // Before anything touches the directory (the meta server's database first).
    let _lock = qmq_store::DirLock::acquire(&data_dir).context("locking the data directory")?;
    // One registry for the metrics of all three servers.
    let registry = args
        .broker
        .metrics_listen
        .map(|_| qmq_metrics::Registry::new());
    let mut meta_config = args.meta.config(&data_dir, Some(secret.clone()));
    meta_config.metrics = registry.as_ref().map(qmq_meta::MetaMetrics::new);
    let meta = qmq_meta::serve(meta_config)
        .await
        .context("starting the meta server")?;
    let meta_tcp = format!("127.0.0.1:{}", meta.tcp_addr().port());
    let mut config = args
        .broker
        .config(Some(meta_tcp.clone()), Some(secret.clone()));
    let host = meta
        .advertised_tcp_address()
        .rsplit_once(':')
        .map_or("127.0.0.1".to_owned(), |(h, _)| h.to_owned());
    if config.advertised.is_none() {
        config.advertised = Some(format!("{host}:{}", config.listen.port()));
    }
    config.metrics = registry.as_ref().map(qmq_broker::BrokerMetrics::new);
    config.trace_spans = args.otlp.enabled();
    let broker = qmq_broker::serve(config)
        .await
        .context("starting the broker")?;
    let meta_http = format!("127.0.0.1:{}", meta.http_addr().port());
    let delay = Delay::start(
        &args.delay,
        delay_max,
        &data_dir,
        routed(&meta_http),
        Some(meta_tcp),
        &host,
        Some(secret),
        registry.as_ref().map(qmq_delay::DelayMetrics::new),
        args.otlp.enabled(),
    )
    .await?;
    let poller = tokio::spawn(follow_directives(
        meta_http,
        args.broker.group.clone(),
        data_dir.join("broker"),
        broker.control(),
    ));
    // The transactional-message watchdog: idle until a database is registered (`tools add-db`).
    let watchdog = crate::watchdog::StandaloneWatchdog::start(
        &args.watchdog,
        meta.store().clone(),
        &format!("127.0.0.1:{}", meta.http_addr().port()),
        registry.as_ref(),
    )?;
    // The message index of this broker, queried over HTTP (`--backup-enabled false`: none).
    let backup = crate::backup::StandaloneBackup::start(
        &args.backup,
        &data_dir,
        &args.broker.group,
        &broker,
        (&args.delay.delay_group, delay.server.engine()),
        &args.meta.admin_tokens,
        registry.as_ref(),
    )
    .await?;
    let metrics = serve_metrics(args.broker.metrics_listen, registry).await?;
    println!(
        "qmq standalone ready: broker {} meta http {} tcp {} delay {}{}",
        broker.addr(),
        meta.http_addr(),
        meta.tcp_addr(),
        delay.server.local_addr(),
        backup
            .as_ref()
            .map_or_else(String::new, |b| format!(" backup {}", b.http_addr()))
    );
    wait_for_signal().await?;
    poller.abort();
    if let Some(b) = backup {
        b.shutdown().await;
    }
    if let Some(w) = watchdog {
        w.shutdown().await;
    }
    stop_metrics(metrics).await;
    delay.shutdown().await?;
    broker
        .shutdown()
        .await
        .context("shutting the broker down")?;
    meta.shutdown().await;
    Ok(())
}

/// Applies the meta server's readonly marks and reset-offset requests to the broker, polling
/// every few seconds. The last applied reset id is kept in `<dir>/directives.json` (see
/// [`crate::directives`]) so each request is applied once, across restarts; an unusable record
/// applies no past request.
async fn follow_directives(meta_http: String, group: String, dir: PathBuf, broker: BrokerControl) {
    let state_file = dir.join(directives::FILE);
    let mut start = {
        let path = state_file.clone();
        tokio::task::spawn_blocking(move || directives::load(&path))
            .await
            .unwrap_or(directives::Start::Latest)
    };
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tick.tick().await;
        let after = match start {
            directives::Start::After(id) => id,
            directives::Start::Latest => 0,
        };
        let d = match qmq_meta::broker_api::fetch_directives(&meta_http, &group, after).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "fetching meta directives failed");
                continue;
            }
        };
        broker.set_readonly_subjects(d.readonly_subjects.clone());
        let mut applied = after;
        let mut failed = false;
        for r in directives::to_apply(start, &d) {
            let to = match r.action {
                qmq_meta::model::ResetAction::Earliest => ResetTo::Earliest,
                qmq_meta::model::ResetAction::Latest => ResetTo::Latest,
            };
            match broker.reset_offset(&r.subject, &r.consumer_group, to).await {
                Ok(next) => {
                    tracing::info!(subject = %r.subject, group = %r.consumer_group, next, "offset reset")
                }
                Err(e) => {
                    tracing::error!(error = %e, "applying a reset-offset request failed");
                    failed = true;
                    break;
                }
            }
            applied = r.id;
            record(&state_file, applied).await;
        }
        if !failed {
            if d.last_id > applied {
                record(&state_file, d.last_id).await;
            }
            applied = applied.max(d.last_id);
        }
        start = directives::Start::After(applied);
    }
}

/// Records the applied reset id off the async runtime; a failure is logged (the id is kept in
/// memory, so this process applies nothing twice).
async fn record(path: &Path, id: i64) {
    let path = path.to_owned();
    let saved = tokio::task::spawn_blocking(move || directives::save(&path, id)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, id, "recording the applied reset id failed"),
        Err(e) => tracing::error!(error = %e, id, "recording the applied reset id failed"),
    }
}

/// SIGINT and SIGTERM streams, created by [`install_signal_handlers`] before a server starts so
/// that a signal arriving before it waits (say, right after its ready line) is not lost.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

static SIGNALS: std::sync::OnceLock<tokio::sync::Mutex<Signals>> = std::sync::OnceLock::new();

/// Takes SIGINT and SIGTERM over from their default (ending the process at once); from now on
/// they are seen by [`wait_for_signal`], even if they arrive before it is called.
pub fn install_signal_handlers() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if SIGNALS.get().is_none() {
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let _ = SIGNALS.set(tokio::sync::Mutex::new(Signals { int, term }));
    }
    Ok(())
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    install_signal_handlers()?;
    let signals = SIGNALS.get().context("no signal handlers")?;
    let mut guard = signals.lock().await;
    let Signals { int, term } = &mut *guard;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

/// The addresses each server command listens on, with the flag that sets each, so that an
/// address already in use can be named (see [`crate::listen`]).
impl BrokerArgs {
    fn listeners(&self) -> Vec<crate::listen::Listener> {
        let mut l = vec![(self.listen, "--listen / QMQ_BROKER_LISTEN")];
        if let Some(m) = self.metrics_listen {
            l.push((m, "--metrics-listen / QMQ_METRICS_LISTEN"));
        }
        l
    }
}

impl MetaArgs {
    fn listeners(&self) -> Vec<crate::listen::Listener> {
        vec![
            (
                self.meta_http_listen,
                "--meta-http-listen / QMQ_META_HTTP_LISTEN",
            ),
            (
                self.meta_tcp_listen,
                "--meta-tcp-listen / QMQ_META_TCP_LISTEN",
            ),
        ]
    }
}

impl DelayArgs {
    fn listeners(&self) -> Vec<crate::listen::Listener> {
        vec![(self.delay_listen, "--delay-listen / QMQ_DELAY_LISTEN")]
    }
}

impl BrokerOnlyArgs {
    /// Where `broker` listens, and the flags that set each address.
    pub fn listeners(&self) -> Vec<crate::listen::Listener> {
        let mut l = self.broker.listeners();
        if self.replication.replication != Replication::Off {
            l.push((self.replication.sync_listen, "--sync-listen"));
        }
        l
    }
}

impl MetaOnlyArgs {
    /// Where `meta` listens, and the flags that set each address.
    pub fn listeners(&self) -> Vec<crate::listen::Listener> {
        self.meta.listeners()
    }
}

impl DelayOnlyArgs {
    /// Where `delay` listens, and the flags that set each address.
    pub fn listeners(&self) -> Vec<crate::listen::Listener> {
        let mut l = self.delay.listeners();
        if self.replication.replication != Replication::Off {
            l.push((self.replication.sync_listen, "--sync-listen"));
        }
        l
    }
}

impl StandaloneArgs {
    /// Where `standalone` listens, and the flags that set each address.
    pub fn listeners(&self) -> Vec<crate::listen::Listener> {
        let mut l = self.broker.listeners();
        l.extend(self.meta.listeners());
        l.extend(self.delay.listeners());
        if self.backup.backup_enabled {
            l.push((
                self.backup.backup_http_listen,
                "--backup-http-listen / QMQ_BACKUP_HTTP_LISTEN",
            ));
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Meta {
        #[command(flatten)]
        args: MetaOnlyArgs,
    }

    fn meta_config(argv: &[&str]) -> MetaConfig {
        let parsed = Meta::try_parse_from(std::iter::once("meta").chain(argv.iter().copied()))
            .unwrap()
            .args;
        parsed
            .meta
            .config(&parsed.data_dir, parsed.secret.cluster_secret.clone())
    }

    /// The ports README.md documents ("Ports", "Configuration") are the ones bound.
    #[test]
    fn meta_listens_where_the_readme_says() {
        let c = meta_config(&[]);
        assert_eq!(c.tcp_addr, "0.0.0.0:20880".parse().unwrap());
        assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
        let c = meta_config(&["--meta-tcp-listen", "127.0.0.1:20990"]);
        assert_eq!(c.tcp_addr, "127.0.0.1:20990".parse().unwrap());
        let readme = include_str!("../../../README.md");
        assert!(readme.contains("| 20880 | meta server TCP"));
        assert!(readme.contains("| `--meta-tcp-listen` | `0.0.0.0:20880` |"));
    }

    /// `--min-group-num` reaches the meta server (QMQ's default when absent, as the README says).
    #[test]
    fn min_group_num_is_a_meta_flag() {
        assert_eq!(meta_config(&[]).min_group_num, 2);
        assert_eq!(MetaConfig::default().min_group_num, 2);
        assert_eq!(meta_config(&["--min-group-num", "3"]).min_group_num, 3);
        assert!(Meta::try_parse_from(["meta", "--min-group-num", "0"]).is_err());
        let readme = include_str!("../../../README.md");
        assert!(readme.contains("| `--min-group-num` (`QMQ_META_MIN_GROUP_NUM`) | 2 |"));
    }

    #[test]
    fn cluster_secret_and_trusted_addresses_reach_the_meta_config() {
        let c = meta_config(&[
            "--cluster-secret",
            "k",
            "--trusted-broker-addr",
            "10.0.0.1,10.0.0.2",
            "--trusted-broker-addr",
            "::1",
        ]);
        assert_eq!(c.cluster_secret.as_deref(), Some("k"));
        assert_eq!(c.trusted_broker_addrs.len(), 3);
        assert!(Meta::try_parse_from(["meta", "--trusted-broker-addr", "host:1"]).is_err());
        let open = meta_config(&[]);
        assert!(open.cluster_secret.is_none() && open.trusted_broker_addrs.is_empty());
    }

    #[test]
    fn a_generated_secret_is_long_and_fresh() {
        let (a, b) = (generated_secret(), generated_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn standalone_refuses_a_delay_limit_above_the_brokers() {
        assert_eq!(standalone_delay_max(None, 1 << 20).unwrap(), 1 << 20);
        assert_eq!(
            standalone_delay_max(Some(1 << 10), 1 << 20).unwrap(),
            1 << 10
        );
        let err = standalone_delay_max(Some(16 << 20), 4 << 20).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("refusing to start"), "{text}");
        assert!(text.contains("exceeds the broker's"), "{text}");
    }
}
