//! Typed message properties, as QMQ's `BaseMessage` offers them.
//!
//! On the wire every property is a string attribute; QMQ's Java client writes numbers, booleans
//! and dates (as ms since the epoch) with `toString()`, and this module does the same, so messages
//! travel both ways between this client and the Java one. QMQ's own keys (`qmq_*`) are reserved:
//! the generic setters refuse them, the dedicated ones (delay, expiry, retries) set them.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use qmq_protocol::Message;

/// QMQ's reserved attribute keys (`BaseMessage.keys`).
pub mod keys {
    /// Creation time, ms since the epoch.
    pub const CREATE_TIME: &str = "qmq_createTime";
    /// Expiry time, ms since the epoch.
    pub const EXPIRE_TIME: &str = "qmq_expireTime";
    /// The consumer group a pulled message was pulled for.
    pub const CONSUMER_GROUP_NAME: &str = "qmq_consumerGroupName";
    /// Delivery time of a delay message, ms since the epoch.
    pub const SCHEDULE_RECEIVE_TIME: &str = "qmq_scheduleReceiveTime";
    /// How many times the message has been delivered to the group (1 = first time).
    pub const TIMES: &str = "qmq_times";
    /// How many failed deliveries the group tolerates before the dead-letter subject.
    pub const MAX_RETRY_NUM: &str = "qmq_maxRetryNum";
    /// The producing application.
    pub const APP_CODE: &str = "qmq_appCode";
    /// Pull-log offset of a pulled message.
    pub const PULL_OFFSET: &str = "qmq_pullOffset";
    /// Set by brokers on messages whose stored form was damaged.
    pub const CORRUPT_DATA: &str = "qmq_corruptData";
    /// Environment.
    pub const ENV: &str = "qmq_env";
    /// Sub-environment.
    pub const SUB_ENV: &str = "qmq_subEnv";

    /// Every reserved key.
    pub const ALL: [&str; 11] = [
        CREATE_TIME,
        EXPIRE_TIME,
        CONSUMER_GROUP_NAME,
        SCHEDULE_RECEIVE_TIME,
        TIMES,
        MAX_RETRY_NUM,
        APP_CODE,
        PULL_OFFSET,
        CORRUPT_DATA,
        ENV,
        SUB_ENV,
    ];
}

/// Characters per attribute when a large string is split (QMQ: 32 KiB / 4, in UTF-16 units;
/// here in chars, so one part is at most 32 KiB of UTF-8 and fits an attribute's u16 length).
pub const LARGE_STRING_PART_CHARS: usize = 32 * 1024 / 4;

/// QMQ allows at most this many tags per message.
pub const MAX_TAGS: usize = 10;

/// Why a property could not be set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropertyError {
    /// The name is one of QMQ's reserved `qmq_*` keys.
    #[error("property name {0} is reserved by QMQ")]
    Reserved(String),
    /// The name is empty.
    #[error("property name is empty")]
    EmptyName,
    /// A tag is empty or the message already has [`MAX_TAGS`] tags.
    #[error("invalid tag {0:?} (tags must be non-empty, at most {MAX_TAGS} per message)")]
    BadTag(String),
    /// A delay time lies in the past.
    #[error("delay time {0} ms is in the past")]
    PastDelay(i64),
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Typed property access on a QMQ [`Message`].
///
/// ```
/// use qmq_client::{new_message, MessageExt};
/// let mut m = new_message("order.created");
/// m.set_string("orderId", "42").unwrap();
/// m.set_i64("amount", 1999).unwrap();
/// m.add_tag("vip").unwrap();
/// assert_eq!(m.get_i64("amount"), Some(1999));
/// assert_eq!(m.get_string("orderId"), Some("42"));
/// ```
pub trait MessageExt {
    /// Sets a string property.
    fn set_string(&mut self, name: &str, value: &str) -> Result<(), PropertyError>;
    /// Sets an `i32` property.
    fn set_i32(&mut self, name: &str, value: i32) -> Result<(), PropertyError>;
    /// Sets an `i64` property.
    fn set_i64(&mut self, name: &str, value: i64) -> Result<(), PropertyError>;
    /// Sets a boolean property (`true`/`false`, as Java writes them).
    fn set_bool(&mut self, name: &str, value: bool) -> Result<(), PropertyError>;
    /// Sets an `f64` property.
    fn set_f64(&mut self, name: &str, value: f64) -> Result<(), PropertyError>;
    /// Sets a date property (stored as ms since the epoch, as Java's `Date` properties are).
    fn set_date(&mut self, name: &str, value: DateTime<Utc>) -> Result<(), PropertyError>;
    /// Sets a string of any length: short ones as one attribute, longer ones split into
    /// `name#part0`, `name#part1`, ... of [`LARGE_STRING_PART_CHARS`] chars each.
    fn set_large_string(&mut self, name: &str, value: &str) -> Result<(), PropertyError>;

    /// A string property.
    fn get_string(&self, name: &str) -> Option<&str>;
    /// An `i32` property (`None` when absent or not a number).
    fn get_i32(&self, name: &str) -> Option<i32>;
    /// An `i64` property.
    fn get_i64(&self, name: &str) -> Option<i64>;
    /// A boolean property (`true` only for a case-insensitive "true", as Java reads it).
    fn get_bool(&self, name: &str) -> bool;
    /// An `f64` property.
    fn get_f64(&self, name: &str) -> Option<f64>;
    /// A date property.
    fn get_date(&self, name: &str) -> Option<DateTime<Utc>>;
    /// A string set by [`MessageExt::set_large_string`] (either form), `None` if neither exists.
    fn get_large_string(&self, name: &str) -> Option<String>;

    /// Adds a tag (consumers may filter on tags).
    fn add_tag(&mut self, tag: &str) -> Result<(), PropertyError>;
    /// Delivers the message `delay` from now (needs a delay server on the route).
    fn set_delay(&mut self, delay: Duration);
    /// Delivers the message at `at`, which must be in the future.
    fn set_delay_until(&mut self, at: DateTime<Utc>) -> Result<(), PropertyError>;
    /// When the message is delivered, for delay messages.
    fn schedule_time(&self) -> Option<DateTime<Utc>>;
    /// Expires the message `after` from now: producers stop retrying it after that.
    fn set_expire_after(&mut self, after: Duration);
    /// Expires the message at `at`.
    fn set_expire_at(&mut self, at: DateTime<Utc>);
    /// The expiry time, if any.
    fn expire_time(&self) -> Option<DateTime<Utc>>;
    /// Which delivery this is to the consumer group (1 = the first), from `qmq_times`.
    fn times(&self) -> u32;
    /// The group's maximum number of retries carried by the message, if set.
    fn max_retry_num(&self) -> Option<u32>;
    /// Creation time (`qmq_createTime`, else the wire header's).
    fn created_time(&self) -> Option<DateTime<Utc>>;
}

fn check_name(name: &str) -> Result<(), PropertyError> {
    if name.is_empty() {
        return Err(PropertyError::EmptyName);
    }
    if keys::ALL.contains(&name) {
        return Err(PropertyError::Reserved(name.to_owned()));
    }
    Ok(())
}

fn part_key(name: &str, idx: usize) -> String {
    format!("{name}#part{idx}")
}

fn date(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

impl MessageExt for Message {
    fn set_string(&mut self, name: &str, value: &str) -> Result<(), PropertyError> {
        check_name(name)?;
        self.set_attr(name, value);
        Ok(())
    }

    fn set_i32(&mut self, name: &str, value: i32) -> Result<(), PropertyError> {
        self.set_string(name, &value.to_string())
    }

    fn set_i64(&mut self, name: &str, value: i64) -> Result<(), PropertyError> {
        self.set_string(name, &value.to_string())
    }

    fn set_bool(&mut self, name: &str, value: bool) -> Result<(), PropertyError> {
        self.set_string(name, if value { "true" } else { "false" })
    }

    fn set_f64(&mut self, name: &str, value: f64) -> Result<(), PropertyError> {
        self.set_string(name, &value.to_string())
    }

    fn set_date(&mut self, name: &str, value: DateTime<Utc>) -> Result<(), PropertyError> {
        self.set_i64(name, value.timestamp_millis())
    }

    fn set_large_string(&mut self, name: &str, value: &str) -> Result<(), PropertyError> {
        check_name(name)?;
        let chars: Vec<char> = value.chars().collect();
        if chars.len() <= LARGE_STRING_PART_CHARS {
            self.set_attr(name, value);
            return Ok(());
        }
        for (idx, part) in chars.chunks(LARGE_STRING_PART_CHARS).enumerate() {
            self.set_attr(&part_key(name, idx), part.iter().collect::<String>());
        }
        Ok(())
    }

    fn get_string(&self, name: &str) -> Option<&str> {
        self.attr(name)
    }

    fn get_i32(&self, name: &str) -> Option<i32> {
        self.attr(name)?.parse().ok()
    }

    fn get_i64(&self, name: &str) -> Option<i64> {
        self.attr(name)?.parse().ok()
    }

    fn get_bool(&self, name: &str) -> bool {
        self.attr(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn get_f64(&self, name: &str) -> Option<f64> {
        self.attr(name)?.parse().ok()
    }

    fn get_date(&self, name: &str) -> Option<DateTime<Utc>> {
        date(self.get_i64(name)?)
    }

    fn get_large_string(&self, name: &str) -> Option<String> {
        if let Some(small) = self.attr(name) {
            return Some(small.to_owned());
        }
        let mut out: Option<String> = None;
        for idx in 0.. {
            match self.attr(&part_key(name, idx)) {
                Some(part) => out.get_or_insert_with(String::new).push_str(part),
                None => break,
            }
        }
        out
    }

    fn add_tag(&mut self, tag: &str) -> Result<(), PropertyError> {
        if tag.is_empty() || (self.tags.len() >= MAX_TAGS && !self.tags.iter().any(|t| t == tag)) {
            return Err(PropertyError::BadTag(tag.to_owned()));
        }
        if !self.tags.iter().any(|t| t == tag) {
            self.tags.push(tag.to_owned());
        }
        self.flags = self.flags.with_tags(true);
        Ok(())
    }

    fn set_delay(&mut self, delay: Duration) {
        let at = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        set_schedule(self, at);
    }

    fn set_delay_until(&mut self, at: DateTime<Utc>) -> Result<(), PropertyError> {
        let ms = at.timestamp_millis();
        if ms <= now_ms() {
            return Err(PropertyError::PastDelay(ms));
        }
        set_schedule(self, ms);
        Ok(())
    }

    fn schedule_time(&self) -> Option<DateTime<Utc>> {
        self.get_date(keys::SCHEDULE_RECEIVE_TIME)
    }

    fn set_expire_after(&mut self, after: Duration) {
        let at = now_ms().saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
        self.set_attr(keys::EXPIRE_TIME, at.to_string());
    }

    fn set_expire_at(&mut self, at: DateTime<Utc>) {
        self.set_attr(keys::EXPIRE_TIME, at.timestamp_millis().to_string());
    }

    fn expire_time(&self) -> Option<DateTime<Utc>> {
        self.get_date(keys::EXPIRE_TIME)
    }

    fn times(&self) -> u32 {
        self.attr(keys::TIMES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    fn max_retry_num(&self) -> Option<u32> {
        self.attr(keys::MAX_RETRY_NUM)?.parse().ok()
    }

    fn created_time(&self) -> Option<DateTime<Utc>> {
        self.get_date(keys::CREATE_TIME)
            .or_else(|| date(self.created_time))
    }
}

/// Marks `m` as a delay message delivered at `at_ms`: the attribute Java consumers read, the
/// flag bit and the header time brokers and delay servers use.
fn set_schedule(m: &mut Message, at_ms: i64) {
    m.set_attr(keys::SCHEDULE_RECEIVE_TIME, at_ms.to_string());
    m.flags = m.flags.with_delay(true);
    m.expire_or_schedule = at_ms;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::new_message;

    #[test]
    fn typed_round_trips() {
        let mut m = new_message("s");
        m.set_i32("i", -7).unwrap();
        m.set_i64("l", i64::MAX).unwrap();
        m.set_bool("b", true).unwrap();
        m.set_f64("f", 2.5).unwrap();
        let d = date(1_700_000_000_123).unwrap();
        m.set_date("d", d).unwrap();
        assert_eq!(m.get_i32("i"), Some(-7));
        assert_eq!(m.get_i64("l"), Some(i64::MAX));
        assert!(m.get_bool("b"));
        assert!(!m.get_bool("missing"));
        assert_eq!(m.get_f64("f"), Some(2.5));
        assert_eq!(m.get_date("d"), Some(d));
        assert_eq!(m.attr("d"), Some("1700000000123"));
        assert_eq!(m.get_i32("b"), None);
    }

    #[test]
    fn reserved_and_empty_names_are_refused() {
        let mut m = new_message("s");
        assert_eq!(
            m.set_string("qmq_times", "3"),
            Err(PropertyError::Reserved("qmq_times".into()))
        );
        assert_eq!(m.set_i32("", 1), Err(PropertyError::EmptyName));
    }

    #[test]
    fn large_strings_split_like_qmq() {
        let mut m = new_message("s");
        let big: String = "é".repeat(LARGE_STRING_PART_CHARS * 2 + 5);
        m.set_large_string("body", &big).unwrap();
        assert_eq!(m.attr("body"), None);
        assert_eq!(
            m.attr("body#part0").map(|p| p.chars().count()),
            Some(LARGE_STRING_PART_CHARS)
        );
        assert_eq!(m.attr("body#part2").map(|p| p.chars().count()), Some(5));
        assert_eq!(m.attr("body#part3"), None);
        assert_eq!(m.get_large_string("body").as_deref(), Some(big.as_str()));
        // The parts survive the wire form (each fits a u16-length attribute).
        let stored = m.to_stored().unwrap();
        let back = Message::decode_stored(&mut qmq_protocol::wire::Reader::new(&stored)).unwrap();
        assert_eq!(back.get_large_string("body"), Some(big));

        m.set_large_string("small", "x").unwrap();
        assert_eq!(m.attr("small"), Some("x"));
        assert_eq!(m.get_large_string("small").as_deref(), Some("x"));
        assert_eq!(m.get_large_string("none"), None);
    }

    #[test]
    fn tags_set_the_flag_and_are_bounded() {
        let mut m = new_message("s");
        assert!(!m.flags.has_tags());
        m.add_tag("a").unwrap();
        m.add_tag("a").unwrap();
        assert!(m.flags.has_tags());
        assert_eq!(m.tags, vec!["a".to_string()]);
        for i in 1..MAX_TAGS {
            m.add_tag(&format!("t{i}")).unwrap();
        }
        assert!(matches!(
            m.add_tag("one-too-many"),
            Err(PropertyError::BadTag(_))
        ));
        assert!(matches!(m.add_tag(""), Err(PropertyError::BadTag(_))));
    }

    #[test]
    fn delay_sets_flag_header_and_attribute() {
        let mut m = new_message("s");
        let before = now_ms();
        m.set_delay(Duration::from_secs(60));
        assert!(m.flags.is_delay());
        assert!(m.expire_or_schedule >= before + 60_000);
        assert_eq!(
            m.schedule_time().map(|d| d.timestamp_millis()),
            Some(m.expire_or_schedule)
        );

        let mut n = new_message("s");
        let at = date(now_ms() + 3_600_000).unwrap();
        n.set_delay_until(at).unwrap();
        assert_eq!(n.expire_or_schedule, at.timestamp_millis());
        assert!(matches!(
            n.set_delay_until(date(1).unwrap()),
            Err(PropertyError::PastDelay(1))
        ));
    }

    #[test]
    fn expiry_times_and_defaults() {
        let mut m = new_message("s");
        assert_eq!(m.expire_time(), None);
        let at = date(1_800_000_000_000).unwrap();
        m.set_expire_at(at);
        assert_eq!(m.expire_time(), Some(at));
        m.set_expire_after(Duration::from_secs(10));
        assert!(m.expire_time().unwrap().timestamp_millis() >= now_ms() + 9_000);
        assert_eq!(m.times(), 1);
        assert_eq!(m.max_retry_num(), None);
        assert!(m.created_time().is_some());
    }
}
