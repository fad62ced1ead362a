//! Shell client subcommands: `send` and `consume`.
//!
//! Both talk to one broker (`--broker`, the default) or, with `--meta <http host:port>`, find
//! the subject's brokers through the meta server as applications do: `send` then goes through
//! the client's [`Producer`] (retries on a fresh route keeping message ids, so it follows a
//! failover) and `consume` through its [`PullClient`] (pulls the subject and the group's retry
//! subject, and moves to a group's new master).
//!
//! `send --delay 10s` / `--at <RFC 3339 time>` sends delay messages: they need `--meta`, and go,
//! as the client library sends them, to the delay server the meta server routes the subject to.
//! `consume --follow` keeps pulling until SIGINT/SIGTERM; `consume --json` prints one JSON
//! object per message.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, FixedOffset, Utc};
use clap::{Args, ValueEnum};
use qmq_client::message::keys;
use qmq_client::{
    new_message, send_batch, Connection, Consumer, ConsumerConfig, Message, MessageExt, MetaRouter,
    MetaRouterConfig, NewGroupStart, Producer, ProducerConfig, PullClient, PullConsumer,
};
use qmq_protocol::TagType;
use tokio_util::sync::CancellationToken;

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
    /// Deliver the message this long after it was created (`10s`, `5m`, `2h`, `1h 30m`), through
    /// the delay server. Needs `--meta`; at most 2 years (QMQ's longest delay).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Deliver the message at this RFC 3339 time (`2026-12-24T18:00:00+08:00`), through the
    /// delay server. Needs `--meta`; must be in the future and at most 2 years ahead.
    #[arg(long, value_parser = parse_rfc3339)]
    at: Option<DateTime<FixedOffset>>,
    /// A message property `key=value`, sent as an attribute (repeat for several). Keys must be
    /// non-empty, unique and not QMQ's own (`qmq_*`) nor `body`.
    #[arg(long = "property", short = 'p', value_name = "KEY=VALUE", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// The message id (default: a new unique one). Sending an id again within the broker's
    /// duplicate window (`--dedup-window-secs`) stores nothing and still succeeds: for
    /// replaying a message by hand. Only with `--count 1`.
    #[arg(long)]
    message_id: Option<String>,
    /// Message body (property `body`); read from standard input when absent.
    body: Option<String>,
}

/// Parses an RFC 3339 time for `--at`.
fn parse_rfc3339(s: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{e}: expected an RFC 3339 time such as 2026-12-24T18:00:00+08:00"))
}

/// Parses a `--property key=value`, refusing keys the message cannot carry as a property.
fn parse_property(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("{s:?} is not key=value"));
    };
    if key.trim().is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    if key.starts_with("qmq_") || keys::ALL.contains(&key) {
        return Err(format!("{key:?} is reserved: qmq_* keys belong to QMQ"));
    }
    if key == BODY {
        return Err(format!(
            "{key:?} is reserved: it carries the message body (give it as the last argument)"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// The attribute the shell client keeps a message's body in.
const BODY: &str = "body";

/// QMQ's longest delay (2 years), which delay servers refuse to exceed.
const MAX_DELAY: Duration = qmq_delay::config::TWO_YEARS;

/// When the messages of `args` are due, if they are delay messages: `created` (ms since the
/// epoch) plus `--delay`, or `--at`; checked against `now` and QMQ's 2-year limit.
fn schedule(
    delay: Option<Duration>,
    at: Option<DateTime<FixedOffset>>,
    created: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let longest = chrono::Duration::from_std(MAX_DELAY).context("the longest delay")?;
    let due = match (delay, at) {
        (Some(_), Some(_)) => bail!("--delay and --at exclude each other"),
        (None, None) => return Ok(None),
        (Some(d), None) => {
            if d.is_zero() {
                bail!("--delay must be longer than 0s");
            }
            if d > MAX_DELAY {
                bail!(
                    "--delay {} is more than 2 years (730 days), QMQ's longest delay",
                    humantime::format_duration(d)
                );
            }
            let ms = i64::try_from(d.as_millis()).context("--delay is too long")?;
            chrono::DateTime::from_timestamp_millis(created.saturating_add(ms))
                .context("--delay is too long")?
        }
        (None, Some(at)) => {
            let at = at.with_timezone(&Utc);
            if at <= now {
                bail!("--at {} is in the past", at.to_rfc3339());
            }
            if at - now > longest {
                bail!(
                    "--at {} is more than 2 years (730 days) ahead, QMQ's longest delay",
                    at.to_rfc3339()
                );
            }
            at
        }
    };
    Ok(Some(due))
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
    /// Give up after waiting this long for messages (`500ms`, `10s`, `2m`); overrides
    /// `--wait-secs`.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "wait_secs")]
    wait: Option<Duration>,
    /// Where the group starts if the broker has never seen it: `earliest` (default: what is
    /// already stored, as the quick start expects) or `latest` (only new messages, QMQ's rule).
    /// A group the broker knows continues where it left off either way.
    #[arg(long, value_enum, default_value = "earliest")]
    from: crate::servers::StartFrom,
    /// Keep consuming until SIGINT (Ctrl-C) or SIGTERM, printing and acking messages as they
    /// come; then exit 0. Excludes `--count`, `--wait` and `--wait-secs`.
    #[arg(long, conflicts_with_all = ["count", "wait", "wait_secs"])]
    follow: bool,
    /// Print one JSON object per message: `subject`, `message_id`, `sequence` (the pull-log
    /// offset, when known), `created_time` and `schedule_time` (ms since the epoch), `tags`,
    /// `attributes` (every property but the body), `body` and `body_encoding` (`utf8`).
    #[arg(long)]
    json: bool,
}

impl ConsumeArgs {
    /// How long to wait for messages (ignored with `--follow`).
    fn wait(&self) -> Duration {
        self.wait
            .unwrap_or_else(|| Duration::from_secs(self.wait_secs))
    }

    /// How many messages to pull before stopping; with `--follow`, no limit.
    fn limit(&self) -> usize {
        if self.follow {
            usize::MAX
        } else {
            self.count
        }
    }
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
    let delayed = args.delay.is_some() || args.at.is_some();
    if delayed && args.meta.is_none() {
        bail!(
            "--delay and --at need --meta <meta server http address>: delay messages go to \
             the delay server the meta server routes the subject to"
        );
    }
    if args.message_id.is_some() && args.count != 1 {
        bail!(
            "--message-id sends one message: it cannot go with --count {}",
            args.count
        );
    }
    if args.message_id.as_deref() == Some("") {
        bail!("--message-id must not be empty");
    }
    let mut seen = std::collections::HashSet::new();
    for (key, _) in &args.properties {
        if !seen.insert(key.as_str()) {
            bail!("--property {key} is given more than once");
        }
    }
    let mut messages = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let mut m = new_message(&args.subject);
        if let Some(id) = &args.message_id {
            m.message_id.clone_from(id);
        }
        m.tags = args.tags.clone();
        m.flags = m.flags.with_tags(!m.tags.is_empty());
        let text = if args.count > 1 {
            format!("{body} #{i}")
        } else {
            body.clone()
        };
        m.set_attr(BODY, text);
        for (key, value) in &args.properties {
            m.set_string(key, value)
                .with_context(|| format!("--property {key}"))?;
        }
        if let Some(due) = schedule(args.delay, args.at, m.created_time, Utc::now())? {
            m.set_delay_until(due)
                .with_context(|| format!("scheduling for {}", due.to_rfc3339()))?;
        }
        messages.push(m);
    }
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
                Ok(()) => println!("{}", sent_line(&m.message_id, m)),
                // QMQ's clients count a duplicate as sent: the broker already stored this id
                // (within its duplicate window) and stored nothing this time.
                Err(qmq_client::SendError::Refused {
                    code: qmq_protocol::ProducerCode::Duplicate,
                    ..
                }) => println!(
                    "{} (duplicate: already stored)",
                    sent_line(&m.message_id, m)
                ),
                Err(e) => {
                    failed += 1;
                    eprintln!("{e}");
                }
            }
        }
    }
    Ok(failed)
}

/// `sent <id>`, with ` due <RFC 3339 time>` for a delay message.
fn sent_line(id: &str, m: &Message) -> String {
    sent_line_at(id, m.flags.is_delay().then(|| m.schedule_time()).flatten())
}

/// `sent <id>`, with ` due <RFC 3339 time>` when `due` is given.
fn sent_line_at(id: &str, due: Option<DateTime<Utc>>) -> String {
    match due {
        Some(at) => format!(
            "sent {id} due {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        None => format!("sent {id}"),
    }
}

/// Messages in flight at once through the producer (bounds memory for large counts).
const IN_FLIGHT: usize = 1000;

/// Sends through a [`Producer`] routed by the meta server at `meta` (QMQ's retries on a fresh
/// route, keeping each message's id); prints each id once stored. Returns how many failed.
async fn send_routed(meta: &str, messages: Vec<Message>) -> usize {
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(meta, APP_CODE)));
    let producer = Arc::new(Producer::new(
        router,
        ProducerConfig {
            app_code: Some(APP_CODE.to_owned()),
            ..ProducerConfig::default()
        },
    ));
    let mut running = tokio::task::JoinSet::new();
    let mut failed = 0;
    type Sent = (
        Result<qmq_client::SendReceipt, qmq_client::SendError>,
        Option<DateTime<Utc>>,
    );
    let mut report = |r: Result<Sent, _>| match r {
        Ok((Ok(receipt), due)) => println!("{}", sent_line_at(&receipt.message_id, due)),
        Ok((Err(e), _)) => {
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
        let due = m.flags.is_delay().then(|| m.schedule_time()).flatten();
        running.spawn(async move { (p.send(m).await, due) });
    }
    while let Some(r) = running.join_next().await {
        report(r);
    }
    producer.close().await;
    failed
}

/// Pulls until `count` messages were printed (each batch acked once printed) or the wait ends;
/// with `--follow`, until SIGINT/SIGTERM.
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
    let stop = CancellationToken::new();
    if args.follow {
        // Installed before the first pull, so a signal never kills the process mid-batch: the
        // batch being pulled is printed and acked, then the loop ends.
        crate::servers::install_signal_handlers()?;
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::servers::wait_for_signal().await {
                eprintln!("{e:#}");
            }
            stop.cancel();
        });
    }
    let out = Printer { json: args.json };
    match args.meta.clone() {
        Some(meta) => consume_routed(&meta, args, consumer_id, start, mode, stop, out).await,
        None => consume_direct(args, consumer_id, start, mode, stop, out).await,
    }
}

/// Prints consumed messages, as text (`<id>\t<body>`) or JSON lines.
#[derive(Clone, Copy)]
struct Printer {
    json: bool,
}

impl Printer {
    /// Prints `m` (of subject `subject`; `sequence`: its pull-log offset, when known).
    fn print(self, subject: &str, m: &Message, sequence: Option<i64>) {
        if self.json {
            println!("{}", message_json(subject, m, sequence));
        } else {
            println!("{}\t{}", m.message_id, m.attr(BODY).unwrap_or(""));
        }
    }
}

/// One consumed message as a JSON object (see `consume --json`). QMQ messages carry their body
/// and properties as attributes, which the wire format keeps as UTF-8 strings, so the body is
/// always printed as a string and `body_encoding` says `utf8`.
fn message_json(subject: &str, m: &Message, sequence: Option<i64>) -> serde_json::Value {
    let attributes: serde_json::Map<String, serde_json::Value> = m
        .attrs
        .iter()
        .filter(|(k, _)| k != BODY)
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "subject": subject,
        "message_id": m.message_id,
        "sequence": sequence,
        "created_time": m.created_time,
        "schedule_time": m.flags.is_delay().then_some(m.expire_or_schedule)
            .or_else(|| m.get_i64(keys::SCHEDULE_RECEIVE_TIME)),
        "tags": m.tags,
        "attributes": attributes,
        "body": m.attr(BODY),
        "body_encoding": "utf8",
    })
}

/// How long one pull waits with `--follow`: a signal is noticed between pulls, so it bounds
/// how long Ctrl-C takes.
const FOLLOW_PULL_WAIT: Duration = Duration::from_secs(1);

/// Pulls from one broker.
async fn consume_direct(
    args: ConsumeArgs,
    consumer_id: String,
    start: NewGroupStart,
    mode: TagType,
    stop: CancellationToken,
    out: Printer,
) -> anyhow::Result<()> {
    let conn = Connection::connect(&args.broker).await?;
    let mut consumer =
        PullConsumer::new(conn, &args.subject, &args.group, &consumer_id).new_group_start(start);
    if !args.tags.is_empty() {
        consumer = consumer.with_tags(mode, &args.tags);
    }
    let wait = args.wait();
    let limit = args.limit();
    let deadline = tokio::time::Instant::now() + wait;
    let mut printed = 0;
    while printed < limit && !stop.is_cancelled() {
        let left = if args.follow {
            FOLLOW_PULL_WAIT
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        if left.is_zero() {
            bail!(
                "only {printed} of {} messages arrived in {}",
                args.count,
                humantime::format_duration(wait)
            );
        }
        let want = (limit - printed).min(1000) as i32;
        let (first, messages) = match consumer.pull(want, left).await {
            Ok(got) => got,
            Err(e) if args.follow => {
                eprintln!("pull failed (trying again): {e}");
                pause(&stop).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for (i, m) in messages.iter().enumerate() {
            out.print(&args.subject, m, Some(first + i as i64));
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

/// Waits [`ROUTED_PULL_PAUSE`], or less if `stop` is cancelled meanwhile.
async fn pause(stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(ROUTED_PULL_PAUSE) => {}
        () = stop.cancelled() => {}
    }
}

/// Pulls through a [`PullClient`] routed by the meta server at `meta`; a failed pull or ack
/// (a broker failing over) is reported and pulling goes on until the wait ends.
async fn consume_routed(
    meta: &str,
    args: ConsumeArgs,
    consumer_id: String,
    start: NewGroupStart,
    mode: TagType,
    stop: CancellationToken,
    out: Printer,
) -> anyhow::Result<()> {
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(meta, APP_CODE)));
    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            consumer_id,
            ..ConsumerConfig::default()
        },
    );
    let wait = args.wait();
    let limit = args.limit();
    let deadline = tokio::time::Instant::now() + wait;
    let mut pull: PullClient = consumer
        .pull_client(&args.subject, &args.group)
        .await?
        .new_group_start(start);
    if !args.tags.is_empty() {
        pull = pull.with_tags(mode, &args.tags);
    }
    let mut printed = 0;
    while printed < limit && !stop.is_cancelled() {
        let left = if args.follow {
            ROUTED_PULL_WAIT
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        if left.is_zero() {
            consumer.shutdown().await;
            bail!(
                "only {printed} of {} messages arrived in {}",
                args.count,
                humantime::format_duration(wait)
            );
        }
        let want = (limit - printed).min(1000) as i32;
        let batch = match pull.pull(want, left.min(ROUTED_PULL_WAIT)).await {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("pull failed (trying again): {e}");
                pause(&stop).await;
                continue;
            }
        };
        for m in &batch.messages {
            // The pull-log offset of a routed pull is not exposed by the client.
            out.print(m.subject(), m.message(), None);
        }
        printed += batch.messages.len();
        if let Err(e) = pull.ack(&batch).await {
            eprintln!("ack failed (the messages may come again): {e}");
        }
    }
    consumer.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<FixedOffset> {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn properties_parse_and_reserved_keys_are_refused() {
        assert_eq!(
            parse_property("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert_eq!(
            parse_property("a=").unwrap(),
            ("a".to_owned(), String::new())
        );
        for bad in [
            "a",
            "=b",
            " =b",
            "qmq_createTime=1",
            "qmq_anything=1",
            "body=x",
        ] {
            assert!(parse_property(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_checks_the_past_and_the_two_year_limit() {
        let now = at("2026-01-01T00:00:00Z").with_timezone(&Utc);
        let created = now.timestamp_millis();
        assert!(schedule(None, None, created, now).unwrap().is_none());
        let due = schedule(Some(Duration::from_secs(2)), None, created, now)
            .unwrap()
            .unwrap();
        assert_eq!(due.timestamp_millis(), created + 2000);
        let due = schedule(None, Some(at("2026-12-24T18:00:00+08:00")), created, now)
            .unwrap()
            .unwrap();
        assert_eq!(due, at("2026-12-24T10:00:00Z"));
        let past = schedule(None, Some(at("2025-12-31T23:59:59Z")), created, now).unwrap_err();
        assert!(format!("{past:#}").contains("in the past"), "{past:#}");
        let far = schedule(None, Some(at("2028-01-02T00:00:00Z")), created, now).unwrap_err();
        assert!(format!("{far:#}").contains("more than 2 years"), "{far:#}");
        let long = Duration::from_secs(731 * 86_400);
        let far = schedule(Some(long), None, created, now).unwrap_err();
        assert!(format!("{far:#}").contains("more than 2 years"), "{far:#}");
        assert!(schedule(Some(Duration::ZERO), None, created, now).is_err());
    }

    #[test]
    fn json_output_has_the_fields_and_keeps_the_body_apart() {
        let mut m = new_message("s");
        m.set_attr(BODY, "hello");
        m.set_string("k", "v").unwrap();
        m.add_tag("t").unwrap();
        let v = message_json("s", &m, Some(7));
        assert_eq!(v["subject"], "s");
        assert_eq!(v["message_id"], m.message_id.as_str());
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["tags"], serde_json::json!(["t"]));
        assert_eq!(v["attributes"]["k"], "v");
        assert!(v["attributes"].get(BODY).is_none());
        assert_eq!(v["body"], "hello");
        assert_eq!(v["body_encoding"], "utf8");
        assert!(v["schedule_time"].is_null());
    }
}
