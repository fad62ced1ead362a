//! What the backup keeps of a message beyond its place: read from the stored message a broker
//! sends with sync type 6 ([`qmq_protocol::SyncMessagesChunk`]).
//!
//! * tags, the producing application (`qmq_appCode`), the delivery time of a delay message
//!   (`qmq_scheduleReceiveTime`, else the delay flag's schedule time) and the retry count
//!   (`qmq_times`) — shown in a message's life;
//! * its **properties**: the attributes a producer set itself (not `qmq_*`, not the trace
//!   context `qtrace_*`, not the body), each at most [`MAX_PROPERTY_BYTES`] and at most
//!   [`MAX_PROPERTIES`] of them, indexed for queries by property value;
//! * for a dead letter (`%DEAD_RETRY%…`), the whole stored message, so it can be read and
//!   replayed after its broker dropped it.
//!
//! Bodies of other messages are not kept: they are fetched from their broker when asked for.

use bytes::Bytes;
use qmq_protocol::wire::Reader;
use qmq_protocol::{Message, StoredRecord, SyncIndexRecord};
use serde::{Deserialize, Serialize};

use crate::life::{derived, CopyKind};

/// Longest property (key plus value, bytes) that is indexed.
pub const MAX_PROPERTY_BYTES: usize = 256;
/// Most properties of one message that are indexed (the first ones, in wire order).
pub const MAX_PROPERTIES: usize = 32;

/// Which properties get an entry in the property index (all of them are kept with the
/// message either way): each indexed property costs a key per message, so a backup that only
/// needs some can say which.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PropertyIndex {
    /// Every property.
    #[default]
    All,
    /// None: no query by property.
    None,
    /// Only these keys.
    Keys(Vec<String>),
}

impl PropertyIndex {
    /// Whether properties named `key` are indexed.
    pub fn covers(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            Self::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

impl std::str::FromStr for PropertyIndex {
    type Err = String;

    /// `all`, `none`, or keys separated by commas.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            "" => Err("give all, none or property keys separated by commas".into()),
            keys => Ok(Self::Keys(
                keys.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
        }
    }
}

/// Attribute keys that are the message's payload or QMQ's own, never indexed as properties.
fn is_property(key: &str) -> bool {
    !(key.starts_with("qmq_")
        || key.starts_with("qtrace_")
        || key == "body"
        || key == "bodyEncoding"
        || key.starts_with("body#"))
}

/// What the index keeps of a message besides its place.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Details {
    /// The message's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The producing application (`qmq_appCode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_code: Option<String>,
    /// A delay message's delivery time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_until: Option<i64>,
    /// How many times the message had been tried when this copy was stored (`qmq_times`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// The indexed properties, in wire order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<(String, String)>,
    /// This copy is a delay server's: held there until `delayed_until`, then sent to a broker
    /// (whose copy is another entry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Details {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The details of `m`.
    pub fn of(m: &Message) -> Self {
        let attr = |k: &str| m.attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let delayed_until = attr("qmq_scheduleReceiveTime")
            .and_then(|v| v.parse::<i64>().ok())
            .or_else(|| m.flags.is_delay().then_some(m.expire_or_schedule))
            .filter(|t| *t > 0);
        let properties = m
            .attrs
            .iter()
            .filter(|(k, v)| {
                is_property(k) && !k.is_empty() && k.len() + v.len() <= MAX_PROPERTY_BYTES
            })
            .take(MAX_PROPERTIES)
            .cloned()
            .collect();
        Self {
            tags: m.tags.clone(),
            app_code: attr("qmq_appCode").filter(|v| !v.is_empty()).cloned(),
            delayed_until,
            times: attr("qmq_times").and_then(|v| v.parse().ok()),
            properties,
            held: false,
        }
    }
}

/// One message to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The subject its sequence counts in.
    pub subject: String,
    /// The producer-assigned id.
    pub message_id: String,
    /// The consume-log sequence.
    pub sequence: u64,
    /// The creation time (ms since the epoch).
    pub created_time: i64,
    /// Tags, properties and the rest ([`Details`]); empty from a type-5 index record.
    pub details: Details,
    /// The stored message, kept for dead letters only.
    pub dead_letter: Option<Bytes>,
}

/// Why a stored record gives nothing to index.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableRecord {
    /// A negative sequence.
    #[error("negative sequence {0}")]
    Sequence(i64),
    /// The stored message cannot be decoded.
    #[error("unreadable stored message: {0}")]
    Message(#[from] qmq_protocol::DecodeError),
    /// The message has no id.
    #[error("message without an id")]
    NoId,
}

impl Indexed {
    /// The entry of a type-6 record: place, details and, for a dead letter, the message;
    /// `held`: the record is a delay server's (its sequence is a message-log offset).
    pub fn from_stored(record: &StoredRecord, held: bool) -> Result<Self, UnreadableRecord> {
        let sequence = u64::try_from(record.sequence)
            .map_err(|_| UnreadableRecord::Sequence(record.sequence))?;
        let m = Message::decode_stored(&mut Reader::new(&record.stored))?;
        if m.message_id.is_empty() {
            return Err(UnreadableRecord::NoId);
        }
        let dead = !held && matches!(derived(&record.subject), Some((CopyKind::Dead, _, _)));
        let mut details = Details::of(&m);
        details.held = held;
        Ok(Self {
            details,
            subject: record.subject.clone(),
            message_id: m.message_id,
            sequence,
            created_time: m.created_time,
            dead_letter: dead.then(|| record.stored.clone()),
        })
    }

    /// The entry of a QMQ type-5 index record (place only).
    pub fn from_index(record: &SyncIndexRecord) -> Result<Self, UnreadableRecord> {
        Ok(Self {
            subject: record.subject.clone(),
            message_id: record.message_id.clone(),
            sequence: u64::try_from(record.sequence)
                .map_err(|_| UnreadableRecord::Sequence(record.sequence))?,
            created_time: record.created_time,
            details: Details::default(),
            dead_letter: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmq_protocol::MessageFlags;

    fn message(attrs: &[(&str, &str)]) -> Message {
        Message {
            flags: MessageFlags::default().with_tags(true),
            created_time: 1_000,
            expire_or_schedule: 2_000,
            subject: "s".into(),
            message_id: "id".into(),
            tags: vec!["t1".into()],
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn details_pick_properties_and_qmq_keys() {
        let long = "x".repeat(MAX_PROPERTY_BYTES);
        let m = message(&[
            ("qmq_appCode", "shop"),
            ("qmq_times", "3"),
            ("qmq_scheduleReceiveTime", "5000"),
            ("qtrace_traceparent", "00-ab"),
            ("body", "payload"),
            ("order", "42"),
            ("big", &long),
            ("city", "bj"),
        ]);
        let d = Details::of(&m);
        assert_eq!(d.tags, vec!["t1".to_owned()]);
        assert_eq!(d.app_code.as_deref(), Some("shop"));
        assert_eq!(d.times, Some(3));
        assert_eq!(d.delayed_until, Some(5000));
        assert_eq!(
            d.properties,
            vec![("order".into(), "42".into()), ("city".into(), "bj".into())]
        );
        let plain = Details::of(&message(&[]));
        assert_eq!(plain.delayed_until, None);
        let mut flagged = message(&[]);
        flagged.flags = flagged.flags.with_delay(true);
        assert_eq!(Details::of(&flagged).delayed_until, Some(2000));
    }

    #[test]
    fn the_property_index_covers_what_it_names() {
        let all: PropertyIndex = "all".parse().unwrap();
        let none: PropertyIndex = "none".parse().unwrap();
        let some: PropertyIndex = "order, city".parse().unwrap();
        assert!(all.covers("x") && !none.covers("x"));
        assert!(some.covers("order") && some.covers("city") && !some.covers("x"));
        assert!("".parse::<PropertyIndex>().is_err());
    }

    #[test]
    fn properties_are_capped() {
        let attrs: Vec<(String, String)> = (0..MAX_PROPERTIES + 5)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            Details::of(&message(&refs)).properties.len(),
            MAX_PROPERTIES
        );
    }

    #[test]
    fn dead_letters_keep_their_message() {
        let stored = message(&[("order", "1")]).to_stored().unwrap();
        let dead = Indexed::from_stored(
            &StoredRecord {
                sequence: 4,
                subject: "%DEAD_RETRY%s%g".into(),
                stored: stored.clone(),
            },
            false,
        )
        .unwrap();
        assert_eq!(dead.dead_letter.as_ref(), Some(&stored));
        assert_eq!((dead.sequence, dead.message_id.as_str()), (4, "id"));
        let live = Indexed::from_stored(
            &StoredRecord {
                sequence: 4,
                subject: "s".into(),
                stored: stored.clone(),
            },
            true,
        )
        .unwrap();
        assert!(live.dead_letter.is_none());
        assert!(live.details.held);
        let bad = Indexed::from_stored(
            &StoredRecord {
                sequence: -1,
                subject: "s".into(),
                stored,
            },
            false,
        );
        assert!(matches!(bad, Err(UnreadableRecord::Sequence(-1))));
        let garbage = Indexed::from_stored(
            &StoredRecord {
                sequence: 1,
                subject: "s".into(),
                stored: Bytes::from_static(b"\x00\x01"),
            },
            false,
        );
        assert!(matches!(garbage, Err(UnreadableRecord::Message(_))));
    }
}
