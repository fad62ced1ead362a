//! Accepting messages: the writer thread groups requests into one message-log write and fsync,
//! then appends the messages to their schedule logs (and the wheel, for loaded buckets).
//!
//! A message is acknowledged only after the message-log fsync; when the write or the fsync
//! fails, the batch is cut off the log again so that an error answer means "not stored".

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::DelayConfig;
use crate::error::{DelayError, ScheduleError};
use crate::record::{encode_payload, put_frame_with, FRAME_HEADER};
use crate::store::NewRecord;

use super::{Inner, Job, NewMessage, Reply, Scheduled, MAX_NAME};

/// Most messages the writer puts into one message-log write + fsync.
const MAX_GROUP: usize = 4096;

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

pub(super) fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
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
                        replies[ji].push(Ok(Scheduled {
                            due_ms: due,
                            wal_offset: 0,
                        }));
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
        let started = std::time::Instant::now();
        let base = {
            let mut wal = self.wal.lock();
            let base = wal.append(buf)?;
            if let Err(e) = wal.sync() {
                // Not durable: take the batch back out, so that a restart does not deliver
                // messages whose senders were told they were not stored.
                wal.discard_from(base);
                return Err(e);
            }
            base
        };
        if let Some(m) = &self.cfg.metrics {
            m.append(started.elapsed());
        }
        let _ = self.wal_end.send_replace(base + buf.len() as u64);
        for &(ji, mi, at, ..) in placed {
            if let Some(Ok(s)) = replies[ji].get_mut(mi) {
                s.wal_offset = base + at as u64;
            }
        }
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
            self.load_wake.notify_one();
        }
        Ok(())
    }
}
