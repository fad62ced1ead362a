//! Server subcommands: `standalone` and `broker`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use qmq_broker::BrokerConfig;
use qmq_store::{FlushPolicy, StoreConfig};

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
    /// Address registered with the meta server (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Broker group name.
    #[arg(long, default_value = "broker-1")]
    group: String,
    /// Meta server TCP address to register with (host:port).
    #[arg(long)]
    meta: Option<String>,
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

/// `standalone` settings.
#[derive(Args, Debug)]
pub struct StandaloneArgs {
    #[command(flatten)]
    broker: BrokerArgs,
}

impl BrokerArgs {
    fn config(&self, dir: PathBuf) -> BrokerConfig {
        let mut store = StoreConfig::new(dir);
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
        c.meta = self.meta.clone();
        c.max_message_bytes = self.max_message_bytes;
        c
    }
}

/// Runs a broker until SIGINT/SIGTERM, then shuts it down cleanly (flush + checkpoint).
pub async fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    let config = args.config(args.data_dir.join("broker"));
    let handle = qmq_broker::serve(config)
        .await
        .context("starting the broker")?;
    println!("qmq broker ready on {}", handle.addr());
    wait_for_signal().await?;
    handle
        .shutdown()
        .await
        .context("shutting the broker down")?;
    Ok(())
}

/// Runs the standalone server until SIGINT/SIGTERM.
pub async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.broker.data_dir)
        .with_context(|| format!("creating {}", args.broker.data_dir.display()))?;
    broker(args.broker).await
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
