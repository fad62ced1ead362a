//! A per-broker circuit breaker, so a dead or overloaded broker stops eating send attempts.
//!
//! Closed (normal) until `failure_threshold` consecutive failures; then open: requests are
//! refused at once for `open_for`; then half-open: one probe request is let through. The
//! probe's success closes the breaker, its failure opens it again for another `open_for`.
//! Time is `tokio::time`'s, so tests drive it with a paused clock.
//!
//! A producer whose every broker for a subject has its breaker open waits for the first one to
//! half-open before its next try (see [`crate::ProducerConfig::retry_backoff`]): tries refused
//! by an open breaker never run out while a broker restarts, so an outage shorter than the
//! send timeout costs no send.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The breaker's state, as reported by [`CircuitBreaker::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the open period ends.
    Open,
    /// One probe request is (or may be) in flight.
    HalfOpen,
}

/// When a breaker trips and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before letting a probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One breaker (the producer keeps one per broker address).
///
/// ```
/// use std::time::Duration;
/// use qmq_client::{BreakerConfig, BreakerState, CircuitBreaker};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 2, open_for: Duration::from_secs(5) });
/// breaker.on_failure();
/// assert_eq!(breaker.state(), BreakerState::Closed); // one failure is not enough
/// breaker.on_failure();
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(!breaker.try_acquire()); // refused at once, no request sent
///
/// tokio::time::sleep(Duration::from_secs(5)).await;
/// assert!(breaker.try_acquire()); // the probe
/// assert!(!breaker.try_acquire()); // only one
/// breaker.on_success();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # });
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    /// The current state (an open breaker whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        match *self.inner.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When an open breaker lets its probe through; None when it is not open (closed,
    /// half-open, or open with its time up).
    pub fn open_until(&self) -> Option<Instant> {
        match *self.inner.lock() {
            Inner::Open { until } if Instant::now() < until => Some(until),
            _ => None,
        }
    }

    /// Whether a request may go now. In half-open state only the first caller gets `true`
    /// (the probe); it must report [`Self::on_success`] or [`Self::on_failure`], or
    /// [`Self::release`] when the request ends without an outcome.
    pub fn try_acquire(&self) -> bool {
        let mut inner = self.inner.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } if Instant::now() >= until => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::Open { .. } => false,
            Inner::HalfOpen { probing: true } => false,
            Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
        }
    }

    /// A request succeeded: the breaker closes.
    pub fn on_success(&self) {
        *self.inner.lock() = Inner::Closed { failures: 0 };
    }

    /// A request failed: counts towards opening; a failed probe reopens at once.
    pub fn on_failure(&self) {
        let mut inner = self.inner.lock();
        let open = Inner::Open {
            until: Instant::now() + self.config.open_for,
        };
        *inner = match *inner {
            Inner::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                Inner::Closed {
                    failures: failures + 1,
                }
            }
            Inner::Closed { .. } | Inner::HalfOpen { .. } => open,
            Inner::Open { until } => Inner::Open { until },
        };
    }

    /// A request ended without an outcome to report (cancelled, or answered by a live server
    /// that is not the master): a half-open breaker's probe is given back, so that the next
    /// request probes; otherwise nothing changes. Without this a dropped probe would leave
    /// the breaker refusing every request.
    pub fn release(&self) {
        let mut inner = self.inner.lock();
        if let Inner::HalfOpen { probing: true } = *inner {
            *inner = Inner::HalfOpen { probing: false };
        }
    }
}

/// A request let through by a breaker: unless it reports [`Self::success`] or
/// [`Self::failure`], dropping it [`CircuitBreaker::release`]s the breaker (so a cancelled
/// send cannot keep a probe forever).
pub(crate) struct Permit {
    breaker: std::sync::Arc<CircuitBreaker>,
    reported: bool,
}

impl Permit {
    /// A permit for a request `breaker` let through.
    pub(crate) fn new(breaker: std::sync::Arc<CircuitBreaker>) -> Self {
        Self {
            breaker,
            reported: false,
        }
    }

    /// The request succeeded.
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.on_success();
    }

    /// The request failed.
    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.on_failure();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = breaker();
        b.on_failure();
        b.on_failure();
        b.on_success(); // resets the count
        b.on_failure();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_closes_on_success() {
        let b = breaker();
        for _ in 0..3 {
            b.on_failure();
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.try_acquire());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "the probe");
        assert!(!b.try_acquire(), "only one probe at a time");
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_a_full_period() {
        let b = breaker();
        for _ in 0..3 {
            b.on_failure();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_acquire());
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_acquire());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_an_outcome_lets_the_next_request_probe() {
        let b = std::sync::Arc::new(breaker());
        for _ in 0..3 {
            b.on_failure();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(b.try_acquire(), "the probe");
        let permit = Permit::new(b.clone());
        assert!(!b.try_acquire(), "one probe at a time");
        drop(permit); // the send was cancelled
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "the next request probes");
        Permit::new(b.clone()).success();
        assert_eq!(b.state(), BreakerState::Closed);
        // A closed breaker is not changed by a dropped permit.
        drop(Permit::new(b.clone()));
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
