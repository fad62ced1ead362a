//! [`ProducerBuilder`]: a [`Producer`] with settings by name, and an error instead of a panic
//! when built outside a Tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use super::{Producer, ProducerConfig};
use crate::breaker::BreakerConfig;
use crate::client::{require_runtime, BuildError};
use crate::router::Router;

const WHAT: &str = "Producer";

/// Builds a [`Producer`]; from [`Producer::builder`] or [`Client::producer`](crate::Client::producer).
/// Every setting starts at [`ProducerConfig::default`] (QMQ's defaults).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use qmq_client::{BuildError, Producer, StaticRouter};
///
/// // Outside a Tokio runtime `build` is an error, not a panic.
/// let result = Producer::builder(Arc::new(StaticRouter::new(["127.0.0.1:20881"])))
///     .batch_size(50)
///     .send_timeout(Duration::from_secs(3))
///     .build();
/// assert!(matches!(result, Err(BuildError::NoRuntime { .. })));
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build()`"]
pub struct ProducerBuilder {
    router: Arc<dyn Router>,
    config: ProducerConfig,
}

impl std::fmt::Debug for ProducerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A builder for a producer routing with `router` ([`StaticRouter`](crate::StaticRouter),
    /// [`MetaRouter`](crate::MetaRouter), or [`Client::router`](crate::Client::router)).
    pub fn builder(router: Arc<dyn Router>) -> ProducerBuilder {
        ProducerBuilder {
            router,
            config: ProducerConfig::default(),
        }
    }
}

impl ProducerBuilder {
    /// The application stamped on messages without a `qmq_appCode`
    /// ([`ProducerConfig::app_code`]).
    pub fn app_code(mut self, app_code: &str) -> Self {
        self.config.app_code = Some(app_code.to_owned());
        self
    }

    /// Replaces every setting with `config`'s (the setters after this one change it further).
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    /// Messages of one subject sent in one request ([`ProducerConfig::batch_size`], QMQ: 30).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }

    /// Messages waiting to be sent ([`ProducerConfig::queue_capacity`], QMQ: 10000).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self
    }

    /// Tries per message before giving up ([`ProducerConfig::max_tries`], QMQ: 10).
    pub fn max_tries(mut self, n: u32) -> Self {
        self.config.max_tries = n;
        self
    }

    /// Deadline of one send request ([`ProducerConfig::send_timeout`], 5 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.config.send_timeout = timeout;
        self
    }

    /// Batches in flight at once ([`ProducerConfig::max_in_flight`], 4).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n;
        self
    }

    /// Pause after a failed try, times the try number ([`ProducerConfig::retry_backoff`],
    /// 50 ms).
    pub fn retry_backoff(mut self, pause: Duration) -> Self {
        self.config.retry_backoff = pause;
        self
    }

    /// Per-broker circuit breaker settings ([`ProducerConfig::breaker`]).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.config.breaker = breaker;
        self
    }

    /// Consecutive failures that open a broker's breaker
    /// ([`BreakerConfig::failure_threshold`], 5).
    pub fn breaker_failure_threshold(mut self, n: u32) -> Self {
        self.config.breaker.failure_threshold = n;
        self
    }

    /// How long an open breaker refuses before letting a probe through
    /// ([`BreakerConfig::open_for`], 5 s).
    pub fn breaker_open_for(mut self, open_for: Duration) -> Self {
        self.config.breaker.open_for = open_for;
        self
    }

    /// The settings so far.
    pub fn settings(&self) -> &ProducerConfig {
        &self.config
    }

    /// Starts the producer on the current Tokio runtime. Fails with
    /// [`BuildError::NoRuntime`] outside one, and with [`BuildError::Invalid`] for a zero
    /// count or timeout.
    pub fn build(self) -> Result<Producer, BuildError> {
        let c = &self.config;
        let invalid = |field, reason| BuildError::Invalid {
            what: WHAT,
            field,
            reason,
        };
        let positive = "must be at least 1";
        if c.batch_size == 0 {
            return Err(invalid("batch_size", positive));
        }
        if c.queue_capacity == 0 {
            return Err(invalid("queue_capacity", positive));
        }
        if c.max_tries == 0 {
            return Err(invalid("max_tries", positive));
        }
        if c.max_in_flight == 0 {
            return Err(invalid("max_in_flight", positive));
        }
        if c.send_timeout.is_zero() {
            return Err(invalid("send_timeout", "must not be zero"));
        }
        if c.breaker.failure_threshold == 0 {
            return Err(invalid("breaker.failure_threshold", positive));
        }
        let runtime = require_runtime(WHAT)?;
        Ok(Producer::start(self.router, self.config, &runtime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticRouter;

    fn builder() -> ProducerBuilder {
        Producer::builder(Arc::new(StaticRouter::new(["127.0.0.1:1"])))
    }

    #[test]
    fn outside_a_runtime_build_is_an_error() {
        let err = builder().build().err();
        assert!(
            matches!(err, Some(BuildError::NoRuntime { what: "Producer" })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn zero_settings_are_errors() {
        let err = builder().max_in_flight(0).build().err();
        assert!(
            matches!(
                err,
                Some(BuildError::Invalid {
                    field: "max_in_flight",
                    ..
                })
            ),
            "{err:?}"
        );
        let p = builder()
            .batch_size(7)
            .breaker_open_for(Duration::from_secs(1))
            .build()
            .unwrap();
        p.close().await;
    }

    #[test]
    fn setters_set_their_field() {
        let b = builder()
            .batch_size(1)
            .queue_capacity(2)
            .max_tries(3)
            .send_timeout(Duration::from_secs(4))
            .max_in_flight(5)
            .retry_backoff(Duration::from_millis(6))
            .breaker_failure_threshold(7)
            .breaker_open_for(Duration::from_secs(8));
        let c = b.settings();
        assert_eq!(
            (
                c.batch_size,
                c.queue_capacity,
                c.max_tries,
                c.send_timeout,
                c.max_in_flight,
                c.retry_backoff,
                c.breaker.failure_threshold,
                c.breaker.open_for
            ),
            (
                1,
                2,
                3,
                Duration::from_secs(4),
                5,
                Duration::from_millis(6),
                7,
                Duration::from_secs(8)
            )
        );
    }
}
