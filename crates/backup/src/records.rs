//! Consumption records: what the action log (sync type 1) says about each message.
//!
//! The broker's action log holds, per consumer, pulls (consume-log sequences handed out under
//! new pull-log sequences) and acks (of pull-log sequences). The backup keeps:
//!
//! | table | key | value |
//! |---|---|---|
//! | `pulls` | group, subject, consumer group, consumer, pull sequence | consume sequence, seen at |
//! | `pulls_by_time` | seen at, then the `pulls` key | — |
//! | `records` | group, subject, consume sequence, seen at, action-log offset, consumer group, consumer, action | — |
//! | `records_by_time` | seen at, then the `records` key | — |
//! | `seen` | group, subject, sequence (retry and dead-letter copies only) | seen at |
//!
//! `pulls` translates an ack's pull-log sequences into the messages acked; `records` holds
//! every record of one message (broker group, subject, consume sequence) as one range scan,
//! oldest first. Actions carry no time: **seen at** is the backup's clock when it received
//! the chunk (ms since the epoch), so it lags the consumer by the sync delay and is the time
//! of the catch-up for actions stored while the backup was down. `seen` gives retry and
//! dead-letter copies (which keep their original's creation time) the time they were indexed.
//! Both `*_by_time` tables are the retention order: [`IndexStore::purge_expired`] drops
//! records and pull mappings seen before the retention's cutoff.

use qmq_store::action::Action;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tracing::{debug, warn};

use crate::keys::{prefix_end, put_str, put_time, put_u64, KeyReader};
use crate::store::{expect_offset, now_ms, offset_key, Table, OFFSETS};
use crate::{BackupError, IndexStore};

const PULLS: Table = TableDefinition::new("pulls");
const PULLS_BY_TIME: Table = TableDefinition::new("pulls_by_time");
const RECORDS: Table = TableDefinition::new("records");
const RECORDS_BY_TIME: Table = TableDefinition::new("records_by_time");
pub(crate) const SEEN: Table = TableDefinition::new("seen");

/// The offset stream of the action log (sync type 1).
pub const ACTION_STREAM: &str = "action";

/// Largest action-log record the backup accepts: far above any real one (a pull of millions
/// of messages), so only a garbage length is refused as such rather than as a torn record.
const MAX_RECORD: usize = 64 << 20;

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), BackupError> {
    for t in [PULLS, PULLS_BY_TIME, RECORDS, RECORDS_BY_TIME, SEEN] {
        txn.open_table(t)?;
    }
    Ok(())
}

/// What a consumer did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordAction {
    /// The message was handed to the consumer.
    Pull,
    /// The consumer acked it (done, or failed and sent to its group's retry subject).
    Ack,
}

impl RecordAction {
    fn code(self) -> u8 {
        match self {
            Self::Pull => 0,
            Self::Ack => 1,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Pull),
            1 => Some(Self::Ack),
            _ => None,
        }
    }

    /// QMQ's action code (0 pull, 1 ack).
    pub fn qmq_code(self) -> u8 {
        self.code()
    }
}

/// One consumption record of one message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumptionRecord {
    /// The consumer group.
    pub consumer_group: String,
    /// The consumer id.
    pub consumer_id: String,
    /// Pull or ack.
    pub action: RecordAction,
    /// When the backup received the action (ms since the epoch; actions carry no time).
    pub seen_at: i64,
    /// The action's offset in the broker's action log.
    pub action_offset: u64,
}

/// What [`IndexStore::apply_actions`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppliedActions {
    /// Action-log records read.
    pub actions: usize,
    /// Consumption records stored (one per message pulled or acked).
    pub records: usize,
    /// Acked pull sequences whose pull the backup never saw (before it started, or expired).
    pub unmatched: usize,
}

/// One framed action-log record: its offset and payload.
#[derive(Debug)]
struct Framed<'a> {
    offset: u64,
    payload: &'a [u8],
}

/// Splits `bytes` (starting at log offset `start`) into records, checking each frame and CRC.
fn frames<'a>(group: &str, start: u64, bytes: &'a [u8]) -> Result<Vec<Framed<'a>>, BackupError> {
    let bad = |offset: u64, reason: String| BackupError::BadActions {
        group: group.to_owned(),
        offset,
        reason,
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let offset = start + pos as u64;
        let Some(header) = bytes.get(pos..pos + 8) else {
            return Err(bad(offset, "truncated record header".into()));
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD {
            return Err(bad(offset, format!("bad record length {len}")));
        }
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            return Err(bad(offset, format!("truncated record of {len} bytes")));
        };
        let actual = crc32c::crc32c(payload);
        if actual != crc {
            return Err(bad(
                offset,
                format!("crc mismatch (stored {crc:#010x}, computed {actual:#010x})"),
            ));
        }
        out.push(Framed { offset, payload });
        pos += 8 + len;
    }
    Ok(out)
}

fn pull_prefix(group: &str, subject: &str, cgroup: &str, consumer: &str) -> Vec<u8> {
    let mut k = Vec::new();
    put_str(&mut k, group);
    put_str(&mut k, subject);
    put_str(&mut k, cgroup);
    put_str(&mut k, consumer);
    k
}

fn message_prefix(group: &str, subject: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::new();
    put_str(&mut k, group);
    put_str(&mut k, subject);
    put_u64(&mut k, sequence);
    k
}

fn with_time(seen_at: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    put_time(&mut k, seen_at);
    k.extend_from_slice(key);
    k
}

impl IndexStore {
    /// Stores the consumption records of an action-log chunk of `group` received at `seen_at`
    /// (ms) in answer to a request from `from`, and moves the group's `action` offset past
    /// it, in one transaction. Every record's frame and CRC is checked and every action
    /// decoded before anything is written: a bad one refuses the chunk whole
    /// ([`BackupError::BadActions`]). Refused ([`BackupError::OffsetMismatch`]) unless the
    /// stored offset is `from` (none stored: 0). A chunk starting past `from` (the broker no
    /// longer holds those actions) is accepted with a warning.
    pub fn apply_actions(
        &self,
        group: &str,
        from: u64,
        start: u64,
        bytes: &[u8],
        seen_at: i64,
    ) -> Result<AppliedActions, BackupError> {
        if start < from {
            return Err(BackupError::BadActions {
                group: group.to_owned(),
                offset: start,
                reason: format!("chunk starts before the asked offset {from}"),
            });
        }
        let frames = frames(group, start, bytes)?;
        let mut actions = Vec::with_capacity(frames.len());
        for f in &frames {
            let a = Action::decode(f.payload, f.offset).map_err(|e| BackupError::BadActions {
                group: group.to_owned(),
                offset: f.offset,
                reason: e.to_string(),
            })?;
            actions.push((f.offset, a));
        }
        let next = start + bytes.len() as u64;
        let okey = offset_key(group, ACTION_STREAM);
        if next == from {
            // An idle poll's answer: nothing to write.
            let stored = self.offset(group, ACTION_STREAM)?;
            if stored.unwrap_or(0) != from {
                return Err(BackupError::OffsetMismatch {
                    group: group.to_owned(),
                    stored,
                    from,
                });
            }
            return Ok(AppliedActions::default());
        }
        if start > from {
            warn!(
                group,
                from, start, "the broker no longer holds these actions: their records are lost"
            );
        }
        let mut applied = AppliedActions {
            actions: actions.len(),
            ..AppliedActions::default()
        };
        let txn = self.db.begin_write()?;
        {
            let mut offsets = txn.open_table(OFFSETS)?;
            expect_offset(&offsets, &okey, group, from)?;
            let mut pulls = txn.open_table(PULLS)?;
            let mut pulls_by_time = txn.open_table(PULLS_BY_TIME)?;
            let mut records = txn.open_table(RECORDS)?;
            let mut records_by_time = txn.open_table(RECORDS_BY_TIME)?;
            let mut record = |subject: &str,
                              seq: u64,
                              offset: u64,
                              cgroup: &str,
                              consumer: &str,
                              action: RecordAction|
             -> Result<(), BackupError> {
                let mut k = message_prefix(group, subject, seq);
                put_time(&mut k, seen_at);
                put_u64(&mut k, offset);
                put_str(&mut k, cgroup);
                put_str(&mut k, consumer);
                k.push(action.code());
                records.insert(k.as_slice(), &[][..])?;
                records_by_time.insert(with_time(seen_at, &k).as_slice(), &[][..])?;
                Ok(())
            };
            for (offset, action) in &actions {
                match action {
                    Action::Pull {
                        key,
                        first_pull,
                        seqs,
                        ..
                    } => {
                        let prefix = pull_prefix(group, &key.subject, &key.group, &key.consumer);
                        for (i, seq) in seqs.iter().enumerate() {
                            let mut k = prefix.clone();
                            put_u64(&mut k, first_pull + i as u64);
                            let mut v = Vec::with_capacity(16);
                            put_u64(&mut v, *seq);
                            put_time(&mut v, seen_at);
                            pulls.insert(k.as_slice(), v.as_slice())?;
                            pulls_by_time.insert(with_time(seen_at, &k).as_slice(), &[][..])?;
                            record(
                                &key.subject,
                                *seq,
                                *offset,
                                &key.group,
                                &key.consumer,
                                RecordAction::Pull,
                            )?;
                            applied.records += 1;
                        }
                    }
                    Action::Ack { key, first, last } => {
                        if last < first {
                            continue;
                        }
                        let prefix = pull_prefix(group, &key.subject, &key.group, &key.consumer);
                        let mut lo = prefix.clone();
                        put_u64(&mut lo, *first);
                        let mut hi = prefix.clone();
                        put_u64(&mut hi, *last);
                        let mut seqs = Vec::new();
                        for row in pulls.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
                            let (_, v) = row?;
                            let seq = KeyReader::new(v.value())
                                .u64()
                                .ok_or(BackupError::Corrupt { what: "pull value" })?;
                            seqs.push(seq);
                        }
                        let span = (last - first).saturating_add(1);
                        applied.unmatched += usize::try_from(span)
                            .unwrap_or(usize::MAX)
                            .saturating_sub(seqs.len());
                        for seq in seqs {
                            record(
                                &key.subject,
                                seq,
                                *offset,
                                &key.group,
                                &key.consumer,
                                RecordAction::Ack,
                            )?;
                            applied.records += 1;
                        }
                    }
                    Action::Reset { .. } => {}
                }
            }
            let mut n = Vec::with_capacity(8);
            put_u64(&mut n, next);
            offsets.insert(okey.as_slice(), n.as_slice())?;
        }
        txn.commit()?;
        debug!(group, from, next, ?applied, "action chunk stored");
        Ok(applied)
    }

    /// The consumption records of the message at `sequence` of `subject` on `group`, in the
    /// order they were seen.
    pub fn records(
        &self,
        group: &str,
        subject: &str,
        sequence: u64,
    ) -> Result<Vec<ConsumptionRecord>, BackupError> {
        let prefix = message_prefix(group, subject, sequence);
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        let rows = match prefix_end(&prefix) {
            Some(end) => t.range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
            None => t.range::<&[u8]>(prefix.as_slice()..)?,
        };
        let mut out = Vec::new();
        for row in rows {
            let (k, _) = row?;
            let key = k.value();
            let mut kr = KeyReader::new(&key[prefix.len()..]);
            let corrupt = BackupError::Corrupt { what: "record key" };
            let (Some(seen_at), Some(action_offset), Some(cgroup), Some(consumer)) =
                (kr.time(), kr.u64(), kr.str(), kr.str())
            else {
                return Err(corrupt);
            };
            let action = key
                .last()
                .copied()
                .and_then(RecordAction::from_code)
                .ok_or(corrupt)?;
            out.push(ConsumptionRecord {
                consumer_group: cgroup.to_owned(),
                consumer_id: consumer.to_owned(),
                action,
                seen_at,
                action_offset,
            });
        }
        Ok(out)
    }

    /// When the backup indexed the retry or dead-letter copy at `sequence` of `subject` on
    /// `group` (ms), if it is one and is indexed.
    pub fn seen_at(
        &self,
        group: &str,
        subject: &str,
        sequence: u64,
    ) -> Result<Option<i64>, BackupError> {
        Ok(self
            .value(SEEN, &message_prefix(group, subject, sequence))?
            .and_then(|v| KeyReader::new(&v).time()))
    }

    /// Drops consumption records and pull mappings seen before `cutoff` (ms), at most `max`
    /// of each, in one transaction; returns how many went.
    pub fn purge_records_before(&self, cutoff: i64, max: usize) -> Result<usize, BackupError> {
        let mut end = Vec::new();
        put_time(&mut end, cutoff);
        let txn = self.db.begin_write()?;
        let mut n = 0;
        for (by_time, main) in [(RECORDS_BY_TIME, RECORDS), (PULLS_BY_TIME, PULLS)] {
            let mut by_time = txn.open_table(by_time)?;
            let mut main = txn.open_table(main)?;
            let mut expired = Vec::new();
            for row in by_time.range::<&[u8]>(..end.as_slice())?.take(max) {
                let (k, _) = row?;
                expired.push(k.value().to_vec());
            }
            for k in expired {
                main.remove(k.get(8..).unwrap_or_default())?;
                by_time.remove(k.as_slice())?;
                n += 1;
            }
        }
        txn.commit()?;
        if n > 0 {
            debug!(n, cutoff, "expired consumption records dropped");
        }
        Ok(n)
    }

    /// Drops expired consumption records (see [`IndexStore::purge_records_before`]).
    pub fn purge_expired_records(&self, max: usize) -> Result<usize, BackupError> {
        match self.cutoff(now_ms()) {
            Some(cutoff) => self.purge_records_before(cutoff, max),
            None => Ok(0),
        }
    }
}

/// The key of the `seen` table (group, subject, sequence).
pub(crate) fn seen_key(group: &str, subject: &str, sequence: u64) -> Vec<u8> {
    message_prefix(group, subject, sequence)
}
