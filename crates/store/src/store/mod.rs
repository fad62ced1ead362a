//! The store: a message side (message log + consume logs, written by one group-commit thread)
//! and a consumer side (action log + pull logs + positions, locked per group and per consumer).

mod backup_index;
mod consumers;
mod maintenance;
mod recover;
mod replicate;
mod resync;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::checkpoint::Checkpoint;
use crate::consume_log::{ConsumeLog, Entry};
use crate::error::{io, Result, StoreError};
use crate::log::{LogReader, RecordLog, RECORD_HEADER};
use crate::record;

pub use backup_index::{IndexChunk, IndexRecord};
pub use consumers::{ConsumerInfo, GroupInfo, PullOptions, PullSpec, Pulled, ResetTo};

/// When appended messages become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// An append is acknowledged once written to the OS; a flusher fsyncs every `interval`.
    /// A machine crash may lose the last `interval` of acknowledged messages (a killed process
    /// loses nothing: the OS has the bytes).
    Async {
        /// Time between fsyncs.
        interval: Duration,
    },
    /// An append is acknowledged only after fsync; concurrent appends share one fsync. Pulls and
    /// acks also return only once their action-log record is fsynced.
    SyncBeforeAck,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory.
    pub dir: PathBuf,
    /// Message-log segment size in bytes (also bounds the largest message).
    pub segment_size: u64,
    /// Action-log segment size in bytes.
    pub action_segment_size: u64,
    /// Entries per consume-log and pull-log segment file.
    pub index_segment_entries: u64,
    /// Durability of appends (and, with `SyncBeforeAck`, of pulls and acks).
    pub flush: FlushPolicy,
    /// How often [`Store::spawn_maintenance`] checkpoints and applies retention.
    pub checkpoint_interval: Duration,
    /// Checkpoints kept on disk (recovery falls back to an older one if the newest is damaged).
    pub checkpoints_retained: usize,
    /// Message-log segments last written longer ago than this may be deleted.
    pub retention: Duration,
    /// Delete old segments even when a group has not consumed (or a consumer not acked) them.
    pub retention_deletes_unconsumed: bool,
}

impl StoreConfig {
    /// Defaults for a data directory: 256 MiB message segments, 64 MiB action segments,
    /// 1 Mi entries per index segment, async flush every 10 ms, checkpoint every 10 s,
    /// 3 checkpoints kept, 72 h retention that spares unconsumed messages.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 256 * 1024 * 1024,
            action_segment_size: 64 * 1024 * 1024,
            index_segment_entries: 1 << 20,
            flush: FlushPolicy::Async {
                interval: Duration::from_millis(10),
            },
            checkpoint_interval: Duration::from_secs(10),
            checkpoints_retained: 3,
            retention: Duration::from_secs(72 * 3600),
            retention_deletes_unconsumed: false,
        }
    }
}

/// A message to append: its subject and tags (metadata the store indexes) and its bytes
/// (opaque to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Subject (1..=1024 bytes).
    pub subject: String,
    /// Tags for server-side filtering ([`crate::TagFilter`]); at most 255.
    pub tags: Vec<String>,
    /// The message bytes as they will be handed to consumers.
    pub body: Bytes,
}

/// Where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of its record in the message log (identifies the message).
    pub offset: u64,
    /// Its consume-log sequence in its subject.
    pub sequence: u64,
}

/// A stored message read by sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its consume-log sequence in its subject.
    pub sequence: u64,
    /// Offset of its record in the message log.
    pub offset: u64,
    /// Its tags as appended.
    pub tags: Vec<String>,
    /// When the store appended it (ms since the Unix epoch).
    pub appended_at_ms: u64,
    /// The message bytes as appended.
    pub message: Bytes,
}

/// Counters of what the store repaired or worked around, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Consume-log entries found damaged (failed checksum) since the store was opened and
    /// rebuilt from the message log.
    pub index_entries_rebuilt: u64,
}

/// A subject's stored range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectInfo {
    /// The subject.
    pub subject: String,
    /// First consume-log sequence whose message is still stored.
    pub first: u64,
    /// Next consume-log sequence (number of messages ever appended).
    pub len: u64,
}

/// The writer's answer to one append: whether the batch was stored, and the batch, placed
/// and indexed, for the appending caller to read its results from (and free: it allocated it).
pub(crate) struct Answer {
    result: Result<()>,
    encoded: writer::Encoded,
}

/// What the writer thread is asked to do.
pub(crate) enum Job {
    /// Store a batch and answer.
    Write(WriteJob),
    /// Finish the jobs before this one, then end ([`Store::close`]).
    Stop,
}

pub(crate) struct WriteJob {
    encoded: writer::Encoded,
    reply: oneshot::Sender<Answer>,
}

pub(crate) struct Inner {
    config: StoreConfig,
    /// The message log, owned by the writer thread (and retention).
    log: Mutex<RecordLog>,
    message_reader: LogReader,
    consume: RwLock<HashMap<String, Arc<RwLock<ConsumeLog>>>>,
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// The message log's shippable end (see [`Store::read_log_chunk`]): the end after the
    /// last group commit (after its fsync with `SyncBeforeAck`).
    message_shippable: watch::Sender<u64>,
    consumers: consumers::ConsumerSide,
    checkpoint_gen: Mutex<u64>,
    /// The oldest retained checkpoint: action-log segments before it must stay.
    oldest_checkpoint: Mutex<Checkpoint>,
    /// Consume-log entries rebuilt from the message log ([`StoreStats`]).
    index_entries_rebuilt: AtomicU64,
    /// See [`Checkpoint::resync_subject_ends`]: carried into each checkpoint until reached.
    resync_subject_ends: Mutex<std::collections::BTreeMap<String, u64>>,
    closed: AtomicBool,
    /// The data directory's lock, held as long as anything of the store is.
    _lock: crate::DirLock,
}

/// The store. Cheap to clone; every method is thread-safe. Methods other than `append*` do
/// file I/O on the calling thread: call them from blocking threads (`spawn_blocking`).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    threads: Arc<Threads>,
}

/// The store's threads. When the last [`Store`] handle goes, so do they (after the appends
/// already handed to the writer), so the data directory is free again once it is dropped.
struct Threads {
    inner: Arc<Inner>,
    writer: mpsc::Sender<Job>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Threads {
    /// Stops every store thread and waits for them: the writer after the jobs before its
    /// stop, the others at their next wake-up.
    fn stop(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Already gone if the store was stopped before.
        let _ = self.writer.send(Job::Stop);
        let handles: Vec<JoinHandle<()>> = self.handles.lock().drain(..).collect();
        for t in &handles {
            t.thread().unpark();
        }
        for t in handles {
            if t.join().is_err() {
                tracing::error!("a store thread panicked");
            }
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer thread's name.
const WRITER_THREAD: &str = "qmq-store-writer";

pub(crate) const MESSAGE_DIR: &str = "messagelog";
pub(crate) const CONSUME_DIR: &str = "consumelog";
pub(crate) const ACTION_DIR: &str = "actionlog";
pub(crate) const PULL_DIR: &str = "pulllog";
pub(crate) const CHECKPOINT_DIR: &str = "checkpoint";

/// Longest subject, group or consumer name.
const MAX_NAME: usize = 1024;

pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME {
        "longer than 1024 bytes"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName { what, reason })
}

impl Store {
    /// Opens the store in `config.dir`, recovering from the newest readable checkpoint and the
    /// logs after it, and starts the writer and flusher threads. A directory another store has
    /// open is refused ([`StoreError::Locked`]); it is free again once that store is closed or
    /// its last handle dropped.
    pub fn open(config: StoreConfig) -> Result<Self> {
        let dir = config.dir.clone();
        let inner = Arc::new(recover::open(config)?);
        let (writer, jobs) = mpsc::channel::<Job>();
        let mut threads = Vec::new();
        let w = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name(WRITER_THREAD.into())
                .spawn(move || writer::run(&w, &jobs))
                .map_err(io("spawn writer", &dir))?,
        );
        let f = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("qmq-store-flusher".into())
                .spawn(move || f.flusher())
                .map_err(io("spawn flusher", &dir))?,
        );
        Ok(Self {
            threads: Arc::new(Threads {
                inner: inner.clone(),
                writer,
                handles: Mutex::new(threads),
            }),
            inner,
        })
    }

    /// The settings this store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Appends messages with their metadata, in order, and resolves once they are stored under
    /// the flush policy. Each message gets its own result: an invalid one (bad subject, too many
    /// tags, too large) fails alone. The outer error means nothing of the batch is acknowledged
    /// (store closed, or a write/fsync failed). Concurrent batches share one write and one fsync.
    ///
    /// After a failed write or fsync the outer error is [`StoreError::Failed`] (nothing of
    /// the batch is stored; the store repairs its log and takes appends again once the disk
    /// works, see [`crate::log`]) or, when the store cannot tell, [`StoreError::MaybeStored`]
    /// (a retry may duplicate).
    ///
    /// The messages are copied into their records and handed to the writer by this call; the
    /// future only waits for the answer (dropping it does not withdraw the batch).
    pub fn append_messages(
        &self,
        messages: &[NewMessage],
    ) -> impl Future<Output = Result<Vec<Result<Appended>>>> + Send + 'static {
        let mut encoded = writer::Encoded::new(messages.len(), self.inner.config.segment_size);
        for m in messages {
            encoded.push(&m.subject, &m.tags, &m.body);
        }
        let answer = self.submit(encoded);
        async move {
            let answer = answer?.await.map_err(|_| StoreError::Closed)?;
            answer.result?;
            Ok(answer.encoded.results())
        }
    }

    /// Appends untagged `(subject, bytes)` messages all or nothing: if any is invalid, none is
    /// written. Otherwise as [`Store::append_messages`]: the messages (borrowed, as
    /// `(&str, &[u8])`, or owned, as `(String, Bytes)`) are copied and handed over by this call.
    pub fn append<S, B>(
        &self,
        messages: impl IntoIterator<Item = (S, B)>,
    ) -> impl Future<Output = Result<Vec<Appended>>> + Send + 'static
    where
        S: AsRef<str>,
        B: AsRef<[u8]>,
    {
        let messages = messages.into_iter();
        let mut encoded =
            writer::Encoded::new(messages.size_hint().0, self.inner.config.segment_size);
        for (subject, body) in messages {
            encoded.push(subject.as_ref(), &[], body.as_ref());
        }
        let answer = encoded.all_valid().and_then(|e| self.submit(e));
        async move {
            let answer = answer?.await.map_err(|_| StoreError::Closed)?;
            answer.result?;
            Ok(answer.encoded.appended())
        }
    }

    /// Hands a framed batch to the writer thread; the receiver gets its answer.
    fn submit(&self, encoded: writer::Encoded) -> Result<oneshot::Receiver<Answer>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        self.threads
            .writer
            .send(Job::Write(WriteJob { encoded, reply }))
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// A receiver of `subject`'s length (its next consume-log sequence), updated after every
    /// append to it (after the fsync with `SyncBeforeAck`). Long-polling pulls wait on
    /// `changed()` and pull again.
    pub fn watch_subject(&self, subject: &str) -> watch::Receiver<u64> {
        let mut watchers = self.inner.watchers.lock();
        if let Some(tx) = watchers.get(subject) {
            return tx.subscribe();
        }
        // Read the length while holding the map: the writer updates lengths before it looks
        // for watchers, so no append can fall between this read and the registration.
        let (tx, rx) = watch::channel(self.subject_len(subject));
        watchers.insert(subject.to_owned(), tx);
        rx
    }

    /// Number of messages ever appended to `subject` (its next consume-log sequence).
    pub fn subject_len(&self, subject: &str) -> u64 {
        self.inner
            .consume_log(subject)
            .map_or(0, |c| c.read().len())
    }

    /// Every subject with stored messages, sorted.
    pub fn subjects(&self) -> Vec<String> {
        let mut s: Vec<String> = self.inner.consume.read().keys().cloned().collect();
        s.sort();
        s
    }

    /// Every subject with its stored range, sorted by subject.
    pub fn subject_infos(&self) -> Result<Vec<SubjectInfo>> {
        self.subjects()
            .into_iter()
            .map(|subject| {
                let first = self.inner.earliest_sequence(&subject)?;
                let len = self.subject_len(&subject);
                Ok(SubjectInfo {
                    subject,
                    first,
                    len,
                })
            })
            .collect()
    }

    /// Reads the messages at consume-log sequences `seq..` of `subject` (at most `max`
    /// entries looked at). Messages deleted by retention or damaged are left out.
    pub fn read(&self, subject: &str, seq: u64, max: usize) -> Result<Vec<StoredMessage>> {
        let Some(clog) = self.inner.consume_log(subject) else {
            return Ok(Vec::new());
        };
        let entries = self.inner.entries(subject, &clog, seq, max)?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            if let Some(e) = e {
                out.extend(self.inner.message_at(subject, seq + i as u64, e)?);
            }
        }
        Ok(out)
    }

    /// Counters of what the store repaired since it was opened.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            index_entries_rebuilt: self.inner.index_entries_rebuilt.load(Ordering::Relaxed),
        }
    }

    /// How long the fsyncs of the message or the action log have taken since the store opened
    /// (exported by the broker as `qmq_store_flush_seconds`).
    pub fn fsync_times(&self, log: crate::LogStream) -> crate::FsyncSnapshot {
        match log {
            crate::LogStream::Message => self.inner.message_reader.fsync_times(),
            crate::LogStream::Action => self.inner.consumers.fsync_times(),
        }
    }

    /// Makes every message appended so far durable now (one fsync of the message log), whatever
    /// the flush policy. Consume logs and consumer state need no fsync for this: recovery
    /// rebuilds them from the message and action logs.
    pub fn sync(&self) -> Result<()> {
        self.inner.message_reader.sync()
    }

    /// Message-log offset below which every message is durable (fsynced).
    pub fn durable_offset(&self) -> u64 {
        self.inner.message_reader.durable()
    }

    /// Where reading the message log forward must start to meet every message appended at or
    /// after `time_ms`: the first record of the newest segment whose first record was appended
    /// before `time_ms` (the log's start when there is none). Record times rise with
    /// offsets (one writer stamps them; a replica copies its master's), so at most one
    /// segment of older records lies between it and the first newer one. A segment whose
    /// first record is damaged counts as older (reading starts earlier, never later).
    ///
    /// Blocking I/O (one `pread` per segment looked at): call it from a blocking thread.
    pub fn offset_at_or_before_time(&self, time_ms: u64) -> Result<u64> {
        let reader = &self.inner.message_reader;
        let written = reader.written();
        for base in reader.segment_bases().into_iter().rev() {
            if base >= written {
                continue;
            }
            match reader.read(base) {
                Ok(payload) => match record::decode(&payload, base) {
                    Ok(v) if v.time_ms >= time_ms => continue,
                    _ => return Ok(base),
                },
                Err(StoreError::Corrupt { .. } | StoreError::OutOfRange { .. }) => return Ok(base),
                Err(e) => return Err(e),
            }
        }
        Ok(reader.start())
    }

    /// Visits every message appended at or after `time_ms` (by its record's append time), in
    /// log order, up to the log's written end: `visit(subject, appended_at_ms, bytes)`.
    /// Reads from [`Store::offset_at_or_before_time`], so at most one segment of older
    /// records is read and passed over. Damaged records are passed over (and logged). Returns
    /// how many bytes of the log were read. For rebuilding time-bounded state (the broker's
    /// duplicate window) from the log's tail on open or on promotion.
    ///
    /// Blocking I/O: call it from a blocking thread.
    pub fn scan_messages_since(
        &self,
        time_ms: u64,
        mut visit: impl FnMut(&str, u64, &[u8]),
    ) -> Result<u64> {
        let from = self.offset_at_or_before_time(time_ms)?;
        let reader = &self.inner.message_reader;
        let end = reader.written();
        reader.scan(from, end, &[], |offset, payload| {
            if let Ok(v) = record::decode(payload, offset) {
                if v.time_ms >= time_ms {
                    visit(v.subject, v.time_ms, v.body);
                }
            }
            Ok(())
        })?;
        Ok(end.saturating_sub(from))
    }
}

impl Inner {
    /// The flusher thread's loop, until close: every flush interval (10 ms with
    /// `SyncBeforeAck`), writes the consume logs' in-memory tails, and with async flush fsyncs
    /// the message and action logs.
    fn flusher(&self) {
        let interval = match self.config.flush {
            FlushPolicy::Async { interval } => interval,
            FlushPolicy::SyncBeforeAck => Duration::from_millis(10),
        };
        while !self.closed.load(Ordering::Acquire) {
            std::thread::park_timeout(interval);
            let consume: Vec<_> = self.consume.read().values().cloned().collect();
            for c in consume {
                // Derived data: unwritten entries stay in memory, readable, for the next try.
                if let Err(e) = c.write().flush() {
                    tracing::error!(error = %e, "consume log write failed; retrying");
                }
            }
            if let FlushPolicy::Async { .. } = self.config.flush {
                // A failed fsync leaves a log awaiting repair, which its next write does
                // (see crate::log); until then there is nothing to fsync here.
                if !self.message_reader.failed() {
                    if let Err(e) = self.message_reader.sync() {
                        tracing::error!(error = %e, "message log fsync failed");
                    }
                }
                if let Err(e) = self.consumers.sync_actions() {
                    tracing::error!(error = %e, "action log fsync failed");
                }
            }
        }
    }

    pub(crate) fn consume_log(&self, subject: &str) -> Option<Arc<RwLock<ConsumeLog>>> {
        self.consume.read().get(subject).cloned()
    }

    /// Reads up to `max` entries of `subject`'s consume log from `seq`, damaged ones rebuilt
    /// from the message log where they can be ([`Inner::rebuild_entries`]).
    pub(crate) fn entries(
        &self,
        subject: &str,
        clog: &RwLock<ConsumeLog>,
        seq: u64,
        max: usize,
    ) -> Result<Vec<Option<Entry>>> {
        let entries = clog.read().read(seq, max)?;
        self.rebuild_entries(subject, clog, seq, entries)
    }

    /// `entries`, read from `seq` of `subject`'s consume log, with the damaged ones (failed
    /// checksum) rebuilt: consume logs are derived data, so a damaged entry must not make
    /// every group pass over an intact message. Each rebuilt entry is written back, logged
    /// and counted ([`Store::stats`]). Holds the consume log's write lock while it works.
    pub(crate) fn rebuild_entries(
        &self,
        subject: &str,
        clog: &RwLock<ConsumeLog>,
        seq: u64,
        entries: Vec<Option<Entry>>,
    ) -> Result<Vec<Option<Entry>>> {
        if entries.iter().all(Option::is_some) {
            return Ok(entries);
        }
        let mut clog = clog.write();
        let mut i = 0;
        while i < entries.len() {
            let at = seq + i as u64;
            if entries[i].is_some() || at < clog.first() {
                i += 1;
                continue;
            }
            i += self.rebuild_run(subject, &mut clog, at)?.max(1) as usize;
        }
        clog.read(seq, entries.len())
    }

    /// Rebuilds the run of damaged entries holding `at`: the subject's records in the message
    /// log between the good entries around the run are the run's entries, in order. Gives up
    /// (with an error log; the entries stay unreadable) when no good entry is near enough
    /// before the run or the number of records differs. Returns how many entries from `at`
    /// on it dealt with.
    fn rebuild_run(&self, subject: &str, clog: &mut ConsumeLog, at: u64) -> Result<u64> {
        /// How far (in entries) to look for the good entries around a damaged run.
        const REACH: u64 = 4096;
        let first = clog.first();
        let lo = at.saturating_sub(REACH).max(first);
        let behind = clog.read(lo, (at - lo) as usize)?;
        let (run_start, from) = match behind.iter().rposition(Option::is_some) {
            Some(p) => {
                let prev = behind[p].map_or(0, |e| e.offset + RECORD_HEADER + u64::from(e.len));
                (lo + p as u64 + 1, prev)
            }
            None if lo == first => (first, self.message_reader.start()),
            None => {
                tracing::error!(
                    subject,
                    at,
                    "damaged consume-log entries too far from a good one; skipping"
                );
                return Ok(1);
            }
        };
        let ahead = clog.read(run_start, (at - run_start + REACH) as usize)?;
        let damaged = ahead.iter().take_while(|e| e.is_none()).count() as u64;
        let run_end = run_start + damaged;
        let to = match ahead.get(damaged as usize) {
            // Another reader rebuilt it meanwhile.
            _ if run_end <= at => return Ok(1),
            Some(Some(e)) => e.offset,
            _ if run_end >= clog.len() => self.message_reader.written(),
            _ => {
                tracing::error!(
                    subject,
                    at,
                    "damaged consume-log entries too far from a good one; skipping"
                );
                return Ok(run_end - at);
            }
        };
        let mut found = Vec::new();
        let scanned = self.message_reader.scan(from, to, &[], |offset, payload| {
            if let Ok(v) = record::decode(payload, offset) {
                if v.subject == subject {
                    found.push(Entry {
                        offset,
                        len: payload.len() as u32,
                        tags: record::tag_summary(&v.tags),
                    });
                }
            }
            Ok(())
        });
        match scanned {
            Ok(()) => {}
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(subject, at, error = %e, "cannot rebuild damaged consume-log entries; skipping");
                return Ok(run_end - at);
            }
            Err(e) => return Err(e),
        }
        if found.len() as u64 != damaged {
            tracing::error!(
                subject,
                first = run_start,
                damaged,
                found = found.len(),
                "cannot rebuild damaged consume-log entries; skipping them"
            );
            return Ok(run_end - at);
        }
        clog.rewrite(run_start, &found)?;
        self.index_entries_rebuilt
            .fetch_add(damaged, Ordering::Relaxed);
        tracing::warn!(
            subject,
            first = run_start,
            count = damaged,
            "rebuilt damaged consume-log entries from the message log"
        );
        Ok(run_end - at)
    }

    /// The message an entry points at, if it is intact and really is `subject`'s: damaged or
    /// deleted messages are never handed out (the rest of the subject stays readable). A
    /// read I/O error is an error, not damage: the caller fails rather than pass over it.
    pub(crate) fn message_at(
        &self,
        subject: &str,
        sequence: u64,
        e: Entry,
    ) -> Result<Option<StoredMessage>> {
        let payload = match self.message_reader.read_sized(e.offset, e.len) {
            Ok(p) => p,
            Err(StoreError::OutOfRange { .. }) => return Ok(None),
            Err(err @ StoreError::Io { .. }) => return Err(err),
            Err(err) => {
                tracing::error!(error = %err, subject, sequence, "skipping an unreadable message");
                return Ok(None);
            }
        };
        let (tags, appended_at_ms, body_at) = match record::decode(&payload, e.offset) {
            Ok(v) if v.subject == subject && payload.len() == e.len as usize => (
                v.tags.iter().map(|t| (*t).to_owned()).collect(),
                v.time_ms,
                payload.len() - v.body.len(),
            ),
            _ => {
                tracing::error!(
                    subject,
                    sequence,
                    offset = e.offset,
                    "consume-log entry does not match its record; skipping it"
                );
                return Ok(None);
            }
        };
        let message = payload.slice(body_at..);
        Ok(Some(StoredMessage {
            sequence,
            offset: e.offset,
            tags,
            appended_at_ms,
            message,
        }))
    }

    /// The first consume-log sequence of `subject` whose message is still stored.
    pub(crate) fn earliest_sequence(&self, subject: &str) -> Result<u64> {
        let start = self.message_reader.start();
        match self.consume_log(subject) {
            Some(c) => c.read().first_at_or_after(start),
            None => Ok(0),
        }
    }
}
