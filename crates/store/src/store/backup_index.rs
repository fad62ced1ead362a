//! The message index a backup server copies (QMQ's sync type 5): per message, its subject,
//! consume-log sequence and bytes, read from the message log in log order.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::{Inner, Store};
use crate::consume_log::ConsumeLog;
use crate::error::{Result, StoreError};
use crate::log::RECORD_HEADER;
use crate::record;
use crate::replication::LogStream;

/// One message as a backup server's index sees it ([`Store::read_index_chunk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    /// Offset of its record in the message log.
    pub offset: u64,
    /// Offset just past its record: where reading goes on after it.
    pub end: u64,
    /// Its subject.
    pub subject: String,
    /// Its consume-log sequence in its subject.
    pub sequence: u64,
    /// When the store appended it (ms since the Unix epoch).
    pub appended_at_ms: u64,
    /// The message bytes as appended (opaque to the store: the broker reads the message id
    /// and creation time from them).
    pub message: Bytes,
}

/// What [`Store::read_index_chunk`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChunk {
    /// Where reading began: the offset asked for, raised to the log's first stored offset
    /// when retention deleted it.
    pub start: u64,
    /// Offset just past the last record looked at: where to read from next (`start` when
    /// there was nothing new). Records passed over (see [`Store::read_index_chunk`]) are
    /// behind it too.
    pub next: u64,
    /// The messages, in message-log order.
    pub records: Vec<IndexRecord>,
}

/// A subject's consume log and the sequence its next record in the log probably has.
struct Cursor {
    clog: Arc<RwLock<ConsumeLog>>,
    next_seq: Option<u64>,
}

impl Inner {
    /// The consume-log sequence of `subject`'s message at `offset`, if it is indexed.
    /// Records come in log order, so it is usually the one after the previous record's of the
    /// subject; otherwise a binary search of the consume log finds it.
    fn sequence_at(
        &self,
        cursors: &mut HashMap<String, Cursor>,
        subject: &str,
        offset: u64,
    ) -> Result<Option<u64>> {
        if !cursors.contains_key(subject) {
            let Some(clog) = self.consume_log(subject) else {
                return Ok(None);
            };
            cursors.insert(
                subject.to_owned(),
                Cursor {
                    clog,
                    next_seq: None,
                },
            );
        }
        let Some(cursor) = cursors.get_mut(subject) else {
            return Ok(None);
        };
        let at = |seq: u64| -> Result<bool> {
            let entry = self.entries(subject, &cursor.clog, seq, 1)?;
            Ok(entry.first().copied().flatten().map(|e| e.offset) == Some(offset))
        };
        let mut found = None;
        if let Some(seq) = cursor.next_seq {
            if at(seq)? {
                found = Some(seq);
            }
        }
        if found.is_none() {
            let seq = cursor.clog.read().first_at_or_after(offset)?;
            if at(seq)? {
                found = Some(seq);
            }
        }
        if let Some(seq) = found {
            cursor.next_seq = Some(seq + 1);
        }
        Ok(found)
    }
}

impl Store {
    /// Reads the messages from message-log offset `from` for a backup server's index (QMQ's
    /// sync type 5): each one's subject, consume-log sequence, append time and bytes, in log
    /// order.
    ///
    /// - `from` must be where a record starts: the log's start, or a chunk's `next`. Below
    ///   the log's first stored offset (retention) it is raised to it (`start` says so).
    /// - Looks at most `max_records` records and reads at most `max_bytes` of them (but
    ///   always the first record, however large), across segments, up to the *shippable*
    ///   end ([`Store::watch_log_end`]): no message a failed write could still take back.
    /// - A record that does not decode, or whose consume-log entry is missing or does not
    ///   point at it (damaged and not rebuildable, or deleted by retention meanwhile), is
    ///   passed over (`next` moves past it, no record).
    /// - Nothing new (`from` at the shippable end, or between it and the written end): no
    ///   records and `next == start`.
    /// - `from` beyond the written end ([`Store::log_end`]): [`StoreError::Ahead`].
    /// - A damaged record in the range is [`StoreError::Corrupt`], as for
    ///   [`Store::read_log_chunk`].
    ///
    /// Blocking I/O (`pread`): call it from a blocking thread.
    pub fn read_index_chunk(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<IndexChunk> {
        let shippable = *self.inner.message_shippable.borrow();
        let end = self.log_end(LogStream::Message);
        if from > end.max(shippable) {
            return Err(StoreError::Ahead {
                stream: LogStream::Message,
                offset: from,
                end,
            });
        }
        let head = RECORD_HEADER as usize;
        let mut cursors = HashMap::new();
        let mut records = Vec::new();
        let mut looked = 0usize;
        let mut read = 0usize;
        let mut start = None;
        let mut next = from;
        'chunks: while looked < max_records {
            let room = max_bytes.saturating_sub(read);
            if start.is_some() && room < head {
                break;
            }
            let (at, bytes) = self
                .inner
                .message_reader
                .read_chunk(next, shippable, room)?;
            if start.is_none() {
                start = Some(at);
                next = at;
            } else if bytes.len() > room {
                // A record larger than what is left of the budget: the next chunk's.
                break;
            }
            if bytes.is_empty() {
                break;
            }
            read += bytes.len();
            let bytes = Bytes::from(bytes);
            let mut pos = 0usize;
            // `read_chunk` returns whole, checked records only.
            while pos + head <= bytes.len() {
                if looked == max_records {
                    break 'chunks;
                }
                let len = u32::from_be_bytes([
                    bytes[pos],
                    bytes[pos + 1],
                    bytes[pos + 2],
                    bytes[pos + 3],
                ]) as usize;
                let offset = at + pos as u64;
                let record_end = offset + (head + len) as u64;
                let payload = bytes.slice(pos + head..pos + head + len);
                looked += 1;
                pos += head + len;
                next = record_end;
                let view = match record::decode(&payload, offset) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "index: passing over an undecodable record");
                        continue;
                    }
                };
                let Some(sequence) = self.inner.sequence_at(&mut cursors, view.subject, offset)?
                else {
                    tracing::warn!(
                        subject = view.subject,
                        offset,
                        "index: no consume-log entry for this message; passing over it"
                    );
                    continue;
                };
                let body_at = payload.len() - view.body.len();
                records.push(IndexRecord {
                    offset,
                    end: record_end,
                    subject: view.subject.to_owned(),
                    sequence,
                    appended_at_ms: view.time_ms,
                    message: payload.slice(body_at..),
                });
            }
        }
        let start = start.unwrap_or(from);
        Ok(IndexChunk {
            start,
            next: next.max(start),
            records,
        })
    }
}
