//! `qmq backup` (the backup server: message index and consumption records of broker groups,
//! queried over HTTP), `qmq query` (a table of indexed messages from a backup server), `qmq
//! trace` (a message's life from a backup server) and the backup inside `qmq standalone`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use qmq_backup::follower::FollowerConfig;
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

/// The sync address to follow for each realtime group among `brokers`: the slave's where the
/// group has one, else the master's.
pub fn sync_targets(brokers: &[BrokerSpec]) -> Vec<(String, String)> {
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
        if let Some(b) = of(BrokerRole::Slave).or_else(|| of(BrokerRole::Master)) {
            out.push((g.to_owned(), format!("{}:{}", b.ip, b.sync_port)));
        }
    }
    out
}

/// `qmq backup`: runs until SIGINT/SIGTERM.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let mut targets = args.sync.clone();
    if let Some(meta) = &args.meta {
        for (g, a) in meta_targets(meta, &args.token).await? {
            if !targets.iter().any(|(t, _)| *t == g) {
                targets.push((g, a));
            }
        }
    }
    if targets.is_empty() && args.meta.is_none() {
        bail!("nothing to follow: give --sync GROUP=HOST:PORT or --meta");
    }
    let mut config = BackupConfig::new(args.data_dir.join(BACKUP_DIR), args.http_listen);
    config.retention = retention(args.retention_days);
    config.groups = targets
        .iter()
        .map(|(g, a)| FollowerConfig::new(g, a))
        .collect();
    let mut server = BackupServer::start(config, CancellationToken::new())
        .await
        .context("starting the backup server")?;
    let groups: Vec<String> = targets.iter().map(|(g, a)| format!("{g}={a}")).collect();
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
        for (g, a) in found {
            // `--sync` names a group's address for good.
            if args.sync.iter().any(|(t, _)| *t == g) {
                continue;
            }
            if let Err(e) = server.follow(FollowerConfig::new(&g, &a)).await {
                tracing::warn!(group = g, error = %e, "following a broker group failed");
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

/// The groups the meta server at `meta` knows, with the sync address to follow for each.
async fn meta_targets(meta: &str, token: &str) -> anyhow::Result<Vec<(String, String)>> {
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

/// The backup of a standalone's broker: its own sync port on loopback (nothing else is served
/// there) and the backup server following it.
pub struct StandaloneBackup {
    server: BackupServer,
    sync_stop: CancellationToken,
}

impl StandaloneBackup {
    /// Starts the backup of `broker` (group `group`) under `data_dir`, if enabled.
    pub async fn start(
        args: &StandaloneBackupArgs,
        data_dir: &Path,
        group: &str,
        broker: &qmq_broker::BrokerHandle,
    ) -> anyhow::Result<Option<Self>> {
        use qmq_broker::replication::sync_server::{self, SlaveLag, SyncSettings};
        use qmq_broker::replication::{Gate, ReplicationMode};
        if !args.backup_enabled {
            return Ok(None);
        }
        let sync_stop = CancellationToken::new();
        // An unreplicated broker has no gate: this one is never master and only sees the
        // backup's index requests.
        let (sync_addr, _task) = sync_server::spawn(
            "127.0.0.1:0".parse().context("loopback address")?,
            broker.store().clone(),
            Arc::new(Gate::new(ReplicationMode::Async)),
            Arc::new(SlaveLag::default()),
            SyncSettings::default(),
            sync_stop.clone(),
        )
        .await
        .context("starting the broker's sync port for the backup")?;
        let mut config = BackupConfig::new(data_dir.join(BACKUP_DIR), args.backup_http_listen);
        config.retention = retention(args.backup_retention_days);
        config.groups = vec![FollowerConfig::new(group, sync_addr.to_string())];
        let server = match BackupServer::start(config, CancellationToken::new()).await {
            Ok(s) => s,
            Err(e) => {
                sync_stop.cancel();
                return Err(e).context("starting the backup server");
            }
        };
        Ok(Some(Self { server, sync_stop }))
    }

    /// The HTTP query API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr()
    }

    /// Stops the backup and its sync port.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.sync_stop.cancel();
    }
}

/// `query` settings.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Backup server HTTP address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:20883", env = "QMQ_BACKUP")]
    backup: String,
    /// The message id to find (in every subject and broker group).
    #[arg(long, conflicts_with_all = ["subject", "from", "to"], required_unless_present = "subject")]
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
            "created" => ("created", format!("subject {}", s("subject"))),
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
            for (k, v) in [("from", &args.from), ("to", &args.to)] {
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

/// One HTTP/1.1 GET of `path` from `addr`: the status and the body (10 s at most).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::{BodyExt, Empty};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr)
            .body(Empty::<bytes::Bytes>::new())?;
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
    let answer: serde_json::Value = serde_json::from_slice(&body)
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
        assert_eq!(
            sync_targets(&brokers),
            [
                ("a".to_owned(), "10.0.0.2:20882".to_owned()),
                ("b".to_owned(), "10.0.0.3:20882".to_owned())
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
