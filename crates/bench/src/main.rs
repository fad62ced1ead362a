//! `qmq-bench`: qmq-rs against NATS JetStream and RabbitMQ on this machine, in one run.
//!
//! Workloads: produce throughput and produce+consume throughput (100 B / 1 KiB bodies, 1 and 4
//! producers, 1 and 4 consumers), end-to-end latency at a fixed offered rate, and backlog drain
//! by 1, 2 and 4 consumers of one group; on request, replication (see [`replication`]). Prints a
//! table with ratios to qmq-rs, the durability settings of each system, and the peak RSS of the
//! qmq-rs server process.
//!
//! Needs the `qmq` executable built next to this one (`cargo build --release -p qmq`), NATS on
//! 127.0.0.1:4222 (with JetStream) and RabbitMQ on 127.0.0.1:5672.

mod replication;
mod server;
mod systems;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use systems::{hist::Hist, ConsumeTask, Endpoints, System};

/// Benchmarks qmq-rs against NATS JetStream and RabbitMQ.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A one-minute smoke run with small counts.
    #[arg(long)]
    quick: bool,
    /// Print results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// NATS URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    rabbit: String,
    /// Offered rate for the latency workload, messages per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Only these systems (default: all three).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these workloads: throughput, batch, latency, drain (default: all four), and replication
    /// (qmq-rs only, never by default: produce with replication off/async/sync, slave lag,
    /// failover time).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Also run every workload against a second qmq-rs server with `--metrics-listen`, scraped
    /// every second (system `qmq-rs+metrics`): what metrics cost.
    #[arg(long)]
    with_metrics: bool,
    /// Also run every workload against a second qmq-rs server with the duplicate window off
    /// (system `qmq-rs-nodedup`): what the window costs.
    #[arg(long)]
    without_dedup: bool,
}

/// One measured line.
#[derive(Debug, serde::Serialize)]
struct Row {
    workload: String,
    system: System,
    messages: usize,
    seconds: f64,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    latency_ms: Option<(f64, f64, f64, f64)>,
    /// CPU seconds the qmq-rs server used per million messages of the row (qmq-rs only).
    server_cpu_s_per_m: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.workloads.iter().any(|w| w == "replication") {
        let report = replication::run(args.quick).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            replication::print(&report);
        }
        if args.workloads.len() == 1 {
            return Ok(());
        }
    }
    let data = tempfile::tempdir().context("temp dir for the qmq-rs server")?;
    let qmq =
        server::QmqServer::start(data.path(), false, &[]).context("starting qmq standalone")?;
    let without_dedup = if args.without_dedup {
        let data = tempfile::tempdir().context("temp dir for the qmq-rs server without dedup")?;
        let server = server::QmqServer::start(data.path(), false, &["--dedup-window-secs", "0"])
            .context("starting qmq standalone without the duplicate window")?;
        Some((data, server))
    } else {
        None
    };
    let with_metrics = if args.with_metrics {
        let data = tempfile::tempdir().context("temp dir for the qmq-rs server with metrics")?;
        let server = server::QmqServer::start(data.path(), true, &[])
            .context("starting qmq standalone with metrics")?;
        let scraper = tokio::spawn(scrape_every_second(server.metrics.clone()));
        Some((data, server, scraper))
    } else {
        None
    };
    let ep = Endpoints {
        qmq: qmq.addr.clone(),
        qmq_metrics: with_metrics
            .as_ref()
            .map_or(String::new(), |(_, s, _)| s.addr.clone()),
        qmq_nodedup: without_dedup
            .as_ref()
            .map_or(String::new(), |(_, s)| s.addr.clone()),
        nats: args.nats.clone(),
        rabbit: args.rabbit.clone(),
    };
    let systems: Vec<System> = [
        System::Qmq,
        System::QmqMetrics,
        System::QmqNoDedup,
        System::Nats,
        System::Rabbit,
    ]
    .into_iter()
    .filter(|s| *s != System::QmqMetrics || args.with_metrics)
    .filter(|s| *s != System::QmqNoDedup || args.without_dedup)
    .filter(|s| args.only.is_empty() || args.only.iter().any(|o| s.name().starts_with(o.as_str())))
    .collect();
    let scale = if args.quick { 1 } else { 10 };
    let mut rows = Vec::new();
    let mut run = 0usize;
    let mut name = |w: &str| {
        run += 1;
        format!("bench_{}_{w}_{run}", std::process::id())
    };

    // The qmq-rs server process behind a system, for its CPU time per row.
    let server_of = |system: System| match system {
        System::Qmq => Some(&qmq),
        System::QmqMetrics => with_metrics.as_ref().map(|(_, s, _)| s),
        System::QmqNoDedup => without_dedup.as_ref().map(|(_, s)| s),
        System::Nats | System::Rabbit => None,
    };
    let cpu_of = |system: System| server_of(system).and_then(server::QmqServer::cpu_seconds);
    // Which system goes first alternates row by row: going first costs a few percent on this
    // machine (measured A/A: the same server twice, 0.95 of the second's rate), which would
    // otherwise land on the same system every time.
    let mut row_index = 0usize;
    let mut in_turn = || {
        let mut order = systems.clone();
        let first = row_index % order.len().max(1);
        order.rotate_left(first);
        row_index += 1;
        order
    };
    let wants = |w: &str| args.workloads.is_empty() || args.workloads.iter().any(|x| x == w);
    // Throughput: produce only, then produce + consume together.
    for size in [100usize, 1024].into_iter().filter(|_| wants("throughput")) {
        for (producers, consumers) in [(1usize, 0usize), (4, 0), (1, 1), (1, 4), (4, 1), (4, 4)] {
            let count = 20_000 * scale;
            let workload = if consumers == 0 {
                format!("produce {size}B x{producers}p")
            } else {
                format!("produce+consume {size}B {producers}p/{consumers}c")
            };
            for system in in_turn() {
                let n = name("tp");
                let cpu = cpu_of(system);
                let r = throughput(
                    system,
                    &ep,
                    &n,
                    count,
                    size,
                    producers,
                    consumers,
                    systems::QMQ_BATCH,
                    &workload,
                )
                .await;
                let r = with_cpu(r, cpu, cpu_of(system));
                systems::cleanup(system, &ep, &n).await;
                rows.push(r.with_context(|| format!("{workload} on {}", system.name()))?);
            }
        }
    }
    // Batch sizes: produce only, 100 B, 1 and 2 producers, 30 / 256 / 1000 messages per
    // request (qmq-rs) or in-flight window (every system, see `systems::window`).
    for batch in [30usize, 256, 1000].into_iter().filter(|_| wants("batch")) {
        for producers in [1usize, 2] {
            let count = 20_000 * scale;
            let workload = format!("produce 100B x{producers}p batch {batch}");
            for system in in_turn() {
                let n = name("batch");
                let cpu = cpu_of(system);
                let r =
                    throughput(system, &ep, &n, count, 100, producers, 0, batch, &workload).await;
                let r = with_cpu(r, cpu, cpu_of(system));
                systems::cleanup(system, &ep, &n).await;
                rows.push(r.with_context(|| format!("{workload} on {}", system.name()))?);
            }
        }
    }
    // Latency at a fixed offered rate.
    let secs = if args.quick { 3 } else { 15 };
    for &system in systems.iter().filter(|_| wants("latency")) {
        let n = name("lat");
        let cpu = cpu_of(system);
        let r = latency(system, &ep, &n, args.rate, secs).await;
        let r = with_cpu(r, cpu, cpu_of(system));
        systems::cleanup(system, &ep, &n).await;
        rows.push(r.with_context(|| format!("latency on {}", system.name()))?);
    }
    // Backlog drain: store first, then drain with 1, 2, 4 consumers of one group.
    let backlog = if args.quick { 50_000 } else { 1_000_000 };
    for consumers in [1usize, 2, 4].into_iter().filter(|_| wants("drain")) {
        for system in in_turn() {
            let n = name("drain");
            let r = drain(system, &ep, &n, backlog, consumers, cpu_of).await;
            systems::cleanup(system, &ep, &n).await;
            rows.push(r.with_context(|| format!("drain on {}", system.name()))?);
        }
    }
    let rss = qmq.peak_rss_kib();
    drop(qmq);
    drop(without_dedup);
    if let Some((_, _, scraper)) = with_metrics {
        scraper.abort();
    }

    if args.json {
        let out = serde_json::json!({
            "rows": rows,
            "qmq_peak_rss_kib": rss,
            "durability": systems.iter().map(|s| (s.name(), s.durability())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&rows, &systems, rss);
    }
    Ok(())
}

/// Scrapes `metrics` every second for as long as the run lasts, as Prometheus would (more
/// often than its usual 15 s), so the cost of answering scrapes is in the measurement.
async fn scrape_every_second(metrics: Option<String>) {
    let Some(addr) = metrics else { return };
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Err(e) = qmq_metrics::scrape(&addr).await {
            eprintln!("scraping {addr}: {e}");
        }
    }
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:40} {bar:30} {pos}/{len} {per_sec}") {
        pb.set_style(style);
    }
    pb.set_message(label.to_owned());
    pb
}

type Tasks = tokio::task::JoinSet<anyhow::Result<()>>;

/// One workload on one system: where the messages go and the progress bar to advance.
struct Run<'a> {
    system: System,
    ep: &'a Endpoints,
    name: &'a str,
    pb: &'a ProgressBar,
}

impl Run<'_> {
    /// Spawns `producers` tasks sending `count` messages of `size` bytes in all, `batch` per
    /// request.
    fn spawn_producers(
        &self,
        tasks: &mut Tasks,
        producers: usize,
        count: usize,
        size: usize,
        batch: usize,
    ) {
        for _ in 0..producers {
            let (system, ep, name, pb) = (
                self.system,
                self.ep.clone(),
                self.name.to_owned(),
                self.pb.clone(),
            );
            tasks.spawn(async move {
                systems::produce(
                    system,
                    &ep,
                    &name,
                    count / producers,
                    size,
                    None,
                    batch,
                    &pb,
                )
                .await
            });
        }
    }

    /// Spawns `consumers` consumers of one group that together consume `count` messages; the
    /// returned cell is set when the last one is consumed.
    fn spawn_group(
        &self,
        tasks: &mut Tasks,
        consumers: usize,
        count: usize,
        latency: Option<Arc<Hist>>,
    ) -> Arc<OnceLock<Instant>> {
        let shared = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(OnceLock::new());
        for id in 0..consumers {
            let task = ConsumeTask {
                id,
                count,
                shared: shared.clone(),
                latency: latency.clone(),
                finished: finished.clone(),
            };
            let (system, ep, name, pb) = (
                self.system,
                self.ep.clone(),
                self.name.to_owned(),
                self.pb.clone(),
            );
            tasks.spawn(async move { systems::consume(system, &ep, &name, task, &pb).await });
        }
        finished
    }
}

async fn join(mut tasks: Tasks) -> anyhow::Result<()> {
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn throughput(
    system: System,
    ep: &Endpoints,
    name: &str,
    count: usize,
    size: usize,
    producers: usize,
    consumers: usize,
    batch: usize,
    workload: &str,
) -> anyhow::Result<Row> {
    systems::prepare(system, ep, name).await?;
    let total = if consumers > 0 { 2 * count } else { count } as u64;
    let pb = bar(total, &format!("{workload} {}", system.name()));
    let start = Instant::now();
    let run = Run {
        system,
        ep,
        name,
        pb: &pb,
    };
    let mut tasks = Tasks::new();
    run.spawn_producers(&mut tasks, producers, count, size, batch);
    let finished = run.spawn_group(&mut tasks, consumers, count / producers * producers, None);
    join(tasks).await?;
    pb.finish_and_clear();
    Ok(row(
        workload,
        system,
        count,
        size,
        took(start, &finished),
        None,
    ))
}

async fn latency(
    system: System,
    ep: &Endpoints,
    name: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Row> {
    systems::prepare(system, ep, name).await?;
    let count = (rate * secs) as usize;
    let workload = format!("latency 100B @{rate}/s");
    let pb = bar(2 * count as u64, &format!("{workload} {}", system.name()));
    let hist = Arc::new(Hist::new()?);
    let start = Instant::now();
    let run = Run {
        system,
        ep,
        name,
        pb: &pb,
    };
    let mut consumer = Tasks::new();
    let finished = run.spawn_group(&mut consumer, 1, count, Some(hist.clone()));
    systems::produce(system, ep, name, count, 100, Some(rate), 1, &pb).await?;
    join(consumer).await?;
    pb.finish_and_clear();
    Ok(row(
        &workload,
        system,
        count,
        100,
        took(start, &finished),
        Some(hist.percentiles()),
    ))
}

async fn drain(
    system: System,
    ep: &Endpoints,
    name: &str,
    backlog: usize,
    consumers: usize,
    cpu_of: impl Fn(System) -> Option<f64>,
) -> anyhow::Result<Row> {
    systems::prepare(system, ep, name).await?;
    let workload = format!("drain {backlog} x{consumers}c");
    let pb = bar(
        backlog as u64,
        &format!("fill {workload} {}", system.name()),
    );
    let mut fill = Tasks::new();
    Run {
        system,
        ep,
        name,
        pb: &pb,
    }
    .spawn_producers(&mut fill, 4, backlog, 100, systems::QMQ_BATCH);
    join(fill).await?;
    pb.finish_and_clear();
    let total = backlog / 4 * 4;
    let pb = bar(total as u64, &format!("{workload} {}", system.name()));
    let cpu = cpu_of(system);
    let start = Instant::now();
    let mut tasks = Tasks::new();
    let run = Run {
        system,
        ep,
        name,
        pb: &pb,
    };
    let finished = run.spawn_group(&mut tasks, consumers, total, None);
    join(tasks).await?;
    pb.finish_and_clear();
    let r = row(&workload, system, total, 100, took(start, &finished), None);
    with_cpu(Ok(r), cpu, cpu_of(system))
}

/// Sets a row's server CPU per million messages from the server's CPU time before and after.
fn with_cpu(
    row: anyhow::Result<Row>,
    before: Option<f64>,
    after: Option<f64>,
) -> anyhow::Result<Row> {
    let mut row = row?;
    if let (Some(b), Some(a)) = (before, after) {
        row.server_cpu_s_per_m = Some((a - b) / row.messages.max(1) as f64 * 1e6);
    }
    Ok(row)
}

/// Time from `start` to the last message consumed (or to now, when nothing consumed).
fn took(start: Instant, finished: &OnceLock<Instant>) -> Duration {
    finished
        .get()
        .map_or_else(|| start.elapsed(), |t| *t - start)
}

fn row(
    workload: &str,
    system: System,
    messages: usize,
    size: usize,
    took: Duration,
    latency_ms: Option<(f64, f64, f64, f64)>,
) -> Row {
    let s = took.as_secs_f64().max(1e-9);
    Row {
        workload: workload.to_owned(),
        system,
        messages,
        seconds: s,
        msgs_per_sec: messages as f64 / s,
        mb_per_sec: (messages * size) as f64 / s / 1e6,
        latency_ms,
        server_cpu_s_per_m: None,
    }
}

fn print_table(rows: &[Row], systems: &[System], rss: Option<u64>) {
    println!(
        "{:<34} {:<15} {:>10} {:>12} {:>9} {:>9} {:>9}  latency ms p50/p99/p99.9/max",
        "workload", "system", "messages", "msgs/s", "MB/s", "vs qmq", "cpu s/M"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.workload == r.workload && b.system == System::Qmq)
            .map(|b| b.msgs_per_sec);
        let ratio = base.map_or("-".to_owned(), |b| format!("{:.2}", r.msgs_per_sec / b));
        let lat = r.latency_ms.map_or(String::new(), |(a, b, c, d)| {
            format!("{a:.2}/{b:.2}/{c:.2}/{d:.2}")
        });
        let cpu = r
            .server_cpu_s_per_m
            .map_or("-".to_owned(), |c| format!("{c:.2}"));
        println!(
            "{:<34} {:<15} {:>10} {:>12.0} {:>9.1} {:>9} {:>9}  {}",
            r.workload,
            r.system.name(),
            r.messages,
            r.msgs_per_sec,
            r.mb_per_sec,
            ratio,
            cpu,
            lat
        );
    }
    println!("\n\"vs qmq\" is the system's rate divided by qmq-rs's (below 1: qmq-rs is faster).");
    println!(
        "\"cpu s/M\" is the qmq-rs server's CPU time (user + system) per million messages of the row."
    );
    println!("durability:");
    for s in systems {
        println!("  {:<15} {}", s.name(), s.durability());
    }
    match rss {
        Some(kib) => println!("qmq-rs server peak RSS: {:.1} MiB", kib as f64 / 1024.0),
        None => println!("qmq-rs server peak RSS: unknown"),
    }
}
