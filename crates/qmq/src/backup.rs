//! `qmq backup` (the backup server: message index and consumption records of broker groups,
//! queried over HTTP), `qmq query` (a table of indexed messages from a backup server), `qmq
//! trace` (a message's life from a backup server), `qmq dead list|replay` (dead letters) and the
//! backup inside `qmq standalone`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use qmq_backup::details::PropertyIndex;
use qmq_backup::follower::{FollowerConfig, GroupKind};
use qmq_backup::server::{BackupConfig, BackupServer};
use qmq_meta::model::BrokerSpec;
use qmq_protocol::BrokerRole;
use tokio_util::sync::CancellationToken;

/// The backup's directory under the data directory.
const BACKUP_DIR: &str = "backup";

/// `backup` settings.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Data directory (the index is `<data-dir>/backup/index.redb`).
    #[arg(long, default_value = "./qmq-data", env = "QMQ_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the HTTP query API.
    #[arg(long, default_value = "0.0.0.0:20883", env = "QMQ_BACKUP_HTTP_LISTEN")]
    http_listen: SocketAddr,
    /// A broker group to follow and its sync address, `group=host:port` (repeatable).
    #[arg(long = "sync", value_name = "GROUP=HOST:PORT", value_parser = parse_sync)]
    sync: Vec<(String, String)>,
    /// A delay group to follow and its master's sync address, `group=host:port` (repeatable):
    /// messages waiting there for their time are found before they are due.
    #[arg(long = "delay-sync", value_name = "GROUP=HOST:PORT", value_parser = parse_sync)]
    delay_sync: Vec<(String, String)>,
    /// A `--sync` group's master client address, `group=host:port` (repeatable): where its
    /// dead letters are replayed (with `--meta` the meta server says).
    #[arg(long = "broker", value_name = "GROUP=HOST:PORT", value_parser = parse_sync)]
    broker: Vec<(String, String)>,
    /// Token that may replay dead letters (`qmq dead replay --token`; repeatable). Without one
    /// replay is refused.
    #[arg(
        long = "admin-token",
        env = "QMQ_BACKUP_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    admin_tokens: Vec<String>,
    /// Meta server HTTP address (`host:port`): follow every realtime broker group registered
    /// there (`tools add-broker`), from its slave where it has one, else its master. Read at
    /// start-up and every `--meta-refresh-secs`: new groups are followed, and a group whose
    /// address changed is followed at the new one from where it was.
    #[arg(long, env = "QMQ_METASERVER")]
    meta: Option<String>,
    /// Seconds between readings of the meta server's broker list (with `--meta`).
    #[arg(long, default_value_t = 30)]
    meta_refresh_secs: u64,
    /// Admin API token for `--meta`.
    #[arg(long, env = "QMQ_TOKEN", default_value = "", hide_env_values = true)]
    token: String,
    /// Days an index entry is kept (by the message's creation time), and a consumption
    /// record (by when the backup received it); 0 keeps everything.
    #[arg(long, default_value_t = 7)]
    retention_days: u64,
    /// Which message properties get an index entry for `qmq query --key`: `all`, `none`, or
    /// keys separated by commas (each indexed property costs a key per message).
    #[arg(long, default_value = "all", value_name = "all|none|KEY,...")]
    index_properties: PropertyIndex,
}

/// The backup inside `standalone`.
#[derive(Args, Debug)]
pub struct StandaloneBackupArgs {
    /// Run the backup server (message index and consumption records of this broker, queried
    /// over HTTP and by `qmq trace`) in this process. Standalone only.
    #[arg(
        long = "backup-enabled",
        default_value_t = true,
        action = clap::ArgAction::Set,
        env = "QMQ_BACKUP_ENABLED"
    )]
    pub backup_enabled: bool,
    /// Address of the backup's HTTP query API (`backup --http-listen`).
    #[arg(
        long = "backup-http-listen",
        default_value = "0.0.0.0:20883",
        env = "QMQ_BACKUP_HTTP_LISTEN"
    )]
    pub backup_http_listen: SocketAddr,
    /// Days an index entry is kept (`backup --retention-days`); 0 keeps everything.
    #[arg(long = "backup-retention-days", default_value_t = 7)]
    pub backup_retention_days: u64,
    /// Which message properties are indexed (`backup --index-properties`).
    #[arg(
        long = "backup-index-properties",
        default_value = "all",
        value_name = "all|none|KEY,..."
    )]
    pub backup_index_properties: PropertyIndex,
}

impl BackupArgs {
    /// The addresses this command listens on, with the flags that set them.
    pub fn listeners(&self) -> Vec<crate::listen::Listener> {
        vec![(self.http_listen, "--http-listen / QMQ_BACKUP_HTTP_LISTEN")]
    }
}

fn parse_sync(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((g, a)) if !g.is_empty() && a.contains(':') => Ok((g.to_owned(), a.to_owned())),
        _ => Err(format!("expected GROUP=HOST:PORT, got {s:?}")),
    }
}

fn retention(days: u64) -> Option<Duration> {
    (days > 0).then(|| Duration::from_secs(days.saturating_mul(24 * 3600)))
}

/// The sync address to follow for each realtime group among `brokers` (the slave's where the
/// group has one, else the master's) with the master's client address, and for each delay
/// group its master's (a delay slave serves no one).
pub fn sync_targets(brokers: &[BrokerSpec]) -> Vec<Target> {
    let mut groups: Vec<&str> = brokers.iter().map(|b| b.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut out = Vec::new();
    for g in groups {
        let of = |role: BrokerRole| {
            brokers
                .iter()
                .find(|b| b.group == g && b.role == role.code() && b.sync_port > 0)
        };
        let master = brokers
            .iter()
            .find(|b| b.group == g && b.role == BrokerRole::Master.code() && b.serve_port > 0);
        if let Some(b) = of(BrokerRole::Slave).or_else(|| of(BrokerRole::Master)) {
            out.push(Target {
                group: g.to_owned(),
                sync: format!("{}:{}", b.ip, b.sync_port),
                client: master.map(|m| format!("{}:{}", m.ip, m.serve_port)),
                kind: GroupKind::Broker,
            });
        } else if let Some(b) = of(BrokerRole::DelayMaster) {
            out.push(Target {
                group: g.to_owned(),
                sync: format!("{}:{}", b.ip, b.sync_port),
                client: None,
                kind: GroupKind::Delay,
            });
        }
    }
    out
}

/// `qmq backup`: runs until SIGINT/SIGTERM.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let client_of = |g: &str| {
        args.broker
            .iter()
            .find(|(b, _)| b == g)
            .map(|(_, a)| a.clone())
    };
    let mut targets: Vec<Target> = args
        .sync
        .iter()
        .map(|(g, a)| Target {
            group: g.clone(),
            sync: a.clone(),
            client: client_of(g),
            kind: GroupKind::Broker,
        })
        .chain(args.delay_sync.iter().map(|(g, a)| Target {
            group: g.clone(),
            sync: a.clone(),
            client: None,
            kind: GroupKind::Delay,
        }))
        .collect();
    if let Some(meta) = &args.meta {
        for t in meta_targets(meta, &args.token).await? {
            if !targets.iter().any(|s| s.group == t.group) {
                targets.push(t);
            }
        }
    }
    if targets.is_empty() && args.meta.is_none() {
        bail!("nothing to follow: give --sync GROUP=HOST:PORT, --delay-sync or --meta");
    }
    let mut config = BackupConfig::new(args.data_dir.join(BACKUP_DIR), args.http_listen);
    config.retention = retention(args.retention_days);
    config.admin_tokens = args.admin_tokens.clone();
    config.property_index = args.index_properties.clone();
    config.groups = targets.iter().map(Target::follower).collect();
    let mut server = BackupServer::start(config, CancellationToken::new())
        .await
        .context("starting the backup server")?;
    let groups: Vec<String> = targets
        .iter()
        .map(|t| format!("{}={}", t.group, t.sync))
        .collect();
    println!(
        "qmq backup ready: http {} following {}",
        server.http_addr(),
        groups.join(",")
    );
    let Some(meta) = args.meta.clone() else {
        crate::servers::wait_for_signal().await?;
        server.shutdown().await;
        return Ok(());
    };
    let mut tick = tokio::time::interval(Duration::from_secs(args.meta_refresh_secs.max(1)));
    tick.tick().await;
    let signal = crate::servers::wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            s = &mut signal => {
                s?;
                break;
            }
            _ = tick.tick() => {}
        }
        let found = match meta_targets(&meta, &args.token).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the meta server's broker groups failed");
                continue;
            }
        };
        for t in found {
            // `--sync` and `--delay-sync` name a group's address for good.
            if args
                .sync
                .iter()
                .chain(&args.delay_sync)
                .any(|(g, _)| *g == t.group)
            {
                continue;
            }
            if let Err(e) = server.follow(t.follower()).await {
                tracing::warn!(group = t.group, error = %e, "following a broker group failed");
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

/// One group to follow: its sync address and its master's client address (for replays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The broker group.
    pub group: String,
    /// The sync address followed.
    pub sync: String,
    /// The master's client address, if known.
    pub client: Option<String>,
    /// Broker or delay group.
    pub kind: GroupKind,
}

impl Target {
    fn follower(&self) -> FollowerConfig {
        let mut c = FollowerConfig::new(&self.group, &self.sync);
        c.client_addr.clone_from(&self.client);
        c.kind = self.kind;
        c
    }
}

/// The groups the meta server at `meta` knows, with the sync address to follow for each.
async fn meta_targets(meta: &str, token: &str) -> anyhow::Result<Vec<Target>> {
    let text = qmq_meta::cli::run_tools(qmq_meta::cli::ToolsArgs {
        metaserver: meta.to_owned(),
        token: token.to_owned(),
        command: qmq_meta::cli::ToolsCommand::ListBrokers { broker_group: None },
    })
    .await
    .with_context(|| format!("asking the meta server at {meta} for its broker groups"))?;
    let brokers: Vec<BrokerSpec> = serde_json::from_str(&text)
        .context("the meta server's list of brokers is not understood")?;
    Ok(sync_targets(&brokers))
}

/// The backup of a standalone's broker and delay server: their own sync ports on loopback
/// (nothing else is served there) and the backup server following them.
pub struct StandaloneBackup {
    server: BackupServer,
    sync_stop: CancellationToken,
    delay_sync: qmq_delay::replication::sync_server::SyncServer,
}

impl StandaloneBackup {
    /// Starts the backup of `broker` (group `group`) and of the delay server `delay` (its
    /// group and engine) under `data_dir`, if enabled; `admin_tokens` may replay dead letters;
    /// its metrics go into `registry` (the standalone's one endpoint) when there is one.
    pub async fn start(
        args: &StandaloneBackupArgs,
        data_dir: &Path,
        group: &str,
        broker: &qmq_broker::BrokerHandle,
        delay: (&str, &Arc<qmq_delay::DelayEngine>),
        admin_tokens: &[String],
        registry: Option<&qmq_metrics::Registry>,
    ) -> anyhow::Result<Option<Self>> {
        use qmq_broker::replication::sync_server::{self, SlaveLag, SyncSettings};
        use qmq_broker::replication::{Gate, ReplicationMode};
        if !args.backup_enabled {
            return Ok(None);
        }
        let loopback: SocketAddr = "127.0.0.1:0".parse().context("loopback address")?;
        let sync_stop = CancellationToken::new();
        // An unreplicated broker has no gate: this one is never master and only sees the
        // backup's requests.
        let (sync_addr, _task) = sync_server::spawn(
            loopback,
            broker.store().clone(),
            Arc::new(Gate::new(ReplicationMode::Async)),
            Arc::new(SlaveLag::default()),
            SyncSettings::default(),
            sync_stop.clone(),
        )
        .await
        .context("starting the broker's sync port for the backup")?;
        // Likewise the delay server's: only the backup's type-6 requests, which release nothing.
        let delay_sync = match qmq_delay::replication::sync_server::SyncServer::bind(
            loopback,
            Arc::new(Gate::new(ReplicationMode::Async)),
            qmq_delay::replication::sync_server::SyncSettings::default(),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                sync_stop.cancel();
                return Err(e).context("starting the delay server's sync port for the backup");
            }
        };
        delay_sync.set_engine(Some(delay.1.clone()));
        let mut config = BackupConfig::new(data_dir.join(BACKUP_DIR), args.backup_http_listen);
        config.retention = retention(args.backup_retention_days);
        config.admin_tokens = admin_tokens.to_vec();
        config.property_index = args.backup_index_properties.clone();
        config.registry = registry.cloned();
        let mut follower = FollowerConfig::new(group, sync_addr.to_string());
        follower.client_addr = Some(format!("127.0.0.1:{}", broker.addr().port()));
        let mut delayed = FollowerConfig::new(delay.0, delay_sync.local_addr().to_string());
        delayed.kind = GroupKind::Delay;
        config.groups = vec![follower, delayed];
        let server = match BackupServer::start(config, CancellationToken::new()).await {
            Ok(s) => s,
            Err(e) => {
                sync_stop.cancel();
                delay_sync.shutdown().await;
                return Err(e).context("starting the backup server");
            }
        };
        Ok(Some(Self {
            server,
            sync_stop,
            delay_sync,
        }))
    }

    /// The HTTP query API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr()
    }

    /// Stops the backup and its sync ports.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.sync_stop.cancel();
        self.delay_sync.shutdown().await;
    }
}

/// `query` settings.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Backup server HTTP address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:20883", env = "QMQ_BACKUP")]
    backup: String,
    /// The message id to find (in every subject and broker group).
    #[arg(long, conflicts_with_all = ["subject", "from", "to", "key"], required_unless_present = "subject")]
    id: Option<String>,
    /// The subject whose messages to list.
    #[arg(long)]
    subject: Option<String>,
    /// Earliest creation time: ms since the epoch or RFC 3339 (default: 30 days before --to).
    #[arg(long)]
    from: Option<String>,
    /// Latest creation time: ms since the epoch or RFC 3339 (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Only messages with this property, `key=value` (a property the producer set).
    #[arg(long, value_name = "KEY=VALUE")]
    key: Option<String>,
    /// Most messages listed.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print the backup's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// `trace` settings.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The message id whose life to print.
    id: String,
    /// Backup server HTTP address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:20883", env = "QMQ_BACKUP")]
    backup: String,
    /// Print the backup's JSON answer (`/v1/messages/<id>/life`) instead of lines.
    #[arg(long)]
    json: bool,
}

/// `qmq trace`: prints a message's life, one line per step, oldest first. Fails when the
/// message is not indexed.
pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let path = format!("/v1/messages/{}/life", encode(&args.id));
    let answer = ask_backup(&args.backup, &path).await?;
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        bail!(
            "message {} is not in the backup's index (not stored, not indexed yet, or expired)",
            args.id
        );
    }
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    print!("{}", render_trace(&events));
    Ok(())
}

/// The timeline as lines: time (UTC), step, details.
fn render_trace(events: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for e in events {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
        let time = e["time"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|| "?".into());
        let place = format!(
            "{} on {} at sequence {}",
            s("subject"),
            s("broker_group"),
            e["sequence"]
        );
        let copy = match s("copy").as_str() {
            "retry" => " (retry copy)",
            "dead" => " (dead letter)",
            _ => "",
        };
        let event = s("event");
        let (step, detail) = match event.as_str() {
            "created" => {
                let mut d = format!("subject {}", s("subject"));
                if let Some(app) = e["app_code"].as_str() {
                    d.push_str(&format!(" by app {app}"));
                }
                if let Some(host) = e["producer_host"].as_str() {
                    d.push_str(&format!(" on host {host}"));
                }
                ("created", d)
            }
            "delayed" => (
                "delayed",
                format!(
                    "until {}",
                    e["delayed_until"]
                        .as_i64()
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map_or_else(
                            || "?".into(),
                            |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
                        )
                ),
            ),
            "stored" => ("stored", place),
            "retry" => (
                "retry",
                format!("group {} failed it: {place}", s("consumer_group")),
            ),
            "dead_lettered" => (
                "dead-lettered",
                format!("group {} gave up: {place}", s("consumer_group")),
            ),
            "pulled" => (
                "pulled",
                format!(
                    "by group {} consumer {}{copy}",
                    s("consumer_group"),
                    s("consumer_id")
                ),
            ),
            "acked" => (
                "acked",
                format!(
                    "by group {} consumer {}{copy}",
                    s("consumer_group"),
                    s("consumer_id")
                ),
            ),
            other => (other, place),
        };
        out.push_str(&format!("{time}  {step:<13}  {detail}\n"));
    }
    out
}

/// The query string value `s`, percent-encoded.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `qmq query`: prints the matching messages as a table (or the JSON answer).
pub async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let path = match (&args.id, &args.subject) {
        (Some(id), _) => format!("/v1/messages/{}", encode(id)),
        (None, Some(subject)) => {
            let mut p = format!(
                "/v1/messages?subject={}&limit={}",
                encode(subject),
                args.limit
            );
            for (k, v) in [("from", &args.from), ("to", &args.to), ("key", &args.key)] {
                if let Some(v) = v {
                    p.push_str(&format!("&{k}={}", encode(v)));
                }
            }
            p
        }
        (None, None) => bail!("give --id or --subject"),
    };
    let answer = ask_backup(&args.backup, &path).await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let entries = answer["messages"].as_array().cloned().unwrap_or_default();
    print!("{}", render_table(&entries));
    if let Some(next) = answer["next"].as_str() {
        println!("(more: the next page starts at cursor {next})");
    }
    Ok(())
}

/// `dead` settings.
#[derive(Args, Debug)]
pub struct DeadArgs {
    #[command(subcommand)]
    command: DeadCommand,
}

/// `qmq dead list|replay`.
#[derive(clap::Subcommand, Debug)]
enum DeadCommand {
    /// Lists the dead letters of a subject (every group's, or `--group`'s), oldest first.
    List {
        #[command(flatten)]
        which: DeadWhich,
        /// Most dead letters listed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the backup's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sends a group's dead letters again, to its retry subject (`%RETRY%<subject>%<group>`),
    /// where its consumers get them like any retry; needs a backup admin token.
    Replay {
        #[command(flatten)]
        which: DeadWhich,
        /// Only this message id (repeatable; default: every dead letter in the time range).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// A token the backup accepts (`backup --admin-token`; standalone: `--admin-token`).
        #[arg(long, env = "QMQ_TOKEN", hide_env_values = true)]
        token: String,
    },
}

/// Which dead letters.
#[derive(Args, Debug)]
struct DeadWhich {
    /// Backup server HTTP address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:20883", env = "QMQ_BACKUP")]
    backup: String,
    /// The subject the messages were sent to.
    #[arg(long)]
    subject: String,
    /// The consumer group that gave up on them (required to replay).
    #[arg(long)]
    group: Option<String>,
    /// Earliest creation time: ms since the epoch or RFC 3339 (default: 30 days before --to).
    #[arg(long)]
    from: Option<String>,
    /// Latest creation time: ms since the epoch or RFC 3339 (default: now).
    #[arg(long)]
    to: Option<String>,
}

/// `qmq dead`: lists or replays dead letters through a backup server.
pub async fn dead(args: DeadArgs) -> anyhow::Result<()> {
    match args.command {
        DeadCommand::List { which, limit, json } => {
            let mut path = format!("/v1/dead?subject={}&limit={limit}", encode(&which.subject));
            for (k, v) in [
                ("group", &which.group),
                ("from", &which.from),
                ("to", &which.to),
            ] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", encode(v)));
                }
            }
            let answer = ask_backup(&which.backup, &path).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let entries = answer["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            print!("{}", render_table(&entries));
            if let Some(next) = answer["next"].as_str() {
                println!("(more: the next page starts at cursor {next})");
            }
            Ok(())
        }
        DeadCommand::Replay { which, ids, token } => {
            let Some(group) = which.group else {
                bail!("replay needs --group: dead letters go back to one group's retry subject");
            };
            let mut body = serde_json::json!({
                "subject": which.subject,
                "group": group,
                "ids": ids,
            });
            for (k, v) in [("from", &which.from), ("to", &which.to)] {
                if let Some(v) = v {
                    body[k] = serde_json::Value::String(v.clone());
                }
            }
            let (status, answer) = http_call(
                &which.backup,
                hyper::Method::POST,
                "/v1/dead/replay",
                Some(&token),
                bytes::Bytes::from(body.to_string()),
            )
            .await
            .with_context(|| format!("asking the backup server at {}", which.backup))?;
            let answer = backup_answer(status, &answer)?;
            let done = answer["replayed"].as_array().cloned().unwrap_or_default();
            let mut failed = 0;
            for r in &done {
                match r["error"].as_str() {
                    None => println!(
                        "replayed {} to {} on {}",
                        r["message_id"].as_str().unwrap_or("?"),
                        r["retry_subject"].as_str().unwrap_or("?"),
                        r["broker_group"].as_str().unwrap_or("?")
                    ),
                    Some(e) => {
                        failed += 1;
                        println!("FAILED {}: {e}", r["message_id"].as_str().unwrap_or("?"));
                    }
                }
            }
            if done.is_empty() {
                bail!("no dead letters matched");
            }
            if failed > 0 {
                bail!("{failed} of {} dead letters were not replayed", done.len());
            }
            Ok(())
        }
    }
}

/// One HTTP/1.1 GET of `path` from `addr`: the status and the body (10 s at most).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
    http_call(addr, hyper::Method::GET, path, None, bytes::Bytes::new()).await
}

/// One HTTP/1.1 request to `addr` (with the admin `token` header and a JSON `body` when
/// given): the status and the body (10 s at most).
async fn http_call(
    addr: &str,
    method: hyper::Method,
    path: &str,
    token: Option<&str>,
    body: bytes::Bytes,
) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(qmq_backup::http::TOKEN_HEADER, t);
        }
        let req = req.body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("{addr} did not answer within 10 s"))?
}

/// The entries as an aligned table: message id, subject, creation time, group, sequence.
fn render_table(entries: &[serde_json::Value]) -> String {
    let header = [
        "MESSAGE ID",
        "SUBJECT",
        "CREATED",
        "BROKER GROUP",
        "SEQUENCE",
    ];
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let created = e["created_time"]
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map_or_else(
                    || "?".to_owned(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            [
                e["message_id"].as_str().unwrap_or("?").to_owned(),
                e["subject"].as_str().unwrap_or("?").to_owned(),
                created,
                e["broker_group"].as_str().unwrap_or("?").to_owned(),
                e["sequence"].to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    if rows.is_empty() {
        out.push_str("(no messages)\n");
    }
    out
}

/// `GET path` on the backup server at `backup`: its JSON answer, or an error saying why not
/// (unreachable, not JSON, or refused with the server's reason).
async fn ask_backup(backup: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(backup, path)
        .await
        .with_context(|| format!("asking the backup server at {backup}"))?;
    backup_answer(status, &body)
}

/// The JSON of a backup answer, or an error with the server's reason.
fn backup_answer(status: u16, body: &[u8]) -> anyhow::Result<serde_json::Value> {
    let answer: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("the backup server answered {status} with no JSON"))?;
    if status != 200 {
        bail!(
            "the backup server refused the query: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(group: &str, role: BrokerRole, ip: &str, sync_port: i32) -> BrokerSpec {
        BrokerSpec {
            group: group.into(),
            role: role.code(),
            hostname: ip.into(),
            ip: ip.into(),
            serve_port: 20881,
            sync_port,
        }
    }

    #[test]
    fn the_slave_is_followed_where_there_is_one() {
        let brokers = [
            spec("a", BrokerRole::Master, "10.0.0.1", 20882),
            spec("a", BrokerRole::Slave, "10.0.0.2", 20882),
            spec("b", BrokerRole::Master, "10.0.0.3", 20882),
            spec("c", BrokerRole::DelayMaster, "10.0.0.4", 20802),
        ];
        let t = |g: &str, sync: &str, client: &str| Target {
            group: g.into(),
            sync: sync.into(),
            client: Some(client.into()),
            kind: GroupKind::Broker,
        };
        assert_eq!(
            sync_targets(&brokers),
            [
                t("a", "10.0.0.2:20882", "10.0.0.1:20881"),
                t("b", "10.0.0.3:20882", "10.0.0.3:20881"),
                Target {
                    group: "c".into(),
                    sync: "10.0.0.4:20802".into(),
                    client: None,
                    kind: GroupKind::Delay,
                },
            ]
        );
    }

    #[test]
    fn a_table_lists_each_entry() {
        let t = render_table(&[serde_json::json!({"message_id": "m-1", "subject": "s",
            "created_time": 0, "broker_group": "g", "sequence": 3})]);
        assert_eq!(
            t,
            "MESSAGE ID  SUBJECT  CREATED                   BROKER GROUP  SEQUENCE\n\
             m-1         s        1970-01-01T00:00:00.000Z  g             3\n"
        );
        assert!(parse_sync("g=h:1").is_ok() && parse_sync("g").is_err());
    }
}
