//! Shell client subcommands: `send` and `consume`.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use qmq_client::{new_message, send_batch, Connection, PullConsumer};
use qmq_protocol::TagType;

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
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:20881")]
    broker: String,
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
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:20881")]
    broker: String,
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
    let conn = Connection::connect(&args.broker).await?;
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
    if failed > 0 {
        bail!("{failed} of {} messages were not sent", args.count);
    }
    Ok(())
}

/// Pulls until `count` messages were printed (each batch acked once printed) or the wait ends.
pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let conn = Connection::connect(&args.broker).await?;
    let consumer_id = args
        .consumer
        .unwrap_or_else(|| format!("qmq-cli-{}", std::process::id()));
    let start = match args.from {
        crate::servers::StartFrom::Earliest => qmq_client::NewGroupStart::Earliest,
        crate::servers::StartFrom::Latest => qmq_client::NewGroupStart::Latest,
    };
    let mut consumer =
        PullConsumer::new(conn, &args.subject, &args.group, &consumer_id).new_group_start(start);
    if !args.tags.is_empty() {
        let mode = match args.tag_mode {
            TagMode::And => TagType::And,
            TagMode::Or => TagType::Or,
        };
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
