//! The delay engine: accepts messages, keeps them durable, and dispatches them when due.
//!
//! Flow of a message: a writer thread appends a batch of messages to the message log (WAL) and
//! fsyncs it (the acknowledgement point), then appends each message to the schedule log of its
//! time bucket; if that bucket is already in the timing wheel the message goes into the wheel
//! too. A loader task loads buckets into the wheel `load_ahead` before they start; the
//! dispatch task takes due entries tick by tick, reads the messages back from the schedule logs, hands them to the
//! [`Dispatcher`] in batches bounded by count and bytes, and appends the stored ones to the
//! bucket's dispatch log. A maintenance task fsyncs schedule and dispatch logs and writes the
//! checkpoint every `flush_interval`, and deletes fully dispatched logs past retention.
//!
//! Messages that were not stored are retried each on its own backoff (`retry_backoff_min`
//! doubling to `retry_backoff_max` per failed attempt), alongside new due messages, so one
//! message the brokers refuse never holds up another. After `max_dispatch_attempts` permanent
//! refusals a message is sent to `%DEAD_DELAY%<subject>` (logged at WARN, counted in
//! [`DelayEngine::dead_lettered`]) and recorded as dispatched once stored there; if that fails
//! too it keeps backing off. Retry state lives in memory: after a restart a message that was
//! being retried is offered again with a fresh count.
//!
//! Restart: each schedule log is read only past the length the checkpoint counts durable (torn
//! tails cut); the message log after the checkpoint is replayed into them (records already
//! there are recognised by their message-log offset). Buckets the checkpoint counts fully
//! dispatched (its per-bucket dispatched count, taken only after the dispatch logs were
//! fsynced) are settled: neither their schedule logs nor their dispatch logs are read again,
//! so history kept for retention costs a restart nothing. Every other bucket is loaded when
//! due, its dispatch log then saying what not to deliver again, and its schedule log
//! CRC-checked whole before any of its entries can fire (`load.rs`: a damaged record is
//! rebuilt from the message log if it still holds it, reported as lost otherwise). Dispatch
//! starts at once: the loader loads the bucket holding "now" first and never holds up the
//! dispatch loop. A crash between recording a dispatch and the next checkpoint only means the
//! bucket is loaded (and its dispatch log read) once more. A batch forwarded but not yet
//! recorded in its dispatch log when the process died is offered again: the broker's
//! duplicate window answers it DUPLICATE (stored once) when the restart comes within the
//! window (see the crate docs).
//!
//! Disk work never runs on the async runtime: the writer has its own thread, and the loader,
//! dispatch and maintenance tasks do every read, write, fsync and deletion in `spawn_blocking`.
//! After a failed fsync of a schedule or dispatch log the checkpoint stops advancing (a later
//! fsync that succeeds proves nothing about the pages the failed one lost), so a restart
//! replays the message log from the last good checkpoint.
//!
//! Tracing: with [`DelayConfig::trace_spans`] set, a message that carries a trace context
//! (`qtrace_traceparent`, see [`qmq_trace`]) gets a [`SCHEDULE_SPAN`] span (kind server) from
//! [`DelayEngine::schedule`] until it is durably in the message log (attributes `subject`,
//! `messageId`, `scheduleTime`, `delayMs`, then `dueTime`; an error status when refused), and
//! a [`DISPATCH_SPAN`] span (kind producer) for every attempt to hand it to the dispatcher
//! (attributes `subject`, `messageId`, `dueTime`, `latenessMs`, `attempt`, `deadLetter`; an
//! error status when it was not stored). Both are children of the message's own context, so
//! producer, delay server, broker and consumer spans form one trace. A message without a
//! context gets no span, and the message's bytes are never changed: to read the context, the
//! stored form is decoded, and only when tracing is on.
//!
//! One file per phase: `recover.rs` (open), `writer.rs` (accepting messages), `load.rs`
//! (buckets into the wheel), `deliver.rs` (due messages), `maintenance.rs` (flush, retention).

mod deliver;
mod load;
mod maintenance;
pub(crate) mod recover;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry::KeyValue;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::DelayConfig;
use crate::dispatch::Dispatcher;
use crate::error::{DelayError, ScheduleError};
use crate::metrics::{Backlog, BacklogSource, FailReason, DUE_WINDOWS};
use crate::store::Store;
use crate::wal::MessageLog;

/// Longest subject or message id (QMQ short strings).
const MAX_NAME: usize = i16::MAX as usize;

/// Largest message-log payload for a configuration (message, names and record header).
pub(crate) fn max_payload(cfg: &DelayConfig) -> usize {
    cfg.max_message_bytes + 2 * MAX_NAME + 64
}

/// A join error of a blocking disk task (a panic in it): reported as an I/O error of `op`.
fn join_error(op: &'static str, e: tokio::task::JoinError) -> DelayError {
    DelayError::io(op, "", std::io::Error::other(e.to_string()))
}

/// Name of the span of a message accepted for later delivery (see the module docs).
pub const SCHEDULE_SPAN: &str = "Qmq.Delay.Schedule";
/// Name of the span of one attempt at delivering a due message (see the module docs).
pub const DISPATCH_SPAN: &str = "Qmq.Delay.Dispatch";
/// Name of the delay server's instrumentation scope (its tracer).
pub const TRACER_NAME: &str = "qmq-delay";

/// The tracer of the engine's spans.
pub(crate) fn tracer() -> opentelemetry::global::BoxedTracer {
    qmq_trace::tracer(TRACER_NAME, env!("CARGO_PKG_VERSION"))
}

/// The trace context carried by a message in stored form, if it decodes and carries one.
pub(crate) fn carried(stored: &[u8]) -> Option<opentelemetry::Context> {
    let message =
        qmq_protocol::Message::decode_stored(&mut qmq_protocol::wire::Reader::new(stored)).ok()?;
    qmq_trace::carried(&message)
}

/// A message to schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The subject.
    pub subject: String,
    /// The message id.
    pub message_id: String,
    /// When to deliver it (ms since the epoch); now or earlier means at once.
    pub schedule_ms: i64,
    /// The message's stored wire form; delivered byte for byte.
    pub message: Bytes,
}

/// A message was durably scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// When it will be delivered: the requested time, or the time of receipt if that was later.
    pub due_ms: i64,
    /// Where its record starts in the message log (a replicated server acknowledges it once
    /// the slave's message log ends past this offset).
    pub wal_offset: u64,
}

/// A snapshot of the engine's state, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Schedule-log buckets on disk.
    pub buckets: usize,
    /// Buckets loaded into the wheel.
    pub loaded_buckets: usize,
    /// Entries in the wheel.
    pub wheel_entries: usize,
    /// Approximate heap bytes of the wheel.
    pub wheel_bytes: usize,
    /// Records in all schedule logs.
    pub scheduled: u64,
    /// Records in all schedule logs that were dispatched.
    pub dispatched: u64,
    /// Message-log segment files.
    pub wal_segments: usize,
    /// Damaged records met while loading or dispatching (and damaged dispatch records): a
    /// damaged schedule record the message log could not rebuild is never delivered.
    pub damaged: u64,
    /// Damaged schedule records a load rebuilt from the message log (then delivered as usual).
    pub repaired: u64,
    /// Messages stored under their dead-letter subject since the engine opened.
    pub dead_lettered: u64,
    /// Messages offered and not stored yet, waiting for their next attempt.
    pub retrying: u64,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Buckets whose schedule and dispatch logs were deleted.
    pub buckets: usize,
    /// Message-log segments deleted.
    pub wal_segments: usize,
}

type Reply = Vec<Result<Scheduled, ScheduleError>>;

struct Job {
    messages: Vec<NewMessage>,
    reply: oneshot::Sender<Reply>,
}

struct Inner {
    cfg: DelayConfig,
    clock: Arc<dyn Clock>,
    dispatcher: Arc<dyn Dispatcher>,
    store: Mutex<Store>,
    wal: Mutex<MessageLog>,
    /// Wakes the dispatch loop (new wheel entries).
    wake: Notify,
    /// Wakes the loader (a new bucket).
    load_wake: Notify,
    cancel: CancellationToken,
    maint: tokio::sync::Mutex<()>,
    /// The message log's end, published after every durable append (the sync port waits on it).
    wal_end: watch::Sender<u64>,
    /// Message-log offset from which the retained checkpoints replay: the message log is kept
    /// from there.
    checkpointed_wal: AtomicU64,
    /// Messages stored under their dead-letter subject.
    dead_lettered: AtomicU64,
    /// Messages waiting for a retry.
    retrying: AtomicU64,
}

/// The delay/scheduled message engine. Dropping it stops its tasks without a final flush (as a
/// crash would, short of losing the page cache); [`DelayEngine::shutdown`] stops it cleanly.
pub struct DelayEngine {
    inner: Arc<Inner>,
    tx: RwLock<Option<mpsc::Sender<Job>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DelayEngine {
    /// Opens (or creates) the store in `cfg.data_dir`, recovers it and starts dispatching due
    /// messages to `dispatcher`. Must be called inside a tokio runtime.
    pub async fn open(
        cfg: DelayConfig,
        clock: Arc<dyn Clock>,
        dispatcher: Arc<dyn Dispatcher>,
    ) -> Result<Self, DelayError> {
        cfg.validate()?;
        let cfg2 = cfg.clone();
        let (store, wal, retained_from) =
            tokio::task::spawn_blocking(move || recover::recover(&cfg2))
                .await
                .map_err(|e| join_error("recover", e))??;
        let wal_end = watch::channel(wal.end()).0;
        let inner = Arc::new(Inner {
            cfg,
            clock,
            dispatcher,
            store: Mutex::new(store),
            wal: Mutex::new(wal),
            wake: Notify::new(),
            load_wake: Notify::new(),
            cancel: CancellationToken::new(),
            maint: tokio::sync::Mutex::new(()),
            checkpointed_wal: AtomicU64::new(retained_from),
            dead_lettered: AtomicU64::new(0),
            retrying: AtomicU64::new(0),
            wal_end,
        });
        if let Some(m) = &inner.cfg.metrics {
            m.attach_engine(inner.observed());
        }
        let (tx, rx) = mpsc::channel(1024);
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("qmq-delay-writer".into())
            .spawn(move || writer::writer_loop(w, rx))
            .map_err(|e| DelayError::io("spawn writer thread", "", e))?;
        let tasks = vec![
            tokio::spawn(load::load_loop(inner.clone())),
            tokio::spawn(deliver::dispatch_loop(inner.clone())),
            tokio::spawn(maintenance::maintenance_loop(inner.clone())),
        ];
        Ok(Self {
            inner,
            tx: RwLock::new(Some(tx)),
            tasks: Mutex::new(tasks),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Schedules messages. Each result says whether that message is durably stored (it will
    /// then be dispatched once its time comes) or why it was refused.
    pub async fn schedule(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<Scheduled, ScheduleError>> {
        let n = messages.len();
        let closed = || vec![Err(ScheduleError::Closed); n];
        let metrics = self.inner.cfg.metrics.as_ref();
        // Only with metrics: the subjects to count the results under.
        let subjects: Vec<String> = match metrics {
            Some(_) => messages.iter().map(|m| m.subject.clone()).collect(),
            None => Vec::new(),
        };
        // Only with tracing on: the Schedule span of each message that carries a context.
        let traces: Vec<Option<opentelemetry::Context>> = match self.inner.cfg.trace_spans {
            true => {
                let tracer = tracer();
                let now = self.inner.clock.now_ms();
                messages
                    .iter()
                    .map(|m| {
                        let parent = carried(&m.message)?;
                        Some(qmq_trace::start(
                            &tracer,
                            SCHEDULE_SPAN,
                            opentelemetry::trace::SpanKind::Server,
                            &parent,
                            || {
                                vec![
                                    KeyValue::new("subject", m.subject.clone()),
                                    KeyValue::new("messageId", m.message_id.clone()),
                                    KeyValue::new("scheduleTime", m.schedule_ms),
                                    KeyValue::new("delayMs", m.schedule_ms.saturating_sub(now)),
                                ]
                            },
                        ))
                    })
                    .collect()
            }
            false => Vec::new(),
        };
        let tx = self.tx.read().clone();
        let results = match tx {
            None => closed(),
            Some(tx) => {
                let (reply, rx) = oneshot::channel();
                if tx.send(Job { messages, reply }).await.is_err() {
                    closed()
                } else {
                    rx.await.unwrap_or_else(|_| closed())
                }
            }
        };
        for (cx, r) in traces.iter().zip(&results) {
            let Some(cx) = cx else { continue };
            match r {
                Ok(s) => {
                    qmq_trace::set_attributes(cx, || vec![KeyValue::new("dueTime", s.due_ms)]);
                    qmq_trace::end(cx, None, None);
                }
                Err(e) => qmq_trace::end(cx, Some(e), None),
            }
        }
        if let Some(m) = metrics {
            for (subject, r) in subjects.iter().zip(&results) {
                match r {
                    Ok(_) => m.received(subject),
                    Err(e) => m.send_failed(FailReason::of(e), 1),
                }
            }
        }
        results
    }

    /// Schedules one message.
    pub async fn schedule_one(&self, message: NewMessage) -> Result<Scheduled, ScheduleError> {
        self.schedule(vec![message])
            .await
            .pop()
            .unwrap_or(Err(ScheduleError::Closed))
    }

    /// Fsyncs schedule and dispatch logs and writes the checkpoint now.
    pub async fn flush(&self) -> Result<(), DelayError> {
        let _guard = self.inner.maint.lock().await;
        self.inner.flush_locked().await
    }

    /// Runs one retention pass now (it also runs every `clean_interval`).
    pub async fn clean(&self) -> Result<CleanReport, DelayError> {
        self.inner.clean().await
    }

    /// The current state.
    pub fn stats(&self) -> DelayStats {
        let wal_segments = self.inner.wal.lock().segment_count();
        let s = self.inner.store.lock();
        DelayStats {
            buckets: s.buckets.len(),
            loaded_buckets: s.buckets.values().filter(|b| b.loaded).count(),
            wheel_entries: s.wheel.len(),
            wheel_bytes: s.wheel.heap_bytes(),
            scheduled: s.buckets.values().map(|b| b.records).sum(),
            dispatched: s
                .buckets
                .values()
                .map(|b| b.dispatched.min(b.records))
                .sum(),
            wal_segments,
            damaged: s.damaged,
            repaired: s.repaired,
            dead_lettered: self.dead_lettered(),
            retrying: self.inner.retrying.load(Ordering::Relaxed),
        }
    }

    /// How many messages were stored under their dead-letter subject (`%DEAD_DELAY%<subject>`)
    /// since the engine opened: each one was refused `max_dispatch_attempts` times.
    pub fn dead_lettered(&self) -> u64 {
        self.inner.dead_lettered.load(Ordering::Relaxed)
    }

    /// The counter behind [`Self::dead_lettered`], for a metrics registry to read directly.
    pub fn dead_lettered_counter(&self) -> &AtomicU64 {
        &self.inner.dead_lettered
    }

    /// The message log's end: the offset after its last durable record.
    pub fn wal_end(&self) -> u64 {
        *self.inner.wal_end.borrow()
    }

    /// Watches [`Self::wal_end`] (it changes after every durable append).
    pub fn watch_wal_end(&self) -> watch::Receiver<u64> {
        self.inner.wal_end.subscribe()
    }

    /// Whole message-log records from `offset` (a record boundary), at most `max_bytes` unless
    /// the first record alone is larger, never across a segment: what the sync port ships to
    /// a slave, byte for byte. See [`crate::wal::WalChunk`] for what an empty or moved chunk
    /// means. Reads the disk: call it from a blocking thread.
    pub fn read_wal_chunk(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<crate::wal::WalChunk, DelayError> {
        let span = self.inner.wal.lock().span_at(offset)?;
        span.read(max_bytes)
    }

    /// The dispatch-log bytes after the given per-bucket positions (see
    /// [`crate::replication::DispatchChunk`]). Reads the disk: call it from a blocking thread.
    pub fn read_dispatch_chunk(
        &self,
        cursors: &std::collections::BTreeMap<i64, u64>,
        max_bytes: usize,
    ) -> Result<crate::replication::DispatchChunk, DelayError> {
        let dir = self.inner.cfg.data_dir.join("dispatch_log");
        let mut parts = crate::replication::read_dispatch_logs(&dir, cursors, max_bytes)?;
        // Read after the logs: every record read refers to a message-log record before it.
        let wal_end = self.wal_end();
        parts.sort_by_key(|p| p.bucket);
        Ok(crate::replication::DispatchChunk { wal_end, parts })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DelayConfig {
        &self.inner.cfg
    }

    /// Stops accepting messages, lets accepted ones finish being stored, stops dispatching (a
    /// batch the dispatcher has not accepted yet is not recorded and will be offered again
    /// after a restart) and flushes everything.
    pub async fn shutdown(&self) -> Result<(), DelayError> {
        if let Some(m) = &self.inner.cfg.metrics {
            m.detach_engine(&self.inner.observed());
        }
        drop(self.tx.write().take());
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        self.inner.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        self.flush().await
    }
}

impl Inner {
    /// This engine as the metrics collector sees it (held weakly: it never keeps it open).
    fn observed(self: &Arc<Self>) -> std::sync::Weak<dyn BacklogSource> {
        let weak: std::sync::Weak<Self> = Arc::downgrade(self);
        weak
    }
}

impl BacklogSource for Inner {
    fn backlog(&self) -> Backlog {
        let now = self.clock.now_ms();
        let limits = DUE_WINDOWS.map(|(_, w)| now.saturating_add(w));
        // Being retried: due already (and out of the wheel).
        let retrying = self.retrying.load(Ordering::Relaxed);
        let store = self.store.lock();
        let mut due = store.wheel.count_firing_by(limits).map(|n| n + retrying);
        let mut pending = 0u64;
        for (&start, b) in &store.buckets {
            let left = b.records.saturating_sub(b.dispatched);
            pending += left;
            // Neither in the wheel nor taken from it: a bucket not loaded yet, or being loaded.
            let outside = left.saturating_sub(b.pending);
            if outside > 0 {
                for (d, &limit) in due.iter_mut().zip(&limits) {
                    if start <= limit {
                        *d += outside;
                    }
                }
            }
        }
        Backlog { pending, due }
    }

    fn wal_end(&self) -> u64 {
        *self.wal_end.borrow()
    }

    fn damage(&self) -> (u64, u64) {
        let store = self.store.lock();
        (store.damaged, store.repaired)
    }
}

impl Drop for DelayEngine {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}
