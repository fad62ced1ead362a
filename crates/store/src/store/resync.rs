//! Resync snapshots (see [`crate::snapshot`]): taking one on a master, installing one into a
//! replica's data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Store, StoreConfig, ACTION_DIR, CHECKPOINT_DIR, CONSUME_DIR, MESSAGE_DIR, PULL_DIR};
use crate::checkpoint::{self, Checkpoint, ConsumerProgress};
use crate::consume_log::ConsumeLog;
use crate::error::{io, Result};
use crate::log::sync_dir;
use crate::pull_log::PullLog;
use crate::{names, DirLock, MessageSnapshot, Snapshot, SubjectStart};

/// Prefix of the directories [`Store::install_snapshot`] moves replaced data into.
pub(crate) const RESYNC_PREFIX: &str = "resync-";

impl Store {
    /// Master side: a snapshot from which an empty store continues copying this store's logs
    /// ([`Store::install_snapshot`], then [`Store::append_replicated`] from the snapshot's
    /// message-log start and action-log end).
    ///
    /// The consumer side is taken first, consistently at one action-log end (pulls, acks and
    /// resets wait meanwhile; see [`crate::ConsumerSnapshot`]), then the message side with
    /// the writer and retention paused (the message log's lock held): the log's first offset
    /// and each subject's first sequence at or after it, and its length, which is then at
    /// least every consumer position taken before. Blocking I/O: call it from a blocking
    /// thread.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let consumers = self.inner.consumers.resync_snapshot()?;
        let messages = {
            let log = self.inner.log.lock();
            let start = log.start();
            let consume: Vec<_> = self
                .inner
                .consume
                .read()
                .iter()
                .map(|(s, c)| (s.clone(), c.clone()))
                .collect();
            let mut subjects = Vec::with_capacity(consume.len());
            for (subject, c) in consume {
                let c = c.read();
                subjects.push(SubjectStart {
                    first: c.first_at_or_after(start)?,
                    len: c.len(),
                    subject,
                });
            }
            subjects.sort_by(|a, b| a.subject.cmp(&b.subject));
            MessageSnapshot { start, subjects }
        };
        tracing::info!(
            message_start = messages.start,
            action_end = consumers.action_end,
            subjects = messages.subjects.len(),
            consumers = consumers.consumers.len(),
            "took a resync snapshot"
        );
        Ok(Snapshot {
            messages,
            consumers,
        })
    }

    /// Replica side, offline: makes `config.dir` a store that starts where `snapshot` does,
    /// so [`Store::open`] continues from there and copying the master's message log from
    /// `snapshot.messages.start` and its action log from `snapshot.consumers.action_end`
    /// gives the master's state.
    ///
    /// Takes the directory's lock as [`Store::open`] does (a directory a store has open is
    /// refused with [`crate::StoreError::Locked`]). Whatever the directory holds (except its
    /// lock file and earlier `resync-*` directories) is moved into `<dir>/resync-<unix ms>/`,
    /// logged, and that path returned (`None` if there was nothing). Then it creates:
    /// - an empty message log and action log whose first offsets are the snapshot's (a
    ///   segment file is named by its base offset, so a log may start anywhere);
    /// - per subject, an empty consume log whose next sequence is the subject's first one;
    /// - per consumer, its pull-log entries not acked yet;
    /// - a checkpoint with the positions and progress, so nothing is replayed and recovery
    ///   does not move positions back while the messages they point at are still to come.
    pub fn install_snapshot(config: &StoreConfig, snapshot: &Snapshot) -> Result<Option<PathBuf>> {
        let dir = &config.dir;
        let lock = DirLock::acquire(dir)?;
        let moved = move_aside(dir)?;
        if let Some(to) = &moved {
            tracing::warn!(dir = %dir.display(), moved_to = %to.display(),
                "resync: moved this store's data aside");
        }
        let m = &snapshot.messages;
        let c = &snapshot.consumers;
        empty_log(&dir.join(MESSAGE_DIR), m.start)?;
        empty_log(&dir.join(ACTION_DIR), c.action_end)?;
        let consume_dir = dir.join(CONSUME_DIR);
        std::fs::create_dir_all(&consume_dir).map_err(io("create dir", &consume_dir))?;
        let mut subjects = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for s in &m.subjects {
            if s.first > 0 {
                let path = names::ensure_dir(&consume_dir, &[&s.subject])?;
                ConsumeLog::create_at(&path, config.index_segment_entries, s.first)?;
                subjects.insert(s.subject.clone(), s.first);
            }
            if s.len > s.first {
                ends.insert(s.subject.clone(), s.len);
            }
        }
        let pull_dir = dir.join(PULL_DIR);
        std::fs::create_dir_all(&pull_dir).map_err(io("create dir", &pull_dir))?;
        for consumer in c.consumers.iter().filter(|c| !c.unacked.is_empty()) {
            let k = &consumer.key;
            let path = names::ensure_dir(&pull_dir, &[&k.subject, &k.group, &k.consumer])?;
            let mut log = PullLog::open(&path, config.index_segment_entries)?;
            // Runs of consecutive pull-log sequences, one write each.
            let mut run: Vec<u64> = Vec::new();
            let mut run_first = 0;
            for &(pull_seq, seq) in &consumer.unacked {
                if !run.is_empty() && pull_seq != run_first + run.len() as u64 {
                    log.write(run_first, &run)?;
                    run.clear();
                }
                if run.is_empty() {
                    run_first = pull_seq;
                }
                run.push(seq);
            }
            if !run.is_empty() {
                log.write(run_first, &run)?;
            }
            log.sync()?;
        }
        let cp = Checkpoint {
            message_indexed: m.start,
            subjects,
            action_applied: c.action_end,
            action_state_end: Some(c.action_end),
            groups: c.groups.clone(),
            consumers: c
                .consumers
                .iter()
                .map(|c| {
                    let progress = ConsumerProgress {
                        pulled: c.pulled,
                        acked: c.acked,
                    };
                    (c.key.clone(), progress)
                })
                .collect(),
            resync_subject_ends: ends,
        };
        let cp_dir = dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&cp_dir).map_err(io("create dir", &cp_dir))?;
        checkpoint::store(&cp_dir, 1, &cp, config.checkpoints_retained)?;
        sync_dir(dir)?;
        tracing::info!(
            dir = %dir.display(),
            message_start = m.start,
            action_end = c.action_end,
            subjects = m.subjects.len(),
            consumers = c.consumers.len(),
            "installed a resync snapshot"
        );
        drop(lock);
        Ok(moved)
    }
}

/// Moves everything in `dir` but its lock file and earlier resync directories into a new
/// `resync-<unix ms>` directory; returns it (`None` when there was nothing to move).
fn move_aside(dir: &Path) -> Result<Option<PathBuf>> {
    let mut doomed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "LOCK" || name.starts_with(RESYNC_PREFIX) {
            continue;
        }
        doomed.push(entry.path());
    }
    if doomed.is_empty() {
        return Ok(None);
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut to = dir.join(format!("{RESYNC_PREFIX}{ms}"));
    let mut n = 0;
    while to.exists() {
        n += 1;
        to = dir.join(format!("{RESYNC_PREFIX}{ms}-{n}"));
    }
    std::fs::create_dir(&to).map_err(io("create dir", &to))?;
    for path in doomed {
        if let Some(name) = path.file_name() {
            let target = to.join(name);
            std::fs::rename(&path, &target).map_err(io("rename", &path))?;
        }
    }
    sync_dir(&to)?;
    sync_dir(dir)?;
    Ok(Some(to))
}

/// Creates `dir` holding one empty segment file based at `start`: a record log whose first
/// and next offset is `start`.
fn empty_log(dir: &Path, start: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
    let path = dir.join(format!("{start:020}"));
    std::fs::File::create(&path)
        .and_then(|f| f.sync_all())
        .map_err(io("create", &path))?;
    sync_dir(dir)
}
