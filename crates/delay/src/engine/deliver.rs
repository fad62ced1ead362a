//! Delivering due messages: reading due records back, handing them to the [`Dispatcher`],
//! retrying each message that was not stored on its own backoff, dead-lettering the ones
//! refused too often, and recording what was stored. Buckets reach the wheel through the
//! loader (`load.rs`), which never holds this loop up.
//!
//! Every disk access here (record reads, dispatch-log appends) runs in
//! `spawn_blocking`. A record that fails its checksum is dropped and counted (it cannot be
//! delivered); a read that fails with an I/O error is retried like a failed dispatch.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tokio::time::Instant;

use crate::dispatch::{DueMessage, Outcome};
use crate::record::{DelayRecord, FRAME_HEADER};
use crate::wheel::WheelEntry;

use super::Inner;

/// Ends a `Qmq.Delay.Dispatch` span with the message's outcome.
fn end_dispatch_span(cx: &opentelemetry::Context, outcome: &Outcome) {
    match outcome {
        Outcome::Stored => qmq_trace::end(cx, None, None),
        Outcome::Transient(why) => qmq_trace::end(
            cx,
            Some(&format_args!("not stored (transient): {why}")),
            None,
        ),
        Outcome::Permanent(why) => qmq_trace::end(cx, Some(&format_args!("refused: {why}")), None),
    }
}

/// One message being offered, with what its earlier attempts left behind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    entry: WheelEntry,
    /// Attempts that did not store it (sets the backoff).
    failures: u32,
    /// Of those, permanent refusals (sets when it becomes a dead letter).
    refusals: u32,
    /// Offered under its dead-letter subject from now on.
    dead: bool,
}

impl Attempt {
    fn new(entry: WheelEntry) -> Self {
        Self {
            entry,
            failures: 0,
            refusals: 0,
            dead: false,
        }
    }
}

/// Messages waiting for their next attempt, by when it is due (then by arrival).
#[derive(Default)]
pub(super) struct RetryQueue {
    queue: BTreeMap<(Instant, u64), Attempt>,
    seq: u64,
}

impl RetryQueue {
    fn push(&mut self, at: Instant, attempt: Attempt) {
        self.seq += 1;
        self.queue.insert((at, self.seq), attempt);
    }

    /// Moves every attempt due at `now` into `out`.
    fn take_ready(&mut self, now: Instant, out: &mut Vec<Attempt>) {
        while let Some(first) = self.queue.first_entry() {
            if first.key().0 > now {
                break;
            }
            out.push(first.remove());
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// A due record read back.
enum Read {
    Message(DueMessage),
    /// Failed its checksum: dropped and counted.
    Damaged,
    /// The read failed (I/O error, logged): try again later.
    Failed,
}

impl Inner {
    /// Reads the records of due entries back (blocking: call from `spawn_blocking`).
    fn read_due(&self, entries: &[WheelEntry]) -> Vec<Read> {
        let mut files: Vec<(u32, Option<Arc<std::fs::File>>)> = Vec::new();
        {
            let mut store = self.store.lock();
            for e in entries {
                if files.iter().any(|(b, _)| *b == e.bucket_no) {
                    continue;
                }
                let f = store.reader(e.bucket_no);
                if let Err(err) = &f {
                    tracing::error!(error = %err, "cannot open schedule log; retrying");
                }
                files.push((e.bucket_no, f.ok()));
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        for e in entries {
            let Some((_, file)) = files.iter().find(|(b, _)| *b == e.bucket_no) else {
                out.push(Read::Failed);
                continue;
            };
            let Some(file) = file else {
                out.push(Read::Failed);
                continue;
            };
            buf.resize(e.len as usize, 0);
            let read = crate::fsutil::inject("delay::schedule::read")
                .and_then(|()| file.read_exact_at(&mut buf, e.offset));
            if let Err(err) = read {
                tracing::error!(bucket_no = e.bucket_no, offset = e.offset, error = %err, "reading a due record failed; retrying");
                out.push(Read::Failed);
                continue;
            }
            match decode_scheduled(&buf) {
                Some(r) => out.push(Read::Message(DueMessage {
                    subject: r.subject,
                    message_id: r.message_id,
                    due_ms: r.due_ms,
                    message: r.message,
                })),
                None => {
                    tracing::error!(
                        bucket_no = e.bucket_no,
                        offset = e.offset,
                        "damaged schedule record cannot be dispatched"
                    );
                    bad.push(*e);
                    out.push(Read::Damaged);
                }
            }
        }
        if !bad.is_empty() {
            self.store.lock().drop_pending(&bad);
        }
        out
    }

    /// When a message that failed `failures` times is offered next.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.cfg
            .retry_backoff_min
            .saturating_mul(1 << exp)
            .min(self.cfg.retry_backoff_max)
    }

    /// Starts the `Qmq.Delay.Dispatch` span of each of `messages` (offered as `offered`) that
    /// carries a trace context.
    fn start_dispatch_spans(
        &self,
        offered: &[Attempt],
        messages: &[DueMessage],
    ) -> Vec<Option<opentelemetry::Context>> {
        let tracer = super::tracer();
        let now = self.clock.now_ms();
        offered
            .iter()
            .zip(messages)
            .map(|(a, m)| {
                let parent = super::carried(&m.message)?;
                Some(qmq_trace::start(
                    &tracer,
                    super::DISPATCH_SPAN,
                    SpanKind::Producer,
                    &parent,
                    || {
                        vec![
                            KeyValue::new("subject", m.subject.clone()),
                            KeyValue::new("messageId", m.message_id.clone()),
                            KeyValue::new("dueTime", m.due_ms),
                            KeyValue::new("latenessMs", now.saturating_sub(m.due_ms)),
                            KeyValue::new("attempt", i64::from(a.failures) + 1),
                            KeyValue::new("deadLetter", a.dead),
                        ]
                    },
                ))
            })
            .collect()
    }

    /// Offers one batch once; what is not stored goes to `retries`. `false` if cancelled first
    /// (nothing of the batch is then recorded: it is offered again after a restart).
    async fn deliver(self: &Arc<Self>, batch: Vec<Attempt>, retries: &mut RetryQueue) -> bool {
        let me = self.clone();
        let entries: Vec<WheelEntry> = batch.iter().map(|a| a.entry).collect();
        let reads = match tokio::task::spawn_blocking(move || me.read_due(&entries)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading due records failed; retrying");
                let at = Instant::now() + self.cfg.retry_backoff_max;
                for a in batch {
                    retries.push(at, a);
                }
                return true;
            }
        };
        let mut offered = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        let now = Instant::now();
        for (mut a, read) in batch.into_iter().zip(reads) {
            match read {
                Read::Message(m) => {
                    let m = if a.dead {
                        m.to_dead_letter().unwrap_or_else(|| {
                            tracing::error!(subject = %m.subject, message_id = %m.message_id, "message cannot be rewritten to a dead-letter subject; offering it as it is");
                            m
                        })
                    } else {
                        m
                    };
                    offered.push(a);
                    messages.push(m);
                }
                Read::Damaged => {}
                Read::Failed => {
                    a.failures += 1;
                    retries.push(now + self.backoff(a.failures), a);
                }
            }
        }
        if messages.is_empty() {
            return true;
        }
        // Only with tracing on: the Dispatch span of each message that carries a context.
        let traces: Vec<Option<opentelemetry::Context>> = match self.cfg.trace_spans {
            true => self.start_dispatch_spans(&offered, &messages),
            false => Vec::new(),
        };
        let result = tokio::select! {
            // Once cancelled, nothing more is handed over.
            biased;
            _ = self.cancel.cancelled() => return false,
            r = self.dispatcher.dispatch(&messages) => r,
        };
        let outcomes = result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, messages = messages.len(), "dispatch failed; retrying");
            Vec::new()
        });
        let now = Instant::now();
        let mut stored = Vec::new();
        let mut not_stored = 0usize;
        let mut last_reason = String::new();
        for (i, (mut a, m)) in offered.into_iter().zip(&messages).enumerate() {
            let outcome = outcomes
                .get(i)
                .cloned()
                .unwrap_or_else(|| Outcome::Transient("no answer for the message".into()));
            if let Some(Some(cx)) = traces.get(i) {
                end_dispatch_span(cx, &outcome);
            }
            match outcome {
                Outcome::Stored => {
                    if let Some(metrics) = &self.cfg.metrics {
                        let subject = match a.dead {
                            true => m
                                .subject
                                .strip_prefix(crate::dispatch::DEAD_LETTER_PREFIX)
                                .unwrap_or(&m.subject),
                            false => &m.subject,
                        };
                        metrics.dispatched(
                            subject,
                            self.clock.now_ms().saturating_sub(m.due_ms),
                            a.dead,
                        );
                    }
                    if a.dead {
                        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subject = %m.subject, message_id = %m.message_id, refusals = a.refusals, "due message stored under its dead-letter subject");
                    }
                    stored.push(a.entry);
                }
                Outcome::Transient(why) | Outcome::Permanent(why) if a.dead => {
                    not_stored += 1;
                    a.failures += 1;
                    tracing::warn!(subject = %m.subject, message_id = %m.message_id, reason = %why, "dead letter not stored; retrying");
                    retries.push(now + self.backoff(a.failures), a);
                }
                Outcome::Transient(why) => {
                    not_stored += 1;
                    last_reason = why;
                    a.failures += 1;
                    retries.push(now + self.backoff(a.failures), a);
                }
                Outcome::Permanent(why) => {
                    not_stored += 1;
                    a.failures += 1;
                    a.refusals += 1;
                    if a.refusals >= self.cfg.max_dispatch_attempts {
                        a.dead = true;
                        tracing::warn!(subject = %m.subject, message_id = %m.message_id, refusals = a.refusals, reason = %why, "due message refused too often; sending it to its dead-letter subject");
                    } else {
                        tracing::debug!(subject = %m.subject, message_id = %m.message_id, reason = %why, "due message refused; retrying");
                    }
                    last_reason = why;
                    retries.push(now + self.backoff(a.failures), a);
                }
            }
        }
        if let (Some(metrics), true) = (&self.cfg.metrics, not_stored > 0) {
            metrics.dispatch_failed(not_stored as u64);
        }
        if not_stored > 0 {
            tracing::warn!(
                not_stored,
                reason = %last_reason,
                "due messages not stored; each is retried on its own backoff"
            );
        }
        if !stored.is_empty() {
            let me = self.clone();
            if let Err(e) =
                tokio::task::spawn_blocking(move || me.store.lock().record_dispatched(&stored))
                    .await
            {
                tracing::error!(error = %e, "recording dispatched messages failed; they may be delivered again after a restart");
            }
        }
        true
    }
}

/// Decodes a schedule-log record read back by offset (frame included).
fn decode_scheduled(frame: &[u8]) -> Option<DelayRecord> {
    let len = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
    let payload = frame.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    DelayRecord::decode_payload(payload.get(8..)?)
}

/// Cuts `attempts` into batches of at most `count` messages and `bytes` record bytes (a larger
/// record goes alone).
fn batches(attempts: Vec<Attempt>, count: usize, bytes: usize) -> Vec<Vec<Attempt>> {
    let mut out = Vec::new();
    let mut cur: Vec<Attempt> = Vec::new();
    let mut cur_bytes = 0usize;
    for a in attempts {
        let n = a.entry.len as usize;
        if !cur.is_empty() && (cur.len() >= count || cur_bytes + n > bytes) {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += n;
        cur.push(a);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) async fn dispatch_loop(inner: Arc<Inner>) {
    let mut due = Vec::new();
    let mut retries = RetryQueue::default();
    while !inner.cancel.is_cancelled() {
        let now = inner.clock.now_ms();
        due.clear();
        let next_fire = {
            let mut store = inner.store.lock();
            store.wheel.take_due(now, &mut due);
            store.wheel.next_fire_ms()
        };
        let mut attempts: Vec<Attempt> = due.drain(..).map(Attempt::new).collect();
        retries.take_ready(Instant::now(), &mut attempts);
        if !attempts.is_empty() {
            for batch in batches(
                attempts,
                inner.cfg.dispatch_batch,
                inner.cfg.dispatch_batch_bytes,
            ) {
                if !inner.deliver(batch, &mut retries).await {
                    return;
                }
                inner
                    .retrying
                    .store(retries.len() as u64, Ordering::Relaxed);
            }
            continue;
        }
        inner
            .retrying
            .store(retries.len() as u64, Ordering::Relaxed);
        let sleep = async {
            match next_fire {
                Some(t) => inner.clock.sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        let retry = async {
            match retries.next_at() {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = sleep => {}
            _ = retry => {}
        }
    }
}
