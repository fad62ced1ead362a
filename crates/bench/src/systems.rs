//! The three systems under test behind one small interface: produce N messages, consume N
//! messages from a group, each with a timestamp in the body for latency.
//!
//! Durability, stated side by side (see `durability()`):
//! - qmq-rs: acknowledged after the write reaches the OS; the broker fsyncs every 10 ms.
//! - NATS JetStream: file storage; acknowledged after the write reaches the OS; the server
//!   fsyncs on its own schedule (`sync_interval`, 2 min by default).
//! - RabbitMQ: durable queue, persistent messages, publisher confirms (a confirm is sent once
//!   the message is written to disk).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

/// Least in-flight window per producer (messages), the same for every system.
pub const WINDOW: usize = 256;
/// The batch of the default rows: qmq-rs's send batch (the QMQ client's default).
pub const QMQ_BATCH: usize = 30;

/// Messages in flight per producer at batch size `batch`, the same for every system: at
/// least [`WINDOW`], and room for two batches.
pub fn window(batch: usize) -> usize {
    WINDOW.max(2 * batch)
}

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum System {
    /// qmq-rs standalone.
    Qmq,
    /// A second qmq-rs standalone with `--metrics-listen`, scraped every second: what metrics
    /// cost (`--with-metrics`).
    QmqMetrics,
    /// A second qmq-rs standalone with the duplicate window off (`--dedup-window-secs 0`):
    /// what the window costs (`--without-dedup`).
    QmqNoDedup,
    /// NATS JetStream.
    Nats,
    /// RabbitMQ.
    Rabbit,
}

impl System {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qmq => "qmq-rs",
            Self::QmqMetrics => "qmq-rs+metrics",
            Self::QmqNoDedup => "qmq-rs-nodedup",
            Self::Nats => "nats-jetstream",
            Self::Rabbit => "rabbitmq",
        }
    }

    /// The durability setting used, for the report.
    pub fn durability(self) -> &'static str {
        match self {
            Self::Qmq => "ack after write to OS, fsync every 10 ms (--flush async)",
            Self::QmqMetrics => "as qmq-rs; --metrics-listen, /metrics scraped every second",
            Self::QmqNoDedup => "as qmq-rs; duplicate window off (--dedup-window-secs 0)",
            Self::Nats => {
                "file storage, ack after write to OS, server fsync interval (default 2 min)"
            }
            Self::Rabbit => "durable queue, persistent messages, publisher confirms (after fsync)",
        }
    }
}

/// Where the systems are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// qmq-rs broker address.
    pub qmq: String,
    /// The broker address of the qmq-rs server with metrics on (empty: not started).
    pub qmq_metrics: String,
    /// The broker address of the qmq-rs server with the duplicate window off (empty: not
    /// started).
    pub qmq_nodedup: String,
    /// NATS URL.
    pub nats: String,
    /// RabbitMQ URL.
    pub rabbit: String,
}

impl Endpoints {
    /// The broker address of a qmq-rs `system`.
    fn qmq_of(&self, system: System) -> &str {
        match system {
            System::QmqMetrics => &self.qmq_metrics,
            System::QmqNoDedup => &self.qmq_nodedup,
            _ => &self.qmq,
        }
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A body of `size` bytes starting with the send time (for latency).
pub fn body(size: usize) -> Vec<u8> {
    let mut b = vec![b'x'; size.max(8)];
    b[..8].copy_from_slice(&now_us().to_be_bytes());
    b
}

/// The send time carried by a body.
pub fn sent_at(body: &[u8]) -> u64 {
    body.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Sets up a fresh topic / subject / queue named `name` (and its consumer group).
pub async fn prepare(system: System, ep: &Endpoints, name: &str) -> anyhow::Result<()> {
    match system {
        System::Qmq | System::QmqMetrics | System::QmqNoDedup => Ok(()),
        System::Nats => {
            let client = async_nats::connect(&ep.nats).await?;
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(name).await;
            let stream = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: name.to_owned(),
                    subjects: vec![name.to_owned()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("create stream: {e}"))?;
            stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some("g".into()),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
            Ok(())
        }
        System::Rabbit => {
            let conn = rabbit_connect(&ep.rabbit).await?;
            let ch = conn.create_channel().await?;
            let _ = ch
                .queue_delete(name.into(), lapin::options::QueueDeleteOptions::default())
                .await;
            ch.queue_declare(
                name.into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
            Ok(())
        }
    }
}

/// Removes what [`prepare`] made.
pub async fn cleanup(system: System, ep: &Endpoints, name: &str) {
    match system {
        System::Qmq | System::QmqMetrics | System::QmqNoDedup => {}
        System::Nats => {
            if let Ok(client) = async_nats::connect(&ep.nats).await {
                let _ = async_nats::jetstream::new(client).delete_stream(name).await;
            }
        }
        System::Rabbit => {
            if let Ok(conn) = rabbit_connect(&ep.rabbit).await {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(name.into(), lapin::options::QueueDeleteOptions::default())
                        .await;
                }
            }
        }
    }
}

async fn rabbit_connect(url: &str) -> anyhow::Result<lapin::Connection> {
    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")
}

/// Sends `count` messages of `size` bytes to `name`, at most `rate` per second if given,
/// `batch` messages per request where the system has batches (qmq-rs: one SEND of `batch`
/// messages; NATS and RabbitMQ publish one message per request, so for them the batch only
/// sets the in-flight window, [`window`], as it does for qmq-rs).
#[allow(clippy::too_many_arguments)]
pub async fn produce(
    system: System,
    ep: &Endpoints,
    name: &str,
    count: usize,
    size: usize,
    rate: Option<u64>,
    batch: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let pace = Pacer::new(rate);
    let window = window(batch);
    match system {
        System::Qmq | System::QmqMetrics | System::QmqNoDedup => {
            let conn = qmq_client::Connection::connect(ep.qmq_of(system)).await?;
            let batch = if rate.is_some() { 1 } else { batch.max(1) };
            let mut in_flight = FuturesUnordered::new();
            let mut sent = 0;
            while sent < count || !in_flight.is_empty() {
                while sent < count && in_flight.len() * batch < window {
                    let n = batch.min(count - sent);
                    pace.wait(sent).await;
                    let messages: Vec<_> = (0..n)
                        .map(|_| {
                            // QMQ attributes are strings: the send time goes in "t", and the
                            // body fills the rest of `size` bytes.
                            let mut m = qmq_client::new_message(name);
                            let t = now_us().to_string();
                            m.set_attr("t", t.clone());
                            m.set_attr("b", "x".repeat(size.saturating_sub(t.len())));
                            m
                        })
                        .collect();
                    // Spawned, so the request goes out now (a future in the set would only
                    // start when the set is next polled).
                    let conn = conn.clone();
                    in_flight.push(tokio::spawn(async move {
                        qmq_client::send_batch(&conn, &messages, Duration::from_secs(30))
                            .await
                            .map(|r| (n, r.iter().all(|x| x.is_ok())))
                    }));
                    sent += n;
                }
                if let Some(done) = in_flight.next().await {
                    let (n, ok) = done??;
                    if !ok {
                        bail!("qmq-rs refused messages");
                    }
                    progress.inc(n as u64);
                }
            }
        }
        System::Nats => {
            let js = async_nats::jetstream::new(async_nats::connect(&ep.nats).await?);
            let mut in_flight = FuturesUnordered::new();
            let mut sent = 0;
            while sent < count || !in_flight.is_empty() {
                while sent < count && in_flight.len() < window {
                    pace.wait(sent).await;
                    let ack = js
                        .publish(name.to_owned(), Bytes::from(body(size)))
                        .await
                        .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                    in_flight.push(std::future::IntoFuture::into_future(ack));
                    sent += 1;
                }
                if let Some(done) = in_flight.next().await {
                    done.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
                    progress.inc(1);
                }
            }
        }
        System::Rabbit => {
            let conn = rabbit_connect(&ep.rabbit).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
            let props = lapin::BasicProperties::default().with_delivery_mode(2);
            let mut in_flight = FuturesUnordered::new();
            let mut sent = 0;
            while sent < count || !in_flight.is_empty() {
                while sent < count && in_flight.len() < window {
                    pace.wait(sent).await;
                    let confirm = ch
                        .basic_publish(
                            "".into(),
                            name.into(),
                            lapin::options::BasicPublishOptions::default(),
                            &body(size),
                            props.clone(),
                        )
                        .await?;
                    in_flight.push(confirm);
                    sent += 1;
                }
                if let Some(done) = in_flight.next().await {
                    let confirmation = done?;
                    if confirmation.is_nack() {
                        bail!("RabbitMQ nacked a message");
                    }
                    progress.inc(1);
                }
            }
        }
    }
    Ok(())
}

/// What one consumer task does: consume until the group together has `count` messages.
pub struct ConsumeTask {
    /// Consumer number (its id in the group).
    pub id: usize,
    /// Messages the whole group consumes.
    pub count: usize,
    /// Messages the group consumed so far, shared by its consumer tasks.
    pub shared: Arc<std::sync::atomic::AtomicUsize>,
    /// Where to record end-to-end latency (microseconds), if measured.
    pub latency: Option<Arc<hist::Hist>>,
    /// Set by the task that consumes the group's last message: when the work was done (the
    /// other tasks may still be in a long poll that returns empty).
    pub finished: Arc<std::sync::OnceLock<std::time::Instant>>,
}

/// Consumes from `name` as one consumer of group `g` until the group has `task.count`.
pub async fn consume(
    system: System,
    ep: &Endpoints,
    name: &str,
    task: ConsumeTask,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let ConsumeTask {
        id,
        count,
        shared,
        latency,
        finished,
    } = task;
    let add = |n: usize| {
        if shared.fetch_add(n, Ordering::AcqRel) + n >= count {
            let _ = finished.set(std::time::Instant::now());
        }
    };
    use std::sync::atomic::Ordering;
    let done = || shared.load(Ordering::Acquire) >= count;
    let record = |b: &[u8]| {
        if let Some(h) = &latency {
            h.record(now_us().saturating_sub(sent_at(b)));
        }
    };
    match system {
        System::Qmq | System::QmqMetrics | System::QmqNoDedup => {
            let conn = qmq_client::Connection::connect(ep.qmq_of(system)).await?;
            // Like the peers' queues, the group reads what is already stored (QMQ's default
            // start for a new group is the latest message).
            let mut c = qmq_client::PullConsumer::new(conn, name, "g", &format!("bench-{id}"))
                .new_group_start(qmq_client::NewGroupStart::Earliest);
            while !done() {
                let (first, ms) = c.pull(1000, Duration::from_millis(200)).await?;
                if ms.is_empty() {
                    continue;
                }
                for m in &ms {
                    let sent = m.attr("t").and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
                    if let Some(h) = &latency {
                        h.record(now_us().saturating_sub(sent));
                    }
                }
                c.ack(first, first + ms.len() as i64 - 1).await?;
                add(ms.len());
                progress.inc(ms.len() as u64);
            }
        }
        System::Nats => {
            let js = async_nats::jetstream::new(async_nats::connect(&ep.nats).await?);
            let stream = js
                .get_stream(name)
                .await
                .map_err(|e| anyhow::anyhow!("get stream: {e}"))?;
            let consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer("g")
                .await
                .map_err(|e| anyhow::anyhow!("get consumer: {e}"))?;
            while !done() {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1000)
                    .expires(Duration::from_millis(200))
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                let mut n = 0;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| anyhow::anyhow!("message: {e}"))?;
                    record(&m.payload);
                    m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    n += 1;
                }
                add(n);
                progress.inc(n as u64);
            }
        }
        System::Rabbit => {
            let conn = rabbit_connect(&ep.rabbit).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(1000, lapin::options::BasicQosOptions::default())
                .await?;
            let mut deliveries = ch
                .basic_consume(
                    name.into(),
                    format!("bench-{id}").as_str().into(),
                    lapin::options::BasicConsumeOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await?;
            let mut unacked = 0u64;
            while !done() {
                let next =
                    tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await;
                let Ok(Some(d)) = next else { continue };
                let d = d?;
                record(&d.data);
                unacked += 1;
                if unacked >= 100 || shared.load(Ordering::Acquire) + unacked as usize >= count {
                    d.ack(lapin::options::BasicAckOptions { multiple: true })
                        .await?;
                    unacked = 0;
                }
                add(1);
                progress.inc(1);
            }
            let _ = ch.close(200, "done".into()).await;
        }
    }
    Ok(())
}

/// Keeps a producer to a fixed rate.
struct Pacer {
    start: tokio::time::Instant,
    rate: Option<u64>,
}

impl Pacer {
    fn new(rate: Option<u64>) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            rate,
        }
    }

    async fn wait(&self, sent: usize) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A latency histogram shared by consumer tasks.
pub mod hist {
    use std::sync::Mutex;

    /// Latencies in microseconds.
    pub struct Hist(Mutex<hdrhistogram::Histogram<u64>>);

    impl Hist {
        /// An empty histogram (1 µs to 60 s, 3 significant digits).
        pub fn new() -> anyhow::Result<Self> {
            Ok(Self(Mutex::new(hdrhistogram::Histogram::new_with_bounds(
                1, 60_000_000, 3,
            )?)))
        }

        /// Records one latency.
        pub fn record(&self, us: u64) {
            if let Ok(mut h) = self.0.lock() {
                let _ = h.record(us.clamp(1, 60_000_000));
            }
        }

        /// (p50, p99, p99.9, max) in milliseconds.
        pub fn percentiles(&self) -> (f64, f64, f64, f64) {
            let Ok(h) = self.0.lock() else {
                return (0.0, 0.0, 0.0, 0.0);
            };
            let ms = |v: u64| v as f64 / 1000.0;
            (
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
            )
        }
    }
}
