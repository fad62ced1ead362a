//! The store: message side (message log + consume logs, written by one group-commit thread) and
//! consumer side (action log + pull logs + progress, behind one lock).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::action::{Action, ConsumerKey};
use crate::checkpoint::{self, Checkpoint, ConsumerProgress};
use crate::consume_log::{ConsumeLog, Entry};
use crate::error::{io, Result, StoreError};
use crate::log::{LogReader, RecordLog};
use crate::names;
use crate::pull_log::PullLog;

/// When appended messages become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// An append is acknowledged once written to the OS; a flusher fsyncs every `interval`.
    /// A machine crash may lose the last `interval` of acknowledged messages.
    Async {
        /// Time between fsyncs.
        interval: Duration,
    },
    /// An append is acknowledged only after fsync. Concurrent appends share one fsync.
    SyncBeforeAck,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory.
    pub dir: PathBuf,
    /// Message-log segment size in bytes (also the largest message).
    pub segment_size: u64,
    /// Action-log segment size in bytes.
    pub action_segment_size: u64,
    /// Durability of appends.
    pub flush: FlushPolicy,
    /// How often [`Store::spawn_maintenance`] checkpoints.
    pub checkpoint_interval: Duration,
    /// Checkpoints kept on disk.
    pub checkpoints_retained: usize,
    /// Message-log segments older than this may be deleted.
    pub retention: Duration,
    /// Delete old segments even when a subscribed group has not consumed them.
    pub retention_deletes_unconsumed: bool,
}

impl StoreConfig {
    /// Defaults for a data directory: 64 MiB segments, async flush every 10 ms, checkpoint every
    /// 10 s, 3 checkpoints kept, 72 h retention that spares unconsumed messages.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 64 * 1024 * 1024,
            action_segment_size: 16 * 1024 * 1024,
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

/// Where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of its record in the message log.
    pub offset: u64,
    /// Its consume-log sequence in its subject.
    pub sequence: u64,
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Its pull-log sequence for that consumer.
    pub pull_seq: u64,
    /// Its consume-log sequence in the subject.
    pub sequence: u64,
    /// The message bytes as appended.
    pub message: Bytes,
}

/// What a pull asks for.
#[derive(Debug, Clone)]
pub struct PullSpec<'a> {
    /// The consumer.
    pub key: &'a ConsumerKey,
    /// Broadcast: the consumer has its own progress instead of sharing the group's.
    pub broadcast: bool,
    /// Most messages to hand out.
    pub max: usize,
}

/// Progress of one consumer, for listings and redelivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// The consumer.
    pub key: ConsumerKey,
    /// Last pull-log sequence handed out (-1: none).
    pub pulled: i64,
    /// Last pull-log sequence acked (-1: none).
    pub acked: i64,
}

/// Progress of one group (or broadcast consumer) on a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Subject and group (consumer set for a broadcast consumer, empty otherwise).
    pub key: ConsumerKey,
    /// Next consume-log sequence the group will be handed.
    pub next: u64,
    /// Messages in the subject's consume log.
    pub subject_len: u64,
}

/// Where to move a group's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The oldest message still stored.
    Earliest,
    /// After the newest message.
    Latest,
}

/// A subject and a consume-log sequence in it.
type SubjectSeq = (String, u64);

struct WriteJob {
    messages: Vec<(String, Bytes)>,
    reply: oneshot::Sender<Result<Vec<Appended>>>,
}

struct MessageSide {
    log: RecordLog,
    consume: HashMap<String, Arc<RwLock<ConsumeLog>>>,
}

#[derive(Default)]
struct ConsumerSideState {
    /// Next consume sequence per group key (consumer empty) or broadcast consumer key.
    groups: HashMap<ConsumerKey, u64>,
    consumers: HashMap<ConsumerKey, ConsumerProgress>,
    pull_logs: HashMap<ConsumerKey, PullLog>,
}

struct ConsumerSide {
    actions: RecordLog,
    state: ConsumerSideState,
}

struct Inner {
    config: StoreConfig,
    messages: Mutex<MessageSide>,
    message_reader: LogReader,
    consume: RwLock<HashMap<String, Arc<RwLock<ConsumeLog>>>>,
    consumers: Mutex<ConsumerSide>,
    checkpoint_gen: Mutex<u64>,
    /// Action-log offset of the oldest retained checkpoint: action segments before it may go.
    oldest_checkpoint: Mutex<Checkpoint>,
    closed: AtomicBool,
}

/// The store. Cheap to clone; all methods are thread-safe. Blocking methods do file I/O: call
/// them from blocking threads (e.g. `tokio::task::spawn_blocking`), or use the async ones.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    writer: mpsc::Sender<WriteJob>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

const MESSAGE_DIR: &str = "messagelog";
const CONSUME_DIR: &str = "consumelog";
const ACTION_DIR: &str = "actionlog";
const PULL_DIR: &str = "pulllog";
const CHECKPOINT_DIR: &str = "checkpoint";

fn split_payload(p: &[u8], offset: u64) -> Result<(&str, &[u8])> {
    let corrupt = || StoreError::Corrupt {
        log: "message log",
        offset,
    };
    if p.len() < 2 {
        return Err(corrupt());
    }
    let n = usize::from(u16::from_be_bytes([p[0], p[1]]));
    if p.len() < 2 + n {
        return Err(corrupt());
    }
    let subject = std::str::from_utf8(&p[2..2 + n]).map_err(|_| corrupt())?;
    Ok((subject, &p[2 + n..]))
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StoreError::InvalidName {
            what,
            reason: "empty",
        });
    }
    if name.len() > 1024 {
        return Err(StoreError::InvalidName {
            what,
            reason: "longer than 1024 bytes",
        });
    }
    Ok(())
}

fn group_key(key: &ConsumerKey, broadcast: bool) -> ConsumerKey {
    if broadcast {
        key.clone()
    } else {
        ConsumerKey {
            subject: key.subject.clone(),
            group: key.group.clone(),
            consumer: String::new(),
        }
    }
}

impl Store {
    /// Opens the store in `config.dir`, recovering from the newest checkpoint, and starts the
    /// writer (and, with async flush, the flusher) thread.
    pub fn open(config: StoreConfig) -> Result<Self> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io("create dir", &dir))?;
        let cp_dir = dir.join(CHECKPOINT_DIR);
        let (gen, cp) = checkpoint::load(&cp_dir)?.unwrap_or_default();

        // Message side: check the log tail, open consume logs, re-index what they miss.
        let log = RecordLog::open(
            "message log",
            &dir.join(MESSAGE_DIR),
            config.segment_size,
            cp.message_indexed,
        )?;
        let consume_dir = dir.join(CONSUME_DIR);
        std::fs::create_dir_all(&consume_dir).map_err(io("create dir", &consume_dir))?;
        let mut consume = HashMap::new();
        let mut rescan_from = cp.message_indexed.min(log.end());
        for entry in std::fs::read_dir(&consume_dir).map_err(io("list", &consume_dir))? {
            let path = entry.map_err(io("list", &consume_dir))?.path();
            let Some(subject) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(names::decode)
            else {
                continue;
            };
            let clog = ConsumeLog::open(&path, log.end())?;
            if clog.len() < cp.subjects.get(&subject).copied().unwrap_or(0) {
                // Entries the checkpoint vouched for are gone: re-index from before them.
                rescan_from = rescan_from.min(clog.last_offset().map_or(0, |o| o + 1));
            }
            consume.insert(subject, Arc::new(RwLock::new(clog)));
        }
        for subject in cp.subjects.keys() {
            if !consume.contains_key(subject) {
                rescan_from = 0;
            }
        }
        let rescan_from = rescan_from.max(log.start());
        let reader = log.reader();
        let mut reindexed = 0u64;
        reader.scan(rescan_from, log.end(), log.skipped(), |offset, payload| {
            let (subject, _) = split_payload(payload, offset)?;
            let clog = match consume.get(subject) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(RwLock::new(ConsumeLog::open(
                        &consume_dir.join(names::encode(subject)),
                        u64::MAX,
                    )?));
                    consume.insert(subject.to_owned(), c.clone());
                    c
                }
            };
            let mut clog = clog.write();
            if clog.last_offset().is_some_and(|last| last >= offset) {
                return Ok(());
            }
            clog.append(Entry {
                offset,
                len: payload.len() as u32,
            })?;
            reindexed += 1;
            Ok(())
        })?;
        if reindexed > 0 {
            tracing::info!(
                reindexed,
                "rebuilt consume-log entries from the message log"
            );
        }

        // Consumer side: state from the checkpoint, then replay the action log after it.
        let actions = RecordLog::open(
            "action log",
            &dir.join(ACTION_DIR),
            config.action_segment_size,
            cp.action_applied,
        )?;
        let mut state = ConsumerSideState {
            groups: cp.groups.iter().cloned().collect(),
            consumers: cp.consumers.iter().cloned().collect(),
            pull_logs: HashMap::new(),
        };
        let replay_from = cp.action_applied.clamp(actions.start(), actions.end());
        let pull_dir = dir.join(PULL_DIR);
        actions.reader().scan(
            replay_from,
            actions.end(),
            actions.skipped(),
            |offset, payload| {
                let action = Action::decode(payload, offset)?;
                apply(&mut state, &pull_dir, &action)
            },
        )?;

        let inner = Arc::new(Inner {
            message_reader: reader,
            consume: RwLock::new(consume.clone()),
            messages: Mutex::new(MessageSide { log, consume }),
            consumers: Mutex::new(ConsumerSide { actions, state }),
            checkpoint_gen: Mutex::new(gen),
            oldest_checkpoint: Mutex::new(cp),
            closed: AtomicBool::new(false),
            config,
        });
        let (writer, jobs) = mpsc::channel::<WriteJob>();
        let mut threads = Vec::new();
        let w = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("qmq-store-writer".into())
                .spawn(move || writer_loop(&w, &jobs))
                .map_err(io("spawn writer", &dir))?,
        );
        if let FlushPolicy::Async { interval } = inner.config.flush {
            let f = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("qmq-store-flusher".into())
                    .spawn(move || {
                        while !f.closed.load(Ordering::Acquire) {
                            std::thread::park_timeout(interval);
                            let synced = f.message_reader.sync();
                            if let Err(e) = synced {
                                tracing::error!(error = %e, "message log fsync failed");
                            }
                        }
                    })
                    .map_err(io("spawn flusher", &dir))?,
            );
        }
        Ok(Self {
            inner,
            writer,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// The settings this store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Appends `messages` (subject, bytes) in order and resolves when they are stored under the
    /// flush policy. The whole batch shares one write (and one fsync with `SyncBeforeAck`).
    pub async fn append(&self, messages: Vec<(String, Bytes)>) -> Result<Vec<Appended>> {
        for (subject, _) in &messages {
            check_name("subject", subject)?;
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteJob { messages, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Number of messages in `subject` (its next consume-log sequence).
    pub fn subject_len(&self, subject: &str) -> u64 {
        self.inner
            .consume
            .read()
            .get(subject)
            .map_or(0, |c| c.read().len())
    }

    /// Every subject with stored messages.
    pub fn subjects(&self) -> Vec<String> {
        let mut s: Vec<String> = self.inner.consume.read().keys().cloned().collect();
        s.sort();
        s
    }

    /// Reads the messages at consume-log sequences `seq..` of `subject` (at most `max`).
    /// Messages deleted by retention are left out.
    pub fn read(&self, subject: &str, seq: u64, max: usize) -> Result<Vec<(u64, Bytes)>> {
        let Some(clog) = self.inner.consume.read().get(subject).cloned() else {
            return Ok(Vec::new());
        };
        let entries = clog.read().read(seq, max)?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            if let Some(m) = self.message_at(e)? {
                out.push((seq + i as u64, m));
            }
        }
        Ok(out)
    }

    fn message_at(&self, e: Entry) -> Result<Option<Bytes>> {
        match self.inner.message_reader.read(e.offset) {
            Ok(p) => {
                let (_, m) = split_payload(&p, e.offset)?;
                Ok(Some(Bytes::copy_from_slice(m)))
            }
            Err(StoreError::OutOfRange { .. }) => Ok(None),
            Err(StoreError::Corrupt { offset, .. }) => {
                // A damaged record is never handed out; the rest of the subject stays readable.
                tracing::error!(offset, "skipping a message whose record fails its CRC");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_seqs(&self, subject: &str, seqs: &[u64]) -> Result<Vec<Option<Bytes>>> {
        let Some(clog) = self.inner.consume.read().get(subject).cloned() else {
            return Ok(seqs.iter().map(|_| None).collect());
        };
        let mut out = Vec::with_capacity(seqs.len());
        for &s in seqs {
            let entry = clog.read().read(s, 1)?.into_iter().next();
            out.push(match entry {
                Some(e) => self.message_at(e)?,
                None => None,
            });
        }
        Ok(out)
    }

    /// Hands the next messages of the consumer's group to it: takes up to `spec.max` messages
    /// from the group's position on, passing over (and consuming) those `keep` rejects, records
    /// them in the consumer's pull log and the action log, and returns them.
    pub fn pull(&self, spec: PullSpec<'_>, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<Pulled>> {
        let key = spec.key;
        check_name("subject", &key.subject)?;
        check_name("group", &key.group)?;
        check_name("consumer", &key.consumer)?;
        let gkey = group_key(key, spec.broadcast);
        let mut side = self.inner.consumers.lock();
        let next = side.state.groups.get(&gkey).copied().unwrap_or(0);
        let len = self.subject_len(&key.subject);
        if next >= len || spec.max == 0 {
            return Ok(Vec::new());
        }
        // Look at a bounded window so a filter rejecting everything cannot stall the group.
        let window = spec.max.saturating_mul(4).max(256);
        let candidates = self.read(&key.subject, next, window)?;
        let mut taken = Vec::new();
        let mut new_next = next;
        for (seq, message) in candidates {
            if taken.len() == spec.max {
                break;
            }
            new_next = seq + 1;
            if keep(&message) {
                taken.push((seq, message));
            }
        }
        if taken.len() < spec.max {
            // Every entry of the window was looked at (including ones deleted by retention).
            new_next = new_next.max((next + window as u64).min(len));
        }
        let progress = side
            .state
            .consumers
            .get(key)
            .copied()
            .unwrap_or(ConsumerProgress {
                pulled: -1,
                acked: -1,
            });
        let first_pull = (progress.pulled + 1) as u64;
        let action = Action::Pull {
            key: key.clone(),
            broadcast: spec.broadcast,
            first_pull,
            seqs: taken.iter().map(|(s, _)| *s).collect(),
            next: new_next,
        };
        side.actions.append(&action.encode())?;
        let pull_dir = self.inner.config.dir.join(PULL_DIR);
        apply(&mut side.state, &pull_dir, &action)?;
        Ok(taken
            .into_iter()
            .enumerate()
            .map(|(i, (sequence, message))| Pulled {
                pull_seq: first_pull + i as u64,
                sequence,
                message,
            })
            .collect())
    }

    /// The consumer's progress (pulled and acked pull-log sequences; -1 when none).
    pub fn progress(&self, key: &ConsumerKey) -> ConsumerInfo {
        let side = self.inner.consumers.lock();
        let p = side
            .state
            .consumers
            .get(key)
            .copied()
            .unwrap_or(ConsumerProgress {
                pulled: -1,
                acked: -1,
            });
        ConsumerInfo {
            key: key.clone(),
            pulled: p.pulled,
            acked: p.acked,
        }
    }

    /// Messages already handed to the consumer at pull-log sequences `first..` (at most `max`),
    /// for redelivery. Messages deleted by retention are left out.
    pub fn pulled_since(&self, key: &ConsumerKey, first: u64, max: usize) -> Result<Vec<Pulled>> {
        let seqs = {
            let mut side = self.inner.consumers.lock();
            let pulled = side.state.consumers.get(key).map_or(-1, |p| p.pulled);
            if (first as i64) > pulled {
                return Ok(Vec::new());
            }
            let n = ((pulled - first as i64 + 1) as usize).min(max);
            let pull_dir = self.inner.config.dir.join(PULL_DIR);
            pull_log(&mut side.state, &pull_dir, key)?.read(first, n)?
        };
        let messages = self.read_seqs(&key.subject, &seqs)?;
        Ok(seqs
            .into_iter()
            .zip(messages)
            .enumerate()
            .filter_map(|(i, (sequence, m))| {
                m.map(|message| Pulled {
                    pull_seq: first + i as u64,
                    sequence,
                    message,
                })
            })
            .collect())
    }

    /// Records that the consumer finished pull-log sequences up to `last` (inclusive). Acks at
    /// or below what is already acked are ignored; the ack always covers everything from the
    /// first unacked sequence (check [`Store::progress`] first for messages an ack skips).
    pub fn ack(&self, key: &ConsumerKey, last: u64) -> Result<()> {
        let mut side = self.inner.consumers.lock();
        let p = side
            .state
            .consumers
            .get(key)
            .copied()
            .unwrap_or(ConsumerProgress {
                pulled: -1,
                acked: -1,
            });
        if (last as i64) <= p.acked {
            return Ok(());
        }
        if (last as i64) > p.pulled {
            return Err(StoreError::OutOfRange {
                what: "ack of pull-log sequence",
                value: last,
            });
        }
        let action = Action::Ack {
            key: key.clone(),
            first: (p.acked + 1) as u64,
            last,
        };
        side.actions.append(&action.encode())?;
        let pull_dir = self.inner.config.dir.join(PULL_DIR);
        apply(&mut side.state, &pull_dir, &action)
    }

    /// Moves a group's (or broadcast consumer's) position to the earliest or latest message.
    pub fn reset(&self, key: &ConsumerKey, broadcast: bool, to: ResetTo) -> Result<u64> {
        let gkey = group_key(key, broadcast);
        let next = match to {
            ResetTo::Latest => self.subject_len(&key.subject),
            ResetTo::Earliest => self.earliest_sequence(&key.subject)?,
        };
        let mut side = self.inner.consumers.lock();
        let action = Action::Reset { key: gkey, next };
        side.actions.append(&action.encode())?;
        let pull_dir = self.inner.config.dir.join(PULL_DIR);
        apply(&mut side.state, &pull_dir, &action)?;
        Ok(next)
    }

    /// The first consume-log sequence of `subject` whose message is still stored.
    fn earliest_sequence(&self, subject: &str) -> Result<u64> {
        let len = self.subject_len(subject);
        let start = self.inner.message_reader_start();
        let Some(clog) = self.inner.consume.read().get(subject).cloned() else {
            return Ok(0);
        };
        // Binary search: entries are in message-log order.
        let (mut lo, mut hi) = (0u64, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = clog.read().read(mid, 1)?;
            if e.first().is_some_and(|e| e.offset >= start) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Every group's position.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let side = self.inner.consumers.lock();
        let mut out: Vec<GroupInfo> = side
            .state
            .groups
            .iter()
            .map(|(k, &next)| GroupInfo {
                key: k.clone(),
                next,
                subject_len: self.subject_len(&k.subject),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Every consumer's progress.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        let side = self.inner.consumers.lock();
        let mut out: Vec<ConsumerInfo> = side
            .state
            .consumers
            .iter()
            .map(|(k, p)| ConsumerInfo {
                key: k.clone(),
                pulled: p.pulled,
                acked: p.acked,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Makes everything durable and writes a checkpoint, so the next open replays nothing.
    pub fn checkpoint(&self) -> Result<()> {
        // Held throughout: checkpoints are written one at a time, in generation order.
        let mut gen = self.inner.checkpoint_gen.lock();
        // Consumer side first: its state may only point at messages the message side has.
        let (action_applied, groups, consumers) = {
            let side = self.inner.consumers.lock();
            for log in side.state.pull_logs.values() {
                log.sync()?;
            }
            side.actions.sync()?;
            (
                side.actions.end(),
                side.state
                    .groups
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                side.state
                    .consumers
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            )
        };
        let (message_indexed, subjects) = {
            let side = self.inner.messages.lock();
            side.log.sync()?;
            let mut subjects = BTreeMap::new();
            for (s, c) in &side.consume {
                let c = c.read();
                c.sync()?;
                subjects.insert(s.clone(), c.len());
            }
            (side.log.end(), subjects)
        };
        let cp = Checkpoint {
            message_indexed,
            subjects,
            action_applied,
            groups,
            consumers,
        };
        *gen += 1;
        let oldest = checkpoint::store(
            &self.inner.config.dir.join(CHECKPOINT_DIR),
            *gen,
            &cp,
            self.inner.config.checkpoints_retained,
        )?;
        *self.inner.oldest_checkpoint.lock() = oldest;
        Ok(())
    }

    /// Deletes message-log segments past retention (sparing ones a subscribed group still needs,
    /// unless configured otherwise) and action-log segments no retained checkpoint needs.
    /// Returns the number of message-log segments deleted.
    pub fn apply_retention(&self, now: SystemTime) -> Result<usize> {
        let cutoff = now
            .checked_sub(self.inner.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let keep_from = if self.inner.config.retention_deletes_unconsumed {
            u64::MAX
        } else {
            self.oldest_unconsumed_offset()?
        };
        let deleted = self
            .inner
            .messages
            .lock()
            .log
            .delete_before(keep_from, cutoff)?;
        let action_keep = self.inner.oldest_checkpoint.lock().action_applied;
        self.inner
            .consumers
            .lock()
            .actions
            .delete_before(action_keep, SystemTime::now())?;
        Ok(deleted)
    }

    /// The lowest message-log offset a subscribed group has not finished with.
    fn oldest_unconsumed_offset(&self) -> Result<u64> {
        // (subject, consume-log sequence) positions still needed.
        let (groups, unacked): (Vec<SubjectSeq>, Vec<SubjectSeq>) = {
            let mut side = self.inner.consumers.lock();
            let groups = side
                .state
                .groups
                .iter()
                .map(|(k, &n)| (k.subject.clone(), n))
                .collect();
            let pending: Vec<(ConsumerKey, u64)> = side
                .state
                .consumers
                .iter()
                .filter(|(_, p)| p.acked < p.pulled)
                .map(|(k, p)| (k.clone(), (p.acked + 1) as u64))
                .collect();
            let pull_dir = self.inner.config.dir.join(PULL_DIR);
            let mut unacked = Vec::new();
            for (k, first) in pending {
                if let Some(&seq) = pull_log(&mut side.state, &pull_dir, &k)?
                    .read(first, 1)?
                    .first()
                {
                    unacked.push((k.subject, seq));
                }
            }
            (groups, unacked)
        };
        let mut min = u64::MAX;
        for (subject, seq) in groups.into_iter().chain(unacked) {
            let Some(clog) = self.inner.consume.read().get(&subject).cloned() else {
                continue;
            };
            let entry = clog.read().read(seq, 1)?;
            if let Some(e) = entry.first() {
                min = min.min(e.offset);
            }
        }
        Ok(min)
    }

    /// Starts a thread that checkpoints every `checkpoint_interval` and applies retention,
    /// until [`Store::close`].
    pub fn spawn_maintenance(&self) -> Result<()> {
        let store = self.clone();
        let handle = std::thread::Builder::new()
            .name("qmq-store-maintenance".into())
            .spawn(move || {
                while !store.inner.closed.load(Ordering::Acquire) {
                    std::thread::park_timeout(store.inner.config.checkpoint_interval);
                    if store.inner.closed.load(Ordering::Acquire) {
                        break;
                    }
                    if let Err(e) = store.checkpoint() {
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                    if let Err(e) = store.apply_retention(SystemTime::now()) {
                        tracing::error!(error = %e, "retention failed");
                    }
                }
            })
            .map_err(io("spawn maintenance", &self.inner.config.dir))?;
        self.threads.lock().push(handle);
        Ok(())
    }

    /// Stops the background threads, then flushes and checkpoints. Appends after this fail.
    pub fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for t in &threads {
            t.thread().unpark();
        }
        // The writer thread ends when every sender is gone; ours is dropped with the last clone,
        // so only wait for the threads that watch `closed`.
        for t in threads {
            if t.thread().name() != Some("qmq-store-writer") {
                let _ = t.join();
            }
        }
        self.checkpoint()
    }
}

impl Inner {
    fn message_reader_start(&self) -> u64 {
        self.messages.lock().log.start()
    }
}

/// The consumer's pull log, opened on first use.
fn pull_log<'a>(
    state: &'a mut ConsumerSideState,
    pull_dir: &Path,
    key: &ConsumerKey,
) -> Result<&'a mut PullLog> {
    if !state.pull_logs.contains_key(key) {
        let path = pull_dir
            .join(names::encode(&key.subject))
            .join(names::encode(&key.group))
            .join(names::encode(&key.consumer));
        state.pull_logs.insert(key.clone(), PullLog::open(&path)?);
    }
    state.pull_logs.get_mut(key).ok_or(StoreError::Closed)
}

fn apply(state: &mut ConsumerSideState, pull_dir: &Path, action: &Action) -> Result<()> {
    match action {
        Action::Pull {
            key,
            broadcast,
            first_pull,
            seqs,
            next,
        } => {
            if !seqs.is_empty() {
                pull_log(state, pull_dir, key)?.write(*first_pull, seqs)?;
            }
            let p = state
                .consumers
                .entry(key.clone())
                .or_insert(ConsumerProgress {
                    pulled: -1,
                    acked: -1,
                });
            p.pulled = p.pulled.max(*first_pull as i64 + seqs.len() as i64 - 1);
            let g = state.groups.entry(group_key(key, *broadcast)).or_insert(0);
            *g = (*g).max(*next);
        }
        Action::Ack { key, last, .. } => {
            let p = state
                .consumers
                .entry(key.clone())
                .or_insert(ConsumerProgress {
                    pulled: -1,
                    acked: -1,
                });
            p.acked = p.acked.max(*last as i64);
        }
        Action::Reset { key, next } => {
            state.groups.insert(key.clone(), *next);
        }
    }
    Ok(())
}

fn writer_loop(inner: &Inner, jobs: &mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        let results = {
            let mut side = inner.messages.lock();
            let mut results = write_batch(inner, &mut side, &batch);
            if inner.config.flush == FlushPolicy::SyncBeforeAck && results.iter().any(|r| r.is_ok())
            {
                if let Err(e) = side.log.sync() {
                    tracing::error!(error = %e, "message log fsync failed");
                    let msg = e.to_string();
                    for r in &mut results {
                        if r.is_ok() {
                            *r = Err(StoreError::Io {
                                op: "fsync",
                                path: inner.config.dir.join(MESSAGE_DIR),
                                source: std::io::Error::other(msg.clone()),
                            });
                        }
                    }
                }
            }
            results
        };
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// Writes every job's messages with one write to the message log, then each subject's new
/// consume-log entries with one write per subject. A job whose message cannot be written fails
/// whole; jobs before it are unaffected.
fn write_batch(
    inner: &Inner,
    side: &mut MessageSide,
    batch: &[WriteJob],
) -> Vec<Result<Vec<Appended>>> {
    let mut placed: Vec<Result<Vec<(usize, Entry)>>> = Vec::with_capacity(batch.len());
    let mut subjects: Vec<&str> = Vec::new();
    for job in batch {
        // A job is stored whole or not at all: refuse it before writing any of it.
        let limit = inner.config.segment_size - crate::log::RECORD_HEADER;
        if let Some((s, m)) = job
            .messages
            .iter()
            .find(|(s, m)| (2 + s.len() + m.len()) as u64 > limit)
        {
            placed.push(Err(StoreError::TooLarge {
                size: 2 + s.len() + m.len(),
                segment: inner.config.segment_size,
            }));
            continue;
        }
        let mut entries = Vec::with_capacity(job.messages.len());
        let mut failed = None;
        for (subject, message) in &job.messages {
            let subject_len = (subject.len() as u16).to_be_bytes();
            let len = (2 + subject.len() + message.len()) as u32;
            match side
                .log
                .append_parts(&[&subject_len, subject.as_bytes(), message])
            {
                Ok(offset) => {
                    let idx = match subjects.iter().position(|s| s == subject) {
                        Some(i) => i,
                        None => {
                            subjects.push(subject);
                            subjects.len() - 1
                        }
                    };
                    entries.push((idx, Entry { offset, len }));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        placed.push(match failed {
            Some(e) => Err(e),
            None => Ok(entries),
        });
    }
    if let Err(e) = side.log.write_pending() {
        tracing::error!(error = %e, "message log write failed");
        return batch.iter().map(|_| Err(StoreError::Closed)).collect();
    }
    // Index: one consume-log write per subject, in message order.
    let mut firsts = vec![0u64; subjects.len()];
    for (i, subject) in subjects.iter().enumerate() {
        let entries: Vec<Entry> = placed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flatten()
            .filter(|(s, _)| *s == i)
            .map(|(_, e)| *e)
            .collect();
        let clog = match consume_log_for(inner, side, subject) {
            Ok(c) => c,
            Err(e) => {
                return batch
                    .iter()
                    .map(|_| {
                        Err(StoreError::Io {
                            op: "open consume log",
                            path: inner.config.dir.join(CONSUME_DIR),
                            source: std::io::Error::other(e.to_string()),
                        })
                    })
                    .collect()
            }
        };
        let appended = clog.write().append_many(&entries);
        match appended {
            Ok(first) => firsts[i] = first,
            Err(e) => {
                tracing::error!(error = %e, "consume log write failed");
                return batch.iter().map(|_| Err(StoreError::Closed)).collect();
            }
        }
    }
    placed
        .into_iter()
        .map(|p| {
            p.map(|entries| {
                entries
                    .into_iter()
                    .map(|(s, e)| {
                        let sequence = firsts[s];
                        firsts[s] += 1;
                        Appended {
                            offset: e.offset,
                            sequence,
                        }
                    })
                    .collect()
            })
        })
        .collect()
}

fn consume_log_for(
    inner: &Inner,
    side: &mut MessageSide,
    subject: &str,
) -> Result<Arc<RwLock<ConsumeLog>>> {
    if let Some(c) = side.consume.get(subject) {
        return Ok(c.clone());
    }
    let path = inner
        .config
        .dir
        .join(CONSUME_DIR)
        .join(names::encode(subject));
    let c = Arc::new(RwLock::new(ConsumeLog::open(&path, u64::MAX)?));
    side.consume.insert(subject.to_owned(), c.clone());
    inner.consume.write().insert(subject.to_owned(), c.clone());
    Ok(c)
}
