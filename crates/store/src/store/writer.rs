//! The append path, in two stages:
//! - the caller ([`Encoded::new`], on its own thread) validates its messages and frames them as
//!   records, so that work spreads over every thread that appends;
//! - the writer thread takes every batch waiting (group commit), gives the records their
//!   offsets, writes them with one vectored write per segment, with `SyncBeforeAck` fsyncs once
//!   for all of them, writes each subject's consume-log entries with one write, then answers
//!   the callers and wakes long-polls.
//!
//! (A separate indexing thread, appends written by the callers themselves and replies handed to
//! the async runtime once per commit were tried and measured no faster on two cores.)

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::{check_name, Answer, Appended, FlushPolicy, Inner, Job, WriteJob, CONSUME_DIR};
use crate::consume_log::{ConsumeLog, Entry};
use crate::error::{Result, StoreError};
use crate::log::{frame_with, RECORD_HEADER};
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
/// thread, so the one writer thread only hands finished records to the kernel.
pub(crate) struct Encoded {
    /// The valid messages' records (`length | CRC | payload`), back to back, in order.
    records: Vec<u8>,
    /// The size of each record in `records`.
    sizes: Vec<usize>,
    /// The batch's subjects, each once.
    subjects: Vec<String>,
    /// Per message: its subject (index in `subjects`) and tag summary, or why it was refused.
    items: Vec<Result<Item>>,
    /// The batch's append time (ms since the Unix epoch).
    now_ms: u64,
    segment_size: u64,
}

/// One valid message of an [`Encoded`] batch.
struct Item {
    subject: usize,
    tags: u64,
}

impl Encoded {
    /// An empty batch for about `hint` messages of `bytes` bytes in all, stamped with the
    /// current time; [`Encoded::push`] adds messages. The messages are copied as they are
    /// pushed, so callers keep (and may borrow) their own.
    pub(crate) fn new(hint: usize, bytes: usize, segment_size: u64) -> Self {
        Self {
            records: Vec::with_capacity(bytes + hint * (RECORD_HEADER as usize + 32)),
            sizes: Vec::with_capacity(hint),
            subjects: Vec::new(),
            items: Vec::with_capacity(hint),
            now_ms: now_ms(),
            segment_size,
        }
    }

    /// Validates and frames one message (an invalid one is recorded as refused).
    pub(crate) fn push(&mut self, subject: &str, tags: &[String], body: &[u8]) {
        let payload =
            12 + subject.len() + tags.iter().map(|t| 2 + t.len()).sum::<usize>() + body.len();
        let size = RECORD_HEADER as usize + payload;
        if let Err(e) = validate(subject, tags, size, self.segment_size) {
            self.items.push(Err(e));
            return;
        }
        let at = self.records.len();
        let now_ms = self.now_ms;
        frame_with(&mut self.records, |out| {
            record::header(out, subject, tags, now_ms);
            out.extend_from_slice(body);
        });
        self.sizes.push(self.records.len() - at);
        let subject = match self.subjects.iter().rposition(|s| s == subject) {
            Some(i) => i,
            None => {
                self.subjects.push(subject.to_owned());
                self.subjects.len() - 1
            }
        };
        self.items.push(Ok(Item {
            subject,
            tags: record::tag_summary(tags),
        }));
    }

    /// The batch if every message is valid, else the first refusal.
    pub(crate) fn all_valid(mut self) -> Result<Self> {
        if let Some(i) = self.items.iter().position(Result::is_err) {
            // That item is an error: hand it out.
            self.items.swap_remove(i)?;
        }
        Ok(self)
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
        if let Some(reason) = inner.failed.lock().clone() {
            refuse(batch, &StoreError::Failed { reason });
            continue;
        }
        match commit(inner, &mut batch) {
            Ok((results, touched)) => {
                wake(inner, touched);
                for (job, result) in batch.into_iter().zip(results) {
                    // A caller that stopped waiting is not an error.
                    let _ = job.reply.send(Answer {
                        result: Ok(result),
                        _spent: job.encoded,
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "append failed; refusing appends until reopened");
                inner.fail(&e);
                refuse(batch, &e);
            }
        }
    }
}

/// Answers every job of a batch that was not stored with `e`.
fn refuse(batch: Vec<WriteJob>, e: &StoreError) {
    for job in batch {
        // A caller that stopped waiting is not an error.
        let _ = job.reply.send(Answer {
            result: Err(failed(e)),
            _spent: job.encoded,
        });
    }
}

/// Writes a batch's records to the message log (fsynced with `SyncBeforeAck`), then their
/// consume-log entries, holding the log throughout so a checkpoint sees every written message
/// indexed. If indexing fails, the messages are in the message log and recovery re-indexes
/// them.
fn commit(inner: &Inner, batch: &mut [WriteJob]) -> Result<Indexed> {
    let mut log = inner.log.lock();
    let runs: Vec<(&[u8], &[usize])> = batch
        .iter()
        .map(|j| (&j.encoded.records[..], &j.encoded.sizes[..]))
        .collect();
    let mut offsets = Vec::with_capacity(runs.iter().map(|r| r.1.len()).sum());
    log.append_runs(&runs, &mut offsets)?;
    if inner.config.flush == FlushPolicy::SyncBeforeAck {
        log.sync()?;
    }
    index(inner, batch, &offsets)
}

/// Wakes long-polls on the subjects that grew.
fn wake(inner: &Inner, touched: Vec<(String, u64)>) {
    let mut watchers = inner.watchers.lock();
    for (subject, len) in touched {
        if let Some(tx) = watchers.get(&subject) {
            if tx.receiver_count() == 0 {
                watchers.remove(&subject);
            } else {
                tx.send_replace(len);
            }
        }
    }
}

type Indexed = (Vec<Vec<Result<Appended>>>, Vec<(String, u64)>);

/// One subject's share of a group commit.
struct SubjectBatch {
    subject: String,
    log: Arc<RwLock<ConsumeLog>>,
    /// The sequence the next entry gets.
    next: u64,
    entries: Vec<Entry>,
}

/// Writes a written batch's consume-log entries, one append per subject in message order;
/// returns each job's per-message results and the new length of every subject written.
fn index(inner: &Inner, batch: &mut [WriteJob], offsets: &[u64]) -> Result<Indexed> {
    let mut subjects: Vec<SubjectBatch> = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    let mut offsets = offsets.iter().copied();
    for job in batch {
        let e = &mut job.encoded;
        // The commit-wide index of each of the job's subjects.
        let mut global = Vec::with_capacity(e.subjects.len());
        for s in &mut e.subjects {
            match subjects.iter().position(|b| b.subject == *s) {
                Some(i) => global.push(i),
                None => {
                    let log = consume_log_for(inner, s)?;
                    // Only this thread appends, so the length stays put until the append.
                    let next = log.read().len();
                    subjects.push(SubjectBatch {
                        subject: std::mem::take(s),
                        log,
                        next,
                        entries: Vec::new(),
                    });
                    global.push(subjects.len() - 1);
                }
            }
        }
        let mut sizes = e.sizes.iter();
        let mut out = Vec::with_capacity(e.items.len());
        for item in e.items.drain(..) {
            let item = match item {
                Ok(item) => item,
                Err(refused) => {
                    out.push(Err(refused));
                    continue;
                }
            };
            let (Some(offset), Some(size)) = (offsets.next(), sizes.next()) else {
                return Err(StoreError::Failed {
                    reason: "a written batch lost track of its records".into(),
                });
            };
            let b = &mut subjects[global[item.subject]];
            out.push(Ok(Appended {
                offset,
                sequence: b.next,
            }));
            b.next += 1;
            b.entries.push(Entry {
                offset,
                len: (size - RECORD_HEADER as usize) as u32,
                tags: item.tags,
            });
        }
        results.push(out);
    }
    let mut touched = Vec::with_capacity(subjects.len());
    for b in subjects {
        let mut log = b.log.write();
        log.append_many(&b.entries)?;
        touched.push((b.subject, log.len()));
    }
    Ok((results, touched))
}

fn failed(e: &StoreError) -> StoreError {
    StoreError::Failed {
        reason: e.to_string(),
    }
}

fn consume_log_for(inner: &Inner, subject: &str) -> Result<Arc<RwLock<ConsumeLog>>> {
    if let Some(c) = inner.consume_log(subject) {
        return Ok(c);
    }
    let dir = inner
        .config
        .dir
        .join(CONSUME_DIR)
        .join(names::encode(subject));
    let c = Arc::new(RwLock::new(ConsumeLog::open(
        &dir,
        inner.config.index_segment_entries,
        0,
        u64::MAX,
    )?));
    inner.consume.write().insert(subject.to_owned(), c.clone());
    Ok(c)
}
