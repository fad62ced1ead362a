//! The write gate: whether this server may serve clients now (master of an epoch, holding a
//! lease), and whether a write is replicated enough to acknowledge.
//!
//! Fencing: the lease is counted from when the master *sent* its renewal (minus a margin), so it
//! always ends before the meta server's record of it; the meta server promotes a slave only
//! after that record plus a grace period. A master cut off from meta, or frozen and resumed,
//! therefore never acknowledges a write after its replacement was promoted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// When a SEND is acknowledged relative to the slave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// As soon as the master stored it; the slave copies it soon after. A master crash may lose
    /// what the slave had not copied yet (the old master's tail is cut when it rejoins).
    Async,
    /// Only once the slave has written it (reliable messages, as QMQ's `wait.slave.wrote`), or
    /// after `timeout` as `on_timeout` says.
    Sync {
        /// How long a send waits for the slave.
        timeout: Duration,
        /// What a send that waited `timeout` gets.
        on_timeout: SyncTimeout,
    },
}

/// What a synchronously replicated send gets when the slave did not confirm it in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncTimeout {
    /// An error per message (`StoreError` code, remark "not replicated"): stored on the master
    /// only; a retry may duplicate it.
    Fail,
    /// Success, with a warning log line and a metric: the group runs asynchronously until the
    /// slave has caught up again.
    Async,
}

/// Counters of replication events, for metrics and tests.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Sends that waited for the slave longer than the timeout.
    pub sync_timeouts: AtomicU64,
    /// Sends acknowledged without the slave because of [`SyncTimeout::Async`].
    pub sync_fallbacks: AtomicU64,
    /// Bytes cut from this server's logs when it rejoined as a slave.
    pub truncated_bytes: AtomicU64,
    /// Times this server's logs diverged from its master's (a resync is needed).
    pub diverged: AtomicU64,
    /// Times this server, as a slave, replaced its store with its master's snapshot (it was
    /// behind the master's retention or diverged) and started copying again from there.
    pub resyncs: AtomicU64,
}

impl ReplicationStats {
    /// Every counter as (name without a prefix, help text, value), for metrics: the broker
    /// exports them as `qmq_replication_<name>_total`, the delay server as
    /// `qmq_delay_replication_<name>_total`.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 5] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "sync_timeouts",
                "Sends that waited for the slave longer than the replication timeout",
                load(&self.sync_timeouts),
            ),
            (
                "async_fallbacks",
                "Sends acknowledged without the slave (on-replication-timeout async)",
                load(&self.sync_fallbacks),
            ),
            (
                "truncated_bytes",
                "Bytes cut from this server's logs when it rejoined as a slave",
                load(&self.truncated_bytes),
            ),
            (
                "resyncs",
                "Times this server, as a slave, installed its master's snapshot",
                load(&self.resyncs),
            ),
            (
                "diverged",
                "Times this server's logs were found diverged from its master's",
                load(&self.diverged),
            ),
        ]
    }
}

/// Whether this broker may serve clients now, and how far its slave has written: what the
/// client server asks before it accepts and before it acknowledges.
#[derive(Debug)]
pub struct Gate {
    mode: ReplicationMode,
    /// Master of this epoch (0: not master).
    master_epoch: AtomicU64,
    /// Writes are accepted until this instant (None: no lease).
    lease_until: Mutex<Option<Instant>>,
    /// The slave's message-log end, as its last sync request said.
    slave_end: watch::Sender<u64>,
    /// Sends acknowledged without the slave (fallback) until the slave reaches this offset.
    degraded_until: AtomicU64,
    /// Counters.
    pub stats: ReplicationStats,
}

impl Gate {
    /// A gate that serves nobody yet.
    pub fn new(mode: ReplicationMode) -> Self {
        Self {
            mode,
            master_epoch: AtomicU64::new(0),
            lease_until: Mutex::new(None),
            slave_end: watch::channel(0).0,
            degraded_until: AtomicU64::new(0),
            stats: ReplicationStats::default(),
        }
    }

    /// The acknowledgement mode.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// Becomes master of `epoch` (still without a lease: see [`Gate::extend_lease`]). What a
    /// slave reported under an earlier mastership of this process says nothing about this one's
    /// slave, so it is forgotten.
    pub fn become_master(&self, epoch: u64) {
        self.slave_end.send_replace(0);
        self.master_epoch.store(epoch, Ordering::Release);
    }

    /// Called by a slave promoted to master (after [`Gate::become_master`]): its old master is
    /// gone, so no slave holds anything yet. With [`SyncTimeout::Async`] sends are acknowledged
    /// without a slave, as after a timeout, until a slave has reported copying something, rather
    /// than each first send waiting the whole timeout for a slave that is known to be absent.
    /// With [`SyncTimeout::Fail`] nothing changes: the operator chose errors over unreplicated
    /// acknowledgements.
    pub fn promoted(&self) {
        if let ReplicationMode::Sync {
            on_timeout: SyncTimeout::Async,
            ..
        } = self.mode
        {
            self.degraded_until.fetch_max(1, Ordering::AcqRel);
            tracing::warn!(
                "promoted without a slave: acknowledging sends without one until a slave copies"
            );
        }
    }

    /// Stops serving at once (deposed, or shutting down).
    pub fn revoke(&self) {
        self.master_epoch.store(0, Ordering::Release);
        *self.lease_until.lock() = None;
    }

    /// The epoch this server is master of (0: none).
    pub fn master_epoch(&self) -> u64 {
        self.master_epoch.load(Ordering::Acquire)
    }

    /// Extends the lease to `until` (a renewal sent at `sent` granted for `lease`; the margin
    /// covers timer slack so the lease ends before the meta server's record of it).
    pub fn extend_lease(&self, sent: Instant, lease: Duration) {
        if self.master_epoch() == 0 {
            return;
        }
        let until = sent + lease.mul_f64(0.9);
        let mut l = self.lease_until.lock();
        if l.is_none_or(|old| old < until) {
            *l = Some(until);
        }
    }

    /// Whether clients may be served (and writes acknowledged) now.
    pub fn serving(&self) -> bool {
        self.master_epoch() != 0 && self.lease_until.lock().is_some_and(|u| Instant::now() < u)
    }

    /// Records the slave's message-log end (from its sync requests).
    pub fn slave_reached(&self, end: u64) {
        self.slave_end.send_if_modified(|v| {
            if end > *v {
                *v = end;
                true
            } else {
                false
            }
        });
    }

    /// The slave's message-log end as last reported.
    pub fn slave_end(&self) -> u64 {
        *self.slave_end.borrow()
    }

    /// Waits until the slave holds the record at `offset` (its end is past it). Returns
    /// whether it did (false: the mode's timeout passed; with [`SyncTimeout::Async`] the
    /// caller acknowledges anyway). Always true in async mode.
    pub async fn replicated(&self, offset: u64) -> bool {
        let ReplicationMode::Sync {
            timeout,
            on_timeout,
        } = self.mode
        else {
            return true;
        };
        if on_timeout == SyncTimeout::Async
            && self.degraded_until.load(Ordering::Acquire) > self.slave_end()
        {
            // Running asynchronously until the slave catches up.
            self.stats.sync_fallbacks.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let mut rx = self.slave_end.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|end| *end > offset)).await;
        if matches!(reached, Ok(Ok(_))) {
            return true;
        }
        self.stats.sync_timeouts.fetch_add(1, Ordering::Relaxed);
        match on_timeout {
            SyncTimeout::Fail => {
                tracing::warn!(
                    offset,
                    slave_end = self.slave_end(),
                    ?timeout,
                    "the slave did not confirm a send in time; answering not replicated"
                );
                false
            }
            SyncTimeout::Async => {
                self.degraded_until.fetch_max(offset + 1, Ordering::AcqRel);
                self.stats.sync_fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset, slave_end = self.slave_end(), ?timeout,
                    "the slave did not confirm a send in time; acknowledging without it until it catches up");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_ends_and_revoke_stops_serving() {
        let gate = Gate::new(ReplicationMode::Async);
        assert!(!gate.serving(), "no role yet");
        gate.extend_lease(Instant::now(), Duration::from_secs(2));
        assert!(
            !gate.serving(),
            "a lease without the master role serves nobody"
        );
        gate.become_master(3);
        gate.extend_lease(Instant::now(), Duration::from_secs(2));
        assert!(gate.serving());
        tokio::time::advance(Duration::from_millis(1850)).await;
        assert!(!gate.serving(), "the lease ends before its nominal end");
        gate.extend_lease(Instant::now(), Duration::from_secs(2));
        assert!(gate.serving());
        gate.revoke();
        assert!(!gate.serving());
    }

    #[tokio::test(start_paused = true)]
    async fn sync_sends_wait_for_the_slave_or_time_out() {
        let mode = ReplicationMode::Sync {
            timeout: Duration::from_secs(1),
            on_timeout: SyncTimeout::Fail,
        };
        let gate = std::sync::Arc::new(Gate::new(mode));
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.replicated(100).await });
        tokio::task::yield_now().await;
        gate.slave_reached(100);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "end 100 does not hold the record at 100"
        );
        gate.slave_reached(150);
        assert!(waiting.await.unwrap());
        assert!(!gate.replicated(500).await, "times out");
        assert_eq!(gate.stats.sync_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_promoted_master_does_not_wait_for_an_absent_slave() {
        let mode = |on_timeout| ReplicationMode::Sync {
            timeout: Duration::from_secs(1),
            on_timeout,
        };
        let gate = std::sync::Arc::new(Gate::new(mode(SyncTimeout::Async)));
        gate.slave_reached(500);
        gate.become_master(2);
        assert_eq!(gate.slave_end(), 0, "an earlier slave's end is forgotten");
        gate.promoted();
        let before = Instant::now();
        assert!(gate.replicated(10).await);
        assert_eq!(Instant::now(), before, "no slave yet: no wait");
        gate.slave_reached(5);
        let g = gate.clone();
        let t = tokio::spawn(async move { g.replicated(20).await });
        tokio::task::yield_now().await;
        assert!(!t.is_finished(), "a slave copies: sends wait for it again");
        gate.slave_reached(21);
        assert!(t.await.unwrap());

        let strict = Gate::new(mode(SyncTimeout::Fail));
        strict.become_master(2);
        strict.promoted();
        assert!(
            !strict.replicated(10).await,
            "policy fail still waits and fails"
        );
        assert_eq!(strict.stats.sync_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_acknowledges_until_the_slave_catches_up() {
        let mode = ReplicationMode::Sync {
            timeout: Duration::from_secs(1),
            on_timeout: SyncTimeout::Async,
        };
        let gate = Gate::new(mode);
        assert!(gate.replicated(10).await, "falls back after the timeout");
        let before = Instant::now();
        assert!(gate.replicated(20).await);
        assert_eq!(Instant::now(), before, "degraded: no wait");
        gate.slave_reached(30);
        let g = std::sync::Arc::new(gate);
        let g2 = g.clone();
        let t = tokio::spawn(async move { g2.replicated(40).await });
        tokio::task::yield_now().await;
        assert!(!t.is_finished(), "caught up: waits again");
        g.slave_reached(41);
        assert!(t.await.unwrap());
    }
}
