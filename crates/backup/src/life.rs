//! A message's life: every index entry with its id (the message itself, its retry copies, its
//! dead letter) and their consumption records, merged into one timeline.

use serde::Serialize;

use crate::{BackupError, ConsumptionRecord, IndexEntry, IndexStore, RecordAction};

/// What an index entry is to the message it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    /// The message as sent, on its real subject.
    Original,
    /// A retry copy (`%RETRY%<subject>%<group>`): the group failed it.
    Retry,
    /// A dead letter (`%DEAD_RETRY%<subject>%<group>`): the group gave up on it.
    Dead,
}

/// The kind of a retry or dead-letter subject and the real subject and consumer group it was
/// derived from; `None` for a real subject.
pub fn derived(subject: &str) -> Option<(CopyKind, &str, &str)> {
    let kind = if subject.starts_with("%DEAD_RETRY") {
        CopyKind::Dead
    } else if subject.starts_with("%RETRY") {
        CopyKind::Retry
    } else {
        return None;
    };
    let mut parts = subject.split('%').filter(|p| !p.is_empty());
    let (_prefix, real, group) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some((kind, real, group))
}

/// The host a QMQ-style message id names: the Java, .NET and Rust clients make ids
/// `yyMMdd.HHmmss.<host address>.<process id>.<counter>` (QMQ's `TimestampAndHostIdGenerator`),
/// the only place a QMQ message records where it was produced. `None` for other ids (set by
/// the application).
pub fn producer_host(message_id: &str) -> Option<&str> {
    let mut parts = message_id.splitn(3, '.');
    let (date, time, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let six_digits = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit());
    if !six_digits(date) || !six_digits(time) {
        return None;
    }
    let (rest, counter) = rest.rsplit_once('.')?;
    let (host, pid) = rest.rsplit_once('.')?;
    let counter = counter.strip_prefix('-').unwrap_or(counter);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(counter) && digits(pid) && !host.is_empty()).then_some(host)
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The producer created the message (its creation time).
    Created,
    /// It was a delay message, held by a delay server until `delayed_until` (time: its
    /// creation time; `broker_group` the delay group when delay groups are followed).
    Delayed,
    /// A broker group stored it (time: its creation time, or its delivery time for a delay
    /// message; brokers do not report when).
    Stored,
    /// A group failed it: a retry copy was stored (time: when the backup indexed the copy).
    Retry,
    /// A group gave up: a dead letter was stored (time: when the backup indexed it).
    DeadLettered,
    /// A consumer was handed the message (or a copy).
    Pulled,
    /// A consumer acked it (or a copy).
    Acked,
}

/// One step of a message's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When (ms since the epoch): a creation time, or when the backup saw the step.
    pub time: i64,
    /// What happened.
    pub event: EventKind,
    /// The subject of the copy concerned.
    pub subject: String,
    /// The broker group holding that copy.
    pub broker_group: String,
    /// The copy's consume-log sequence.
    pub sequence: u64,
    /// Which copy.
    pub copy: CopyKind,
    /// The consumer group (pulls, acks, retry copies and dead letters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// The consumer id (pulls and acks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_id: Option<String>,
    /// The producing application (`created`, when the message names it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_code: Option<String>,
    /// The producing host (`created`), read from a QMQ-style message id (see
    /// [`producer_host`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer_host: Option<String>,
    /// The delivery time of a delay message (`delayed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delayed_until: Option<i64>,
}

/// A message's life: its index entries and the merged timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Life {
    /// The message id.
    pub message_id: String,
    /// Every index entry with the id.
    pub messages: Vec<IndexEntry>,
    /// The timeline.
    pub events: Vec<Event>,
}

impl IndexStore {
    /// The life of `message_id`: empty when it is not indexed.
    pub fn life(&self, message_id: &str) -> Result<Life, BackupError> {
        let entries = self.by_id(message_id)?;
        let mut events = Vec::new();
        // (time, kind, order seen) sorts a pull before the ack seen in the same chunk.
        let mut keyed: Vec<(i64, EventKind, u64, Event)> = Vec::new();
        let originals: Vec<&IndexEntry> = entries
            .iter()
            .filter(|e| derived(&e.subject).is_none())
            .collect();
        let created = originals
            .iter()
            .copied()
            .min_by_key(|e| e.created_time)
            .or_else(|| entries.iter().min_by_key(|e| e.created_time));
        if let Some(c) = created {
            keyed.push((
                c.created_time,
                EventKind::Created,
                0,
                Event {
                    time: c.created_time,
                    event: EventKind::Created,
                    subject: derived(&c.subject)
                        .map_or(c.subject.as_str(), |(_, real, _)| real)
                        .to_owned(),
                    broker_group: c.broker_group.clone(),
                    sequence: c.sequence,
                    copy: CopyKind::Original,
                    consumer_group: None,
                    consumer_id: None,
                    app_code: c.details.as_ref().and_then(|d| d.app_code.clone()),
                    producer_host: producer_host(message_id).map(str::to_owned),
                    delayed_until: None,
                },
            ));
        }
        let held_copy = entries
            .iter()
            .any(|e| e.details.as_ref().is_some_and(|d| d.held));
        for e in &entries {
            let (copy, group) = match derived(&e.subject) {
                Some((kind, _, group)) => (kind, Some(group.to_owned())),
                None => (CopyKind::Original, None),
            };
            let delayed_until = e.details.as_ref().and_then(|d| d.delayed_until);
            let held = e.details.as_ref().is_some_and(|d| d.held);
            let (kind, time) = match copy {
                // A delay server's copy: held from its creation until its time.
                CopyKind::Original if held => (EventKind::Delayed, e.created_time),
                // A broker's copy of a delay message: stored when its time came, held before
                // by a delay server (its own entry when delay groups are followed).
                CopyKind::Original => match delayed_until {
                    Some(until) => {
                        if !held_copy {
                            keyed.push((
                                e.created_time,
                                EventKind::Delayed,
                                0,
                                Event {
                                    time: e.created_time,
                                    event: EventKind::Delayed,
                                    subject: e.subject.clone(),
                                    broker_group: e.broker_group.clone(),
                                    sequence: e.sequence,
                                    copy,
                                    consumer_group: None,
                                    consumer_id: None,
                                    app_code: None,
                                    producer_host: None,
                                    delayed_until: Some(until),
                                },
                            ));
                        }
                        (EventKind::Stored, until.max(e.created_time))
                    }
                    None => (EventKind::Stored, e.created_time),
                },
                CopyKind::Retry | CopyKind::Dead => {
                    let seen = self.seen_at(&e.broker_group, &e.subject, e.sequence)?;
                    let kind = if copy == CopyKind::Retry {
                        EventKind::Retry
                    } else {
                        EventKind::DeadLettered
                    };
                    (kind, seen.unwrap_or(e.created_time))
                }
            };
            let base = Event {
                time,
                event: kind,
                subject: e.subject.clone(),
                broker_group: e.broker_group.clone(),
                sequence: e.sequence,
                copy,
                consumer_group: group,
                consumer_id: None,
                app_code: None,
                producer_host: None,
                delayed_until: if held { delayed_until } else { None },
            };
            keyed.push((time, kind, 0, base.clone()));
            for r in self.records(&e.broker_group, &e.subject, e.sequence)? {
                let kind = match r.action {
                    RecordAction::Pull => EventKind::Pulled,
                    RecordAction::Ack => EventKind::Acked,
                };
                keyed.push((
                    r.seen_at,
                    kind,
                    r.action_offset,
                    Event {
                        time: r.seen_at,
                        event: kind,
                        consumer_group: Some(r.consumer_group),
                        consumer_id: Some(r.consumer_id),
                        ..base.clone()
                    },
                ));
            }
        }
        keyed.sort_by_key(|(t, k, o, _)| (*t, *k, *o));
        events.extend(keyed.into_iter().map(|(_, _, _, e)| e));
        Ok(Life {
            message_id: message_id.to_owned(),
            messages: entries,
            events,
        })
    }

    /// QMQ's record query: the records of the message at `sequence` of `subject` on `group`
    /// (`code` 0), of its retry copies (1), or its dead letters (2, one synthetic pull record
    /// per dead letter, for the group that gave up).
    pub fn qmq_records(
        &self,
        subject: &str,
        message_id: &str,
        group: &str,
        sequence: u64,
        code: u8,
    ) -> Result<Vec<(IndexEntry, ConsumptionRecord)>, BackupError> {
        let mut out = Vec::new();
        if code == 0 {
            let entry = IndexEntry {
                subject: subject.to_owned(),
                message_id: message_id.to_owned(),
                sequence,
                created_time: 0,
                broker_group: group.to_owned(),
                details: None,
            };
            for r in self.records(group, subject, sequence)? {
                out.push((entry.clone(), r));
            }
            return Ok(out);
        }
        let want = if code == 1 {
            CopyKind::Retry
        } else {
            CopyKind::Dead
        };
        for e in self.by_id(message_id)? {
            let Some((kind, real, cgroup)) = derived(&e.subject) else {
                continue;
            };
            if kind != want || real != subject {
                continue;
            }
            if want == CopyKind::Retry {
                for r in self.records(&e.broker_group, &e.subject, e.sequence)? {
                    out.push((e.clone(), r));
                }
            } else {
                let seen = self.seen_at(&e.broker_group, &e.subject, e.sequence)?;
                let r = ConsumptionRecord {
                    consumer_group: cgroup.to_owned(),
                    consumer_id: String::new(),
                    action: RecordAction::Pull,
                    seen_at: seen.unwrap_or(e.created_time),
                    action_offset: 0,
                };
                out.push((e, r));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_subjects_are_parsed() {
        assert_eq!(derived("s"), None);
        assert_eq!(derived("%RETRY%s%g"), Some((CopyKind::Retry, "s", "g")));
        assert_eq!(derived("%DEAD_RETRY%s%g"), Some((CopyKind::Dead, "s", "g")));
        assert_eq!(derived("%RETRY%s"), None);
    }

    #[test]
    fn the_producing_host_is_read_from_qmq_ids() {
        assert_eq!(
            producer_host("261202.102538.10.0.0.7.13153.0"),
            Some("10.0.0.7")
        );
        assert_eq!(producer_host("190101.000000.web-1.42.-3"), Some("web-1"));
        for other in [
            "order-42",
            "261202.102538",
            "26120.102538.h.1.2",
            "261202.102538.h.x.2",
            "261202.102538..1.2",
        ] {
            assert_eq!(producer_host(other), None, "{other}");
        }
    }
}
