//! Server subcommands: `standalone`, `meta` and `broker`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use qmq_broker::{BrokerConfig, BrokerControl};
use qmq_meta::MetaConfig;
use qmq_protocol::{BrokerRequestType, BrokerRole, BrokerState};
use qmq_store::{FlushPolicy, ResetTo, StoreConfig};

/// When an acknowledged send is durable.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Flush {
    /// Acknowledge after writing; fsync every `--flush-interval-ms` (fast; a machine crash may
    /// lose the last interval of messages).
    Async,
    /// Acknowledge only after fsync (a crash loses nothing acknowledged).
    Sync,
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
}

/// `broker` settings.
#[derive(Args, Debug)]
pub struct BrokerOnlyArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Meta server TCP address to register and heartbeat with (host:port).
    #[arg(long)]
    meta: Option<String>,
    /// Meta server HTTP address (host:port) to take readonly marks and reset-offset requests from.
    #[arg(long)]
    meta_http: Option<String>,
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
}

/// `meta` settings.
#[derive(Args, Debug)]
pub struct MetaOnlyArgs {
    #[command(flatten)]
    meta: MetaArgs,
    /// Data directory (for the embedded SQLite database).
    #[arg(long, default_value = "./qmq-data", env = "QMQ_DATA_DIR")]
    data_dir: PathBuf,
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
    /// Largest message the delay server accepts, in bytes (default: the broker's
    /// `--max-message-bytes`). Larger than the broker's is refused at start-up: such messages
    /// could never be delivered.
    #[arg(long)]
    delay_max_message_bytes: Option<usize>,
}

/// `delay` settings.
#[derive(Args, Debug)]
pub struct DelayOnlyArgs {
    #[command(flatten)]
    delay: DelayArgs,
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
}

/// A running delay server and its heartbeat to the meta server.
struct Delay {
    server: qmq_delay::ServerHandle,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The delay data directory's lock, released after the server has shut down.
    _lock: qmq_store::DirLock,
}

impl Delay {
    /// Starts a delay server handing due messages to `dispatcher`; with a meta server (TCP
    /// address), registers it as a delay group at `host`:<bound port> before returning.
    async fn start(
        args: &DelayArgs,
        max_message_bytes: usize,
        data_dir: &Path,
        dispatcher: Arc<dyn qmq_delay::Dispatcher>,
        meta: Option<String>,
        host: &str,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("delay");
        let lock = qmq_store::DirLock::acquire(&dir).context("starting the delay server")?;
        let mut config = qmq_delay::ServerConfig::new(dir);
        config.listen = args.delay_listen;
        config.delay.max_message_bytes = max_message_bytes;
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

/// Runs a delay server until SIGINT/SIGTERM.
pub async fn delay(args: DelayOnlyArgs) -> anyhow::Result<()> {
    let dispatcher: Arc<dyn qmq_delay::Dispatcher> = match &args.meta_http {
        Some(http) => routed(http),
        None => Arc::new(qmq_delay::BrokerForwarder::new(args.broker.clone())),
    };
    let delay = Delay::start(
        &args.delay,
        args.max_message_bytes,
        &args.data_dir,
        dispatcher,
        args.meta.clone(),
        &args.advertised_host,
    )
    .await?;
    println!("qmq delay ready on {}", delay.server.local_addr());
    wait_for_signal().await?;
    delay.shutdown().await
}

impl BrokerArgs {
    fn config(&self, meta: Option<String>) -> BrokerConfig {
        let mut store = StoreConfig::new(self.data_dir.join("broker"));
        store.flush = match self.flush {
            Flush::Async => FlushPolicy::Async {
                interval: Duration::from_millis(self.flush_interval_ms),
            },
            Flush::Sync => FlushPolicy::SyncBeforeAck,
        };
        store.retention = Duration::from_secs(self.retention_hours * 3600);
        let mut c = BrokerConfig::new(store);
        c.listen = self.listen;
        c.advertised = self.advertise.clone();
        c.group = self.group.clone();
        c.meta = meta;
        c.max_message_bytes = self.max_message_bytes;
        c
    }
}

impl MetaArgs {
    fn config(&self, data_dir: &Path) -> MetaConfig {
        MetaConfig {
            data_dir: data_dir.join("meta"),
            database_url: self.database_url.clone(),
            http_addr: self.meta_http_listen,
            tcp_addr: self.meta_tcp_listen,
            advertised_host: self.advertised_host.clone(),
            admin_tokens: self.admin_tokens.clone(),
            ..MetaConfig::default()
        }
    }
}

/// Runs a broker until SIGINT/SIGTERM, then shuts it down cleanly (flush + checkpoint).
pub async fn broker(args: BrokerOnlyArgs) -> anyhow::Result<()> {
    let config = args.broker.config(args.meta.clone());
    let data_dir = config.store.dir.clone();
    let handle = qmq_broker::serve(config)
        .await
        .context("starting the broker")?;
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
    handle
        .shutdown()
        .await
        .context("shutting the broker down")?;
    Ok(())
}

/// Runs a meta server until SIGINT/SIGTERM.
pub async fn meta(args: MetaOnlyArgs) -> anyhow::Result<()> {
    let handle = qmq_meta::serve(args.meta.config(&args.data_dir))
        .await
        .context("starting the meta server")?;
    println!(
        "qmq meta ready: http {} tcp {}",
        handle.http_addr(),
        handle.advertised_tcp_address()
    );
    wait_for_signal().await?;
    handle.shutdown().await;
    Ok(())
}

/// Runs meta server + broker in one process until SIGINT/SIGTERM. The broker registers with
/// the meta server before "ready" is printed, so clients find a route at once.
pub async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let delay_max =
        standalone_delay_max(args.delay_max_message_bytes, args.broker.max_message_bytes)?;
    let data_dir = args.broker.data_dir.clone();
    // Before anything touches the directory (the meta server's database first).
    let _lock = qmq_store::DirLock::acquire(&data_dir).context("locking the data directory")?;
    let meta = qmq_meta::serve(args.meta.config(&data_dir))
        .await
        .context("starting the meta server")?;
    let meta_tcp = format!("127.0.0.1:{}", meta.tcp_addr().port());
    let mut config = args.broker.config(Some(meta_tcp.clone()));
    let host = meta
        .advertised_tcp_address()
        .rsplit_once(':')
        .map_or("127.0.0.1".to_owned(), |(h, _)| h.to_owned());
    if config.advertised.is_none() {
        config.advertised = Some(format!("{host}:{}", config.listen.port()));
    }
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
    )
    .await?;
    let poller = tokio::spawn(follow_directives(
        meta_http,
        args.broker.group.clone(),
        data_dir.join("broker"),
        broker.control(),
    ));
    println!(
        "qmq standalone ready: broker {} meta http {} tcp {} delay {}",
        broker.addr(),
        meta.http_addr(),
        meta.tcp_addr(),
        delay.server.local_addr()
    );
    wait_for_signal().await?;
    poller.abort();
    delay.shutdown().await?;
    broker
        .shutdown()
        .await
        .context("shutting the broker down")?;
    meta.shutdown().await;
    Ok(())
}

/// Applies the meta server's readonly marks and reset-offset requests to the broker, polling
/// every few seconds. The last applied reset id is kept in `<dir>/directives.json` so each
/// request is applied once, across restarts.
async fn follow_directives(meta_http: String, group: String, dir: PathBuf, broker: BrokerControl) {
    let state_file = dir.join("directives.json");
    let mut after: i64 = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tick.tick().await;
        let d = match qmq_meta::broker_api::fetch_directives(&meta_http, &group, after).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "fetching meta directives failed");
                continue;
            }
        };
        broker.set_readonly_subjects(d.readonly_subjects.clone());
        let mut failed = false;
        for r in &d.reset_offsets {
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
            after = r.id;
            if let Err(e) = std::fs::write(&state_file, after.to_string()) {
                tracing::error!(error = %e, "recording the applied reset id failed");
            }
        }
        if !failed {
            after = after.max(d.last_id);
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
