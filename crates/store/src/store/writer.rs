//! The append path, in two stages:
//! - the caller ([`Encoded`], on its own thread) validates its messages, frames them as
//!   records and prepares their consume-log entries (offsets relative to its batch), so that
//!   per-message work spreads over every thread that appends;
//! - the writer thread takes every batch waiting (group commit), places the batches in the
//!   message log, writes them with one vectored write per segment, with `SyncBeforeAck` fsyncs
//!   once for all of them, appends each batch's entries to its subjects' consume logs with the
//!   offsets made absolute, notes in each batch where it went, hands it back and wakes
//!   long-polls. The caller turns that into its per-message results.
//!
//! The writer reads per-batch metadata and the entries, nothing per message that it has to
//! search: with two cores the writer is the busiest thread, and every cache line it pulls from
//! the caller's core costs it time.
//!
//! (A separate indexing thread, appends written by the callers themselves, combining callers
//! and replies handed to the async runtime once per commit were tried and measured no faster
//! on two cores.)

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::{check_name, Answer, Appended, FlushPolicy, Inner, Job, WriteJob, CONSUME_DIR};
use crate::consume_log::{ConsumeLog, Entry};
use crate::error::{Result, StoreError};
use crate::log::{frame_with, Placed, RECORD_HEADER};
use crate::{names, record};

/// Most jobs merged into one group commit.
const MAX_JOBS: usize = 1024;

/// Checks that a message can be stored; `size` is its record's size.
fn validate(subject: &str, tags: &[String], size: usize, segment_size: u64) -> Result<()> {
    check_name("subject", subject)?;
    if tags.len() > record::MAX_TAGS {
        return Err(StoreError::InvalidName {
            what: "tags",
            reason: "more than 255 tags",
        });
    }
    if tags.iter().any(|t| t.len() > usize::from(u16::MAX)) {
        return Err(StoreError::InvalidName {
            what: "tag",
            reason: "longer than 65535 bytes",
        });
    }
    if size as u64 > segment_size {
        return Err(StoreError::TooLarge {
            size,
            segment: segment_size,
        });
    }
    Ok(())
}

/// A batch of messages validated and framed as message-log records on the appending caller's
/// thread, with its consume-log entries ready; the writer places it and hands it back.
pub(crate) struct Encoded {
    /// The valid messages' records (`length | CRC | payload`), back to back, in order.
    records: Vec<u8>,
    /// The size of each record in `records` (the writer reads them only to split the batch
    /// at a segment's end).
    sizes: Vec<usize>,
    /// The batch's messages by subject.
    groups: Vec<Group>,
    /// Per valid message, in order: its group.
    group_of: Vec<u32>,
    /// Refused messages: their index in the batch and why.
    refused: Vec<(usize, StoreError)>,
    /// Messages pushed, valid or not.
    count: usize,
    /// Where the writer put `records`: `(byte in records, log offset)` for each contiguous
    /// piece, in order (one, unless the batch crossed into a new segment).
    placed: Vec<(usize, u64)>,
    /// How many messages the caller expects to push.
    hint: usize,
    /// The batch's append time (ms since the Unix epoch).
    now_ms: u64,
    segment_size: u64,
}

/// One subject's messages in an [`Encoded`] batch.
struct Group {
    subject: String,
    /// Consume-log entries, their offsets relative to the batch's `records` (the writer moves
    /// them to where it placed the batch as it appends them).
    entries: Vec<Entry>,
    /// The first entry's consume-log sequence, set by the writer.
    first: u64,
    /// Results handed out so far (see [`Encoded::results`]).
    handed: usize,
}

impl Encoded {
    /// An empty batch for about `hint` messages, stamped with the current time;
    /// [`Encoded::push`] adds messages. The messages are copied as they are pushed, so callers
    /// keep (and may borrow) their own.
    pub(crate) fn new(hint: usize, segment_size: u64) -> Self {
        Self {
            records: Vec::new(),
            sizes: Vec::with_capacity(hint),
            groups: Vec::new(),
            group_of: Vec::with_capacity(hint),
            refused: Vec::new(),
            count: 0,
            placed: Vec::with_capacity(1),
            hint,
            now_ms: now_ms(),
            segment_size,
        }
    }

    /// Validates and frames one message, and prepares its consume-log entry (an invalid
    /// message is recorded as refused).
    pub(crate) fn push(&mut self, subject: &str, tags: &[String], body: &[u8]) {
        let index = self.count;
        self.count += 1;
        let payload =
            12 + subject.len() + tags.iter().map(|t| 2 + t.len()).sum::<usize>() + body.len();
        let size = RECORD_HEADER as usize + payload;
        if let Err(e) = validate(subject, tags, size, self.segment_size) {
            self.refused.push((index, e));
            return;
        }
        if self.records.capacity() - self.records.len() < size {
            // Room for this message and the ones still expected, if they are like it (never
            // guessing more than 64 KiB each): one allocation for a batch of similar messages.
            let others = self.hint.saturating_sub(index + 1);
            self.records.reserve(size + size.min(64 * 1024) * others);
        }
        let at = self.records.len();
        let now_ms = self.now_ms;
        frame_with(&mut self.records, |out| {
            record::header(out, subject, tags, now_ms);
            out.extend_from_slice(body);
        });
        self.sizes.push(size);
        let g = match self.groups.iter().rposition(|g| g.subject == subject) {
            Some(g) => g,
            None => {
                self.groups.push(Group {
                    subject: subject.to_owned(),
                    entries: Vec::new(),
                    first: 0,
                    handed: 0,
                });
                self.groups.len() - 1
            }
        };
        self.groups[g].entries.push(Entry {
            offset: at as u64,
            len: payload as u32,
            tags: record::tag_summary(tags),
        });
        self.group_of.push(g as u32);
    }

    /// The batch if every message is valid, else the first refusal.
    pub(crate) fn all_valid(mut self) -> Result<Self> {
        if self.refused.is_empty() {
            Ok(self)
        } else {
            Err(self.refused.swap_remove(0).1)
        }
    }

    /// Each message's result, in order, once the writer placed and indexed the batch.
    pub(crate) fn results(mut self) -> Vec<Result<Appended>> {
        let mut out = Vec::with_capacity(self.count);
        let mut refused = std::mem::take(&mut self.refused).into_iter().peekable();
        let mut valid = 0;
        for i in 0..self.count {
            match refused.next_if(|(at, _)| *at == i) {
                Some((_, e)) => out.push(Err(e)),
                None => {
                    out.push(Ok(self.next_appended(valid)));
                    valid += 1;
                }
            }
        }
        out
    }

    /// Where each message went, in order, for a batch whose messages were all valid.
    pub(crate) fn appended(mut self) -> Vec<Appended> {
        (0..self.group_of.len())
            .map(|i| self.next_appended(i))
            .collect()
    }

    /// Where the `valid`-th valid message went (called in order).
    fn next_appended(&mut self, valid: usize) -> Appended {
        let g = self.group_of[valid] as usize;
        let group = &mut self.groups[g];
        let k = group.handed;
        group.handed += 1;
        Appended {
            offset: offset_of(&self.placed, group.entries[k].offset),
            sequence: group.first + k as u64,
        }
    }
}

/// The log offset of the record at byte `at` of a batch's records, given where its pieces
/// were placed.
fn offset_of(placed: &[(usize, u64)], at: u64) -> u64 {
    let i = placed.partition_point(|&(start, _)| start as u64 <= at);
    match i.checked_sub(1).and_then(|i| placed.get(i)) {
        Some(&(start, offset)) => offset + (at - start as u64),
        None => at,
    }
}

/// The current time in ms since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The writer thread's loop: group commits until [`Job::Stop`] or until every
/// [`super::Store`] handle is gone.
pub(crate) fn run(inner: &Inner, jobs: &mpsc::Receiver<Job>) {
    // Where each commit's batches went; kept from one commit to the next.
    let mut placed = Vec::new();
    let mut stop = false;
    while !stop {
        let Ok(Job::Write(first)) = jobs.recv() else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(Job::Write(more)) => batch.push(more),
                Ok(Job::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let result = commit(inner, &mut batch, &mut placed);
        match &result {
            Ok(()) => wake(inner, &batch),
            Err(e @ StoreError::MaybeStored { .. }) => {
                tracing::error!(error = %e, "append failed; the batch may be stored");
            }
            Err(e) => tracing::error!(error = %e, "append failed; nothing of it stored"),
        }
        for job in batch {
            // A caller that stopped waiting is not an error.
            let _ = job.reply.send(Answer {
                result: result.as_ref().map(|_| ()).map_err(shared),
                encoded: job.encoded,
            });
        }
    }
}

/// Writes a batch's records to the message log (fsynced with `SyncBeforeAck`), then their
/// consume-log entries, holding the log throughout so a checkpoint sees every written message
/// indexed.
///
/// A failed write or fsync cuts the batch from the log ([`StoreError::Failed`]: not stored;
/// [`StoreError::MaybeStored`] if the cut failed too), and the next commit repairs the log
/// first (see [`crate::log`]). If indexing fails, the messages are in the message log (and
/// recovery re-indexes them): that is [`StoreError::MaybeStored`] too.
fn commit(inner: &Inner, batch: &mut [WriteJob], placed: &mut Vec<Placed>) -> Result<()> {
    let mut log = inner.log.lock();
    let start = log.end();
    {
        let runs: Vec<(&[u8], &[usize])> = batch
            .iter()
            .map(|j| (&j.encoded.records[..], &j.encoded.sizes[..]))
            .collect();
        placed.clear();
        log.append_runs(&runs, placed)?;
    }
    if inner.config.flush == FlushPolicy::SyncBeforeAck {
        if let Err(e) = log.sync() {
            return Err(log.rewind(start, &e));
        }
    }
    for p in placed.iter() {
        if let Some(job) = batch.get_mut(p.run) {
            job.encoded.placed.push((p.at, p.offset));
        }
    }
    index(inner, batch).map_err(|e| StoreError::MaybeStored {
        reason: format!("written to the message log, not indexed: {e}"),
    })?;
    inner.ship_messages_to(log.end());
    Ok(())
}

/// Appends each batch's entries to their subjects' consume logs, at the offsets the batch was
/// placed at, batch by batch (so in message-log order), noting each group's first sequence.
fn index(inner: &Inner, batch: &mut [WriteJob]) -> Result<()> {
    for job in batch {
        let e = &mut job.encoded;
        for group in &mut e.groups {
            let log = consume_log_for(inner, &group.subject)?;
            let placed = &e.placed;
            group.first = log
                .write()
                .append_moved(&group.entries, |at| offset_of(placed, at))?;
        }
    }
    Ok(())
}

/// Wakes long-polls on the subjects a commit grew.
fn wake(inner: &Inner, batch: &[WriteJob]) {
    wake_subjects(
        inner,
        batch
            .iter()
            .flat_map(|j| &j.encoded.groups)
            .map(|g| (g.subject.as_str(), g.first + g.entries.len() as u64)),
    );
}

/// Wakes long-polls on subjects, each with its new length.
pub(super) fn wake_subjects<'a>(inner: &Inner, grown: impl IntoIterator<Item = (&'a str, u64)>) {
    let mut watchers = inner.watchers.lock();
    if watchers.is_empty() {
        return;
    }
    for (subject, len) in grown {
        let Some(tx) = watchers.get(subject) else {
            continue;
        };
        if tx.receiver_count() == 0 {
            watchers.remove(subject);
        } else {
            tx.send_replace(len);
        }
    }
}

/// One batch's error for each of its jobs (errors are not `Clone`), keeping what callers act
/// on: closed, not stored, or maybe stored.
fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Closed => StoreError::Closed,
        StoreError::MaybeStored { reason } => StoreError::MaybeStored {
            reason: reason.clone(),
        },
        StoreError::Failed { reason } => StoreError::Failed {
            reason: reason.clone(),
        },
        e => StoreError::Failed {
            reason: e.to_string(),
        },
    }
}

pub(super) fn consume_log_for(inner: &Inner, subject: &str) -> Result<Arc<RwLock<ConsumeLog>>> {
    if let Some(c) = inner.consume_log(subject) {
        return Ok(c);
    }
    let dir = names::ensure_dir(&inner.config.dir.join(CONSUME_DIR), &[subject])?;
    let c = Arc::new(RwLock::new(ConsumeLog::open(
        &dir,
        inner.config.index_segment_entries,
        0,
        u64::MAX,
    )?));
    inner.consume.write().insert(subject.to_owned(), c.clone());
    Ok(c)
}
