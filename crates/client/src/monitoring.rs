//! Client metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade: the
//! application installs the recorder (exporter) of its choice, e.g.
//! `metrics-exporter-prometheus`; without one, recording costs next to nothing.
//!
//! Names follow Prometheus conventions (a `qmq_client_` prefix, `_total` counters, histograms in
//! seconds). Labels are bounded: the subject (the subscribed one, never a `%RETRY%` subject), the
//! consumer group, and small fixed sets of outcomes and reasons; never message or consumer ids.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `qmq_client_send_seconds` | histogram | `subject` | one message, queued → stored or given up on |
//! | `qmq_client_send_total` | counter | `subject`, `outcome` | messages by final outcome ([`SendOutcome`]) |
//! | `qmq_client_send_retries_total` | counter | `subject`, `reason` | failed tries followed by another one ([`RetryReason`]) |
//! | `qmq_client_send_queue_size` | gauge | – | messages waiting in producers' queues |
//! | `qmq_client_pulled_messages_total` | counter | `subject`, `group` | messages received (listener, stream and pull API, retries included) |
//! | `qmq_client_pull_failed_total` | counter | `subject`, `group` | failed pull requests |
//! | `qmq_client_process_seconds` | histogram | `subject`, `group` | a listener's handler running on one message (a stream's delivery: handed out → acked or nacked) |
//! | `qmq_client_process_total` | counter | `subject`, `group`, `outcome` | listener messages and stream deliveries by outcome ([`ProcessOutcome`]) |
//! | `qmq_client_duplicate_messages_total` | counter | `subject`, `group` | deliveries an [`Idempotent`](crate::idempotent::Idempotent) handler skipped as handled before (they count as `ok` above) |
//! | `qmq_client_acked_messages_total` | counter | `subject`, `group` | messages acknowledged to a broker |
//! | `qmq_client_ack_failed_total` | counter | `subject`, `group` | failed ack requests |
//! | `qmq_client_sent_back_total` | counter | `subject`, `group`, `to` | failed messages sent to the group's retry (`to="retry"`) or dead-letter (`to="dead"`) subject |
//! | `qmq_client_send_back_failed_total` | counter | `subject`, `group` | failed messages that could not be sent back (their batch is handed out again) |
//!
//! [`Producer::new`](crate::Producer::new) and [`Consumer::new`](crate::Consumer::new) call
//! [`describe`], so install the recorder before creating them, or call [`describe`] after.
//!
//! ```no_run
//! # async fn demo(router: std::sync::Arc<dyn qmq_client::Router>) -> Result<(), Box<dyn std::error::Error>> {
//! // Any `metrics` recorder; in production e.g. `metrics_exporter_prometheus::PrometheusBuilder`.
//! let recorder = metrics_util::debugging::DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! recorder.install()?;
//!
//! let producer = qmq_client::Producer::new(router, Default::default());
//! producer.send(qmq_client::new_message("order.created")).await?;
//! for (key, _unit, _help, value) in snapshotter.snapshot().into_vec() {
//!     println!("{key:?} = {value:?}"); // qmq_client_send_total{subject="order.created",outcome="ok"} ...
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use ::metrics::Unit;
use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::producer::SendError;
use crate::ConnectionError;

/// `qmq_client_send_seconds`.
pub const SEND_SECONDS: &str = "qmq_client_send_seconds";
/// `qmq_client_send_total`.
pub const SEND_TOTAL: &str = "qmq_client_send_total";
/// `qmq_client_send_retries_total`.
pub const SEND_RETRIES_TOTAL: &str = "qmq_client_send_retries_total";
/// `qmq_client_send_queue_size`.
pub const SEND_QUEUE_SIZE: &str = "qmq_client_send_queue_size";
/// `qmq_client_pulled_messages_total`.
pub const PULLED_MESSAGES_TOTAL: &str = "qmq_client_pulled_messages_total";
/// `qmq_client_pull_failed_total`.
pub const PULL_FAILED_TOTAL: &str = "qmq_client_pull_failed_total";
/// `qmq_client_process_seconds`.
pub const PROCESS_SECONDS: &str = "qmq_client_process_seconds";
/// `qmq_client_process_total`.
pub const PROCESS_TOTAL: &str = "qmq_client_process_total";
/// `qmq_client_duplicate_messages_total`.
pub const DUPLICATE_MESSAGES_TOTAL: &str = "qmq_client_duplicate_messages_total";
/// `qmq_client_acked_messages_total`.
pub const ACKED_MESSAGES_TOTAL: &str = "qmq_client_acked_messages_total";
/// `qmq_client_ack_failed_total`.
pub const ACK_FAILED_TOTAL: &str = "qmq_client_ack_failed_total";
/// `qmq_client_sent_back_total`.
pub const SENT_BACK_TOTAL: &str = "qmq_client_sent_back_total";
/// `qmq_client_send_back_failed_total`.
pub const SEND_BACK_FAILED_TOTAL: &str = "qmq_client_send_back_failed_total";

/// Describes every client metric (unit and help text) to the current recorder. Cheap and
/// idempotent; [`Producer::new`](crate::Producer::new) and
/// [`Consumer::new`](crate::Consumer::new) call it.
pub fn describe() {
    describe_histogram!(
        SEND_SECONDS,
        Unit::Seconds,
        "Time from queueing a message to its final outcome (stored, refused, expired or given up)"
    );
    describe_counter!(
        SEND_TOTAL,
        Unit::Count,
        "Messages by final send outcome: ok, refused, expired, gave_up, queue_full, closed"
    );
    describe_counter!(
        SEND_RETRIES_TOTAL,
        Unit::Count,
        "Failed send tries of a message followed by another try, by reason"
    );
    describe_gauge!(
        SEND_QUEUE_SIZE,
        Unit::Count,
        "Messages waiting in producers' send queues"
    );
    describe_counter!(
        PULLED_MESSAGES_TOTAL,
        Unit::Count,
        "Messages pulled from brokers (retries included)"
    );
    describe_counter!(PULL_FAILED_TOTAL, Unit::Count, "Failed pull requests");
    describe_histogram!(
        PROCESS_SECONDS,
        Unit::Seconds,
        "Time a listener's handler took on one message"
    );
    describe_counter!(
        PROCESS_TOTAL,
        Unit::Count,
        "Messages handed to listeners, by outcome: ok, failed, retry, panicked, filtered"
    );
    describe_counter!(
        DUPLICATE_MESSAGES_TOTAL,
        Unit::Count,
        "Deliveries an idempotent handler skipped because the message was handled before"
    );
    describe_counter!(
        ACKED_MESSAGES_TOTAL,
        Unit::Count,
        "Messages acknowledged to brokers"
    );
    describe_counter!(ACK_FAILED_TOTAL, Unit::Count, "Failed ack requests");
    describe_counter!(
        SENT_BACK_TOTAL,
        Unit::Count,
        "Failed messages sent to the group's retry or dead-letter subject"
    );
    describe_counter!(
        SEND_BACK_FAILED_TOTAL,
        Unit::Count,
        "Failed messages that could not be sent back to the retry or dead-letter subject"
    );
}

/// The final outcome of one message given to a producer (label `outcome` of
/// `qmq_client_send_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// `ok`: stored (or found already stored).
    Ok,
    /// `refused`: refused for good by the broker (QMQ's BLOCK).
    Refused,
    /// `expired`: its expiry time passed before it could be stored.
    Expired,
    /// `gave_up`: every try failed (timeouts, unreachable brokers, circuits open, no route,
    /// refusals worth retrying).
    GaveUp,
    /// `queue_full`: not queued, the producer's queue was full.
    QueueFull,
    /// `closed`: not queued, or dropped unsent, because the producer was closed.
    Closed,
}

impl SendOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Expired => "expired",
            Self::GaveUp => "gave_up",
            Self::QueueFull => "queue_full",
            Self::Closed => "closed",
        }
    }
}

/// Why a send try failed before another one (label `reason` of
/// `qmq_client_send_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// `timeout`: the broker did not answer in time.
    Timeout,
    /// `unreachable`: the connection was refused, reset or closed.
    Unreachable,
    /// `circuit_open`: every broker of the subject had its circuit breaker open.
    CircuitOpen,
    /// `no_route`: no writable broker, or the route could not be had.
    NoRoute,
    /// `broker_error`: the broker refused the whole request (an error code, or BROKER_REJECT
    /// from a non-master).
    BrokerError,
    /// `refused`: the broker refused this message for now (busy, read-only, subject not
    /// assigned).
    Refused,
    /// `other`: anything else (an undecodable answer).
    Other,
}

impl RetryReason {
    /// The reason for a failed try that ended with `e`.
    pub fn of(e: &SendError) -> Self {
        match e {
            SendError::Connection(ConnectionError::Timeout { .. }) => Self::Timeout,
            SendError::Connection(_) => Self::Unreachable,
            SendError::BrokersUnavailable(_) => Self::CircuitOpen,
            SendError::NoBroker(_) | SendError::Route(_) => Self::NoRoute,
            SendError::Broker(_) => Self::BrokerError,
            SendError::Refused { .. } => Self::Refused,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::CircuitOpen => "circuit_open",
            Self::NoRoute => "no_route",
            Self::BrokerError => "broker_error",
            Self::Refused => "refused",
            Self::Other => "other",
        }
    }
}

/// How a listener's handling of one message ended (label `outcome` of
/// `qmq_client_process_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// `ok`: the handler succeeded (or an idempotent handler skipped a duplicate).
    Ok,
    /// `failed`: the handler returned an error (a stream delivery was nacked or dropped).
    Failed,
    /// `retry`: the handler asked for a later delivery
    /// ([`HandleError::retry_after`](crate::HandleError::retry_after),
    /// [`Delivery::retry_after`](crate::Delivery::retry_after)).
    Retry,
    /// `panicked`: the handler (or a filter) panicked.
    Panicked,
    /// `filtered`: a filter skipped the handler.
    Filtered,
}

impl ProcessOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Retry => "retry",
            Self::Panicked => "panicked",
            Self::Filtered => "filtered",
        }
    }
}

pub(crate) fn send_finished(subject: &str, outcome: SendOutcome, elapsed: Option<Duration>) {
    counter!(SEND_TOTAL, "subject" => subject.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
    if let Some(elapsed) = elapsed {
        histogram!(SEND_SECONDS, "subject" => subject.to_owned()).record(elapsed.as_secs_f64());
    }
}

pub(crate) fn send_retried(subject: &str, reason: RetryReason, messages: usize) {
    counter!(SEND_RETRIES_TOTAL, "subject" => subject.to_owned(), "reason" => reason.as_str())
        .increment(messages as u64);
}

pub(crate) fn send_queue_entered() {
    gauge!(SEND_QUEUE_SIZE).increment(1.0);
}

pub(crate) fn send_queue_left() {
    gauge!(SEND_QUEUE_SIZE).decrement(1.0);
}

pub(crate) fn pulled(subject: &str, group: &str, messages: usize) {
    counter!(PULLED_MESSAGES_TOTAL, "subject" => subject.to_owned(), "group" => group.to_owned())
        .increment(messages as u64);
}

pub(crate) fn pull_failed(subject: &str, group: &str) {
    counter!(PULL_FAILED_TOTAL, "subject" => subject.to_owned(), "group" => group.to_owned())
        .increment(1);
}

pub(crate) fn processed(
    subject: &str,
    group: &str,
    outcome: ProcessOutcome,
    elapsed: Option<Duration>,
) {
    counter!(
        PROCESS_TOTAL,
        "subject" => subject.to_owned(),
        "group" => group.to_owned(),
        "outcome" => outcome.as_str()
    )
    .increment(1);
    if let Some(elapsed) = elapsed {
        histogram!(PROCESS_SECONDS, "subject" => subject.to_owned(), "group" => group.to_owned())
            .record(elapsed.as_secs_f64());
    }
}

pub(crate) fn duplicate(subject: &str, group: &str) {
    counter!(DUPLICATE_MESSAGES_TOTAL, "subject" => subject.to_owned(), "group" => group.to_owned())
        .increment(1);
}

pub(crate) fn acked(subject: &str, group: &str, messages: i64) {
    counter!(ACKED_MESSAGES_TOTAL, "subject" => subject.to_owned(), "group" => group.to_owned())
        .increment(messages.max(0) as u64);
}

pub(crate) fn ack_failed(subject: &str, group: &str) {
    counter!(ACK_FAILED_TOTAL, "subject" => subject.to_owned(), "group" => group.to_owned())
        .increment(1);
}

pub(crate) fn sent_back(subject: &str, group: &str, dead: bool) {
    let to = if dead { "dead" } else { "retry" };
    counter!(
        SENT_BACK_TOTAL,
        "subject" => subject.to_owned(),
        "group" => group.to_owned(),
        "to" => to
    )
    .increment(1);
}

pub(crate) fn send_back_failed(subject: &str, group: &str) {
    counter!(SEND_BACK_FAILED_TOTAL, "subject" => subject.to_owned(), "group" => group.to_owned())
        .increment(1);
}
