//! Configuration of the delay engine (storage, wheel, dispatch, retention).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::DelayError;

/// Two years (730 days), QMQ's longest delay.
pub const TWO_YEARS: Duration = Duration::from_secs(730 * 24 * 3600);

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
    /// Largest message (stored form) accepted.
    pub max_message_bytes: usize,
    /// Most messages handed to the dispatcher in one call.
    pub dispatch_batch: usize,
    /// First wait after a failed dispatch; doubles up to `retry_backoff_max`.
    pub retry_backoff_min: Duration,
    /// Longest wait between dispatch retries.
    pub retry_backoff_max: Duration,
    /// How often schedule and dispatch logs are fsynced and the checkpoint written.
    pub flush_interval: Duration,
    /// How often the cleaner looks for logs to delete.
    pub clean_interval: Duration,
    /// How long a fully dispatched bucket's schedule and dispatch logs are kept after the
    /// bucket's end (QMQ keeps dispatch logs 72 h).
    pub retention: Duration,
    /// How long a message-log segment whose records are all in fsynced schedule logs is kept.
    pub wal_retention: Duration,
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
            max_message_bytes: 16 * 1024 * 1024,
            dispatch_batch: 256,
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            flush_interval: Duration::from_secs(1),
            clean_interval: Duration::from_secs(60),
            retention: Duration::from_secs(72 * 3600),
            wal_retention: Duration::from_secs(72 * 3600),
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
        if self.dispatch_batch == 0 {
            return bad("dispatch_batch must be at least 1");
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
}
