//! Error types of the delay engine.

use std::path::PathBuf;

/// Opening, running or shutting down the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    /// A disk operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid delay configuration: {0}")]
    Config(String),
    /// The store was created with another bucket width, which can never change.
    #[error("store {path} uses a segment scale of {stored} min, configured {configured} min; the scale is fixed when a store is created")]
    ScaleMismatch {
        /// The store directory.
        path: PathBuf,
        /// The persisted scale.
        stored: u32,
        /// The configured scale.
        configured: u32,
    },
    /// A limit of the delay server is looser than the same limit of the broker it forwards to:
    /// messages accepted for later could never be delivered.
    #[error("delay server {what} ({delay}) exceeds the broker's ({broker}); messages it accepts could never be delivered")]
    LimitMismatch {
        /// Which limit.
        what: &'static str,
        /// The delay server's value.
        delay: usize,
        /// The broker's value.
        broker: usize,
    },
    /// A store metadata file is damaged beyond use.
    #[error("damaged store file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The engine has stopped.
    #[error("the delay engine is shut down")]
    Closed,
}

impl DelayError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// One message could not be scheduled.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The schedule time is later than now + the configured maximum delay.
    #[error("schedule time {requested_ms} is later than the longest delay allows ({max_ms}, now + {max_delay_days} days)")]
    TooFarAhead {
        /// The requested time (ms since the epoch).
        requested_ms: i64,
        /// The latest accepted time at the moment of the request.
        max_ms: i64,
        /// The configured maximum delay in days.
        max_delay_days: u64,
    },
    /// The message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Subject or message id is empty or longer than 32767 bytes.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Writing the message to disk failed; it was not stored.
    #[error("store error: {0}")]
    Store(String),
    /// The engine has stopped.
    #[error("the delay engine is shut down")]
    Closed,
}

/// A dispatcher could not hand a batch over (nothing in it was stored; the failure is
/// transient).
#[derive(Debug, Clone, thiserror::Error)]
#[error("dispatch failed: {0}")]
pub struct DispatchError(pub String);
