//! The consumer side: group positions, per-consumer pull logs and progress, and the action log
//! that records every change to them.
//!
//! Locking: each group's position and each consumer's state has its own mutex, so pulls of
//! different groups run in parallel and a pull is atomic for its group. Order is always
//! group → consumer → action log; an action is appended and applied while its group/consumer
//! locks are held, so the action log's order is the order of the changes.
//!
//! Failures: the action log follows the message log's policy ([`crate::log`]). A failed
//! action-log write cuts the action and fails the pull, ack or reset with nothing changed
//! ([`crate::StoreError::Failed`]). A failed fsync (`SyncBeforeAck`'s per-operation one, or
//! the async flusher's) leaves the log awaiting repair: the operation that waited for it
//! fails, and so does every later one until the repair that each of them tries first works,
//! once the disk does; no reopen is needed. A pull that failed only at its fsync stays
//! recorded as handed to its consumer, so its messages come back to that consumer as unacked
//! ones ([`Store::pulled_since`]) and none is skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::{check_name, Store, StoredMessage};
use crate::action::{Action, ConsumerKey};
use crate::checkpoint::ConsumerProgress;
use crate::error::{Result, StoreError};
use crate::filter::{BytesFilter, Filter};
use crate::log::{LogReader, RecordLog};
use crate::names;
use crate::pull_log::PullLog;

/// What a pull asks for.
#[derive(Debug, Clone)]
pub struct PullSpec<'a> {
    /// The consumer.
    pub key: &'a ConsumerKey,
    /// Broadcast: the consumer has a position of its own instead of sharing the group's.
    pub broadcast: bool,
    /// Most messages to hand out.
    pub max: usize,
}

/// Limits and policies of one pull beyond [`PullSpec`]; the default is none of them (the
/// behaviour of [`Store::pull_matching`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOptions {
    /// Hand out only messages appended at or before this time (ms since the Unix epoch): the
    /// pull stops at the first later one, which stays the group's next message. The broker's
    /// retry delay: a retry-subject message is served only once it is old enough.
    pub not_after_ms: Option<u64>,
    /// Stop before a message that would take the messages' total past this many bytes; the
    /// first message is handed out whatever its size, so a large one cannot stall the group.
    pub max_bytes: usize,
    /// Where a group (or broadcast consumer) this store has never seen starts on a subject
    /// that has messages. [`ResetTo::Latest`] is recorded in the action log at once, so the
    /// start survives a restart even if nothing is pulled before it.
    pub new_group: ResetTo,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            not_after_ms: None,
            max_bytes: usize::MAX,
            new_group: ResetTo::Earliest,
        }
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Its pull-log sequence for that consumer (what the consumer acks).
    pub pull_seq: u64,
    /// Its consume-log sequence in the subject.
    pub sequence: u64,
    /// The message bytes as appended.
    pub message: Bytes,
    /// Its tags as appended.
    pub tags: Vec<String>,
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

impl ConsumerInfo {
    /// Messages handed out and not acked yet.
    pub fn unacked(&self) -> u64 {
        (self.pulled - self.acked).max(0) as u64
    }
}

/// Position of one group (or broadcast consumer) on a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Subject and group; the consumer field is empty for a shared group and names the
    /// consumer for a broadcast one.
    pub key: ConsumerKey,
    /// Next consume-log sequence the group will be handed.
    pub next: u64,
    /// Messages in the subject's consume log.
    pub subject_len: u64,
}

impl GroupInfo {
    /// Messages appended that the group has not been handed yet.
    pub fn lag(&self) -> u64 {
        self.subject_len.saturating_sub(self.next)
    }
}

/// Where to move a group's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The oldest message still stored.
    Earliest,
    /// After the newest message.
    Latest,
}

const NONE: ConsumerProgress = ConsumerProgress {
    pulled: -1,
    acked: -1,
};

/// The key holding a group's position: the group's (consumer empty), or the consumer's own in
/// broadcast mode.
/// A copy of a locked map's entries (values are shared handles), so the map is not held while
/// each entry is locked in turn.
fn entries<V>(map: &RwLock<HashMap<ConsumerKey, Arc<V>>>) -> Vec<(ConsumerKey, Arc<V>)> {
    map.read()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

pub(crate) struct ConsumerState {
    progress: ConsumerProgress,
    pull_log: Option<PullLog>,
    /// Pull-log entries written since the last checkpoint synced them.
    dirty: bool,
}

pub(crate) struct ConsumerSide {
    actions: Mutex<RecordLog>,
    action_reader: LogReader,
    groups: RwLock<HashMap<ConsumerKey, Arc<Mutex<u64>>>>,
    consumers: RwLock<HashMap<ConsumerKey, Arc<Mutex<ConsumerState>>>>,
    pull_dir: PathBuf,
    per_segment: u64,
    /// Pulls, acks and resets return only once their action is fsynced.
    sync_each: bool,
    /// The action log's shippable end (see [`Store::read_log_chunk`]): written (async
    /// flush) or fsynced (`SyncBeforeAck`) whole actions.
    pub(crate) shippable: tokio::sync::watch::Sender<u64>,
}

/// What a checkpoint records of the consumer side.
pub(crate) struct Snapshot {
    pub action_applied: u64,
    pub action_state_end: u64,
    pub groups: Vec<(ConsumerKey, u64)>,
    pub consumers: Vec<(ConsumerKey, ConsumerProgress)>,
}

impl ConsumerState {
    fn pull_log(&mut self, side: &ConsumerSide, key: &ConsumerKey) -> Result<&mut PullLog> {
        if self.pull_log.is_none() {
            let dir =
                names::ensure_dir(&side.pull_dir, &[&key.subject, &key.group, &key.consumer])?;
            self.pull_log = Some(PullLog::open(&dir, side.per_segment)?);
        }
        self.pull_log.as_mut().ok_or(StoreError::Closed)
    }

    fn record_pull(
        &mut self,
        side: &ConsumerSide,
        key: &ConsumerKey,
        first: u64,
        seqs: &[u64],
    ) -> Result<()> {
        if !seqs.is_empty() {
            self.pull_log(side, key)?.write(first, seqs)?;
            self.dirty = true;
        }
        self.progress.pulled = self
            .progress
            .pulled
            .max(first as i64 + seqs.len() as i64 - 1);
        Ok(())
    }
}

impl ConsumerSide {
    pub(crate) fn new(
        actions: RecordLog,
        pull_dir: &Path,
        per_segment: u64,
        sync_each: bool,
        groups: &[(ConsumerKey, u64)],
        consumers: &[(ConsumerKey, ConsumerProgress)],
    ) -> Self {
        Self {
            action_reader: actions.reader(),
            shippable: tokio::sync::watch::Sender::new(actions.end()),
            actions: Mutex::new(actions),
            groups: RwLock::new(
                groups
                    .iter()
                    .map(|(k, n)| (k.clone(), Arc::new(Mutex::new(*n))))
                    .collect(),
            ),
            consumers: RwLock::new(
                consumers
                    .iter()
                    .map(|(k, p)| {
                        let state = ConsumerState {
                            progress: *p,
                            pull_log: None,
                            dirty: false,
                        };
                        (k.clone(), Arc::new(Mutex::new(state)))
                    })
                    .collect(),
            ),
            pull_dir: pull_dir.to_path_buf(),
            per_segment,
            sync_each,
        }
    }

    /// The group's position, created for a group never seen at `start()`. The start is
    /// recorded in the action log even when it is 0, so a restart and a slave replaying the log
    /// know the group exists: a group missing there would start again at the latest message
    /// when it next pulls, passing over what arrived meanwhile. Returns the action-log end to
    /// settle.
    fn group_or_start(
        &self,
        key: &ConsumerKey,
        start: impl FnOnce() -> u64,
    ) -> Result<(Arc<Mutex<u64>>, Option<u64>)> {
        if let Some(g) = self.groups.read().get(key) {
            return Ok((g.clone(), None));
        }
        let mut groups = self.groups.write();
        if let Some(g) = groups.get(key) {
            return Ok((g.clone(), None));
        }
        let next = start();
        let end = Some(self.log_action(&Action::Reset {
            key: key.clone(),
            next,
        })?);
        let g = Arc::new(Mutex::new(next));
        groups.insert(key.clone(), g.clone());
        Ok((g, end))
    }

    fn group(&self, key: &ConsumerKey) -> Arc<Mutex<u64>> {
        if let Some(g) = self.groups.read().get(key) {
            return g.clone();
        }
        self.groups.write().entry(key.clone()).or_default().clone()
    }

    fn consumer(&self, key: &ConsumerKey) -> Arc<Mutex<ConsumerState>> {
        if let Some(c) = self.consumers.read().get(key) {
            return c.clone();
        }
        self.consumers
            .write()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ConsumerState {
                    progress: NONE,
                    pull_log: None,
                    dirty: false,
                }))
            })
            .clone()
    }

    /// Appends an action; returns the action log's end after it.
    fn log_action(&self, action: &Action) -> Result<u64> {
        let mut log = self.actions.lock();
        log.append(&action.encode())?;
        Ok(log.end())
    }

    /// With `SyncBeforeAck`, waits until the action log is durable up to `end`.
    /// Then moves the shippable end (see [`ConsumerSide::shippable`]) to `end`.
    fn settle(&self, end: u64) -> Result<()> {
        if self.sync_each {
            self.action_reader.sync_to(end)?;
        }
        self.ship_to(end);
        Ok(())
    }

    /// Moves the shippable end forward to `end` (never back: concurrent callers may report
    /// their ends out of order), waking the watchers.
    fn ship_to(&self, end: u64) {
        self.shippable.send_if_modified(|v| {
            let moved = end > *v;
            if moved {
                *v = end;
            }
            moved
        });
    }

    /// The action log's written end.
    pub(crate) fn action_end(&self) -> u64 {
        self.action_reader.written()
    }

    /// A read handle on the action log.
    pub(crate) fn action_reader(&self) -> &LogReader {
        &self.action_reader
    }

    /// Appends replicated action-log bytes at `start`, which must be the log's end, and
    /// applies them as recovery replays them (see [`Store::append_replicated`]). Returns the
    /// new end.
    pub(crate) fn append_replicated(&self, start: u64, bytes: &[u8]) -> Result<u64> {
        use crate::replication::LogStream;
        let diverged = |expected: u64| StoreError::Diverged {
            stream: LogStream::Action,
            expected,
            got: start,
        };
        let end = self.action_end();
        if start != end {
            return Err(diverged(end));
        }
        let segment_size = self.actions.lock().segment_size();
        let sizes = crate::log::check_records(bytes, segment_size).map_err(|(at, reason)| {
            StoreError::BadChunk {
                stream: LogStream::Action,
                offset: start + at as u64,
                reason,
            }
        })?;
        if sizes.is_empty() {
            return Ok(start);
        }
        let mut actions = Vec::with_capacity(sizes.len());
        let mut at = 0usize;
        for size in &sizes {
            let offset = start + at as u64;
            let payload = &bytes[at + crate::log::RECORD_HEADER as usize..at + size];
            match Action::decode(payload, offset) {
                Ok(a) => actions.push(a),
                // As recovery does: the record is kept (the logs stay byte-identical), its
                // action is not applied.
                Err(e) => tracing::error!(error = %e, "skipping an undecodable replicated action"),
            }
            at += size;
        }
        // Every group and consumer the actions touch, locked in key order (groups before
        // consumers, as pulls do) before the action log, and held until the actions are
        // applied: a checkpoint's snapshot then never sees the new end without their effect.
        let mut group_keys = std::collections::BTreeSet::new();
        let mut consumer_keys = std::collections::BTreeSet::new();
        for a in &actions {
            match a {
                Action::Pull { key, broadcast, .. } => {
                    group_keys.insert(group_key(key, *broadcast));
                    consumer_keys.insert(key.clone());
                }
                Action::Ack { key, .. } => {
                    consumer_keys.insert(key.clone());
                }
                Action::Reset { key, .. } => {
                    group_keys.insert(key.clone());
                }
            }
        }
        let groups: Vec<(ConsumerKey, Arc<Mutex<u64>>)> = group_keys
            .into_iter()
            .map(|k| (k.clone(), self.group(&k)))
            .collect();
        let consumers: Vec<(ConsumerKey, Arc<Mutex<ConsumerState>>)> = consumer_keys
            .into_iter()
            .map(|k| (k.clone(), self.consumer(&k)))
            .collect();
        let mut group_guards: HashMap<&ConsumerKey, parking_lot::MutexGuard<'_, u64>> =
            groups.iter().map(|(k, g)| (k, g.lock())).collect();
        let mut consumer_guards: HashMap<&ConsumerKey, parking_lot::MutexGuard<'_, ConsumerState>> =
            consumers.iter().map(|(k, c)| (k, c.lock())).collect();
        let new_end = {
            let mut log = self.actions.lock();
            if log.end() != start {
                return Err(diverged(log.end()));
            }
            log.append_records(bytes, &sizes)?;
            if self.sync_each {
                if let Err(e) = log.sync() {
                    return Err(log.rewind(start, &e));
                }
            }
            log.end()
        };
        let mut failed = None;
        for a in &actions {
            let applied = match a {
                Action::Pull {
                    key,
                    broadcast,
                    first_pull,
                    seqs,
                    next,
                } => {
                    let r = match consumer_guards.get_mut(key) {
                        Some(c) => c.record_pull(self, key, *first_pull, seqs),
                        None => Ok(()),
                    };
                    if let Some(g) = group_guards.get_mut(&group_key(key, *broadcast)) {
                        **g = (**g).max(*next);
                    }
                    r
                }
                Action::Ack { key, last, .. } => {
                    if let Some(c) = consumer_guards.get_mut(key) {
                        c.progress.acked = c.progress.acked.max(*last as i64);
                    }
                    Ok(())
                }
                Action::Reset { key, next } => {
                    if let Some(g) = group_guards.get_mut(key) {
                        **g = *next;
                    }
                    Ok(())
                }
            };
            if let Err(e) = applied {
                tracing::error!(error = %e, "applying a replicated action failed; the next open replays it");
                failed.get_or_insert(e);
            }
        }
        drop(consumer_guards);
        drop(group_guards);
        self.ship_to(new_end);
        match failed {
            None => Ok(new_end),
            Some(e) => Err(StoreError::MaybeStored {
                reason: format!("replicated actions written up to {new_end}, not all applied: {e}"),
            }),
        }
    }

    /// How long the action log's fsyncs have taken.
    pub(crate) fn fsync_times(&self) -> crate::FsyncSnapshot {
        self.action_reader.fsync_times()
    }

    /// fsyncs the action log (the async flusher calls this); nothing to do while the log
    /// awaits a repair (its next write does it).
    pub(crate) fn sync_actions(&self) -> Result<()> {
        if self.action_reader.failed() {
            return Ok(());
        }
        self.action_reader.sync()
    }

    /// Repairs the action log after a failed write or fsync (nothing if none failed).
    pub(crate) fn repair(&self) -> Result<()> {
        self.actions.lock().repair()
    }

    /// Applies an action read back from the action log during recovery.
    pub(crate) fn replay(&self, action: &Action) -> Result<()> {
        match action {
            Action::Pull {
                key,
                broadcast,
                first_pull,
                seqs,
                next,
            } => {
                self.consumer(key)
                    .lock()
                    .record_pull(self, key, *first_pull, seqs)?;
                let g = self.group(&group_key(key, *broadcast));
                let mut g = g.lock();
                *g = (*g).max(*next);
            }
            Action::Ack { key, last, .. } => {
                let c = self.consumer(key);
                let mut c = c.lock();
                c.progress.acked = c.progress.acked.max(*last as i64);
            }
            Action::Reset { key, next } => *self.group(key).lock() = *next,
        }
        Ok(())
    }

    /// Moves positions past a subject's end back to it (messages the action log saw were lost
    /// with an un-fsynced message-log tail), so new messages are not passed over.
    pub(crate) fn clamp_groups(&self, len_of: impl Fn(&str) -> u64) {
        for (key, g) in self.groups.read().iter() {
            let mut next = g.lock();
            let len = len_of(&key.subject);
            if *next > len {
                tracing::warn!(subject = %key.subject, group = %key.group, from = *next, to = len, "moving a group position back to its subject's end");
                *next = len;
            }
        }
    }

    /// The consumer side as of the action log's current end, with pull logs and the action
    /// log made durable up to there.
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        // Every action before this end was appended under its group/consumer lock and is
        // applied before that lock is released, so locking each below waits for it. Actions
        // after the end may show in the state too: replaying them again is harmless.
        let action_applied = self.actions.lock().end();
        let groups: Vec<_> = self
            .groups
            .read()
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        let groups = groups.into_iter().map(|(k, g)| (k, *g.lock())).collect();
        let consumers: Vec<_> = self
            .consumers
            .read()
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let mut progress = Vec::with_capacity(consumers.len());
        for (k, c) in consumers {
            let mut c = c.lock();
            if c.dirty {
                if let Some(log) = &c.pull_log {
                    log.sync()?;
                }
                c.dirty = false;
            }
            progress.push((k, c.progress));
        }
        self.action_reader.sync_to(action_applied)?;
        // Every action the state above reflects was appended before it was applied, so
        // before this end.
        let action_state_end = self.actions.lock().end();
        Ok(Snapshot {
            action_applied,
            action_state_end,
            groups,
            consumers: progress,
        })
    }

    /// The consumer side exactly as the actions before the action log's end left it, for a
    /// resync snapshot ([`Store::snapshot`]). Unlike a checkpoint's [`ConsumerSide::snapshot`],
    /// which may reflect actions past its end (replaying them again is harmless), a replica
    /// copies the action log from the returned end, so the state must hold none of the later
    /// ones: every group and consumer is locked (groups before consumers, each in key order,
    /// as replicated appends lock them; the maps are read-locked so none is created
    /// meanwhile) and only then is the end read. Every action is appended and applied under
    /// the locks of what it changes (a new group's start under the group map's write lock),
    /// so none is half done then. Pulls, acks and resets wait while this runs.
    pub(crate) fn resync_snapshot(&self) -> Result<crate::ConsumerSnapshot> {
        let group_map = self.groups.read();
        let mut group_keys: Vec<&ConsumerKey> = group_map.keys().collect();
        group_keys.sort();
        let group_guards: Vec<(&ConsumerKey, parking_lot::MutexGuard<'_, u64>)> = group_keys
            .into_iter()
            .filter_map(|k| group_map.get(k).map(|g| (k, g.lock())))
            .collect();
        let consumer_map = self.consumers.read();
        let mut consumer_keys: Vec<&ConsumerKey> = consumer_map.keys().collect();
        consumer_keys.sort();
        let mut consumer_guards: Vec<(&ConsumerKey, parking_lot::MutexGuard<'_, ConsumerState>)> =
            consumer_keys
                .into_iter()
                .filter_map(|k| consumer_map.get(k).map(|c| (k, c.lock())))
                .collect();
        let action_end = self.actions.lock().end();
        let groups = group_guards
            .iter()
            .map(|(k, g)| ((*k).clone(), **g))
            .collect();
        let mut consumers = Vec::with_capacity(consumer_guards.len());
        for (k, c) in &mut consumer_guards {
            let ConsumerProgress { pulled, acked } = c.progress;
            let mut unacked = Vec::new();
            if pulled > acked {
                let first = (acked + 1) as u64;
                let n = (pulled - acked) as usize;
                let seqs = c.pull_log(self, k)?.read(first, n)?;
                for (i, seq) in seqs.into_iter().enumerate() {
                    match seq {
                        Some(seq) => unacked.push((first + i as u64, seq)),
                        None => tracing::error!(subject = %k.subject, consumer = %k.consumer,
                            pull_seq = first + i as u64, "damaged pull-log entry left out of a resync snapshot"),
                    }
                }
            }
            consumers.push(crate::SnapshotConsumer {
                key: (*k).clone(),
                pulled,
                acked,
                unacked,
            });
        }
        Ok(crate::ConsumerSnapshot {
            action_end,
            groups,
            consumers,
        })
    }

    /// (subject, consume-log sequence) of every message some group or consumer still needs:
    /// each group's next one, and each consumer's first unacked one.
    pub(crate) fn needed(&self) -> Result<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = self
            .groups
            .read()
            .iter()
            .map(|(k, g)| (k.subject.clone(), *g.lock()))
            .collect();
        let consumers: Vec<_> = self
            .consumers
            .read()
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        for (k, c) in consumers {
            let mut c = c.lock();
            if c.progress.acked >= c.progress.pulled {
                continue;
            }
            let first = (c.progress.acked + 1) as u64;
            if let Some(Some(seq)) = c.pull_log(self, &k)?.read(first, 1)?.first() {
                out.push((k.subject.clone(), *seq));
            }
        }
        Ok(out)
    }

    /// Deletes pull-log segments holding only acked entries and action-log segments before
    /// `action_keep`.
    pub(crate) fn trim(&self, action_keep: u64) -> Result<()> {
        let consumers: Vec<_> = self.consumers.read().values().cloned().collect();
        for c in consumers {
            let mut c = c.lock();
            let acked = c.progress.acked;
            if let Some(log) = c.pull_log.as_mut() {
                log.delete_before((acked + 1) as u64)?;
            }
        }
        self.actions
            .lock()
            .delete_before(action_keep, std::time::SystemTime::now())?;
        Ok(())
    }
}

impl Store {
    /// Hands the consumer its group's next messages: takes up to `spec.max` messages from the
    /// group's position on, passing over (and consuming) those `keep` rejects, records them in
    /// the consumer's pull log and the action log, and returns them.
    pub fn pull(&self, spec: PullSpec<'_>, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<Pulled>> {
        self.pull_matching(spec, &BytesFilter(keep))
    }

    /// Like [`Store::pull`] with any [`Filter`], e.g. a [`crate::TagFilter`], which passes over
    /// non-matching messages by their consume-log tag summary without reading them.
    pub fn pull_matching(&self, spec: PullSpec<'_>, filter: &impl Filter) -> Result<Vec<Pulled>> {
        self.pull_with(spec, PullOptions::default(), filter)
    }

    /// Like [`Store::pull_matching`] with [`PullOptions`]: a time gate, a byte budget and where
    /// a new group starts.
    pub fn pull_with(
        &self,
        spec: PullSpec<'_>,
        options: PullOptions,
        filter: &impl Filter,
    ) -> Result<Vec<Pulled>> {
        let key = spec.key;
        check_name("subject", &key.subject)?;
        check_name("group", &key.group)?;
        check_name("consumer", &key.consumer)?;
        let side = &self.inner.consumers;
        let Some(clog) = self.inner.consume_log(&key.subject) else {
            // Never written: the group starts at 0 whatever the option (the subject's end),
            // so it gets the first message however long after this pull it comes; recorded
            // like any new group's start (see `group_or_start`).
            let (_, created) = side.group_or_start(&group_key(key, spec.broadcast), || 0)?;
            if let Some(end) = created {
                side.settle(end)?;
            }
            return Ok(Vec::new());
        };
        let (group, created) = side.group_or_start(&group_key(key, spec.broadcast), || {
            match options.new_group {
                ResetTo::Latest => clog.read().len(),
                ResetTo::Earliest => 0,
            }
        })?;
        if let Some(end) = created {
            side.settle(end)?;
        }
        let mut next = group.lock();
        // Look at a bounded window so a filter rejecting everything cannot stall the group.
        let window = spec.max.saturating_mul(4).max(1024);
        let (start, entries) = {
            let clog = clog.read();
            // Entries before the log's first stored one were deleted with their messages.
            let start = (*next).max(clog.first());
            if start >= clog.len() || spec.max == 0 {
                return Ok(Vec::new());
            }
            (start, clog.read(start, window)?)
        };
        let entries = self
            .inner
            .rebuild_entries(&key.subject, &clog, start, entries)?;
        let mut taken: Vec<StoredMessage> = Vec::new();
        let mut bytes = 0usize;
        let mut new_next = start;
        for (i, entry) in entries.into_iter().enumerate() {
            if taken.len() == spec.max {
                break;
            }
            let seq = start + i as u64;
            let Some(entry) = entry.filter(|e| filter.may_match(e.tags)) else {
                new_next = seq + 1;
                continue;
            };
            if !taken.is_empty() && bytes.saturating_add(entry.len as usize) > options.max_bytes {
                break;
            }
            let Some(m) = self.inner.message_at(&key.subject, seq, entry)? else {
                new_next = seq + 1;
                continue;
            };
            if options.not_after_ms.is_some_and(|t| m.appended_at_ms > t) {
                break; // not due yet: it and everything after it wait
            }
            new_next = seq + 1;
            let tags: Vec<&str> = m.tags.iter().map(String::as_str).collect();
            if filter.matches(&tags, &m.message) {
                bytes = bytes.saturating_add(m.message.len());
                taken.push(m);
            }
        }
        if new_next == start {
            return Ok(Vec::new());
        }
        let consumer = side.consumer(key);
        let mut state = consumer.lock();
        let first_pull = (state.progress.pulled + 1) as u64;
        let seqs: Vec<u64> = taken.iter().map(|m| m.sequence).collect();
        let action = Action::Pull {
            key: key.clone(),
            broadcast: spec.broadcast,
            first_pull,
            seqs,
            next: new_next,
        };
        let end = side.log_action(&action)?;
        if let Action::Pull { seqs, .. } = &action {
            state.record_pull(side, key, first_pull, seqs)?;
        }
        *next = (*next).max(new_next);
        drop(state);
        drop(next);
        side.settle(end)?;
        Ok(taken
            .into_iter()
            .enumerate()
            .map(|(i, m)| Pulled {
                pull_seq: first_pull + i as u64,
                sequence: m.sequence,
                message: m.message,
                tags: m.tags,
            })
            .collect())
    }

    /// The consumer's progress (pulled and acked pull-log sequences; -1 when none).
    pub fn progress(&self, key: &ConsumerKey) -> ConsumerInfo {
        let c = self.inner.consumers.consumers.read().get(key).cloned();
        let progress = c.map_or(NONE, |c| c.lock().progress);
        ConsumerInfo {
            key: key.clone(),
            pulled: progress.pulled,
            acked: progress.acked,
        }
    }

    /// Messages already handed to the consumer at pull-log sequences `first..` (at most `max`),
    /// for redelivery of what it pulled and did not ack. Messages deleted by retention or
    /// damaged are left out.
    pub fn pulled_since(&self, key: &ConsumerKey, first: u64, max: usize) -> Result<Vec<Pulled>> {
        self.pulled_since_within(key, first, max, usize::MAX)
    }

    /// Like [`Store::pulled_since`], stopping before a message that would take the total past
    /// `max_bytes` (the first one is returned whatever its size), so a redelivery fits in a
    /// response frame and is never read into memory whole.
    pub fn pulled_since_within(
        &self,
        key: &ConsumerKey,
        first: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pulled>> {
        let side = &self.inner.consumers;
        let Some(c) = side.consumers.read().get(key).cloned() else {
            return Ok(Vec::new());
        };
        let seqs = {
            let mut c = c.lock();
            let pulled = c.progress.pulled;
            if (first as i64) > pulled {
                return Ok(Vec::new());
            }
            let n = ((pulled - first as i64 + 1) as usize).min(max);
            c.pull_log(side, key)?.read(first, n)?
        };
        let Some(clog) = self.inner.consume_log(&key.subject) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(seqs.len());
        let mut bytes = 0usize;
        for (i, seq) in seqs.into_iter().enumerate() {
            let pull_seq = first + i as u64;
            let Some(seq) = seq else {
                tracing::error!(subject = %key.subject, consumer = %key.consumer, pull_seq, "damaged pull-log entry; not redelivered");
                continue;
            };
            let entry = self.inner.entries(&key.subject, &clog, seq, 1)?;
            let entry = entry.into_iter().next().flatten();
            if let Some(e) = &entry {
                if !out.is_empty() && bytes.saturating_add(e.len as usize) > max_bytes {
                    break;
                }
            }
            let m = match entry {
                Some(e) => self.inner.message_at(&key.subject, seq, e)?,
                None => None,
            };
            if let Some(m) = m {
                bytes = bytes.saturating_add(m.message.len());
                out.push(Pulled {
                    pull_seq,
                    sequence: seq,
                    message: m.message,
                    tags: m.tags,
                });
            }
        }
        Ok(out)
    }

    /// Records that the consumer finished pull-log sequences up to `last` (inclusive; QMQ's
    /// range ack). Acks at or below what is acked are ignored; acks beyond what was pulled are
    /// refused. The ack covers everything from the first unacked sequence.
    pub fn ack(&self, key: &ConsumerKey, last: u64) -> Result<()> {
        let side = &self.inner.consumers;
        let c = side.consumer(key);
        let mut c = c.lock();
        if (last as i64) <= c.progress.acked {
            return Ok(());
        }
        if (last as i64) > c.progress.pulled {
            return Err(StoreError::OutOfRange {
                what: "ack of pull-log sequence",
                value: last,
            });
        }
        let action = Action::Ack {
            key: key.clone(),
            first: (c.progress.acked + 1) as u64,
            last,
        };
        let end = side.log_action(&action)?;
        c.progress.acked = last as i64;
        drop(c);
        side.settle(end)
    }

    /// Moves a group's (or broadcast consumer's) position to the earliest stored or the latest
    /// message; returns the new position.
    pub fn reset(&self, key: &ConsumerKey, broadcast: bool, to: ResetTo) -> Result<u64> {
        let side = &self.inner.consumers;
        let gkey = group_key(key, broadcast);
        let group = side.group(&gkey);
        let mut next = group.lock();
        let to = match to {
            ResetTo::Latest => self.subject_len(&key.subject),
            ResetTo::Earliest => self.inner.earliest_sequence(&key.subject)?,
        };
        let end = side.log_action(&Action::Reset {
            key: gkey,
            next: to,
        })?;
        *next = to;
        drop(next);
        side.settle(end)?;
        Ok(to)
    }

    /// A group's (or broadcast consumer's) next consume-log sequence.
    pub fn position(&self, key: &ConsumerKey, broadcast: bool) -> u64 {
        let g = self
            .inner
            .consumers
            .groups
            .read()
            .get(&group_key(key, broadcast))
            .cloned();
        g.map_or(0, |g| *g.lock())
    }

    /// Every group's (and broadcast consumer's) position and lag, sorted.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = entries(&self.inner.consumers.groups)
            .into_iter()
            .map(|(key, g)| GroupInfo {
                next: *g.lock(),
                subject_len: self.subject_len(&key.subject),
                key,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Every consumer's progress, sorted.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        let mut out: Vec<ConsumerInfo> = entries(&self.inner.consumers.consumers)
            .into_iter()
            .map(|(key, c)| {
                let p = c.lock().progress;
                ConsumerInfo {
                    key,
                    pulled: p.pulled,
                    acked: p.acked,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}
