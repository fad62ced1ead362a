//! The broker's metrics, registered into a [`qmq_metrics::Registry`] (names, labels and their
//! QMQ counterparts: README "Metrics").
//!
//! - Counted as things happen: messages received, refused (by reason), pulled, acked, sent to
//!   retry and to dead letters; undecodable SEND frames; open client connections; store append,
//!   send and pull latencies (histograms, in seconds).
//! - Computed at every scrape from the store ([`BrokerMetrics`] is told which store is open):
//!   each consumer group's lag in messages and in seconds, and its messages handed out but not
//!   acked; and, for a replicated broker, its role, epoch, its slave's lag and the replication
//!   counters kept in [`Gate::stats`].
//!
//! Labels are subjects and consumer groups the store holds, never message or consumer ids.
//! A refused message whose subject the store does not hold is counted under the subject
//! [`UNKNOWN_SUBJECT`], so clients cannot create series with names of their choosing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use qmq_metrics::{encode_counter as counter, encode_gauge as gauge};
use qmq_replication::{Gate, NodeStatus};
use qmq_store::{LogStream, Store};
use tokio::sync::watch;

use crate::replication::sync_server::SlaveLag;
use crate::subjects;

/// The `subject` label of refused messages whose subject the store does not hold.
pub const UNKNOWN_SUBJECT: &str = "_unknown";

/// Why a message was refused (the `reason` label of `qmq_send_failed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The subject (or the whole broker) is marked readonly.
    Readonly,
    /// The message's CRC did not match.
    CrcMismatch,
    /// Larger than the broker's message limit.
    TooLarge,
    /// The subject name is not acceptable.
    IllegalSubject,
    /// The store failed to write it.
    StoreError,
    /// Stored, but the slave did not confirm it in time (synchronous replication).
    NotReplicated,
}

impl FailReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Readonly => "readonly",
            Self::CrcMismatch => "crc_mismatch",
            Self::TooLarge => "too_large",
            Self::IllegalSubject => "illegal_subject",
            Self::StoreError => "store_error",
            Self::NotReplicated => "not_replicated",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailLabels {
    subject: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    subject: String,
    group: String,
}

/// What the scrape-time collector reads.
#[derive(Default)]
struct Observed {
    /// The store the broker has open now (None between runs of a replicated broker).
    store: RwLock<Option<Store>>,
    /// A replicated broker's replication state.
    replication: Mutex<Option<Replication>>,
}

struct Replication {
    gate: Arc<Gate>,
    slave_lag: Arc<SlaveLag>,
    status: watch::Receiver<NodeStatus>,
}

/// The broker's metrics. Create once per process ([`BrokerMetrics::new`] registers them) and
/// give the same one to every broker run ([`crate::BrokerConfig::metrics`]).
pub struct BrokerMetrics {
    received: Family<SubjectLabels, Counter>,
    send_failed: Family<FailLabels, Counter>,
    duplicates: Family<SubjectLabels, Counter>,
    invalid_frames: Counter,
    pulled: Family<GroupLabels, Counter>,
    acked: Family<GroupLabels, Counter>,
    retry: Family<GroupLabels, Counter>,
    dead: Family<GroupLabels, Counter>,
    store_append: Histogram,
    send_process: Histogram,
    pull_process: Histogram,
    active_connections: Gauge,
    observed: Arc<Observed>,
}

impl fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerMetrics").finish_non_exhaustive()
    }
}

/// Latency buckets: 100 µs to about 13 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl BrokerMetrics {
    /// Creates the broker's metrics and registers them (and the scrape-time collector) into
    /// `registry`. Call once per registry.
    pub fn new(registry: &qmq_metrics::Registry) -> Arc<Self> {
        let m = Arc::new(Self {
            received: Family::default(),
            send_failed: Family::default(),
            duplicates: Family::default(),
            invalid_frames: Counter::default(),
            pulled: Family::default(),
            acked: Family::default(),
            retry: Family::default(),
            dead: Family::default(),
            store_append: seconds_histogram(),
            send_process: seconds_histogram(),
            pull_process: seconds_histogram(),
            active_connections: Gauge::default(),
            observed: Arc::new(Observed::default()),
        });
        let r = registry;
        r.register(
            "qmq_received_messages",
            "Messages stored for producers, per subject (retry and dead-letter subjects not counted)",
            m.received.clone(),
        );
        r.register(
            "qmq_send_failed",
            "Messages refused to producers, per subject and reason",
            m.send_failed.clone(),
        );
        r.register(
            "qmq_send_duplicates",
            "Messages answered DUPLICATE and not stored again: their (subject, id) was stored \
             within the duplicate window, per subject",
            m.duplicates.clone(),
        );
        r.register(
            "qmq_send_invalid_frames",
            "SEND frames that could not be decoded (refused whole)",
            m.invalid_frames.clone(),
        );
        r.register(
            "qmq_pulled_messages",
            "Messages delivered to consumers (redeliveries included), per subject and group",
            m.pulled.clone(),
        );
        r.register(
            "qmq_acked_messages",
            "Messages acknowledged by consumers, per subject and group",
            m.acked.clone(),
        );
        r.register(
            "qmq_retry_messages",
            "Messages put in a group's retry subject (sent there by consumers, or moved there \
             by the broker for lost acks and offline consumers), per real subject and group",
            m.retry.clone(),
        );
        r.register(
            "qmq_dead_messages",
            "Messages put in a group's dead-letter subject, per real subject and group",
            m.dead.clone(),
        );
        r.register(
            "qmq_store_append_seconds",
            "Time to append a SEND batch to the store (under the flush policy)",
            m.store_append.clone(),
        );
        r.register(
            "qmq_send_process_seconds",
            "Time from a SEND frame's decoding to its answer (slave wait included)",
            m.send_process.clone(),
        );
        r.register(
            "qmq_pull_process_seconds",
            "Time to serve one pull from the store (long-poll waits not included)",
            m.pull_process.clone(),
        );
        r.register(
            "qmq_active_connections",
            "Open client connections",
            m.active_connections.clone(),
        );
        r.register_collector(StateCollector {
            observed: m.observed.clone(),
        });
        m
    }

    /// Reports a replicated broker's state at scrapes: its role and epoch from `status`, its
    /// slave's lag from `slave_lag`, and `gate`'s counters.
    pub fn observe_replication(
        &self,
        gate: Arc<Gate>,
        slave_lag: Arc<SlaveLag>,
        status: watch::Receiver<NodeStatus>,
    ) {
        *self.observed.replication.lock() = Some(Replication {
            gate,
            slave_lag,
            status,
        });
    }

    /// The broker opened `store`: scrapes compute lags from it.
    pub(crate) fn attach_store(&self, store: Store) {
        *self.observed.store.write() = Some(store);
    }

    /// The broker is closing its store: scrapes stop reading it (and hold no handle that
    /// would keep its directory locked).
    pub(crate) fn detach_store(&self) {
        *self.observed.store.write() = None;
    }

    /// An undecodable SEND frame.
    pub(crate) fn invalid_frame(&self) {
        self.invalid_frames.inc();
    }

    /// `n` messages of `subject` refused for `reason`. `known`: whether the store holds the
    /// subject (otherwise it is counted under [`UNKNOWN_SUBJECT`]).
    pub(crate) fn send_failed(&self, subject: &str, known: bool, reason: FailReason, n: u64) {
        let subject = if known { subject } else { UNKNOWN_SUBJECT };
        self.send_failed
            .get_or_create(&FailLabels {
                subject: subject.to_owned(),
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    /// A message of `subject` answered DUPLICATE (already stored within the duplicate window).
    pub(crate) fn duplicate(&self, subject: &str) {
        self.duplicates
            .get_or_create(&SubjectLabels {
                subject: subject.to_owned(),
            })
            .inc();
    }

    /// `n` messages stored under `subject`: received, or retry or dead letters by the
    /// subject's kind.
    pub(crate) fn stored(&self, subject: &str, n: u64) {
        match subjects::parse_derived(subject) {
            Some((real, group)) if subjects::is_dead_letter(subject) => self.dead(real, group, n),
            Some((real, group)) => self.retried(real, group, n),
            None if subjects::is_retry(subject) || subjects::is_dead_letter(subject) => {}
            None => {
                self.received
                    .get_or_create(&SubjectLabels {
                        subject: subject.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// `n` messages moved to the retry subject of `group` consuming `subject` (which may be
    /// the retry subject itself).
    pub(crate) fn retried(&self, subject: &str, group: &str, n: u64) {
        if n == 0 {
            return;
        }
        let (subject, group) = subjects::parse_derived(subject).unwrap_or((subject, group));
        self.retry.get_or_create(&labels(subject, group)).inc_by(n);
    }

    fn dead(&self, subject: &str, group: &str, n: u64) {
        self.dead.get_or_create(&labels(subject, group)).inc_by(n);
    }

    /// `n` messages delivered to `group` consuming `subject`.
    pub(crate) fn pulled(&self, subject: &str, group: &str, n: u64) {
        self.pulled.get_or_create(&labels(subject, group)).inc_by(n);
    }

    /// `n` messages acknowledged by `group` consuming `subject`.
    pub(crate) fn acked(&self, subject: &str, group: &str, n: u64) {
        if n > 0 {
            self.acked.get_or_create(&labels(subject, group)).inc_by(n);
        }
    }

    /// A store append took `took`.
    pub(crate) fn store_append(&self, took: Duration) {
        self.store_append.observe(took.as_secs_f64());
    }

    /// A SEND frame took `took` to answer.
    pub(crate) fn send_process(&self, took: Duration) {
        self.send_process.observe(took.as_secs_f64());
    }

    /// A pull took `took` to serve.
    pub(crate) fn pull_process(&self, took: Duration) {
        self.pull_process.observe(took.as_secs_f64());
    }

    /// A client connection opened; the connection is counted until the guard is dropped.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.active_connections.inc();
        ConnectionGuard {
            metrics: self.clone(),
        }
    }
}

/// Counts one open connection while it lives.
pub(crate) struct ConnectionGuard {
    metrics: Arc<BrokerMetrics>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.active_connections.dec();
    }
}

fn labels(subject: &str, group: &str) -> GroupLabels {
    GroupLabels {
        subject: subject.to_owned(),
        group: group.to_owned(),
    }
}

/// One consumer group's state at a scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupLag {
    /// Messages stored and not handed to the group yet (for broadcast consumers: the one
    /// furthest behind).
    pub messages: u64,
    /// How long ago the oldest of them was stored, in seconds (0 without any).
    pub seconds: f64,
    /// Messages handed to the group's consumers and not acknowledged yet.
    pub unacked: u64,
}

/// Every consumer group's lag in `store`, by (subject, group). Reads one message per lagging
/// group (its append time): call it off the async runtime.
pub fn group_lags(store: &Store) -> BTreeMap<(String, String), GroupLag> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // Per group: the most messages behind, and the next sequence of whoever is that far.
    let mut behind: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for g in store.groups() {
        let lag = g.lag();
        let e = behind
            .entry((g.key.subject.clone(), g.key.group.clone()))
            .or_insert((lag, g.next));
        if lag > e.0 {
            *e = (lag, g.next);
        }
    }
    let mut out: BTreeMap<(String, String), GroupLag> = BTreeMap::new();
    let mut earliest: Option<HashMap<String, u64>> = None;
    for ((subject, group), (messages, next)) in behind {
        let mut seconds = 0.0;
        if messages > 0 {
            let mut first = store.read(&subject, next, 1);
            if matches!(&first, Ok(m) if m.is_empty()) {
                // Its next message was deleted by retention: the oldest one still stored.
                let starts = earliest.get_or_insert_with(|| match store.subject_infos() {
                    Ok(infos) => infos.into_iter().map(|i| (i.subject, i.first)).collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "listing subjects for lag failed");
                        HashMap::new()
                    }
                });
                if let Some(&start) = starts.get(&subject) {
                    first = store.read(&subject, start.max(next), 1);
                }
            }
            match first {
                Ok(m) => {
                    if let Some(m) = m.first() {
                        seconds = now_ms.saturating_sub(m.appended_at_ms) as f64 / 1000.0;
                    }
                }
                Err(e) => tracing::debug!(error = %e, %subject, "reading for lag failed"),
            }
        }
        out.insert(
            (subject, group),
            GroupLag {
                messages,
                seconds,
                unacked: 0,
            },
        );
    }
    for c in store.consumers() {
        let unacked = c.unacked();
        if unacked > 0 {
            out.entry((c.key.subject, c.key.group)).or_default().unacked += unacked;
        }
    }
    out
}

/// Encodes the scrape-time metrics.
#[derive(Clone)]
struct StateCollector {
    observed: Arc<Observed>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

fn gauge_family<'a, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = ([(&'static str, &'a str); 2], V)>,
) -> fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        {
            // Held while reading, so a closing broker waits for the scrape before it closes.
            let store = self.observed.store.read();
            if let Some(store) = store.as_ref() {
                let lags = group_lags(store);
                let with = |f: fn(&GroupLag) -> f64| {
                    lags.iter().map(move |((s, g), l)| {
                        ([("subject", s.as_str()), ("group", g.as_str())], f(l))
                    })
                };
                gauge_family(
                    &mut encoder,
                    "qmq_consumer_lag_messages",
                    "Messages stored and not yet handed to the consumer group",
                    with(|l| l.messages as f64),
                )?;
                gauge_family(
                    &mut encoder,
                    "qmq_consumer_lag_seconds",
                    "Age of the oldest message not yet handed to the consumer group (0: none)",
                    with(|l| l.seconds),
                )?;
                gauge_family(
                    &mut encoder,
                    "qmq_consumer_unacked_messages",
                    "Messages handed to the consumer group and not acknowledged yet",
                    with(|l| l.unacked as f64),
                )?;
                let mut family = encoder.encode_descriptor(
                    "qmq_store_flush_seconds",
                    "Time of the fsyncs that made the message or action log durable",
                    None,
                    MetricType::Histogram,
                )?;
                for (log, stream) in [
                    ("message", LogStream::Message),
                    ("action", LogStream::Action),
                ] {
                    let t = store.fsync_times(stream);
                    family
                        .encode_family(&[("log", log)])?
                        .encode_histogram::<NoLabelSet>(t.sum_seconds, t.count, &t.buckets, None)?;
                }
            }
        }
        let replication = self.observed.replication.lock();
        let r = replication.as_ref();
        // Not replicated: always the master of its data.
        let (current, epoch) = match r.map(|r| r.status.borrow().clone()) {
            None => ("master", None),
            Some(NodeStatus::Starting) => ("starting", None),
            Some(NodeStatus::Master { epoch, .. }) => ("master", Some(epoch)),
            Some(NodeStatus::Slave { epoch, .. }) => ("slave", Some(epoch)),
        };
        {
            let mut family = encoder.encode_descriptor(
                "qmq_broker_role",
                "1 for the role this broker runs as now (master, slave, or starting: asking the \
                 meta server)",
                None,
                MetricType::Gauge,
            )?;
            for role in ["master", "slave", "starting"] {
                ConstGauge::new(i64::from(role == current))
                    .encode(family.encode_family(&[("role", role)])?)?;
            }
        }
        let Some(r) = r else { return Ok(()) };
        if let Some(epoch) = epoch {
            gauge(
                &mut encoder,
                "qmq_broker_epoch",
                "The replication epoch this broker serves or follows",
                i64::try_from(epoch).unwrap_or(i64::MAX),
            )?;
        }
        {
            let lags = [
                ("message", r.slave_lag.message.load(Ordering::Relaxed)),
                ("action", r.slave_lag.action.load(Ordering::Relaxed)),
            ];
            let mut family = encoder.encode_descriptor(
                "qmq_replication_slave_lag_bytes",
                "Bytes of each log the slave lacked at its last heartbeat (on the master)",
                None,
                MetricType::Gauge,
            )?;
            for (log, lag) in lags.into_iter().filter(|(_, lag)| *lag >= 0) {
                ConstGauge::new(lag).encode(family.encode_family(&[("log", log)])?)?;
            }
        }
        for (name, help, v) in r.gate.stats.counters() {
            counter(&mut encoder, &format!("qmq_replication_{name}"), help, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qmq_store::{ConsumerKey, PullSpec, StoreConfig};

    use super::*;

    fn key(group: &str, consumer: &str) -> ConsumerKey {
        ConsumerKey {
            subject: "s".into(),
            group: group.into(),
            consumer: consumer.into(),
        }
    }

    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{other:?}"),
            })
    }

    #[tokio::test]
    async fn lag_is_what_a_group_was_not_handed_and_scrapes_stop_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).unwrap();
        store
            .append((0..5).map(|_| ("s", &b"m"[..])))
            .await
            .unwrap();
        let shared = key("g", "c1");
        let pulled = store
            .pull(
                PullSpec {
                    key: &shared,
                    broadcast: false,
                    max: 3,
                },
                |_| true,
            )
            .unwrap();
        assert_eq!(pulled.len(), 3);
        // Two broadcast consumers of group "b": the one furthest behind counts.
        for (consumer, n) in [("b1", 1), ("b2", 4)] {
            store
                .pull(
                    PullSpec {
                        key: &key("b", consumer),
                        broadcast: true,
                        max: n,
                    },
                    |_| true,
                )
                .unwrap();
        }
        let lags = group_lags(&store);
        let g = &lags[&("s".to_owned(), "g".to_owned())];
        assert_eq!((g.messages, g.unacked), (2, 3));
        assert!(g.seconds >= 0.0);
        let b = &lags[&("s".to_owned(), "b".to_owned())];
        assert_eq!((b.messages, b.unacked), (4, 5));

        let registry = qmq_metrics::Registry::new();
        let metrics = BrokerMetrics::new(&registry);
        metrics.attach_store(store.clone());
        store.ack(&shared, 2).unwrap();
        let text = registry.encode().unwrap();
        let group = [("subject", "s"), ("group", "g")];
        assert_eq!(value(&text, "qmq_consumer_lag_messages", &group), Some(2.0));
        assert_eq!(
            value(&text, "qmq_consumer_unacked_messages", &group),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "qmq_broker_role", &[("role", "master")]),
            Some(1.0)
        );
        metrics.detach_store();
        let text = registry.encode().unwrap();
        assert_eq!(value(&text, "qmq_consumer_lag_messages", &group), None);
        store.close().unwrap();
    }

    #[test]
    fn derived_subjects_count_as_retry_and_dead_letters() {
        let registry = qmq_metrics::Registry::new();
        let m = BrokerMetrics::new(&registry);
        m.stored("a", 3);
        m.stored("%RETRY%a%g", 2);
        m.stored("%DEAD_RETRY%a%g", 1);
        m.retried("%RETRY%a%g", "g", 4);
        m.send_failed("nope", false, FailReason::Readonly, 1);
        let text = registry.encode().unwrap();
        let group = [("subject", "a"), ("group", "g")];
        assert_eq!(
            value(&text, "qmq_received_messages_total", &[("subject", "a")]),
            Some(3.0)
        );
        assert_eq!(value(&text, "qmq_retry_messages_total", &group), Some(6.0));
        assert_eq!(value(&text, "qmq_dead_messages_total", &group), Some(1.0));
        assert_eq!(
            value(
                &text,
                "qmq_send_failed_total",
                &[("subject", UNKNOWN_SUBJECT), ("reason", "readonly")]
            ),
            Some(1.0)
        );
    }
}
