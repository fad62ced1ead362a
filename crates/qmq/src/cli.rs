//! Shell client subcommands: `send` and `consume`.
//!
//! Both talk to one broker (`--broker`, the default) or, with `--meta <http host:port>`, find
//! the subject's brokers through the meta server as applications do: `send` then goes through
//! the client's [`Producer`] (retries on a fresh route keeping message ids, so it follows a
//! failover) and `consume` through its [`PullClient`] (pulls the subject and the group's retry
//! subject, and moves to a group's new master).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use qmq_client::{
    new_message, send_batch, Connection, Consumer, ConsumerConfig, Message, MetaRouter,
    MetaRouterConfig, NewGroupStart, Producer, ProducerConfig, PullClient, PullConsumer,
};
use qmq_protocol::TagType;

/// The application code the shell client registers with the meta server.
const APP_CODE: &str = "qmq-cli";

/// How several `--tag` filters combine.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TagMode {
    /// Messages with every tag.
    And,
    /// Messages with any of the tags.
    Or,
}

/// `send` arguments.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Broker address (talk to this broker directly).
    #[arg(long, default_value = "127.0.0.1:20881")]
    broker: String,
    /// Meta server HTTP address (`host:port`): find the subject's brokers through it, as
    /// applications do, retrying failed sends on a fresh route. Excludes `--broker`.
    #[arg(long, conflicts_with = "broker")]
    meta: Option<String>,
    /// Subject.
    #[arg(long, short)]
    subject: String,
    /// Tags (repeat for several).
    #[arg(long = "tag", short)]
    tags: Vec<String>,
    /// Messages to send (the body gets " #n" appended when more than one).
    #[arg(long, short, default_value_t = 1)]
    count: usize,
    /// Message body (property `body`); read from standard input when absent.
    body: Option<String>,
}

/// `consume` arguments.
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Broker address (pull from this broker directly).
    #[arg(long, default_value = "127.0.0.1:20881")]
    broker: String,
    /// Meta server HTTP address (`host:port`): pull from the subject's brokers (and the
    /// group's retry subject) found through it, following route changes. Excludes `--broker`.
    #[arg(long, conflicts_with = "broker")]
    meta: Option<String>,
    /// Subject.
    #[arg(long, short)]
    subject: String,
    /// Consumer group.
    #[arg(long, short)]
    group: String,
    /// Consumer id (default: one per host and process).
    #[arg(long)]
    consumer: Option<String>,
    /// Only messages with these tags.
    #[arg(long = "tag", short)]
    tags: Vec<String>,
    /// How several tags combine.
    #[arg(long, value_enum, default_value = "or")]
    tag_mode: TagMode,
    /// Stop after this many messages.
    #[arg(long, short, default_value_t = 1)]
    count: usize,
    /// Give up after waiting this many seconds for messages.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// Where the group starts if the broker has never seen it: `earliest` (default: what is
    /// already stored, as the quick start expects) or `latest` (only new messages, QMQ's rule).
    /// A group the broker knows continues where it left off either way.
    #[arg(long, value_enum, default_value = "earliest")]
    from: crate::servers::StartFrom,
}

/// Sends `count` messages and reports each id.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let body = match args.body {
        Some(b) => b,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the body from standard input")?;
            // `echo body | qmq send` should send "body", not "body\n".
            match s.strip_suffix('\n') {
                Some(trimmed) => trimmed.to_owned(),
                None => s,
            }
        }
    };
    let messages: Vec<_> = (0..args.count)
        .map(|i| {
            let mut m = new_message(&args.subject);
            m.tags = args.tags.clone();
            m.flags = m.flags.with_tags(!m.tags.is_empty());
            let text = if args.count > 1 {
                format!("{body} #{i}")
            } else {
                body.clone()
            };
            m.set_attr("body", text);
            m
        })
        .collect();
    let failed = match &args.meta {
        Some(meta) => send_routed(meta, messages).await,
        None => send_direct(&args.broker, &messages).await?,
    };
    if failed > 0 {
        bail!("{failed} of {} messages were not sent", args.count);
    }
    Ok(())
}

/// Sends to one broker, 30 messages a request, once each; returns how many failed.
async fn send_direct(broker: &str, messages: &[Message]) -> anyhow::Result<usize> {
    let conn = Connection::connect(broker).await?;
    let mut failed = 0;
    for chunk in messages.chunks(30) {
        let results = send_batch(&conn, chunk, Duration::from_secs(10)).await?;
        for (m, r) in chunk.iter().zip(results) {
            match r {
                Ok(()) => println!("sent {}", m.message_id),
                Err(e) => {
                    failed += 1;
                    eprintln!("{e}");
                }
            }
        }
    }
    Ok(failed)
}

/// Messages in flight at once through the producer (bounds memory for large counts).
const IN_FLIGHT: usize = 1000;

/// Sends through a [`Producer`] routed by the meta server at `meta` (QMQ's retries on a fresh
/// route, keeping each message's id); prints each id once stored. Returns how many failed.
async fn send_routed(meta: &str, messages: Vec<Message>) -> usize {
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(meta, APP_CODE)));
    let producer = Arc::new(Producer::new(router, ProducerConfig::default()));
    let mut running = tokio::task::JoinSet::new();
    let mut failed = 0;
    let mut report = |r: Result<Result<qmq_client::SendReceipt, qmq_client::SendError>, _>| match r
    {
        Ok(Ok(receipt)) => println!("sent {}", receipt.message_id),
        Ok(Err(e)) => {
            failed += 1;
            eprintln!("{e}");
        }
        Err(e) => {
            failed += 1;
            eprintln!("send task failed: {e}");
        }
    };
    for m in messages {
        if running.len() >= IN_FLIGHT {
            if let Some(r) = running.join_next().await {
                report(r);
            }
        }
        let p = producer.clone();
        running.spawn(async move { p.send(m).await });
    }
    while let Some(r) = running.join_next().await {
        report(r);
    }
    producer.close().await;
    failed
}

/// Pulls until `count` messages were printed (each batch acked once printed) or the wait ends.
pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let consumer_id = args
        .consumer
        .clone()
        .unwrap_or_else(|| format!("qmq-cli-{}", std::process::id()));
    let start = match args.from {
        crate::servers::StartFrom::Earliest => NewGroupStart::Earliest,
        crate::servers::StartFrom::Latest => NewGroupStart::Latest,
    };
    let mode = match args.tag_mode {
        TagMode::And => TagType::And,
        TagMode::Or => TagType::Or,
    };
    match args.meta.clone() {
        Some(meta) => consume_routed(&meta, args, consumer_id, start, mode).await,
        None => consume_direct(args, consumer_id, start, mode).await,
    }
}

/// Pulls from one broker.
async fn consume_direct(
    args: ConsumeArgs,
    consumer_id: String,
    start: NewGroupStart,
    mode: TagType,
) -> anyhow::Result<()> {
    let conn = Connection::connect(&args.broker).await?;
    let mut consumer =
        PullConsumer::new(conn, &args.subject, &args.group, &consumer_id).new_group_start(start);
    if !args.tags.is_empty() {
        consumer = consumer.with_tags(mode, &args.tags);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let mut printed = 0;
    while printed < args.count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            bail!(
                "only {printed} of {} messages arrived in {}s",
                args.count,
                args.wait_secs
            );
        }
        let want = (args.count - printed).min(1000) as i32;
        let (first, messages) = consumer.pull(want, left).await?;
        for m in &messages {
            println!("{}\t{}", m.message_id, m.attr("body").unwrap_or(""));
        }
        if !messages.is_empty() {
            consumer
                .ack(first, first + messages.len() as i64 - 1)
                .await?;
            printed += messages.len();
        }
    }
    Ok(())
}

/// Longest single pull when routed: the client takes the subject and the retry subject in
/// turn, so one long poll must not hold the other back.
const ROUTED_PULL_WAIT: Duration = Duration::from_secs(1);

/// Pause after a failed pull (a broker failing over) before trying again.
const ROUTED_PULL_PAUSE: Duration = Duration::from_millis(100);

/// Pulls through a [`PullClient`] routed by the meta server at `meta`; a failed pull or ack
/// (a broker failing over) is reported and pulling goes on until the wait ends.
async fn consume_routed(
    meta: &str,
    args: ConsumeArgs,
    consumer_id: String,
    start: NewGroupStart,
    mode: TagType,
) -> anyhow::Result<()> {
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(meta, APP_CODE)));
    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            consumer_id,
            ..ConsumerConfig::default()
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let mut pull: PullClient = consumer
        .pull_client(&args.subject, &args.group)
        .await?
        .new_group_start(start);
    if !args.tags.is_empty() {
        pull = pull.with_tags(mode, &args.tags);
    }
    let mut printed = 0;
    while printed < args.count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            bail!(
                "only {printed} of {} messages arrived in {}s",
                args.count,
                args.wait_secs
            );
        }
        let want = (args.count - printed).min(1000) as i32;
        let batch = match pull.pull(want, left.min(ROUTED_PULL_WAIT)).await {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("pull failed (trying again): {e}");
                tokio::time::sleep(ROUTED_PULL_PAUSE.min(left)).await;
                continue;
            }
        };
        for m in &batch.messages {
            println!(
                "{}\t{}",
                m.message_id,
                m.message().attr("body").unwrap_or("")
            );
        }
        printed += batch.messages.len();
        if let Err(e) = pull.ack(&batch).await {
            eprintln!("ack failed (the messages may come again): {e}");
        }
    }
    consumer.shutdown().await;
    Ok(())
}
