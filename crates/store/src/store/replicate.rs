//! Master/slave replication of the two logs (see [`crate::replication`]): the master ships
//! whole records of its message log and action log; the slave appends them byte for byte and
//! indexes and replays them as the writer thread and recovery do.

use std::collections::HashMap;

use tokio::sync::watch;

use super::writer::{consume_log_for, wake_subjects};
use super::{FlushPolicy, Inner, Store};
use crate::consume_log::Entry;
use crate::error::{Result, StoreError};
use crate::log::{check_records, RECORD_HEADER};
use crate::record;
use crate::replication::{LogChunk, LogStream};

impl Inner {
    /// Moves the message log's shippable end forward to `end` (never back), waking the
    /// watchers.
    pub(super) fn ship_messages_to(&self, end: u64) {
        self.message_shippable.send_if_modified(|v| {
            let moved = end > *v;
            if moved {
                *v = end;
            }
            moved
        });
    }

    fn shippable(&self, stream: LogStream) -> &watch::Sender<u64> {
        match stream {
            LogStream::Message => &self.message_shippable,
            LogStream::Action => &self.consumers.shippable,
        }
    }

    /// Appends replicated message-log bytes (see [`Store::append_replicated`]).
    fn append_replicated_messages(&self, start: u64, bytes: &[u8]) -> Result<u64> {
        let diverged = |expected: u64| StoreError::Diverged {
            stream: LogStream::Message,
            expected,
            got: start,
        };
        let sizes = check_records(bytes, self.config.segment_size).map_err(|(at, reason)| {
            StoreError::BadChunk {
                stream: LogStream::Message,
                offset: start + at as u64,
                reason,
            }
        })?;
        // Entries per subject, in log order, with absolute offsets (records are dense from
        // `start`, whichever segments they land in).
        let mut entries: Vec<(String, Vec<Entry>)> = Vec::new();
        let mut at = 0usize;
        for size in &sizes {
            let offset = start + at as u64;
            let payload = &bytes[at + RECORD_HEADER as usize..at + size];
            match record::decode(payload, offset) {
                Ok(view) => {
                    let entry = Entry {
                        offset,
                        len: payload.len() as u32,
                        tags: record::tag_summary(&view.tags),
                    };
                    match entries.iter_mut().rfind(|(s, _)| s == view.subject) {
                        Some((_, list)) => list.push(entry),
                        None => entries.push((view.subject.to_owned(), vec![entry])),
                    }
                }
                // As recovery does: the record stays (the logs stay byte-identical), it is
                // not indexed.
                Err(e) => tracing::error!(error = %e, "skipping an undecodable replicated message"),
            }
            at += size;
        }
        // Serialised with the writer thread and checkpoints: written and indexed under the
        // log's lock, as a group commit is.
        let mut log = self.log.lock();
        if log.end() != start {
            return Err(diverged(log.end()));
        }
        if sizes.is_empty() {
            return Ok(start);
        }
        log.append_records(bytes, &sizes)?;
        if self.config.flush == FlushPolicy::SyncBeforeAck {
            if let Err(e) = log.sync() {
                return Err(log.rewind(start, &e));
            }
        }
        let mut grown = HashMap::with_capacity(entries.len());
        for (subject, list) in &entries {
            let indexed = consume_log_for(self, subject).and_then(|c| {
                let mut c = c.write();
                c.append_many(list)?;
                Ok(c.len())
            });
            match indexed {
                Ok(len) => {
                    grown.insert(subject.as_str(), len);
                }
                Err(e) => {
                    return Err(StoreError::MaybeStored {
                        reason: format!("replicated messages written, not indexed: {e}"),
                    })
                }
            }
        }
        let end = log.end();
        self.ship_messages_to(end);
        drop(log);
        wake_subjects(self, grown);
        Ok(end)
    }
}

impl Store {
    /// The next offset of `stream` (its written end): where the next record goes, and where a
    /// replica of this store asks its master for more.
    pub fn log_end(&self, stream: LogStream) -> u64 {
        match stream {
            LogStream::Message => self.inner.message_reader.written(),
            LogStream::Action => self.inner.consumers.action_end(),
        }
    }

    /// The first offset of `stream` still stored (retention deletes whole segments from the
    /// front); 0 for a log that never lost a segment.
    pub fn log_start(&self, stream: LogStream) -> u64 {
        match stream {
            LogStream::Message => self.inner.message_reader.start(),
            LogStream::Action => self.inner.consumers.action_reader().start(),
        }
    }

    /// A receiver of `stream`'s *shippable* end (see [`Store::read_log_chunk`]), updated after
    /// every commit: for the message log by the writer thread after each group commit (after
    /// its fsync with [`FlushPolicy::SyncBeforeAck`]) and by [`Store::append_replicated`];
    /// for the action log after each pull, ack or reset (after its fsync with
    /// `SyncBeforeAck`) and each replicated append. It never moves back. A master's sync
    /// server long-polls on it: compare with the replica's offset, await `changed()`.
    pub fn watch_log_end(&self, stream: LogStream) -> watch::Receiver<u64> {
        self.inner.shippable(stream).subscribe()
    }

    /// Master side: whole records of `stream` from `from`, for a replica.
    ///
    /// - `from` below the log's first stored offset (retention) is raised to it: the chunk's
    ///   `start` says where its bytes begin.
    /// - Never crosses the end of the segment holding `start`; at most `max_bytes`, but
    ///   always one whole record when one is available (a record larger than `max_bytes`
    ///   comes alone).
    /// - Only up to the *shippable* end ([`Store::watch_log_end`]): with async flush the
    ///   end of the last commit (written to the OS), with [`FlushPolicy::SyncBeforeAck`] the
    ///   end of the last fsynced commit, so a replica never holds bytes this store could still
    ///   cut after a failed write or fsync.
    /// - Nothing new (`from` at the shippable end, or between it and the written end):
    ///   empty bytes with `start = from` (raised as above).
    /// - `from` beyond the written end ([`Store::log_end`]): [`StoreError::Ahead`]: the
    ///   replica has bytes this store never had.
    /// - A damaged record in the range is [`StoreError::Corrupt`]: it is never shipped (a
    ///   replica would refuse it anyway), so replication stops there until an operator acts.
    ///
    /// Blocking I/O (`pread`): call it from a blocking thread.
    pub fn read_log_chunk(
        &self,
        stream: LogStream,
        from: u64,
        max_bytes: usize,
    ) -> Result<LogChunk> {
        let shippable = *self.inner.shippable(stream).borrow();
        let end = self.log_end(stream);
        if from > end.max(shippable) {
            return Err(StoreError::Ahead {
                stream,
                offset: from,
                end,
            });
        }
        let reader = match stream {
            LogStream::Message => &self.inner.message_reader,
            LogStream::Action => self.inner.consumers.action_reader(),
        };
        let (start, bytes) = reader.read_chunk(from, shippable, max_bytes)?;
        Ok(LogChunk {
            start,
            bytes: bytes.into(),
        })
    }

    /// Slave side: appends replicated bytes of `stream` at `start`, and returns the log's new
    /// end.
    ///
    /// - `start` must be this store's [`Store::log_end`], else [`StoreError::Diverged`] and
    ///   nothing is written (the caller asks again from its end, or resynchronises).
    /// - Every record is checked first (length, CRC, whole records only, none larger than
    ///   this store's segment size): a bad chunk is [`StoreError::BadChunk`], nothing written.
    /// - Message log: the records land at the same offsets as on the master, are indexed into
    ///   the consume logs exactly as the writer thread indexes appends (so the same
    ///   consume-log sequences), under the message log's lock (serialised with the writer
    ///   thread and checkpoints), and wake [`Store::watch_subject`] watchers.
    /// - Action log: the records are appended and applied to the consumer side (pull logs,
    ///   positions, progress) as recovery replays them, with the groups and consumers they
    ///   touch locked throughout, so a checkpoint sees them applied or not at all.
    /// - With [`FlushPolicy::SyncBeforeAck`] the bytes are fsynced before it returns; a failed
    ///   write or fsync cuts them again ([`StoreError::Failed`]) as for a client append.
    /// - If the bytes were written but could not all be indexed or applied (a consume-log or
    ///   pull-log write failed) the answer is [`StoreError::MaybeStored`]: [`Store::log_end`]
    ///   says the bytes are there; the next open rebuilds what is missing from them.
    ///
    /// Safe while the store's own threads (writer, flusher, maintenance) run. A replica takes
    /// no client appends, pulls or acks; if one happens anyway it is serialised with this
    /// call and makes the logs diverge from the master's (the next chunk is then
    /// [`StoreError::Diverged`]), but corrupts nothing. Blocking I/O: call it from a blocking
    /// thread.
    pub fn append_replicated(&self, stream: LogStream, start: u64, bytes: &[u8]) -> Result<u64> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        match stream {
            LogStream::Message => self.inner.append_replicated_messages(start, bytes),
            LogStream::Action => self.inner.consumers.append_replicated(start, bytes),
        }
    }
}
