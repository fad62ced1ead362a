//! Configuration of the delay engine (storage, wheel, dispatch, retention).
//!
//! [`DelayConfig::validate`] checks one configuration on its own (the engine calls it on open);
//! [`DelayConfig::check_broker_limits`] checks the rules that must agree with the brokers the
//! due messages go to: a message the delay server accepts must be one a broker accepts, or it
//! could only ever end as a dead letter.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::DelayError;
use crate::metrics::DelayMetrics;

/// Two years (730 days), QMQ's longest delay.
pub const TWO_YEARS: Duration = Duration::from_secs(730 * 24 * 3600);

/// Default largest message: 4 MiB, the broker's default (`BrokerConfig::max_message_bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Settings of a [`crate::DelayEngine`]. `Default` gives QMQ's values with `data_dir` "delay-data".
#[derive(Debug, Clone)]
pub struct DelayConfig {
    /// Root directory: `message_log/`, `schedule_log/`, `dispatch_log/`, `delay.meta`,
    /// `checkpoint`.
    pub data_dir: PathBuf,
    /// Width of one schedule-log bucket in minutes (QMQ: 60). Fixed once the store exists: it is
    /// persisted in `delay.meta` and a different value is refused on reopen.
    pub segment_scale_minutes: u32,
    /// How long before a bucket starts it is loaded into the timing wheel. `None`: half the
    /// bucket width (QMQ's default).
    pub load_ahead: Option<Duration>,
    /// Longest accepted delay; later schedule times are refused.
    pub max_delay: Duration,
    /// Wheel tick: a message fires at the first tick at or after its time, so this bounds how
    /// late (never early) delivery is on an idle engine.
    pub tick: Duration,
    /// Size at which the message log (WAL) rolls to a new segment file.
    pub wal_segment_bytes: u64,
    /// Largest message (stored form) accepted. Default 4 MiB, the broker's default: it must not
    /// exceed the limit of the brokers due messages go to ([`Self::check_broker_limits`]).
    pub max_message_bytes: usize,
    /// Most messages handed to the dispatcher in one call.
    pub dispatch_batch: usize,
    /// Most message bytes handed to the dispatcher in one call (a larger message goes alone).
    /// Default 8 MiB. Bounds the memory a batch holds; frames are cut by the forwarder.
    pub dispatch_batch_bytes: usize,
    /// First wait before a message that was not stored is offered again; doubles per failed
    /// attempt of that message up to `retry_backoff_max`. Each message has its own backoff:
    /// a message that keeps failing never holds up the others.
    pub retry_backoff_min: Duration,
    /// Longest wait between dispatch retries of one message.
    pub retry_backoff_max: Duration,
    /// Permanent refusals (see [`crate::Outcome::Permanent`]) after which a message is sent to
    /// its dead-letter subject `%DEAD_DELAY%<subject>` instead. Default 10. Transient failures
    /// (broker down, busy, read-only) do not count: they are retried without limit.
    pub max_dispatch_attempts: u32,
    /// How often schedule and dispatch logs are fsynced and the checkpoint written.
    pub flush_interval: Duration,
    /// How often the cleaner looks for logs to delete.
    pub clean_interval: Duration,
    /// How long a fully dispatched bucket's schedule and dispatch logs are kept after the
    /// bucket's end (QMQ keeps dispatch logs 72 h).
    pub retention: Duration,
    /// How long a message-log segment whose records are all in fsynced schedule logs is kept.
    pub wal_retention: Duration,
    /// Where the engine (and the server in front of it) records its metrics (None: nowhere).
    /// Give every engine of a process the same one.
    pub metrics: Option<Arc<DelayMetrics>>,
    /// Make OpenTelemetry spans (`Qmq.Delay.Schedule`, `Qmq.Delay.Dispatch`, see
    /// [`crate::engine`]) for the messages that carry a trace context, with the global tracer
    /// provider. Off by default: then no message is decoded for tracing.
    pub trace_spans: bool,
}

impl Default for DelayConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("delay-data"),
            segment_scale_minutes: 60,
            load_ahead: None,
            max_delay: TWO_YEARS,
            tick: Duration::from_millis(10),
            wal_segment_bytes: 256 * 1024 * 1024,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            dispatch_batch: 256,
            dispatch_batch_bytes: 8 * 1024 * 1024,
            max_dispatch_attempts: 10,
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            flush_interval: Duration::from_secs(1),
            clean_interval: Duration::from_secs(60),
            retention: Duration::from_secs(72 * 3600),
            wal_retention: Duration::from_secs(72 * 3600),
            metrics: None,
            trace_spans: false,
        }
    }
}

impl DelayConfig {
    /// Defaults with `data_dir` as root.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// Bucket width in ms.
    pub fn scale_ms(&self) -> i64 {
        i64::from(self.segment_scale_minutes) * 60_000
    }

    /// Load-ahead in ms.
    pub fn load_ahead_ms(&self) -> i64 {
        match self.load_ahead {
            Some(d) => d.as_millis() as i64,
            None => self.scale_ms() / 2,
        }
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), DelayError> {
        let bad = |reason: &str| Err(DelayError::Config(reason.to_owned()));
        if self.segment_scale_minutes == 0 || self.segment_scale_minutes > 24 * 60 {
            return bad("segment_scale_minutes must be in 1..=1440");
        }
        if self.tick.is_zero() || self.tick > Duration::from_secs(1) {
            return bad("tick must be in (0, 1s]");
        }
        if self.dispatch_batch == 0 || self.dispatch_batch_bytes == 0 {
            return bad("dispatch_batch and dispatch_batch_bytes must be at least 1");
        }
        if self.max_dispatch_attempts == 0 {
            return bad("max_dispatch_attempts must be at least 1");
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_min > self.retry_backoff_max {
            return bad("retry_backoff_min must be positive and at most retry_backoff_max");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 256 * 1024 * 1024 {
            return bad("max_message_bytes must be in 1..=256 MiB");
        }
        if self.wal_segment_bytes < 4096 {
            return bad("wal_segment_bytes must be at least 4096");
        }
        if self.load_ahead_ms() < 0 || self.load_ahead_ms() > self.scale_ms() {
            return bad("load_ahead must not exceed the bucket width");
        }
        Ok(())
    }

    /// Checks the limits that must agree with the brokers due messages are forwarded to:
    /// `max_message_bytes` must not exceed the broker's `broker_max_message_bytes`. Servers
    /// call it at start-up where both are known, and refuse to start otherwise.
    pub fn check_broker_limits(&self, broker_max_message_bytes: usize) -> Result<(), DelayError> {
        if self.max_message_bytes > broker_max_message_bytes {
            return Err(DelayError::LimitMismatch {
                what: "max_message_bytes",
                delay: self.max_message_bytes,
                broker: broker_max_message_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_may_not_accept_larger_messages_than_the_broker() {
        let cfg = DelayConfig::new("x");
        cfg.validate().unwrap();
        // The defaults agree with the broker's default.
        cfg.check_broker_limits(4 * 1024 * 1024).unwrap();
        let err = cfg.check_broker_limits(1024 * 1024).unwrap_err();
        assert!(matches!(
            err,
            DelayError::LimitMismatch {
                delay: 4194304,
                broker: 1048576,
                ..
            }
        ));
        assert!(err.to_string().contains("max_message_bytes"), "{err}");
        let zero = DelayConfig {
            max_dispatch_attempts: 0,
            ..DelayConfig::new("x")
        };
        assert!(zero.validate().is_err());
    }
}
