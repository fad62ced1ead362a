//! The delay server's metrics, registered into a [`qmq_metrics::Registry`] (names, labels and
//! their QMQ counterparts: README "Metrics").
//!
//! - Counted as things happen: messages received (appended to the message log) per subject,
//!   refused by reason, dispatched to a broker per subject, dispatch attempts that did not
//!   store a message, messages sent to their dead-letter subject; message-log append time and
//!   dispatch lateness (QMQ's `delayTime`: when a message was stored on a broker minus when it
//!   was due), both histograms in seconds.
//! - Computed at every scrape from the engine that is open ([`DelayMetrics`] is told by the
//!   engine itself): messages scheduled and not dispatched yet, and the delay backlog, messages
//!   due within the next minute, hour and day (see [`Backlog`] for how exact that is); and, for
//!   a replicated delay server, its role, epoch, slave lag and the counters of its [`Gate`].
//!
//! Labels are subjects of messages the server stored (never message ids) and fixed reason
//! names, so the number of series stays bounded. The engine records into the metrics given in
//! [`crate::DelayConfig::metrics`].

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use qmq_metrics::{encode_counter as counter, encode_gauge as gauge};
use qmq_replication::{Gate, NodeStatus};
use tokio::sync::watch;

use crate::error::ScheduleError;

/// The windows of `qmq_delay_due_messages` (label value, length in ms).
pub const DUE_WINDOWS: [(&str, i64); 3] = [("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000)];

/// Buckets of `qmq_delay_lateness_seconds`: delivery is scheduled to the millisecond and fires
/// on 10 ms ticks, so anything from 10 ms to a minute late is worth telling apart.
pub const LATENESS_BUCKETS: [f64; 11] =
    [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// Why a message was refused (the `reason` label of `qmq_delay_send_failed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The message's CRC did not match.
    CrcMismatch,
    /// Scheduled later than the longest delay allows.
    TooFarAhead,
    /// Larger than `max_message_bytes`.
    TooLarge,
    /// Empty or overlong subject or message id.
    Invalid,
    /// The message log could not be written.
    StoreError,
    /// The engine was shutting down.
    Closed,
    /// Stored, but the slave did not confirm it in time (synchronous replication), or the
    /// master lost its lease before answering.
    NotReplicated,
    /// This server is not the delay master holding a lease (a replicated slave or a
    /// starting server): the whole SEND was rejected (counted once per SEND, whatever the
    /// number of messages in it).
    NotMaster,
    /// The SEND_MESSAGE body could not be decoded (refused whole; counted once).
    Malformed,
}

impl FailReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrcMismatch => "crc_mismatch",
            Self::TooFarAhead => "too_far_ahead",
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::StoreError => "store_error",
            Self::Closed => "closed",
            Self::NotReplicated => "not_replicated",
            Self::NotMaster => "not_master",
            Self::Malformed => "malformed",
        }
    }

    /// The reason for an engine refusal.
    pub fn of(e: &ScheduleError) -> Self {
        match e {
            ScheduleError::TooFarAhead { .. } => Self::TooFarAhead,
            ScheduleError::TooLarge { .. } => Self::TooLarge,
            ScheduleError::Invalid { .. } => Self::Invalid,
            ScheduleError::Store(_) => Self::StoreError,
            ScheduleError::Closed => Self::Closed,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The delay backlog of an engine at one moment.
///
/// `pending` is every schedule-log record not recorded as dispatched (messages being retried
/// included): exact, except that after a crash a bucket not loaded yet counts as dispatched
/// only what the last checkpoint knew (its dispatch log is read when it loads). `due[i]` counts the messages due within [`DUE_WINDOWS`]`[i]` of now
/// (overdue ones included): exact for buckets loaded into the timing wheel (by the tick they
/// fire at), plus the messages being retried (they are due now); the messages of a bucket not
/// loaded yet (or being loaded) count whole once it starts within the window, so a window may
/// over-count by the undispatched messages of the one bucket it ends in (default width 60 min).
/// Messages taken from the wheel and not answered by the dispatcher yet are in `pending` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Messages scheduled and not dispatched yet.
    pub pending: u64,
    /// Messages due within each of [`DUE_WINDOWS`].
    pub due: [u64; 3],
}

/// What the scrape-time collector asks the open engine.
pub(crate) trait BacklogSource: Send + Sync {
    /// The backlog now (takes the store lock briefly; no disk access).
    fn backlog(&self) -> Backlog;
    /// The message log's end (for the slave's lag).
    fn wal_end(&self) -> u64;
    /// Damaged records met so far, and damaged schedule records rebuilt from the message log
    /// (see [`crate::DelayStats`]).
    fn damage(&self) -> (u64, u64);
}

/// What the scrape-time collector reads.
#[derive(Default)]
struct Observed {
    /// The engine open now (a replicated server opens one per mastership).
    engine: RwLock<Option<Weak<dyn BacklogSource>>>,
    /// A replicated server's replication state.
    replication: Mutex<Option<Replication>>,
}

struct Replication {
    gate: Arc<Gate>,
    status: watch::Receiver<NodeStatus>,
}

/// The delay server's metrics. Create once per process ([`DelayMetrics::new`] registers
/// them) and give the same one to every engine ([`crate::DelayConfig::metrics`]).
pub struct DelayMetrics {
    received: Family<SubjectLabels, Counter>,
    send_failed: Family<ReasonLabels, Counter>,
    dispatched: Family<SubjectLabels, Counter>,
    dispatch_failed: Counter,
    dead: Family<SubjectLabels, Counter>,
    lateness: Histogram,
    append: Histogram,
    observed: Arc<Observed>,
}

impl fmt::Debug for DelayMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayMetrics").finish_non_exhaustive()
    }
}

impl DelayMetrics {
    /// Creates the delay server's metrics and registers them (and the scrape-time collector)
    /// into `registry`. Call once per registry.
    pub fn new(registry: &qmq_metrics::Registry) -> Arc<Self> {
        let m = Arc::new(Self {
            received: Family::default(),
            send_failed: Family::default(),
            dispatched: Family::default(),
            dispatch_failed: Counter::default(),
            dead: Family::default(),
            lateness: Histogram::new(LATENESS_BUCKETS),
            // 100 µs to about 13 s, doubling (as the broker's store append).
            append: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            observed: Arc::new(Observed::default()),
        });
        let r = registry;
        r.register(
            "qmq_delay_received_messages",
            "Delayed messages appended to the delay server's message log, per subject",
            m.received.clone(),
        );
        r.register(
            "qmq_delay_send_failed",
            "Delayed messages refused to producers, per reason",
            m.send_failed.clone(),
        );
        r.register(
            "qmq_delay_dispatched_messages",
            "Due messages stored on a broker, per subject (dead letters under their original \
             subject)",
            m.dispatched.clone(),
        );
        r.register(
            "qmq_delay_dispatch_failed",
            "Dispatch attempts that did not store a due message (each is retried)",
            m.dispatch_failed.clone(),
        );
        r.register(
            "qmq_delay_dead_messages",
            "Due messages stored under their dead-letter subject %DEAD_DELAY%<subject> after \
             too many refusals, per original subject",
            m.dead.clone(),
        );
        r.register(
            "qmq_delay_lateness_seconds",
            "How late due messages were stored on a broker: dispatch time minus due time \
             (QMQ delayTime)",
            m.lateness.clone(),
        );
        r.register(
            "qmq_delay_append_seconds",
            "Time to append and fsync a batch of delayed messages to the message log",
            m.append.clone(),
        );
        r.register_collector(StateCollector {
            observed: m.observed.clone(),
        });
        m
    }

    /// Reports a replicated delay server's state at scrapes: its role and epoch from `status`,
    /// the slave's lag and `gate`'s counters.
    pub fn observe_replication(&self, gate: Arc<Gate>, status: watch::Receiver<NodeStatus>) {
        *self.observed.replication.lock() = Some(Replication { gate, status });
    }

    /// An engine opened: scrapes compute the backlog from it (it is held weakly).
    pub(crate) fn attach_engine(&self, engine: Weak<dyn BacklogSource>) {
        *self.observed.engine.write() = Some(engine);
    }

    /// `engine` is shutting down: scrapes stop reading it (unless another engine replaced it).
    pub(crate) fn detach_engine(&self, engine: &Weak<dyn BacklogSource>) {
        let mut slot = self.observed.engine.write();
        if slot.as_ref().is_some_and(|e| Weak::ptr_eq(e, engine)) {
            *slot = None;
        }
    }

    /// A message of `subject` was appended to the message log.
    pub(crate) fn received(&self, subject: &str) {
        self.received
            .get_or_create(&SubjectLabels {
                subject: subject.to_owned(),
            })
            .inc();
    }

    /// `n` messages were refused for `reason`.
    pub fn send_failed(&self, reason: FailReason, n: u64) {
        if n > 0 {
            self.send_failed
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
    }

    /// A message of `subject` was stored on a broker `late_ms` after it was due; `dead`: under
    /// its dead-letter subject (`subject` is then the original one).
    pub(crate) fn dispatched(&self, subject: &str, late_ms: i64, dead: bool) {
        let labels = SubjectLabels {
            subject: subject.to_owned(),
        };
        self.dispatched.get_or_create(&labels).inc();
        if dead {
            self.dead.get_or_create(&labels).inc();
        }
        self.lateness.observe(late_ms.max(0) as f64 / 1000.0);
    }

    /// `n` offered messages were not stored.
    pub(crate) fn dispatch_failed(&self, n: u64) {
        self.dispatch_failed.inc_by(n);
    }

    /// A message-log append (write + fsync) took `took`.
    pub(crate) fn append(&self, took: Duration) {
        self.append.observe(took.as_secs_f64());
    }
}

/// Encodes the scrape-time metrics.
struct StateCollector {
    observed: Arc<Observed>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

fn as_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let engine = self
            .observed
            .engine
            .read()
            .as_ref()
            .and_then(|e| e.upgrade());
        if let Some(engine) = &engine {
            let b = engine.backlog();
            gauge(
                &mut encoder,
                "qmq_delay_pending_messages",
                "Delayed messages scheduled and not dispatched yet",
                as_gauge(b.pending),
            )?;
            {
                let mut family = encoder.encode_descriptor(
                    "qmq_delay_due_messages",
                    "Delayed messages due within the next minute, hour or day (overdue included; \
                     buckets not loaded yet count whole once they start within the window)",
                    None,
                    MetricType::Gauge,
                )?;
                for ((within, _), n) in DUE_WINDOWS.iter().zip(b.due) {
                    ConstGauge::new(as_gauge(n))
                        .encode(family.encode_family(&[("within", *within)])?)?;
                }
            }
            let (damaged, repaired) = engine.damage();
            counter(
                &mut encoder,
                "qmq_delay_damaged_records",
                "Damaged records met by the delay engine since it opened (a damaged schedule \
                 record the message log could not rebuild is never delivered)",
                damaged,
            )?;
            counter(
                &mut encoder,
                "qmq_delay_repaired_records",
                "Damaged schedule records rebuilt from the message log since the engine opened",
                repaired,
            )?;
        }
        let replication = self.observed.replication.lock();
        let Some(r) = replication.as_ref() else {
            return Ok(());
        };
        let (current, epoch) = match r.status.borrow().clone() {
            NodeStatus::Starting => ("starting", None),
            NodeStatus::Master { epoch, .. } => ("master", Some(epoch)),
            NodeStatus::Slave { epoch, .. } => ("slave", Some(epoch)),
        };
        {
            let mut family = encoder.encode_descriptor(
                "qmq_delay_role",
                "1 for the role this replicated delay server runs as now (master, slave, or \
                 starting: asking the meta server)",
                None,
                MetricType::Gauge,
            )?;
            for role in ["master", "slave", "starting"] {
                ConstGauge::new(i64::from(role == current))
                    .encode(family.encode_family(&[("role", role)])?)?;
            }
        }
        if let Some(epoch) = epoch {
            gauge(
                &mut encoder,
                "qmq_delay_epoch",
                "The replication epoch this delay server serves or follows",
                as_gauge(epoch),
            )?;
        }
        if let (Some(engine), "master") = (&engine, current) {
            gauge(
                &mut encoder,
                "qmq_delay_replication_slave_lag_bytes",
                "Message-log bytes the slave had not confirmed (on the master)",
                as_gauge(engine.wal_end().saturating_sub(r.gate.slave_end())),
            )?;
        }
        for (name, help, v) in r.gate.stats.counters() {
            counter(
                &mut encoder,
                &format!("qmq_delay_replication_{name}"),
                help,
                v,
            )?;
        }
        Ok(())
    }
}
