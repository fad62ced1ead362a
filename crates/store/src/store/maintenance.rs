//! Checkpoints, retention, the maintenance thread and shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{Inner, Store, CHECKPOINT_DIR};
use crate::checkpoint::{self, Checkpoint};
use crate::error::{io, Result};

impl Store {
    /// Makes everything durable and writes a checkpoint, so the next open replays only what
    /// comes after it.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Deletes message-log segments last written before `now - retention` (sparing any a group
    /// or consumer still needs, unless configured otherwise), then index segments pointing only
    /// at deleted messages, pull-log segments holding only acked entries, and action-log
    /// segments no retained checkpoint needs. Returns the number of message-log segments
    /// deleted.
    pub fn apply_retention(&self, now: SystemTime) -> Result<usize> {
        self.inner.apply_retention(now)
    }

    /// Starts a thread that checkpoints and applies retention every `checkpoint_interval`,
    /// until the store is closed or dropped.
    pub fn spawn_maintenance(&self) -> Result<()> {
        let inner = self.inner.clone();
        let handle = std::thread::Builder::new()
            .name("qmq-store-maintenance".into())
            .spawn(move || inner.maintain())
            .map_err(io("spawn maintenance", &self.inner.config.dir))?;
        self.threads.handles.lock().push(handle);
        Ok(())
    }

    /// Stops the background threads (the writer after the appends already handed to it), then
    /// makes everything durable and checkpoints. Appends after this fail with
    /// [`crate::StoreError::Closed`]; when it returns, no store thread runs any more.
    pub fn close(&self) -> Result<()> {
        self.threads.stop();
        self.checkpoint()
    }
}

impl Inner {
    fn checkpoint(&self) -> Result<()> {
        // Held throughout: checkpoints are written one at a time, in generation order.
        let mut gen = self.checkpoint_gen.lock();
        // After a failed write or fsync the logs' files are not trusted until repaired:
        // vouching for their ends would make recovery trust them. Repair them now (the disk
        // may work again); if that fails, no checkpoint, and the next open checks the logs.
        self.log.lock().repair()?;
        self.consumers.repair()?;
        // Consumer side first: its state may only point at messages the message side has.
        let consumers = self.consumers.snapshot()?;
        let (message_indexed, subjects) = {
            // The writer is paused while the message side is captured: every message before
            // `message_indexed` is in its consume log.
            let log = self.log.lock();
            log.sync()?;
            let consume: Vec<_> = self
                .consume
                .read()
                .iter()
                .map(|(s, c)| (s.clone(), c.clone()))
                .collect();
            let mut subjects = BTreeMap::new();
            for (s, c) in consume {
                let mut c = c.write();
                c.sync()?;
                subjects.insert(s, c.len());
            }
            (log.end(), subjects)
        };
        let resync_subject_ends = {
            let mut ends = self.resync_subject_ends.lock();
            ends.retain(|s, end| subjects.get(s).is_none_or(|len| len < end));
            ends.clone()
        };
        let cp = Checkpoint {
            resync_subject_ends,
            message_indexed,
            subjects,
            action_applied: consumers.action_applied,
            action_state_end: Some(consumers.action_state_end),
            groups: consumers.groups,
            consumers: consumers.consumers,
        };
        *gen += 1;
        let oldest = checkpoint::store(
            &self.config.dir.join(CHECKPOINT_DIR),
            *gen,
            &cp,
            self.config.checkpoints_retained,
        )?;
        *self.oldest_checkpoint.lock() = oldest;
        tracing::debug!(generation = *gen, message_indexed, "checkpoint written");
        Ok(())
    }

    fn apply_retention(&self, now: SystemTime) -> Result<usize> {
        let cutoff = now
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let keep_from = if self.config.retention_deletes_unconsumed {
            u64::MAX
        } else {
            self.oldest_needed_offset()?
        };
        let (deleted, start) = {
            let mut log = self.log.lock();
            let deleted = log.delete_before(keep_from, cutoff)?;
            (deleted, log.start())
        };
        let consume: Vec<_> = self.consume.read().values().cloned().collect();
        for c in consume {
            c.write().delete_before_offset(start)?;
        }
        let action_keep = self.oldest_checkpoint.lock().action_applied;
        self.consumers.trim(action_keep)?;
        if deleted > 0 {
            tracing::info!(deleted, "message-log segments deleted by retention");
        }
        Ok(deleted)
    }

    /// The lowest message-log offset a group or consumer still needs.
    fn oldest_needed_offset(&self) -> Result<u64> {
        let mut min = u64::MAX;
        for (subject, seq) in self.consumers.needed()? {
            let Some(clog) = self.consume_log(&subject) else {
                continue;
            };
            let clog = clog.read();
            // A position before the stored range needs the first stored message.
            let seq = seq.max(clog.first());
            if let Some(Some(e)) = clog.read(seq, 1)?.first() {
                min = min.min(e.offset);
            }
        }
        Ok(min)
    }

    /// The maintenance thread's loop: checkpoints and applies retention every
    /// `checkpoint_interval`, until the store is closed.
    fn maintain(&self) {
        let interval = self.config.checkpoint_interval;
        let mut last = std::time::Instant::now();
        while !self.closed.load(Ordering::Acquire) {
            // Unparked when the store stops; spurious wake-ups just loop.
            std::thread::park_timeout(interval.saturating_sub(last.elapsed()));
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            if last.elapsed() < interval {
                continue;
            }
            last = std::time::Instant::now();
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "checkpoint failed");
            }
            if let Err(e) = self.apply_retention(SystemTime::now()) {
                tracing::error!(error = %e, "retention failed");
            }
        }
    }
}
