//! The delay engine: accepts messages, keeps them durable, and dispatches them when due.
//!
//! Flow of a message: a writer thread appends a batch of messages to the message log (WAL) and
//! fsyncs it (the acknowledgement point), then appends each message to the schedule log of its
//! time bucket; if that bucket is already in the timing wheel the message goes into the wheel
//! too. The dispatch task loads buckets into the wheel `load_ahead` before they start, takes
//! due entries tick by tick, reads the messages back from the schedule logs, hands them to the
//! [`Dispatcher`] (retrying what is not accepted) and appends the accepted ones to the bucket's
//! dispatch log. A maintenance task fsyncs schedule and dispatch logs and writes the checkpoint
//! every `flush_interval`, and deletes fully dispatched logs past retention.
//!
//! Restart: schedule logs are checked against the checkpoint (torn tails cut), the message log
//! after the checkpoint is replayed into them (records already there are recognised by their
//! message-log offset), dispatch logs say what not to deliver again.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{check_scale, Checkpoint};
use crate::clock::Clock;
use crate::config::DelayConfig;
use crate::dispatch::{Dispatcher, DueMessage};
use crate::error::{DelayError, ScheduleError};
use crate::fsutil::ensure_dir;
use crate::record::{encode_payload, peek_due, put_frame_with, DelayRecord, FRAME_HEADER};
use crate::store::{NewRecord, Store};
use crate::wal::MessageLog;
use crate::wheel::WheelEntry;

/// Longest subject or message id (QMQ short strings).
const MAX_NAME: usize = i16::MAX as usize;
/// Most messages the writer puts into one message-log write + fsync.
const MAX_GROUP: usize = 4096;
/// Bytes of replayed records appended to schedule logs at once during recovery.
const REPLAY_CHUNK: usize = 4 << 20;

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
    /// Damaged records met while loading or dispatching (and damaged dispatch records).
    pub damaged: u64,
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
    wake: Notify,
    cancel: CancellationToken,
    maint: tokio::sync::Mutex<()>,
    checkpointed_wal: AtomicU64,
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
        let (store, wal, cp) = tokio::task::spawn_blocking(move || recover(&cfg2))
            .await
            .map_err(|e| DelayError::Config(format!("recovery task failed: {e}")))??;
        let inner = Arc::new(Inner {
            cfg,
            clock,
            dispatcher,
            store: Mutex::new(store),
            wal: Mutex::new(wal),
            wake: Notify::new(),
            cancel: CancellationToken::new(),
            maint: tokio::sync::Mutex::new(()),
            checkpointed_wal: AtomicU64::new(cp.wal_offset),
        });
        let (tx, rx) = mpsc::channel(1024);
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("qmq-delay-writer".into())
            .spawn(move || writer_loop(w, rx))
            .map_err(|e| DelayError::io("spawn writer thread", "", e))?;
        let tasks = vec![
            tokio::spawn(dispatch_loop(inner.clone())),
            tokio::spawn(maintenance_loop(inner.clone())),
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
        let Some(tx) = self.tx.read().clone() else {
            return closed();
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(Job { messages, reply }).await.is_err() {
            return closed();
        }
        rx.await.unwrap_or_else(|_| closed())
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
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &DelayConfig {
        &self.inner.cfg
    }

    /// Stops accepting messages, lets accepted ones finish being stored, stops dispatching (a
    /// batch the dispatcher has not accepted yet is not recorded and will be offered again
    /// after a restart) and flushes everything.
    pub async fn shutdown(&self) -> Result<(), DelayError> {
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

impl Drop for DelayEngine {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

/// Opens the store and replays the message log into the schedule logs.
fn recover(cfg: &DelayConfig) -> Result<(Store, MessageLog, Checkpoint), DelayError> {
    let root = &cfg.data_dir;
    ensure_dir(root)?;
    check_scale(root, cfg.segment_scale_minutes)?;
    let cp = Checkpoint::load(root)?;
    let (mut store, rewind) = Store::open(
        root,
        cfg.scale_ms(),
        cfg.tick.as_millis() as i64,
        cfg.max_message_bytes,
        &cp,
    )?;
    let max_payload = cfg.max_message_bytes + 2 * MAX_NAME + 64;
    let mut wal = MessageLog::open(
        &root.join("message_log"),
        cfg.wal_segment_bytes,
        max_payload,
        if rewind { 0 } else { cp.wal_offset },
    )?;
    // Offsets identify records across replays: never reuse one, whatever was lost.
    let used = store
        .buckets
        .values()
        .filter_map(|b| b.last_wal)
        .chain(store.cleaned.values().copied())
        .max()
        .map_or(0, |m| m + 1);
    wal.ensure_end_at_least(used.max(cp.wal_offset))?;
    let from = if rewind {
        tracing::warn!("schedule logs lost durable records; replaying the whole message log");
        wal.start()
    } else {
        cp.wal_offset
    };
    let mut chunk: Vec<(u64, Vec<u8>, i64)> = Vec::new();
    let mut chunk_bytes = 0;
    let mut replayed = 0u64;
    let mut apply =
        |store: &mut Store, chunk: &mut Vec<(u64, Vec<u8>, i64)>| -> Result<(), DelayError> {
            let records: Vec<NewRecord<'_>> = chunk
                .iter()
                .map(|(o, p, d)| NewRecord {
                    wal_offset: *o,
                    payload: p,
                    due_ms: *d,
                })
                .collect();
            let (results, _) = store.append(&records);
            if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                return Err(DelayError::Corrupt {
                    path: store.root().to_owned(),
                    reason: format!("cannot rebuild schedule logs: {e}"),
                });
            }
            replayed += chunk.len() as u64;
            chunk.clear();
            Ok(())
        };
    wal.replay(from, |offset, payload| {
        let Some(due) = peek_due(payload) else {
            tracing::error!(offset, "message log record with an unknown layout skipped");
            return Ok(());
        };
        let bucket = store.bucket_of(due);
        if store
            .cleaned
            .get(&bucket)
            .is_some_and(|&last| offset <= last)
            || store
                .buckets
                .get(&bucket)
                .and_then(|b| b.last_wal)
                .is_some_and(|last| offset <= last)
        {
            return Ok(());
        }
        chunk_bytes += payload.len();
        chunk.push((offset, payload.to_vec(), due));
        if chunk_bytes >= REPLAY_CHUNK {
            chunk_bytes = 0;
            apply(&mut store, &mut chunk)?;
        }
        Ok(())
    })?;
    apply(&mut store, &mut chunk)?;
    if replayed > 0 {
        tracing::info!(replayed, "message log records replayed into schedule logs");
    }
    store.applied_wal = wal.end();
    store.load_dispatch_logs()?;
    let cp = store.plan_flush().execute(root)?;
    Ok((store, wal, cp))
}

fn validate(m: &NewMessage, now: i64, cfg: &DelayConfig) -> Result<i64, ScheduleError> {
    for (field, v) in [("subject", &m.subject), ("message id", &m.message_id)] {
        if v.is_empty() {
            return Err(ScheduleError::Invalid {
                field,
                reason: "must not be empty",
            });
        }
        if v.len() > MAX_NAME {
            return Err(ScheduleError::Invalid {
                field,
                reason: "longer than 32767 bytes",
            });
        }
    }
    if m.message.len() > cfg.max_message_bytes {
        return Err(ScheduleError::TooLarge {
            size: m.message.len(),
            limit: cfg.max_message_bytes,
        });
    }
    let max_ms = now.saturating_add(cfg.max_delay.as_millis() as i64);
    if m.schedule_ms > max_ms {
        return Err(ScheduleError::TooFarAhead {
            requested_ms: m.schedule_ms,
            max_ms,
            max_delay_days: cfg.max_delay.as_secs() / 86_400,
        });
    }
    Ok(m.schedule_ms.max(now))
}

fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.messages.len();
        let mut jobs = vec![first];
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => {
                    count += j.messages.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        inner.write_group(jobs, &mut buf);
    }
}

impl Inner {
    /// Stores a group of jobs with one message-log write and fsync, then answers them.
    fn write_group(&self, jobs: Vec<Job>, buf: &mut Vec<u8>) {
        let now = self.clock.now_ms();
        buf.clear();
        // (job, message, frame start, frame end, due)
        let mut placed = Vec::new();
        let mut replies: Vec<Reply> = jobs
            .iter()
            .map(|j| Vec::with_capacity(j.messages.len()))
            .collect();
        for (ji, job) in jobs.iter().enumerate() {
            for (mi, m) in job.messages.iter().enumerate() {
                match validate(m, now, &self.cfg) {
                    Ok(due) => {
                        let at = buf.len();
                        put_frame_with(buf, |out| {
                            encode_payload(out, due, &m.subject, &m.message_id, &m.message)
                        });
                        placed.push((ji, mi, at, buf.len(), due));
                        replies[ji].push(Ok(Scheduled { due_ms: due }));
                    }
                    Err(e) => replies[ji].push(Err(e)),
                }
            }
        }
        if !placed.is_empty() {
            if let Err(e) = self.store_placed(buf, &placed, &mut replies) {
                tracing::error!(error = %e, "message log append failed");
                for &(ji, mi, ..) in &placed {
                    replies[ji][mi] = Err(ScheduleError::Store(e.to_string()));
                }
            }
        }
        for (job, reply) in jobs.into_iter().zip(replies) {
            let _ = job.reply.send(reply);
        }
    }

    fn store_placed(
        &self,
        buf: &[u8],
        placed: &[(usize, usize, usize, usize, i64)],
        replies: &mut [Reply],
    ) -> Result<(), DelayError> {
        let base = {
            let mut wal = self.wal.lock();
            let base = wal.append(buf)?;
            wal.sync()?;
            base
        };
        let records: Vec<NewRecord<'_>> = placed
            .iter()
            .map(|&(_, _, at, end, due)| NewRecord {
                wal_offset: base + at as u64,
                payload: &buf[at + FRAME_HEADER..end],
                due_ms: due,
            })
            .collect();
        let (results, wake) = {
            let mut store = self.store.lock();
            let r = store.append(&records);
            store.applied_wal = base + buf.len() as u64;
            r
        };
        for (&(ji, mi, ..), r) in placed.iter().zip(results) {
            if let Err(e) = r {
                // Durable in the message log only: a restart replays it into its schedule log,
                // but it is not in the wheel now, so report it as not stored.
                replies[ji][mi] = Err(ScheduleError::Store(e));
            }
        }
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Loads every bucket within the load-ahead window; returns the start of the next bucket
    /// to load later.
    async fn load_buckets(&self, now: i64) -> Result<Option<i64>, DelayError> {
        let (jobs, next) = self
            .store
            .lock()
            .begin_loads(now + self.cfg.load_ahead_ms())?;
        for job in jobs {
            let scale = self.cfg.scale_ms();
            let max = self.cfg.max_message_bytes + 2 * MAX_NAME + 64;
            let start = job.bucket_start();
            let (entries, damaged) = tokio::task::spawn_blocking(move || job.run(scale, max))
                .await
                .map_err(|e| DelayError::Config(format!("bucket load task failed: {e}")))?;
            tracing::debug!(
                bucket = start,
                entries = entries.len(),
                "bucket loaded into the wheel"
            );
            self.store.lock().finish_load(start, entries, damaged);
        }
        Ok(next)
    }

    /// Reads the records of due entries back; damaged ones are dropped (and counted).
    fn read_due(&self, entries: &[WheelEntry]) -> (Vec<WheelEntry>, Vec<DueMessage>) {
        let mut files: Vec<(u32, Option<Arc<std::fs::File>>)> = Vec::new();
        {
            let mut store = self.store.lock();
            for e in entries {
                if files.iter().any(|(b, _)| *b == e.bucket_no) {
                    continue;
                }
                match store.reader(e.bucket_no) {
                    Ok(f) => files.push((e.bucket_no, Some(f))),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot open schedule log");
                        files.push((e.bucket_no, None));
                    }
                }
            }
        }
        let mut ok_entries = Vec::with_capacity(entries.len());
        let mut messages = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        for e in entries {
            let file = files
                .iter()
                .find(|(b, _)| *b == e.bucket_no)
                .and_then(|(_, f)| f.as_ref());
            let msg = file.and_then(|f| {
                buf.resize(e.len as usize, 0);
                f.read_exact_at(&mut buf, e.offset).ok()?;
                decode_scheduled(&buf)
            });
            match msg {
                Some(r) => {
                    ok_entries.push(*e);
                    messages.push(DueMessage {
                        subject: r.subject,
                        message_id: r.message_id,
                        due_ms: r.due_ms,
                        message: r.message,
                    });
                }
                None => {
                    tracing::error!(
                        bucket_no = e.bucket_no,
                        offset = e.offset,
                        "damaged schedule record cannot be dispatched"
                    );
                    bad.push(*e);
                }
            }
        }
        if !bad.is_empty() {
            self.store.lock().drop_pending(&bad);
        }
        (ok_entries, messages)
    }

    /// Dispatches one batch until every message is accepted. `false` if cancelled first.
    async fn deliver(&self, batch: &[WheelEntry]) -> bool {
        let (mut entries, mut messages) = self.read_due(batch);
        let mut backoff = self.cfg.retry_backoff_min;
        while !messages.is_empty() {
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = self.dispatcher.dispatch(&messages) => r,
            };
            match result {
                Ok(accepted) => {
                    let mut done = Vec::new();
                    let mut keep_e = Vec::new();
                    let mut keep_m = Vec::new();
                    for (i, (e, m)) in entries.drain(..).zip(messages.drain(..)).enumerate() {
                        if accepted.get(i).copied().unwrap_or(false) {
                            done.push(e);
                        } else {
                            keep_e.push(e);
                            keep_m.push(m);
                        }
                    }
                    if !done.is_empty() {
                        self.store.lock().record_dispatched(&done);
                    }
                    entries = keep_e;
                    messages = keep_m;
                    if messages.is_empty() {
                        break;
                    }
                    tracing::warn!(
                        refused = messages.len(),
                        "dispatcher refused messages; retrying"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, messages = messages.len(), "dispatch failed; retrying")
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.cfg.retry_backoff_max);
        }
        true
    }

    async fn flush_locked(&self) -> Result<(), DelayError> {
        let plan = self.store.lock().plan_flush();
        let root = self.cfg.data_dir.clone();
        let result = tokio::task::spawn_blocking(move || plan.execute(&root))
            .await
            .map_err(|e| DelayError::Config(format!("flush task failed: {e}")))
            .and_then(|r| r);
        let cp = match result {
            Ok(cp) => cp,
            Err(e) => {
                // Nothing of this round counts as durable: fsync everything again next time.
                self.store.lock().mark_all_dirty();
                return Err(e);
            }
        };
        self.checkpointed_wal.store(cp.wal_offset, Ordering::SeqCst);
        Ok(())
    }

    async fn clean(&self) -> Result<CleanReport, DelayError> {
        let _guard = self.maint.lock().await;
        let now = self.clock.now_ms();
        let cutoff = now - self.cfg.retention.as_millis() as i64;
        let doomed = self.store.lock().take_expired(cutoff);
        let mut report = CleanReport::default();
        if !doomed.is_empty() {
            // The checkpoint must stop naming the buckets (and tombstone them) before their
            // files go, or a restart would take the deletion for data loss.
            self.flush_locked().await?;
            self.store.lock().delete_files(&doomed)?;
            report.buckets = doomed.len();
            tracing::info!(
                buckets = doomed.len(),
                "deleted fully dispatched schedule and dispatch logs past retention"
            );
        }
        let older_than = UNIX_EPOCH
            + Duration::from_millis((now - self.cfg.wal_retention.as_millis() as i64).max(0) as u64);
        let upto = self.checkpointed_wal.load(Ordering::SeqCst);
        let (deleted, wal_start) = {
            let mut wal = self.wal.lock();
            let d = wal.delete_before(upto, older_than)?;
            (d, wal.start())
        };
        report.wal_segments = deleted;
        if deleted > 0 {
            self.store.lock().forget_cleaned_before(wal_start);
            self.flush_locked().await?;
        }
        Ok(report)
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

async fn dispatch_loop(inner: Arc<Inner>) {
    let mut due = Vec::new();
    while !inner.cancel.is_cancelled() {
        let now = inner.clock.now_ms();
        let next_load = match inner.load_buckets(now).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "loading buckets failed; retrying");
                tokio::select! {
                    _ = inner.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        due.clear();
        let next_fire = {
            let mut store = inner.store.lock();
            store.wheel.take_due(now, &mut due);
            store.wheel.next_fire_ms()
        };
        if !due.is_empty() {
            for batch in due.chunks(inner.cfg.dispatch_batch) {
                if !inner.deliver(batch).await {
                    return;
                }
            }
            continue;
        }
        let next_load = next_load.map(|s| s - inner.cfg.load_ahead_ms());
        let target = match (next_fire, next_load) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match target {
                Some(t) => inner.clock.sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = sleep => {}
        }
    }
}

async fn maintenance_loop(inner: Arc<Inner>) {
    let mut last_clean = Instant::now();
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(inner.cfg.flush_interval) => {}
        }
        {
            let _guard = inner.maint.lock().await;
            if let Err(e) = inner.flush_locked().await {
                tracing::error!(error = %e, "flush failed");
            }
        }
        if last_clean.elapsed() >= inner.cfg.clean_interval {
            last_clean = Instant::now();
            if let Err(e) = inner.clean().await {
                tracing::error!(error = %e, "retention pass failed");
            }
        }
    }
}
