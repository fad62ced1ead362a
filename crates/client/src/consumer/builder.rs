//! [`ConsumerBuilder`]: a [`Consumer`] with settings by name, and an error instead of a
//! surprise when built outside a Tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use super::{Consumer, ConsumerConfig};
use crate::client::{require_runtime, BuildError};
use crate::router::Router;

const WHAT: &str = "Consumer";

/// Builds a [`Consumer`]; from [`Consumer::builder`] or [`Client::consumer`](crate::Client::consumer).
/// Every setting starts at [`ConsumerConfig::default`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use qmq_client::{BuildError, Consumer, StaticRouter};
///
/// // Outside a Tokio runtime `build` is an error: subscriptions run on the runtime.
/// let result = Consumer::builder(Arc::new(StaticRouter::new(["127.0.0.1:20881"])))
///     .concurrency(4)
///     .pull_wait(Duration::from_millis(500))
///     .build();
/// assert!(matches!(result, Err(BuildError::NoRuntime { .. })));
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build()`"]
pub struct ConsumerBuilder {
    router: Arc<dyn Router>,
    config: ConsumerConfig,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A builder for a consumer routing with `router` ([`StaticRouter`](crate::StaticRouter),
    /// [`MetaRouter`](crate::MetaRouter), or [`Client::router`](crate::Client::router)).
    pub fn builder(router: Arc<dyn Router>) -> ConsumerBuilder {
        ConsumerBuilder {
            router,
            config: ConsumerConfig::default(),
        }
    }
}

impl ConsumerBuilder {
    /// Replaces every setting with `config`'s (the setters after this one change it further).
    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// This consumer's id ([`ConsumerConfig::consumer_id`]; default: host name, process id
    /// and a counter).
    pub fn consumer_id(mut self, id: &str) -> Self {
        self.config.consumer_id = id.to_owned();
        self
    }

    /// Messages asked for per pull ([`ConsumerConfig::pull_batch`], 30).
    pub fn pull_batch(mut self, n: i32) -> Self {
        self.config.pull_batch = n;
        self
    }

    /// How long a pull waits on the broker for messages ([`ConsumerConfig::pull_wait`], 1 s).
    pub fn pull_wait(mut self, wait: Duration) -> Self {
        self.config.pull_wait = wait;
        self
    }

    /// Handlers running at once per subscription ([`ConsumerConfig::concurrency`], 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Failed deliveries before the dead-letter subject, for messages without
    /// `qmq_maxRetryNum` ([`ConsumerConfig::max_retry_num`], QMQ: 32).
    pub fn max_retry_num(mut self, n: u32) -> Self {
        self.config.max_retry_num = n;
        self
    }

    /// Tries to send a failed message back, or to ack ([`ConsumerConfig::send_back_tries`],
    /// 10).
    pub fn send_back_tries(mut self, n: u32) -> Self {
        self.config.send_back_tries = n;
        self
    }

    /// First pause after a failed pull, and between send-back tries
    /// ([`ConsumerConfig::backoff`], 100 ms).
    pub fn backoff(mut self, pause: Duration) -> Self {
        self.config.backoff = pause;
        self
    }

    /// Longest pause while a broker keeps failing ([`ConsumerConfig::max_backoff`], 5 s).
    pub fn max_backoff(mut self, pause: Duration) -> Self {
        self.config.max_backoff = pause;
        self
    }

    /// How often a subscription looks its route up again ([`ConsumerConfig::route_refresh`],
    /// 30 s).
    pub fn route_refresh(mut self, every: Duration) -> Self {
        self.config.route_refresh = every;
        self
    }

    /// Extra delay before a failed message is sent back ([`ConsumerConfig::retry_delay`],
    /// zero: the broker's retry delay only).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.config.retry_delay = delay;
        self
    }

    /// The settings so far.
    pub fn settings(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The consumer. Fails with [`BuildError::NoRuntime`] outside a Tokio runtime (its
    /// subscriptions are tasks of the runtime) and with [`BuildError::Invalid`] for an empty
    /// consumer id or a zero count.
    pub fn build(self) -> Result<Consumer, BuildError> {
        let c = &self.config;
        let invalid = |field, reason| BuildError::Invalid {
            what: WHAT,
            field,
            reason,
        };
        if c.consumer_id.trim().is_empty() {
            return Err(invalid("consumer_id", "must not be empty"));
        }
        if c.pull_batch <= 0 {
            return Err(invalid("pull_batch", "must be at least 1"));
        }
        if c.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        if c.send_back_tries == 0 {
            return Err(invalid("send_back_tries", "must be at least 1"));
        }
        require_runtime(WHAT)?;
        Ok(Consumer::new(self.router, self.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticRouter;

    fn builder() -> ConsumerBuilder {
        Consumer::builder(Arc::new(StaticRouter::new(["127.0.0.1:1"])))
    }

    #[test]
    fn outside_a_runtime_build_is_an_error() {
        let err = builder().build().err();
        assert!(
            matches!(err, Some(BuildError::NoRuntime { what: "Consumer" })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bad_settings_are_errors() {
        for (b, field) in [
            (builder().consumer_id(" "), "consumer_id"),
            (builder().pull_batch(0), "pull_batch"),
            (builder().concurrency(0), "concurrency"),
            (builder().send_back_tries(0), "send_back_tries"),
        ] {
            let err = b.build().err();
            assert!(
                matches!(err, Some(BuildError::Invalid { field: f, .. }) if f == field),
                "{field}: {err:?}"
            );
        }
        let c = builder().consumer_id("c1").build().unwrap();
        assert_eq!(c.config().consumer_id, "c1");
    }

    #[test]
    fn setters_set_their_field() {
        let b = builder()
            .consumer_id("id")
            .pull_batch(1)
            .pull_wait(Duration::from_millis(2))
            .concurrency(3)
            .max_retry_num(4)
            .send_back_tries(5)
            .backoff(Duration::from_millis(6))
            .max_backoff(Duration::from_millis(7))
            .route_refresh(Duration::from_millis(8))
            .retry_delay(Duration::from_millis(9));
        let c = b.settings();
        assert_eq!(c.consumer_id, "id");
        assert_eq!(
            (
                c.pull_batch,
                c.concurrency,
                c.max_retry_num,
                c.send_back_tries
            ),
            (1, 3, 4, 5)
        );
        assert_eq!(
            [
                c.pull_wait,
                c.backoff,
                c.max_backoff,
                c.route_refresh,
                c.retry_delay
            ],
            [2, 6, 7, 8, 9].map(Duration::from_millis)
        );
    }
}
