//! The writer thread: takes every append waiting in the queue (group commit), writes all their
//! records with one write to the message log and each subject's index entries with one write
//! to its consume log, fsyncs once with `SyncBeforeAck`, then answers and wakes watchers.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::{check_name, Appended, FlushPolicy, Inner, NewMessage, WriteJob, CONSUME_DIR};
use crate::consume_log::{ConsumeLog, Entry};
use crate::error::{Result, StoreError};
use crate::log::RECORD_HEADER;
use crate::{names, record};

/// Most jobs merged into one group commit.
const MAX_JOBS: usize = 1024;

/// Checks that a message can be stored.
pub(crate) fn validate(m: &NewMessage, segment_size: u64) -> Result<()> {
    check_name("subject", &m.subject)?;
    if m.tags.len() > record::MAX_TAGS {
        return Err(StoreError::InvalidName {
            what: "tags",
            reason: "more than 255 tags",
        });
    }
    if m.tags.iter().any(|t| t.len() > usize::from(u16::MAX)) {
        return Err(StoreError::InvalidName {
            what: "tag",
            reason: "longer than 65535 bytes",
        });
    }
    let size = RECORD_HEADER as usize + record_len(m);
    if size as u64 > segment_size {
        return Err(StoreError::TooLarge {
            size,
            segment: segment_size,
        });
    }
    Ok(())
}

fn record_len(m: &NewMessage) -> usize {
    12 + m.subject.len() + m.tags.iter().map(|t| 2 + t.len()).sum::<usize>() + m.body.len()
}

pub(crate) fn run(inner: &Inner, jobs: &mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let failed = inner.failed.lock().clone();
        let (results, touched) = match failed {
            Some(reason) => {
                let err = || StoreError::Failed {
                    reason: reason.clone(),
                };
                (batch.iter().map(|_| Err(err())).collect(), Vec::new())
            }
            None => write_batch(inner, &batch),
        };
        // Wake long-polls for the subjects that grew.
        if !touched.is_empty() {
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
        for (job, result) in batch.into_iter().zip(results) {
            // A caller that stopped waiting is not an error.
            let _ = job.reply.send(result);
        }
    }
}

type JobResult = Result<Vec<Result<Appended>>>;

/// Writes the batch; returns each job's result and the new length of every subject written.
fn write_batch(inner: &Inner, batch: &[WriteJob]) -> (Vec<JobResult>, Vec<(String, u64)>) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut log = inner.log.lock();
    // Per job, per message: (subject index, index in that subject's entries) or its error.
    let mut placed: Vec<Vec<Result<(usize, usize)>>> = Vec::with_capacity(batch.len());
    let mut subjects: Vec<&str> = Vec::new();
    let mut entries: Vec<Vec<Entry>> = Vec::new();
    let mut header = Vec::with_capacity(64);
    let mut fatal = None;
    'jobs: for job in batch {
        let mut out = Vec::with_capacity(job.messages.len());
        for m in &job.messages {
            if let Err(e) = validate(m, inner.config.segment_size) {
                out.push(Err(e));
                continue;
            }
            record::header(&mut header, &m.subject, &m.tags, now_ms);
            match log.append_parts(&[&header, &m.body]) {
                Ok(offset) => {
                    let idx = match subjects.iter().rposition(|s| *s == m.subject) {
                        Some(i) => i,
                        None => {
                            subjects.push(&m.subject);
                            entries.push(Vec::new());
                            subjects.len() - 1
                        }
                    };
                    out.push(Ok((idx, entries[idx].len())));
                    entries[idx].push(Entry {
                        offset,
                        len: (header.len() + m.body.len()) as u32,
                        tags: record::tag_summary(&m.tags),
                    });
                }
                Err(e) => {
                    fatal = Some(e);
                    break 'jobs;
                }
            }
        }
        placed.push(out);
    }
    let written = match fatal {
        Some(e) => Err(e),
        None => log.write_pending(),
    };
    let durable = written.and_then(|()| {
        if inner.config.flush == FlushPolicy::SyncBeforeAck {
            log.sync()
        } else {
            Ok(())
        }
    });
    drop(log);
    if let Err(e) = durable {
        tracing::error!(error = %e, "message log write failed; refusing appends until reopened");
        inner.fail(&e);
        return (batch.iter().map(|_| Err(failed(&e))).collect(), Vec::new());
    }
    // Index: one consume-log write per subject, in message order.
    let mut firsts = vec![0u64; subjects.len()];
    let mut touched = Vec::with_capacity(subjects.len());
    for (i, subject) in subjects.iter().enumerate() {
        let indexed = consume_log_for(inner, subject).and_then(|c| {
            let mut c = c.write();
            let first = c.append_many(&entries[i])?;
            Ok((first, c.len()))
        });
        match indexed {
            Ok((first, len)) => {
                firsts[i] = first;
                touched.push(((*subject).to_owned(), len));
            }
            Err(e) => {
                // The messages are in the message log; recovery re-indexes them.
                tracing::error!(error = %e, subject, "consume log write failed; refusing appends until reopened");
                inner.fail(&e);
                return (batch.iter().map(|_| Err(failed(&e))).collect(), touched);
            }
        }
    }
    let results = placed
        .into_iter()
        .map(|job| {
            Ok(job
                .into_iter()
                .map(|p| {
                    p.map(|(s, i)| Appended {
                        offset: entries[s][i].offset,
                        sequence: firsts[s] + i as u64,
                    })
                })
                .collect())
        })
        .collect();
    (results, touched)
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
