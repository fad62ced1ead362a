//! Dead letters: the messages a consumer group gave up on (`%DEAD_RETRY%<subject>%<group>`),
//! kept with their bodies since they were indexed ([`crate::details`]), listed per subject and
//! group, and replayed: sent again to the group's retry subject (`%RETRY%<subject>%<group>`) on
//! the broker group that held them, where the group's consumers pull them like any retry.
//!
//! A replay keeps the message's id, properties and body, drops its try count (`qmq_times`: the
//! group gets its full number of tries again) and its delay flag (it is due now). The retry
//! subjects are exempt from the broker's duplicate window, so a replayed id is stored even
//! though it passed that way before; replaying the same letter twice delivers it twice.

use std::sync::Arc;

use bytes::Bytes;
use qmq_protocol::wire::Reader;
use qmq_protocol::{Message, ProducerCode};
use serde::Serialize;
use tracing::info;

use crate::brokers::Brokers;
use crate::follower::blocking;
use crate::keys::KeyReader;
use crate::{BackupError, IndexEntry, IndexStore, Page, RangeQuery};

/// Most dead letters one replay sends.
pub const MAX_REPLAY: usize = 10_000;
/// Messages per SEND_MESSAGE of a replay.
const REPLAY_BATCH: usize = 100;

/// The dead-letter subject of `subject` for consumer group `group`.
pub fn dead_subject(subject: &str, group: &str) -> String {
    format!("%DEAD_RETRY%{subject}%{group}")
}

/// The retry subject of `subject` for consumer group `group`.
pub fn retry_subject(subject: &str, group: &str) -> String {
    format!("%RETRY%{subject}%{group}")
}

/// Which dead letters: of `subject` (the real one), for `group` (all groups when `None`),
/// created in `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadQuery {
    /// The real subject.
    pub subject: String,
    /// The consumer group; `None`: every group that has dead letters of the subject.
    pub group: Option<String>,
    /// The earliest creation time (ms, inclusive).
    pub from: i64,
    /// The latest creation time (ms, inclusive).
    pub to: i64,
    /// Most entries in the page.
    pub limit: usize,
    /// The `next` of the previous page.
    pub cursor: Option<Vec<u8>>,
}

impl IndexStore {
    /// A page of dead letters, group by group (sorted), oldest first within a group. Each
    /// entry's subject is the dead-letter subject its sequence counts in.
    pub fn dead_letters(&self, q: &DeadQuery) -> Result<Page, BackupError> {
        let groups = match &q.group {
            Some(g) => vec![g.clone()],
            None => self.dead_groups(&q.subject)?,
        };
        // The cursor is a key of one group's dead subject: continue from that group.
        let mut first = 0;
        if let Some(c) = &q.cursor {
            let subject = KeyReader::new(c).str().ok_or(BackupError::BadCursor)?;
            first = groups
                .iter()
                .position(|g| dead_subject(&q.subject, g) == subject)
                .ok_or(BackupError::BadCursor)?;
        }
        let mut page = Page::default();
        for (i, g) in groups.iter().enumerate().skip(first) {
            let left = q.limit - page.entries.len();
            if left == 0 {
                // Full exactly at the previous group's end: this group starts the next page.
                let mut k = Vec::new();
                crate::keys::put_str(&mut k, &dead_subject(&q.subject, g));
                page.next = Some(k);
                break;
            }
            let mut rq = RangeQuery::new(dead_subject(&q.subject, g), q.from, q.to, left);
            rq.cursor = if i == first { q.cursor.clone() } else { None };
            let part = self.range(&rq)?;
            page.entries.extend(part.entries);
            if part.next.is_some() {
                page.next = part.next;
                break;
            }
        }
        Ok(page)
    }
}

/// What to replay: the dead letters of `subject` for `group` created in `from..=to`, only
/// those with the given ids when `ids` is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The real subject.
    pub subject: String,
    /// The consumer group whose retry subject gets them.
    pub group: String,
    /// Only these message ids (all when empty).
    pub ids: Vec<String>,
    /// The earliest creation time (ms, inclusive).
    pub from: i64,
    /// The latest creation time (ms, inclusive).
    pub to: i64,
}

/// What became of one dead letter in a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// The message id.
    pub message_id: String,
    /// The broker group it was sent to (the one holding the dead letter).
    pub broker_group: String,
    /// The dead letter's sequence.
    pub sequence: u64,
    /// Where it went: the group's retry subject.
    pub retry_subject: String,
    /// `None` when stored; else why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Replays the dead letters `r` names (at most [`MAX_REPLAY`]); one outcome per letter found.
pub async fn replay(
    store: Arc<IndexStore>,
    brokers: &Brokers,
    r: Replay,
) -> Result<Vec<Replayed>, BackupError> {
    if r.subject.is_empty() || r.group.is_empty() {
        return Err(BackupError::Invalid(
            "a replay needs a subject and a consumer group".into(),
        ));
    }
    let letters = {
        let (store, r) = (store.clone(), r.clone());
        blocking(move || collect(&store, &r)).await?
    };
    let retry = retry_subject(&r.subject, &r.group);
    let mut out = Vec::with_capacity(letters.len());
    let mut batch: Vec<(IndexEntry, Message)> = Vec::new();
    for (entry, stored) in letters {
        let mut m = match Message::decode_stored(&mut Reader::new(&stored)) {
            Ok(m) => m,
            Err(e) => {
                out.push(outcome(
                    &entry,
                    &retry,
                    Some(format!("unreadable dead letter: {e}")),
                ));
                continue;
            }
        };
        m.subject.clone_from(&retry);
        m.attrs.retain(|(k, _)| k != "qmq_times");
        m.flags = m.flags.with_delay(false);
        if batch
            .first()
            .is_some_and(|(e, _)| e.broker_group != entry.broker_group)
            || batch.len() == REPLAY_BATCH
        {
            send(brokers, &retry, std::mem::take(&mut batch), &mut out).await;
        }
        batch.push((entry, m));
    }
    if !batch.is_empty() {
        send(brokers, &retry, batch, &mut out).await;
    }
    let sent = out.iter().filter(|o| o.error.is_none()).count();
    info!(
        subject = r.subject,
        group = r.group,
        sent,
        failed = out.len() - sent,
        "dead letters replayed"
    );
    Ok(out)
}

/// The dead letters `r` names with their stored messages, grouped by broker group.
fn collect(store: &IndexStore, r: &Replay) -> Result<Vec<(IndexEntry, Bytes)>, BackupError> {
    let mut q = DeadQuery {
        subject: r.subject.clone(),
        group: Some(r.group.clone()),
        from: r.from,
        to: r.to,
        limit: 1000,
        cursor: None,
    };
    let mut out = Vec::new();
    loop {
        let page = store.dead_letters(&q)?;
        for e in page.entries {
            if !r.ids.is_empty() && !r.ids.contains(&e.message_id) {
                continue;
            }
            if out.len() == MAX_REPLAY {
                return Err(BackupError::Invalid(format!(
                    "more than {MAX_REPLAY} dead letters: replay a shorter time range or by id"
                )));
            }
            match store.dead_letter(&e.broker_group, &e.subject, e.sequence)? {
                Some(stored) => out.push((e, stored)),
                None => tracing::warn!(id = e.message_id, "dead letter indexed without its body"),
            }
        }
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => break,
        }
    }
    out.sort_by(|a, b| a.0.broker_group.cmp(&b.0.broker_group));
    Ok(out)
}

fn outcome(e: &IndexEntry, retry: &str, error: Option<String>) -> Replayed {
    Replayed {
        message_id: e.message_id.clone(),
        broker_group: e.broker_group.clone(),
        sequence: e.sequence,
        retry_subject: retry.to_owned(),
        error,
    }
}

/// Sends one batch (one broker group) and records each letter's outcome.
async fn send(
    brokers: &Brokers,
    retry: &str,
    batch: Vec<(IndexEntry, Message)>,
    out: &mut Vec<Replayed>,
) {
    let Some(group) = batch.first().map(|(e, _)| e.broker_group.clone()) else {
        return;
    };
    let messages: Vec<Message> = batch.iter().map(|(_, m)| m.clone()).collect();
    match brokers.send(&group, &messages).await {
        Ok(results) => {
            for ((e, _), failure) in batch.iter().zip(results) {
                let error = failure
                    .filter(|f| f.code != ProducerCode::Duplicate)
                    .map(|f| format!("refused ({:?}): {}", f.code, f.remark));
                out.push(outcome(e, retry, error));
            }
        }
        Err(err) => {
            for (e, _) in &batch {
                out.push(outcome(e, retry, Some(err.to_string())));
            }
        }
    }
}
