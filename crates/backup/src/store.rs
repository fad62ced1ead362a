//! The index store: one redb file holding, per broker group, every indexed message and the
//! group's sync offset, so that a chunk's records and the offset past them commit together.
//!
//! Tables (all keys are byte strings laid out by [`crate::keys`]):
//!
//! | table | key | value |
//! |---|---|---|
//! | `messages` | group, subject, sequence | created time, message id |
//! | `by_subject` | subject, created time, group, sequence | message id |
//! | `by_id` | message id, group, subject, sequence | created time |
//! | `by_time` | created time, group, subject, sequence | message id |
//! | `details` | group, subject, sequence | [`Details`] as JSON (tags, app, delay, properties) |
//! | `by_property` | subject, key, value, created time, group, sequence | message id |
//! | `dead_content` | group, subject, sequence (dead letters only) | the stored message |
//! | `dead_groups` | subject, consumer group (that has had dead letters) | — |
//! | `offsets` | group, stream (`index`) | next offset to ask for (`u64`) |
//!
//! `messages` is the primary copy (one entry per message of a group's subject); the others are
//! the query paths, the retention order and what sync type 6 adds ([`crate::details`]).
//! Consumption records have tables of their own ([`crate::records`]) and offsets under the
//! stream name `action`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use qmq_protocol::{SyncIndexChunk, SyncMessagesChunk};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use tracing::{debug, warn};

use crate::details::{Details, Indexed, PropertyIndex};
use crate::keys::{prefix_end, put_str, put_time, put_u64, KeyReader};
use crate::life::derived;
use crate::BackupError;

pub(crate) type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

const MESSAGES: Table = TableDefinition::new("messages");
const BY_SUBJECT: Table = TableDefinition::new("by_subject");
const BY_ID: Table = TableDefinition::new("by_id");
const BY_TIME: Table = TableDefinition::new("by_time");
const DETAILS: Table = TableDefinition::new("details");
const BY_PROPERTY: Table = TableDefinition::new("by_property");
const DEAD_CONTENT: Table = TableDefinition::new("dead_content");
const DEAD_GROUPS: Table = TableDefinition::new("dead_groups");
pub(crate) const OFFSETS: Table = TableDefinition::new("offsets");

/// The tables one message writes, open in a write transaction.
struct Tables<'t> {
    messages: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_subject: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_id: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_time: redb::Table<'t, &'static [u8], &'static [u8]>,
    details: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_property: redb::Table<'t, &'static [u8], &'static [u8]>,
    dead_content: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, BackupError> {
        Ok(Self {
            messages: txn.open_table(MESSAGES)?,
            by_subject: txn.open_table(BY_SUBJECT)?,
            by_id: txn.open_table(BY_ID)?,
            by_time: txn.open_table(BY_TIME)?,
            details: txn.open_table(DETAILS)?,
            by_property: txn.open_table(BY_PROPERTY)?,
            dead_content: txn.open_table(DEAD_CONTENT)?,
        })
    }

    /// Removes everything but the primary entry of the message at `pk` (id `id`, created at
    /// `time`): its query paths, details, property entries and dead-letter copy.
    fn remove_queries(
        &mut self,
        pk: &[u8],
        id: &str,
        time: i64,
        group: &str,
        subject: &str,
        seq: u64,
    ) -> Result<(), BackupError> {
        self.by_subject
            .remove(subject_key(subject, time, group, seq).as_slice())?;
        self.by_id
            .remove(id_key(id, group, subject, seq).as_slice())?;
        self.by_time
            .remove(time_key(time, group, subject, seq).as_slice())?;
        let details = self.details.remove(pk)?.map(|v| v.value().to_vec());
        if let Some(details) = details {
            for (k, v) in parse_details(&details)?.properties {
                self.by_property
                    .remove(property_key(subject, &k, &v, time, group, seq).as_slice())?;
            }
        }
        self.dead_content.remove(pk)?;
        Ok(())
    }
}

/// Whether `cursor` is a key of the query whose keys start with `prefix`: the prefix alone (a
/// dead-letter listing's start of a group) or the prefix then a creation time, a broker
/// group and a sequence, nothing more. A property query's prefix extends its subject's, so
/// starting with the prefix is not enough: a property query's cursor in a plain query of the
/// same subject would be taken for a time.
fn is_cursor_of(cursor: &[u8], prefix: &[u8]) -> bool {
    let Some(rest) = cursor.strip_prefix(prefix) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let mut kr = KeyReader::new(rest);
    kr.time().is_some() && kr.str().is_some() && kr.u64().is_some() && kr.is_empty()
}

fn parse_details(v: &[u8]) -> Result<Details, BackupError> {
    serde_json::from_slice(v).map_err(|_| BackupError::Corrupt { what: "details" })
}

fn property_key(
    subject: &str,
    key: &str,
    value: &str,
    time: i64,
    group: &str,
    sequence: u64,
) -> Vec<u8> {
    let mut k = property_prefix(subject, key, value);
    put_time(&mut k, time);
    put_str(&mut k, group);
    put_u64(&mut k, sequence);
    k
}

fn property_prefix(subject: &str, key: &str, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + subject.len() + key.len() + value.len() + 24);
    put_str(&mut k, subject);
    put_str(&mut k, key);
    put_str(&mut k, value);
    k
}

/// The offset stream of the message index (sync type 5).
pub const INDEX_STREAM: &str = "index";

/// One indexed message: where it is stored and what identifies it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// The subject.
    pub subject: String,
    /// The producer-assigned message id.
    pub message_id: String,
    /// The message's consume-log sequence in its subject on its broker group.
    pub sequence: u64,
    /// The message's creation time (ms since the epoch).
    pub created_time: i64,
    /// The broker group that stores it.
    pub broker_group: String,
    /// Tags, properties, application, delay (none from a QMQ type-5 index, or when the message
    /// has none of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// A subject's messages created in a time range, oldest first, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    /// The subject.
    pub subject: String,
    /// The earliest creation time (ms, inclusive).
    pub from: i64,
    /// The latest creation time (ms, inclusive).
    pub to: i64,
    /// Most entries in the page.
    pub limit: usize,
    /// Where to continue: the `next` of the previous page.
    pub cursor: Option<Vec<u8>>,
    /// Only messages with this property (key, value).
    pub property: Option<(String, String)>,
    /// Only delay messages (QMQ's `isDelay`).
    pub delayed_only: bool,
}

impl RangeQuery {
    /// The first `limit` messages of `subject` created in `from..=to`, no filter.
    pub fn new(subject: impl Into<String>, from: i64, to: i64, limit: usize) -> Self {
        Self {
            subject: subject.into(),
            from,
            to,
            limit,
            cursor: None,
            property: None,
            delayed_only: false,
        }
    }
}

/// One page of a [`RangeQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// The entries, oldest first.
    pub entries: Vec<IndexEntry>,
    /// The cursor of the next page, if there are more entries.
    pub next: Option<Vec<u8>>,
}

/// What [`IndexStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Records newly indexed.
    pub indexed: usize,
    /// Records already indexed (the same message again).
    pub duplicates: usize,
    /// Records older than the retention, not indexed.
    pub expired: usize,
}

/// The backup's message index, in one redb file. Cheap to share behind an `Arc`; every method
/// blocks on disk (call from `spawn_blocking` in async code).
pub struct IndexStore {
    pub(crate) db: Database,
    path: PathBuf,
    retention: Option<Duration>,
    properties: PropertyIndex,
}

impl std::fmt::Debug for IndexStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexStore")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish()
    }
}

fn primary_key(group: &str, subject: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len() + subject.len() + 8);
    put_str(&mut k, group);
    put_str(&mut k, subject);
    put_u64(&mut k, sequence);
    k
}

fn subject_key(subject: &str, time: i64, group: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len() + subject.len() + 16);
    put_str(&mut k, subject);
    put_time(&mut k, time);
    put_str(&mut k, group);
    put_u64(&mut k, sequence);
    k
}

fn id_key(id: &str, group: &str, subject: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + id.len() + group.len() + subject.len() + 8);
    put_str(&mut k, id);
    put_str(&mut k, group);
    put_str(&mut k, subject);
    put_u64(&mut k, sequence);
    k
}

fn time_key(time: i64, group: &str, subject: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len() + subject.len() + 16);
    put_time(&mut k, time);
    put_str(&mut k, group);
    put_str(&mut k, subject);
    put_u64(&mut k, sequence);
    k
}

pub(crate) fn offset_key(group: &str, stream: &str) -> Vec<u8> {
    let mut k = Vec::new();
    put_str(&mut k, group);
    put_str(&mut k, stream);
    k
}

fn time_of(v: &[u8]) -> Result<i64, BackupError> {
    KeyReader::new(v).time().ok_or(BackupError::Corrupt {
        what: "created time",
    })
}

fn text(v: &[u8], what: &'static str) -> Result<String, BackupError> {
    String::from_utf8(v.to_vec()).map_err(|_| BackupError::Corrupt { what })
}

/// The primary value: created time then the id.
fn primary_value(time: i64, id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + id.len());
    put_time(&mut v, time);
    v.extend_from_slice(id.as_bytes());
    v
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl IndexStore {
    /// Opens (or creates) the index in `path` (a file), dropping entries older than
    /// `retention` when [`IndexStore::purge_expired`] runs and never indexing them.
    pub fn open(path: &Path, retention: Option<Duration>) -> Result<Self, BackupError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BackupError::Store(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|source| BackupError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        // Create the tables so that readers never see a missing one.
        let txn = db.begin_write()?;
        for table in [
            MESSAGES,
            BY_SUBJECT,
            BY_ID,
            BY_TIME,
            DETAILS,
            BY_PROPERTY,
            DEAD_CONTENT,
            DEAD_GROUPS,
            OFFSETS,
        ] {
            txn.open_table(table)?;
        }
        crate::records::create_tables(&txn)?;
        txn.commit()?;
        Ok(Self {
            db,
            path: path.to_owned(),
            retention,
            properties: PropertyIndex::All,
        })
    }

    /// Indexes only the properties `index` covers from now on (all by default); queries by
    /// another property are refused ([`BackupError::Invalid`]).
    pub fn with_property_index(mut self, index: PropertyIndex) -> Self {
        self.properties = index;
        self
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The retention (entries older than this are dropped), if any.
    pub fn retention(&self) -> Option<Duration> {
        self.retention
    }

    /// The creation time before which entries are expired, at `now` (ms).
    pub(crate) fn cutoff(&self, now: i64) -> Option<i64> {
        self.retention
            .map(|r| now.saturating_sub(i64::try_from(r.as_millis()).unwrap_or(i64::MAX)))
    }

    /// The next offset of `group`'s `stream` to ask its broker for; `None` before the first
    /// chunk was stored.
    pub fn offset(&self, group: &str, stream: &str) -> Result<Option<u64>, BackupError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OFFSETS)?;
        let v = t.get(offset_key(group, stream).as_slice())?;
        v.map(|v| {
            KeyReader::new(v.value())
                .u64()
                .ok_or(BackupError::Corrupt { what: "offset" })
        })
        .transpose()
    }

    /// Every group with an index offset, with the offset.
    pub fn offsets(&self) -> Result<Vec<(String, u64)>, BackupError> {
        self.stream_offsets(INDEX_STREAM)
    }

    /// Every group with an offset of `stream` (`index`, `action`), with the offset.
    pub fn stream_offsets(&self, stream: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OFFSETS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let mut kr = KeyReader::new(k.value());
            let group = kr
                .str()
                .ok_or(BackupError::Corrupt { what: "offset key" })?;
            if kr.str() != Some(stream) {
                continue;
            }
            let offset = KeyReader::new(v.value())
                .u64()
                .ok_or(BackupError::Corrupt { what: "offset" })?;
            out.push((group.to_owned(), offset));
        }
        Ok(out)
    }

    /// Indexes a QMQ type-5 chunk (places only, no [`Details`]) `group`'s broker answered to
    /// a request from `from`; see [`IndexStore::apply_indexed`].
    pub fn apply(
        &self,
        group: &str,
        from: u64,
        chunk: &SyncIndexChunk,
    ) -> Result<Applied, BackupError> {
        let records = chunk
            .records
            .iter()
            .map(Indexed::from_index)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BackupError::BadRecord {
                group: group.to_owned(),
                reason: e.to_string(),
            })?;
        self.apply_indexed(group, from, chunk.next, &records)
    }

    /// Indexes a type-6 chunk (stored messages) `group`'s server answered to a request from
    /// `from` (`held`: a delay server's, see [`Details::held`]); see
    /// [`IndexStore::apply_indexed`]. A record whose message cannot be read is passed over
    /// with a warning (the broker's own index passes such messages over too).
    pub fn apply_messages(
        &self,
        group: &str,
        from: u64,
        chunk: &SyncMessagesChunk,
        held: bool,
    ) -> Result<Applied, BackupError> {
        let mut records = Vec::with_capacity(chunk.records.len());
        for r in &chunk.records {
            match Indexed::from_stored(r, held) {
                Ok(i) => records.push(i),
                Err(e) => {
                    warn!(group, subject = r.subject, sequence = r.sequence, error = %e, "passing over an unreadable message")
                }
            }
        }
        self.apply_indexed(group, from, chunk.next, &records)
    }

    /// Indexes `records` of `group` (answered to a request from `from`) and moves the group's
    /// offset to `next`, in one transaction: after a crash either both are stored or neither.
    /// Refused ([`BackupError::OffsetMismatch`]) unless the stored offset is `from` (or none is
    /// stored and `from` is 0), so a chunk is never applied twice.
    pub fn apply_indexed(
        &self,
        group: &str,
        from: u64,
        next: i64,
        records: &[Indexed],
    ) -> Result<Applied, BackupError> {
        let next = u64::try_from(next).map_err(|_| BackupError::Corrupt {
            what: "negative next offset",
        })?;
        if records.is_empty() && next == from {
            // An idle poll's answer: nothing to write (no transaction, no fsync).
            let stored = self.offset(group, INDEX_STREAM)?;
            if stored.unwrap_or(0) != from {
                return Err(BackupError::OffsetMismatch {
                    group: group.to_owned(),
                    stored,
                    from,
                });
            }
            return Ok(Applied::default());
        }
        let cutoff = self.cutoff(now_ms());
        let okey = offset_key(group, INDEX_STREAM);
        let mut applied = Applied::default();
        let txn = self.db.begin_write()?;
        {
            let mut offsets = txn.open_table(OFFSETS)?;
            expect_offset(&offsets, &okey, group, from)?;
            let mut t = Tables::open(&txn)?;
            let mut seen = txn.open_table(crate::records::SEEN)?;
            let mut dead_groups = txn.open_table(DEAD_GROUPS)?;
            let received = now_ms();
            for r in records {
                if cutoff.is_some_and(|c| r.created_time < c) {
                    applied.expired += 1;
                    continue;
                }
                let seq = r.sequence;
                let pk = primary_key(group, &r.subject, seq);
                let value = primary_value(r.created_time, &r.message_id);
                let old = t
                    .messages
                    .insert(pk.as_slice(), value.as_slice())?
                    .map(|v| v.value().to_vec());
                if let Some(old) = old {
                    if old == value {
                        applied.duplicates += 1;
                        continue;
                    }
                    // The same place now holds another message (a broker that started over):
                    // the old one's query entries go.
                    let old_time = time_of(&old)?;
                    let old_id = text(&old[8..], "message id")?;
                    t.remove_queries(&pk, &old_id, old_time, group, &r.subject, seq)?;
                }
                let mut tv = Vec::with_capacity(8);
                put_time(&mut tv, r.created_time);
                t.by_subject.insert(
                    subject_key(&r.subject, r.created_time, group, seq).as_slice(),
                    r.message_id.as_bytes(),
                )?;
                t.by_id.insert(
                    id_key(&r.message_id, group, &r.subject, seq).as_slice(),
                    tv.as_slice(),
                )?;
                t.by_time.insert(
                    time_key(r.created_time, group, &r.subject, seq).as_slice(),
                    r.message_id.as_bytes(),
                )?;
                if !r.details.is_empty() {
                    let json = serde_json::to_vec(&r.details)
                        .map_err(|e| BackupError::Store(format!("encoding details: {e}")))?;
                    t.details.insert(pk.as_slice(), json.as_slice())?;
                    for (k, v) in &r.details.properties {
                        if !self.properties.covers(k) {
                            continue;
                        }
                        t.by_property.insert(
                            property_key(&r.subject, k, v, r.created_time, group, seq).as_slice(),
                            r.message_id.as_bytes(),
                        )?;
                    }
                }
                if let Some(stored) = &r.dead_letter {
                    t.dead_content.insert(pk.as_slice(), stored.as_ref())?;
                    if let Some((_, real, consumer_group)) = derived(&r.subject) {
                        let mut k = Vec::new();
                        put_str(&mut k, real);
                        put_str(&mut k, consumer_group);
                        dead_groups.insert(k.as_slice(), [].as_slice())?;
                    }
                }
                if r.subject.starts_with('%') {
                    // Retry and dead-letter copies keep their original's creation time: when
                    // they were stored is known only from when they were seen.
                    let mut v = Vec::with_capacity(8);
                    put_time(&mut v, received);
                    seen.insert(
                        crate::records::seen_key(group, &r.subject, seq).as_slice(),
                        v.as_slice(),
                    )?;
                }
                applied.indexed += 1;
            }
            let mut n = Vec::with_capacity(8);
            put_u64(&mut n, next);
            offsets.insert(okey.as_slice(), n.as_slice())?;
        }
        txn.commit()?;
        debug!(group, from, next, ?applied, "index chunk stored");
        Ok(applied)
    }

    /// Every message with id `message_id` (one per broker group and subject that holds it).
    pub fn by_id(&self, message_id: &str) -> Result<Vec<IndexEntry>, BackupError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BY_ID)?;
        let details = txn.open_table(DETAILS)?;
        let mut prefix = Vec::new();
        put_str(&mut prefix, message_id);
        let end = prefix_end(&prefix);
        let rows = match &end {
            Some(end) => t.range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
            None => t.range::<&[u8]>(prefix.as_slice()..)?,
        };
        let mut out = Vec::new();
        for row in rows {
            let (k, v) = row?;
            let mut kr = KeyReader::new(k.value());
            let corrupt = BackupError::Corrupt { what: "id key" };
            let (Some(id), Some(group), Some(subject), Some(sequence)) =
                (kr.str(), kr.str(), kr.str(), kr.u64())
            else {
                return Err(corrupt);
            };
            out.push(IndexEntry {
                subject: subject.to_owned(),
                message_id: id.to_owned(),
                sequence,
                created_time: time_of(v.value())?,
                broker_group: group.to_owned(),
                details: details
                    .get(primary_key(group, subject, sequence).as_slice())?
                    .map(|d| parse_details(d.value()))
                    .transpose()?,
            });
        }
        Ok(out)
    }

    /// The message at `sequence` of `subject` on `group`, if indexed.
    pub fn get(
        &self,
        group: &str,
        subject: &str,
        sequence: u64,
    ) -> Result<Option<IndexEntry>, BackupError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MESSAGES)?;
        let pk = primary_key(group, subject, sequence);
        let Some(v) = t.get(pk.as_slice())? else {
            return Ok(None);
        };
        let v = v.value();
        let details = txn.open_table(DETAILS)?;
        let details = details
            .get(pk.as_slice())?
            .map(|d| parse_details(d.value()))
            .transpose()?;
        Ok(Some(IndexEntry {
            subject: subject.to_owned(),
            message_id: text(v.get(8..).unwrap_or_default(), "message id")?,
            sequence,
            created_time: time_of(v)?,
            broker_group: group.to_owned(),
            details,
        }))
    }

    /// A page of `q.subject`'s messages created in `q.from..=q.to` (with `q.property`,
    /// delay messages only with `q.delayed_only`), oldest first. A cursor that is not of this
    /// query's subject and property is refused ([`BackupError::BadCursor`]).
    pub fn range(&self, q: &RangeQuery) -> Result<Page, BackupError> {
        let (table, prefix) = match &q.property {
            Some((k, _)) if !self.properties.covers(k) => {
                return Err(BackupError::Invalid(format!(
                    "property {k:?} is not indexed (backup --index-properties)"
                )))
            }
            Some((k, v)) => (BY_PROPERTY, property_prefix(&q.subject, k, v)),
            None => {
                let mut p = Vec::new();
                put_str(&mut p, &q.subject);
                (BY_SUBJECT, p)
            }
        };
        let mut start = prefix.clone();
        put_time(&mut start, q.from);
        let mut end = prefix.clone();
        put_time(&mut end, q.to);
        // Past every key of time `to`.
        let Some(end) = prefix_end(&end) else {
            return Ok(Page::default());
        };
        if let Some(cursor) = &q.cursor {
            if !is_cursor_of(cursor, &prefix) {
                return Err(BackupError::BadCursor);
            }
            if *cursor > start {
                start = cursor.clone();
            }
        }
        if start >= end || q.limit == 0 {
            return Ok(Page::default());
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table)?;
        let details = txn.open_table(DETAILS)?;
        let mut page = Page::default();
        for row in t.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            if page.entries.len() == q.limit {
                page.next = Some(k.value().to_vec());
                break;
            }
            let mut kr = KeyReader::new(&k.value()[prefix.len()..]);
            let (Some(time), Some(group), Some(sequence)) = (kr.time(), kr.str(), kr.u64()) else {
                return Err(BackupError::Corrupt {
                    what: "subject key",
                });
            };
            let d = details
                .get(primary_key(group, &q.subject, sequence).as_slice())?
                .map(|d| parse_details(d.value()))
                .transpose()?;
            if q.delayed_only && d.as_ref().and_then(|d| d.delayed_until).is_none() {
                continue;
            }
            page.entries.push(IndexEntry {
                subject: q.subject.clone(),
                message_id: text(v.value(), "message id")?,
                sequence,
                created_time: time,
                broker_group: group.to_owned(),
                details: d,
            });
        }
        Ok(page)
    }

    /// The value under `key` in `table`, read in a transaction of its own.
    pub(crate) fn value(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackupError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// The details kept of the message at `sequence` of `subject` on `group`.
    pub fn details(
        &self,
        group: &str,
        subject: &str,
        sequence: u64,
    ) -> Result<Option<Details>, BackupError> {
        self.value(DETAILS, &primary_key(group, subject, sequence))?
            .map(|v| parse_details(&v))
            .transpose()
    }

    /// The stored message of the dead letter at `sequence` of `subject` (a `%DEAD_RETRY%`
    /// subject) on `group`, kept since it was indexed.
    pub fn dead_letter(
        &self,
        group: &str,
        subject: &str,
        sequence: u64,
    ) -> Result<Option<Bytes>, BackupError> {
        Ok(self
            .value(DEAD_CONTENT, &primary_key(group, subject, sequence))?
            .map(Bytes::from))
    }

    /// The consumer groups of `subject` that have had dead letters, sorted.
    pub fn dead_groups(&self, subject: &str) -> Result<Vec<String>, BackupError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DEAD_GROUPS)?;
        let mut prefix = Vec::new();
        put_str(&mut prefix, subject);
        let rows = match prefix_end(&prefix) {
            Some(end) => t.range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
            None => t.range::<&[u8]>(prefix.as_slice()..)?,
        };
        let mut out = Vec::new();
        for row in rows {
            let (k, _) = row?;
            let mut kr = KeyReader::new(&k.value()[prefix.len()..]);
            let g = kr.str().ok_or(BackupError::Corrupt {
                what: "dead group key",
            })?;
            out.push(g.to_owned());
        }
        Ok(out)
    }

    /// Drops the entries created before the retention's cutoff, at most `max` of them (one
    /// transaction); returns how many went. Nothing happens without a retention.
    pub fn purge_expired(&self, max: usize) -> Result<usize, BackupError> {
        match self.cutoff(now_ms()) {
            Some(cutoff) => self.purge_before(cutoff, max),
            None => Ok(0),
        }
    }

    /// Drops the entries created before `cutoff` (ms), at most `max` of them, in one
    /// transaction; returns how many went.
    pub fn purge_before(&self, cutoff: i64, max: usize) -> Result<usize, BackupError> {
        let mut end = Vec::new();
        put_time(&mut end, cutoff);
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut t = Tables::open(&txn)?;
            let mut seen = txn.open_table(crate::records::SEEN)?;
            let mut expired = Vec::new();
            for row in t.by_time.range::<&[u8]>(..end.as_slice())?.take(max) {
                let (k, v) = row?;
                expired.push((k.value().to_vec(), text(v.value(), "message id")?));
            }
            for (k, id) in expired {
                let mut kr = KeyReader::new(&k);
                let (Some(time), Some(group), Some(subject), Some(seq)) =
                    (kr.time(), kr.str(), kr.str(), kr.u64())
                else {
                    return Err(BackupError::Corrupt { what: "time key" });
                };
                let pk = primary_key(group, subject, seq);
                t.messages.remove(pk.as_slice())?;
                t.remove_queries(&pk, &id, time, group, subject, seq)?;
                if subject.starts_with('%') {
                    seen.remove(crate::records::seen_key(group, subject, seq).as_slice())?;
                }
                n += 1;
            }
        }
        txn.commit()?;
        if n > 0 {
            debug!(n, cutoff, "expired index entries dropped");
        }
        Ok(n)
    }

    /// How many messages are indexed.
    pub fn len(&self) -> Result<u64, BackupError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(MESSAGES)?.len()?)
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> Result<bool, BackupError> {
        Ok(self.len()? == 0)
    }
}

/// Checks that the stored offset under `key` (none: 0) is `from`, the offset a chunk about to be
/// applied starts at: a chunk is applied exactly once, right after the previous one.
pub(crate) fn expect_offset(
    offsets: &redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
    group: &str,
    from: u64,
) -> Result<(), BackupError> {
    let stored = match offsets.get(key)? {
        Some(v) => Some(
            KeyReader::new(v.value())
                .u64()
                .ok_or(BackupError::Corrupt { what: "offset" })?,
        ),
        None => None,
    };
    if stored.unwrap_or(0) != from {
        return Err(BackupError::OffsetMismatch {
            group: group.to_owned(),
            stored,
            from,
        });
    }
    Ok(())
}
