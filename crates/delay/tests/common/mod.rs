//! Test helpers: a recording dispatcher and condition waits.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use qmq_delay::{Clock, DelayConfig, DispatchError, Dispatcher, DueMessage, NewMessage, Outcome};
use tokio::sync::Notify;

/// One delivery as the dispatcher saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub due_ms: i64,
    pub at_ms: i64,
    pub message: Bytes,
}

/// Records every accepted message with the clock's time at delivery.
pub struct Recorder {
    clock: Arc<dyn Clock>,
    pub log: Mutex<Vec<Delivery>>,
    pub calls: AtomicUsize,
    notify: Notify,
    /// Calls after this many accepted batches never complete (a stuck broker).
    block_after: Option<usize>,
    /// The first this many calls fail.
    fail_first: AtomicUsize,
    /// Refuse every other message of a batch on odd calls.
    refuse_some: bool,
}

impl Recorder {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::build(clock, None, 0, false)
    }

    pub fn build(
        clock: Arc<dyn Clock>,
        block_after: Option<usize>,
        fail_first: usize,
        refuse_some: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            clock,
            log: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            notify: Notify::new(),
            block_after,
            fail_first: AtomicUsize::new(fail_first),
            refuse_some,
        })
    }

    pub fn count(&self) -> usize {
        self.log.lock().len()
    }

    pub fn ids(&self) -> Vec<String> {
        self.log.lock().iter().map(|d| d.id.clone()).collect()
    }

    /// Waits (bounded) until `cond` holds on the log.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&[Delivery]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.notify.notified();
            if cond(&self.log.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; {} delivered",
                    self.log.lock().len()
                );
            }
        }
    }

    /// Waits (bounded) until the dispatcher has been called `n` times.
    pub async fn wait_calls(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.notify.notified();
            if self.calls.load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {n} dispatch calls");
            }
        }
    }
}

impl Dispatcher for Recorder {
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            self.notify.notify_waiters();
            if self.block_after.is_some_and(|n| call >= n) {
                futures::future::pending::<()>().await;
            }
            if self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(DispatchError("broker unavailable".into()));
            }
            let now = self.clock.now_ms();
            let mut accepted = Vec::with_capacity(batch.len());
            {
                let mut log = self.log.lock();
                for (i, m) in batch.iter().enumerate() {
                    let ok = !(self.refuse_some && call % 2 == 1 && i % 2 == 0);
                    if ok {
                        log.push(Delivery {
                            id: m.message_id.clone(),
                            due_ms: m.due_ms,
                            at_ms: now,
                            message: m.message.clone(),
                        });
                    }
                    accepted.push(if ok {
                        Outcome::Stored
                    } else {
                        Outcome::Transient("refused".into())
                    });
                }
            }
            self.notify.notify_waiters();
            Ok(accepted)
        })
    }
}

/// A test configuration: one-minute buckets, small WAL segments, fast retries.
pub fn config(dir: &std::path::Path) -> DelayConfig {
    DelayConfig {
        segment_scale_minutes: 1,
        wal_segment_bytes: 1 << 20,
        retry_backoff_min: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(10),
        flush_interval: Duration::from_millis(50),
        clean_interval: Duration::from_secs(3600),
        ..DelayConfig::new(dir)
    }
}

/// A message whose bytes name it.
pub fn msg(id: &str, schedule_ms: i64) -> NewMessage {
    NewMessage {
        subject: "delay.subject".into(),
        message_id: id.into(),
        schedule_ms,
        message: Bytes::from(format!("body of {id}")),
    }
}

/// Asserts every id appears exactly once.
pub fn assert_once(ids: &[String], expected: usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *seen.entry(id).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    assert_eq!(seen.len(), expected, "distinct deliveries");
}
