//! Replication workloads (`--workloads replication`, qmq-rs only, never part of the default
//! run): produce throughput with `--replication off`, `async` and `sync` in the same run (ratios
//! to `off`), how far the slave trails the master under that load, and failover time (master
//! killed with SIGKILL → first acknowledged send on the new master) over repeated failovers.
//!
//! Every broker runs `--flush async` (as in the other workloads), with the default lease,
//! replication timeout and meta failover settings. A group is a meta server (its own SQLite) and
//! two `qmq broker` processes on loopback, registered with `qmq tools add-broker`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use qmq_client::{
    new_message, send_batch, Connection, MetaRouter, MetaRouterConfig, Producer, ProducerConfig,
};
use qmq_protocol::codes::command;
use qmq_protocol::{SyncHeartbeat, SyncLogRequest, SyncType};

use crate::systems::{self, Endpoints, System};

const TOKEN: &str = "bench-token";
const GROUP: &str = "bench-rg";

/// The replication settings compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// One unreplicated broker.
    Off,
    /// A master and a slave, sends answered after the master's write.
    Async,
    /// A master and a slave, sends answered after the slave's write.
    Sync,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Async => "async",
            Self::Sync => "sync",
        }
    }
}

/// A child process whose stdout lines are kept; killed when dropped.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qmq")?;
        let out = child.stdout.take().context("child stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = kept.lock() {
                    l.push(line);
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits up to `within` for a line containing `needle` among the lines after the first
    /// `skip`, and returns it.
    fn wait_line(&self, needle: &str, skip: usize, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(lines) = self.lines.lock() {
                if let Some(l) = lines.iter().skip(skip).find(|l| l.contains(needle)) {
                    return Ok(l.clone());
                }
            }
            if Instant::now() >= deadline {
                bail!("no line with {needle:?} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `qmq` executable next to this one.
fn qmq() -> anyhow::Result<Command> {
    let exe = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .join("qmq");
    if !exe.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p qmq`",
            exe.display()
        );
    }
    Ok(Command::new(exe))
}

/// The value of `key=` in a status line.
fn field(line: &str, key: &str) -> anyhow::Result<String> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if let Some(v) = w.strip_prefix(&format!("{key}=")) {
            return Ok(v.to_owned());
        }
        if w == key {
            if let Some(v) = words.next() {
                return Ok(v.to_owned());
            }
        }
    }
    bail!("no {key} in {line:?}")
}

/// One member of a group: client and sync ports, data directory, and its process if running.
struct Member {
    port: u16,
    sync: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Member {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn sync_addr(&self) -> String {
        format!("127.0.0.1:{}", self.sync)
    }
}

/// What is under test: one unreplicated broker, or a meta server and a two-member group.
struct Group {
    mode: Mode,
    meta: Option<(Proc, String, String)>,
    members: Vec<Member>,
    extra: Vec<String>,
}

impl Group {
    /// Starts the servers of `mode` under `dir` and waits until they serve (for a replicated
    /// group: member 0 the master, member 1 its slave). `extra` goes to every broker.
    fn start(dir: &Path, mode: Mode, extra: &[&str]) -> anyhow::Result<Self> {
        let count = if mode == Mode::Off { 1 } else { 2 };
        let mut members = Vec::new();
        for i in 0..count {
            members.push(Member {
                port: free_port()?,
                sync: free_port()?,
                dir: dir.join(format!("node{i}")),
                proc: None,
            });
        }
        let mut g = Self {
            mode,
            meta: None,
            members,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        if mode == Mode::Off {
            let m = &g.members[0];
            let mut cmd = qmq()?;
            cmd.args(["broker", "--flush", "async", "--listen", &m.addr()])
                .arg("--data-dir")
                .arg(&m.dir);
            let p = Proc::spawn(cmd)?;
            p.wait_line("ready", 0, Duration::from_secs(30))?;
            g.members[0].proc = Some(p);
            return Ok(g);
        }
        let mut cmd = qmq()?;
        cmd.args(["meta", "--meta-http-listen", "127.0.0.1:0"])
            .args(["--meta-tcp-listen", "127.0.0.1:0", "--admin-token", TOKEN])
            .args(["--advertised-host", "127.0.0.1", "--data-dir"])
            .arg(dir.join("meta"));
        let meta = Proc::spawn(cmd)?;
        let ready = meta.wait_line("ready", 0, Duration::from_secs(30))?;
        let (http, tcp) = (field(&ready, "http")?, field(&ready, "tcp")?);
        for (role, m) in ["0", "1"].iter().zip(&g.members) {
            let out = qmq()?
                .args(["tools", "--metaserver", &http, "--token", TOKEN])
                .args(["add-broker", "--broker-group", GROUP, "--role", role])
                .args(["--hostname", "127.0.0.1", "--ip", "127.0.0.1"])
                .args(["--serve-port", &m.port.to_string()])
                .args(["--sync-port", &m.sync.to_string()])
                .output()?;
            if !out.status.success() {
                bail!("add-broker: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        g.meta = Some((meta, http, tcp));
        g.launch(0)?
            .wait_line("master epoch=1", 0, Duration::from_secs(30))?;
        g.launch(1)?
            .wait_line("slave epoch=1", 0, Duration::from_secs(30))?;
        Ok(g)
    }

    /// Starts member `i` of a replicated group.
    fn launch(&mut self, i: usize) -> anyhow::Result<&Proc> {
        let tcp = self
            .meta
            .as_ref()
            .map(|(_, _, tcp)| tcp.clone())
            .context("a replicated group has a meta server")?;
        let m = &mut self.members[i];
        let mut cmd = qmq()?;
        cmd.args(["broker", "--flush", "async", "--group", GROUP])
            .args(["--replication", self.mode.arg()])
            .args(&self.extra)
            .args(["--listen", &m.addr(), "--sync-listen", &m.sync_addr()])
            .args(["--hostname", "127.0.0.1", "--meta", &tcp])
            .arg("--data-dir")
            .arg(&m.dir);
        Ok(m.proc.insert(Proc::spawn(cmd)?))
    }

    /// The meta server's HTTP address.
    fn meta_http(&self) -> Option<&str> {
        self.meta.as_ref().map(|(_, http, _)| http.as_str())
    }
}

/// The message-log end a sync port reports (a heartbeat request).
async fn message_end(sync_addr: &str) -> anyhow::Result<i64> {
    let conn = Connection::connect(sync_addr).await?;
    let mut body = BytesMut::new();
    SyncLogRequest {
        sync_type: SyncType::Heartbeat,
        message_offset: 0,
        action_offset: 0,
    }
    .encode(&mut body);
    let resp = conn
        .request(
            command::SYNC_LOG_REQUEST,
            body.freeze(),
            Duration::from_secs(3),
        )
        .await?;
    Ok(SyncHeartbeat::decode(&resp.body)?.message_end)
}

/// One produce row: a workload under one replication mode.
#[derive(Debug, serde::Serialize)]
pub struct ProduceRow {
    workload: String,
    mode: Mode,
    messages: usize,
    msgs_per_sec: f64,
    /// How far the slave trailed while the load ran (message-log bytes, sampled every 20 ms):
    /// median and largest.
    lag_bytes: Option<(u64, u64)>,
    /// The same in messages (bytes / average record size).
    lag_messages: Option<(u64, u64)>,
    /// From the last acknowledged send to the slave holding everything.
    catch_up_ms: Option<f64>,
}

/// Failover times of one mode, in milliseconds.
#[derive(Debug, serde::Serialize)]
pub struct FailoverRow {
    setting: String,
    /// Master killed → the promoted member acknowledges a send on a direct connection.
    direct_ms: Vec<f64>,
    /// Master killed → a `qmq_client::Producer` routed by the meta server gets its first
    /// acknowledgement from the promoted member.
    client_ms: Vec<f64>,
}

/// Everything the replication workloads measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    produce: Vec<ProduceRow>,
    failover: Vec<FailoverRow>,
}

/// Runs the replication workloads; `quick` shrinks counts and rounds.
pub async fn run(quick: bool) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir().context("temp dir for the replicated groups")?;
    let mut groups = Vec::new();
    for mode in [Mode::Off, Mode::Async, Mode::Sync] {
        let dir = tmp.path().join(mode.arg());
        let g = tokio::task::spawn_blocking(move || Group::start(&dir, mode, &[])).await??;
        groups.push(g);
    }
    let count = if quick { 20_000 } else { 200_000 };
    let mut produce = Vec::new();
    let mut run = 0usize;
    for (size, producers) in [(100usize, 1usize), (100, 4), (1024, 4)] {
        let workload = format!("produce {size}B x{producers}p");
        // Alternate the modes within a workload, so that a slow spell of the machine hits
        // all of them alike.
        for g in &groups {
            run += 1;
            let subject = format!("bench_repl_{}_{run}", std::process::id());
            produce.push(produce_row(g, &workload, &subject, count, size, producers).await?);
        }
    }
    drop(groups);

    let rounds = if quick { 2 } else { 10 };
    let mut failover = Vec::new();
    for (setting, mode, extra) in [
        ("async", Mode::Async, &[][..]),
        (
            "sync, --on-replication-timeout async",
            Mode::Sync,
            &["--on-replication-timeout", "async"][..],
        ),
    ] {
        let dir = tmp.path().join(format!("failover-{}", mode.arg()));
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut g = tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            Group::start(&dir, mode, &extra)
        })
        .await??;
        failover.push(failovers(&mut g, setting, rounds).await?);
    }
    Ok(Report { produce, failover })
}

/// Sends `count` messages of `size` bytes with `producers` producers to the group's master,
/// sampling the slave's lag meanwhile.
async fn produce_row(
    g: &Group,
    workload: &str,
    subject: &str,
    count: usize,
    size: usize,
    producers: usize,
) -> anyhow::Result<ProduceRow> {
    let master = &g.members[0];
    let ep = Endpoints {
        qmq: master.addr(),
        qmq_metrics: String::new(),
        qmq_nodedup: String::new(),
        nats: String::new(),
        rabbit: String::new(),
    };
    let slave_sync = g.members.get(1).map(Member::sync_addr);
    let end_before = match &slave_sync {
        Some(_) => message_end(&master.sync_addr()).await?,
        None => 0,
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = slave_sync.clone().map(|slave| {
        let (master, done) = (master.sync_addr(), done.clone());
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // The slave's end first: a lag read this way is never understated.
                if let (Ok(s), Ok(m)) = (message_end(&slave).await, message_end(&master).await) {
                    lags.push((m - s).max(0) as u64);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lags
        })
    });
    let pb = indicatif::ProgressBar::hidden();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let (ep, subject, pb) = (ep.clone(), subject.to_owned(), pb.clone());
        tasks.spawn(async move {
            systems::produce(
                System::Qmq,
                &ep,
                &subject,
                count / producers,
                size,
                None,
                systems::QMQ_BATCH,
                &pb,
            )
            .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let took = start.elapsed();
    let acked_at = Instant::now();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = count / producers * producers;
    let mut row = ProduceRow {
        workload: workload.to_owned(),
        mode: g.mode,
        messages: sent,
        msgs_per_sec: sent as f64 / took.as_secs_f64().max(1e-9),
        lag_bytes: None,
        lag_messages: None,
        catch_up_ms: None,
    };
    if let (Some(sampler), Some(slave)) = (sampler, slave_sync) {
        let mut lags = sampler.await?;
        let end = message_end(&master.sync_addr()).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while message_end(&slave).await? < end {
            if Instant::now() > deadline {
                bail!("the slave did not catch up within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        row.catch_up_ms = Some(acked_at.elapsed().as_secs_f64() * 1e3);
        lags.sort_unstable();
        if let (Some(&median), Some(&max)) = (lags.get(lags.len() / 2), lags.last()) {
            let per_message = ((end - end_before).max(1) as u64).div_ceil(sent.max(1) as u64);
            row.lag_bytes = Some((median, max));
            row.lag_messages = Some((median / per_message, max / per_message));
        }
    }
    Ok(row)
}

/// `rounds` failovers of `g`: each kills the master with SIGKILL, times the first acknowledged
/// send on the promoted member (directly, and through a producer routed by the meta server),
/// then restarts the killed member, which rejoins as the slave.
async fn failovers(g: &mut Group, setting: &str, rounds: usize) -> anyhow::Result<FailoverRow> {
    let http = g.meta_http().context("meta server")?.to_owned();
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&http, "bench")));
    let producer = Arc::new(Producer::new(
        router,
        ProducerConfig {
            retry_backoff: Duration::from_millis(20),
            ..ProducerConfig::default()
        },
    ));
    let subject = format!("bench_failover_{}", std::process::id());
    // Which member acknowledged each send, and when.
    let acks: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (producer, acks, stop, subject) = (
            producer.clone(),
            acks.clone(),
            stop.clone(),
            subject.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match producer.send(new_message(&subject)).await {
                    Ok(r) => {
                        if let Ok(mut a) = acks.lock() {
                            a.push((Instant::now(), r.broker));
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
    };
    let mut row = FailoverRow {
        setting: setting.to_owned(),
        direct_ms: Vec::new(),
        client_ms: Vec::new(),
    };
    let mut master = 0usize;
    for round in 0..rounds {
        let epoch = round as u64 + 1;
        let standby = 1 - master;
        // The producer is being served by this master before it dies.
        let since = Instant::now();
        wait_for_ack(
            &acks,
            since,
            &g.members[master].addr(),
            Duration::from_secs(30),
        )
        .await?;
        let skip = g.members[standby]
            .proc
            .as_ref()
            .map_or(0, |p| p.lines.lock().map_or(0, |l| l.len()));
        if let Some(mut p) = g.members[master].proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let killed = Instant::now();
        let new_addr = g.members[standby].addr();
        let direct = first_direct_ack(&new_addr, &subject, Duration::from_secs(60)).await?;
        row.direct_ms.push(direct.as_secs_f64() * 1e3);
        let client = wait_for_ack(&acks, killed, &new_addr, Duration::from_secs(60)).await?;
        row.client_ms.push(client.as_secs_f64() * 1e3);
        if let Some(p) = &g.members[standby].proc {
            p.wait_line(
                &format!("master epoch={}", epoch + 1),
                skip,
                Duration::from_secs(30),
            )?;
        }
        eprintln!(
            "failover {setting} round {round}: direct {:.0} ms, client {:.0} ms",
            direct.as_secs_f64() * 1e3,
            client.as_secs_f64() * 1e3
        );
        let back = g.launch(master)?;
        back.wait_line(
            &format!("slave epoch={}", epoch + 1),
            0,
            Duration::from_secs(60),
        )?;
        master = standby;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), sender).await;
    producer.close().await;
    Ok(row)
}

/// Time from `since` to the first acknowledgement from `addr` recorded after `since`, waiting
/// up to `within`.
async fn wait_for_ack(
    acks: &Mutex<Vec<(Instant, String)>>,
    since: Instant,
    addr: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + within;
    loop {
        let found = acks.lock().ok().and_then(|a| {
            a.iter()
                .rev()
                .take_while(|(t, _)| *t >= since)
                .filter(|(_, b)| b == addr)
                .map(|(t, _)| *t)
                .min()
        });
        if let Some(t) = found {
            return Ok(t - since);
        }
        if Instant::now() > deadline {
            bail!("no acknowledgement from {addr} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Time until `addr` acknowledges a send on a direct connection (tried every 10 ms).
async fn first_direct_ack(addr: &str, subject: &str, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut conn: Option<Connection> = None;
    loop {
        if conn.is_none() {
            conn = Connection::connect(addr).await.ok();
        }
        if let Some(c) = &conn {
            match send_batch(c, &[new_message(subject)], Duration::from_secs(3)).await {
                Ok(r) if r.iter().all(|x| x.is_ok()) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(_) => conn = None,
            }
        }
        if start.elapsed() > within {
            bail!("{addr} acknowledged nothing within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// p50 and max of `ms`.
fn p50_max(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    (
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// Prints the report as tables.
pub fn print(r: &Report) {
    println!(
        "{:<22} {:<6} {:>9} {:>10} {:>7}  {:>22} {:>18} {:>10}",
        "workload",
        "repl",
        "messages",
        "msgs/s",
        "vs off",
        "slave lag bytes p50/max",
        "lag msgs p50/max",
        "catch-up ms"
    );
    for row in &r.produce {
        let off = r
            .produce
            .iter()
            .find(|b| b.workload == row.workload && b.mode == Mode::Off)
            .map(|b| b.msgs_per_sec);
        let ratio = off.map_or("-".to_owned(), |o| format!("{:.2}", row.msgs_per_sec / o));
        let pair = |p: Option<(u64, u64)>| p.map_or("-".to_owned(), |(a, b)| format!("{a}/{b}"));
        println!(
            "{:<22} {:<6} {:>9} {:>10.0} {:>7}  {:>22} {:>18} {:>10}",
            row.workload,
            row.mode.arg(),
            row.messages,
            row.msgs_per_sec,
            ratio,
            pair(row.lag_bytes),
            pair(row.lag_messages),
            row.catch_up_ms
                .map_or("-".to_owned(), |m| format!("{m:.0}")),
        );
    }
    println!();
    println!(
        "{:<40} {:>7} {:>24} {:>24}",
        "failover (SIGKILL the master)", "rounds", "direct ms p50/max", "client ms p50/max"
    );
    for f in &r.failover {
        let (d50, dmax) = p50_max(&f.direct_ms);
        let (c50, cmax) = p50_max(&f.client_ms);
        println!(
            "{:<40} {:>7} {:>24} {:>24}",
            f.setting,
            f.direct_ms.len(),
            format!("{d50:.0}/{dmax:.0}"),
            format!("{c50:.0}/{cmax:.0}")
        );
    }
    println!(
        "\nbrokers: --flush async, default lease (2 s), replication timeout (2 s) and meta checks;\n\
         direct: a send on a fresh connection to the promoted member, tried every 10 ms;\n\
         client: a qmq_client::Producer routed by the meta server, sending back to back."
    );
}
