//! Time source of the delay engine, injectable so tests of far-future schedules need not wait.
//!
//! Every decision the engine takes about time (is a message due, which bucket is near enough to
//! load, is a log past retention) reads [`Clock::now_ms`]; every wait for a future instant goes
//! through [`Clock::sleep_until`]. [`SystemClock`] is the wall clock; [`ManualClock`] only moves
//! when a test tells it to, and wakes sleepers when it does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// A source of "now" in milliseconds since the Unix epoch, and a way to wait for an instant.
pub trait Clock: Send + Sync + 'static {
    /// The current time, ms since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// A future that completes once `now_ms() >= deadline_ms`. It may complete late, never early.
    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()>;
}

/// The wall clock (`SystemTime`), sleeping with tokio timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Milliseconds since the Unix epoch by the wall clock.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        wall_ms()
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // The wall clock can step; re-check after every sleep so we never wake early.
            loop {
                let now = wall_ms();
                if now >= deadline_ms {
                    return;
                }
                tokio::time::sleep(Duration::from_millis((deadline_ms - now) as u64)).await;
            }
        })
    }
}

/// A clock that stands still until [`ManualClock::set`] or [`ManualClock::advance`] moves it.
/// Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    tx: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        let (tx, _rx) = watch::channel(start_ms);
        Self {
            now: Arc::new(AtomicI64::new(start_ms)),
            tx: Arc::new(tx),
        }
    }

    /// Sets the time (it may go backwards; sleepers only wake when their deadline is reached).
    pub fn set(&self, now_ms: i64) {
        self.now.store(now_ms, Ordering::SeqCst);
        self.tx.send_replace(now_ms);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let next = self.now.load(Ordering::SeqCst) + by.as_millis() as i64;
        self.set(next);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, so a time already reached returns at once.
            let _ = rx.wait_for(|now| *now >= deadline_ms).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_at_their_deadline() {
        let clock = ManualClock::new(1_000);
        let sleeper = tokio::spawn(clock.sleep_until(5_000));
        clock.advance(Duration::from_millis(3_000));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_millis(1_000));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(clock.now_ms(), 5_000);
    }
}
