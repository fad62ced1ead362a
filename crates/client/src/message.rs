//! Typed message properties, as QMQ's `BaseMessage` offers them.
//!
//! On the wire every property is a string attribute; QMQ's Java client writes numbers, booleans
//! and dates (as ms since the epoch) with `toString()`, and this module does the same, so messages
//! travel both ways between this client and the Java one. QMQ's own keys (`qmq_*`) are reserved:
//! the generic setters refuse them, the dedicated ones (delay, expiry, retries) set them.
//!
//! # Body
//!
//! QMQ messages have no body of their own, only attributes; by convention the payload is the
//! string attribute `body`. [`MessageExt::set_body_text`] / [`MessageExt::set_body`] and
//! [`MessageExt::body_text`] / [`MessageExt::body`] keep to that convention, so a Java producer or
//! consumer on the other side needs nothing new:
//!
//! | body | attributes written | a Java consumer reads it with |
//! |---|---|---|
//! | text, at most [`LARGE_STRING_PART_CHARS`] (8192) chars | `body` = the text | `m.getLargeString("body")`, or `m.getStringProperty("body")` |
//! | text, longer | `body#part0`, `body#part1`, ... of 8192 chars each (Java's `setLargeString("body", text)`) | `m.getLargeString("body")` |
//! | bytes | the bytes in standard, padded base64 (RFC 4648), written as text is (`body` or `body#partN`), and `bodyEncoding` = `base64` | `Base64.getDecoder().decode(m.getLargeString("body"))` when `"base64".equals(m.getStringProperty("bodyEncoding"))` |
//!
//! Reading: [`MessageExt::body_text`] gives a text body (as Java's `getLargeString("body")`,
//! whichever form it took) and `None` for a bytes body or none; [`MessageExt::body`] gives the
//! bytes of either kind (a text body as its UTF-8 bytes), and `None` when there is no body or a
//! bytes body does not decode (logged). A Java producer sends a text body with
//! `setLargeString("body", text)` (or `setProperty("body", text)`), and bytes with
//! `setLargeString("body", Base64.getEncoder().encodeToString(bytes))` plus
//! `setProperty("bodyEncoding", "base64")`. Setting a body replaces the previous one, either
//! kind, with all its parts. `bodyEncoding` is an ordinary attribute: the `qmq_` prefix is
//! reserved for QMQ's own keys.
//!
//! ```
//! use qmq_client::{new_message, MessageExt};
//! let mut m = new_message("invoice.rendered");
//! m.set_body(&[0x25, 0x50, 0x44, 0x46, 0xff]);
//! assert_eq!(m.attr("body"), Some("JVBERv8="));
//! assert_eq!(m.attr("bodyEncoding"), Some("base64"));
//! assert_eq!(m.body().as_deref(), Some(&[0x25, 0x50, 0x44, 0x46, 0xff][..]));
//! assert_eq!(m.body_text(), None); // bytes are not text
//!
//! m.set_body_text("{\"invoice\": 42}");
//! assert_eq!(m.attr("body"), Some("{\"invoice\": 42}"));
//! assert_eq!(m.attr("bodyEncoding"), None);
//! assert_eq!(m.body().as_deref(), Some(&b"{\"invoice\": 42}"[..]));
//! ```

use std::time::Duration;

use base64::Engine as _;
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

/// The attribute holding a message's body (QMQ's convention), written as Java's
/// `setLargeString` writes it: see [the module docs](self#body).
pub const BODY: &str = "body";

/// The attribute telling how a bytes body is encoded into [`BODY`]; absent for a text body.
pub const BODY_ENCODING: &str = "bodyEncoding";

/// The value of [`BODY_ENCODING`] for a bytes body: standard, padded base64 (RFC 4648).
pub const BODY_ENCODING_BASE64: &str = "base64";

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

    /// Sets the body to `text`: the [`BODY`] attribute as Java's `setLargeString("body", text)`
    /// writes it (one attribute up to [`LARGE_STRING_PART_CHARS`] chars, else `body#partN`),
    /// replacing any earlier body. See [the module docs](self#body).
    fn set_body_text(&mut self, text: &str);
    /// Sets the body to `bytes`: base64 (standard, padded) written as a text body, plus
    /// [`BODY_ENCODING`]` = base64`, replacing any earlier body. A Java consumer reads it with
    /// `Base64.getDecoder().decode(m.getLargeString("body"))`.
    fn set_body(&mut self, bytes: &[u8]);
    /// The text body, either form; `None` when there is no body or it is a bytes body (use
    /// [`MessageExt::body`] for those).
    fn body_text(&self) -> Option<String>;
    /// The body as bytes: a bytes body decoded, a text body as its UTF-8 bytes; `None` when
    /// there is no body, or a bytes body with an unknown encoding or invalid base64 (logged).
    fn body(&self) -> Option<Vec<u8>>;

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
        write_large(self, name, value);
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

    fn set_body_text(&mut self, text: &str) {
        clear_body(self);
        write_large(self, BODY, text);
    }

    fn set_body(&mut self, bytes: &[u8]) {
        clear_body(self);
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        write_large(self, BODY, &encoded);
        self.set_attr(BODY_ENCODING, BODY_ENCODING_BASE64);
    }

    fn body_text(&self) -> Option<String> {
        if self.attr(BODY_ENCODING).is_some() {
            return None;
        }
        self.get_large_string(BODY)
    }

    fn body(&self) -> Option<Vec<u8>> {
        let stored = self.get_large_string(BODY);
        match self.attr(BODY_ENCODING) {
            None => stored.map(String::into_bytes),
            Some(BODY_ENCODING_BASE64) => {
                let stored = stored?;
                match base64::engine::general_purpose::STANDARD.decode(stored.as_bytes()) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        tracing::warn!(
                            message_id = %self.message_id,
                            error = %e,
                            "the message's base64 body does not decode"
                        );
                        None
                    }
                }
            }
            Some(other) => {
                tracing::warn!(
                    message_id = %self.message_id,
                    encoding = other,
                    "the message's body has an unknown encoding"
                );
                None
            }
        }
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

/// Writes `value` under `name` as Java's `LargeStringUtil` does: one attribute up to
/// [`LARGE_STRING_PART_CHARS`] chars, else `name#part0`, `name#part1`, ...
fn write_large(m: &mut Message, name: &str, value: &str) {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= LARGE_STRING_PART_CHARS {
        m.set_attr(name, value);
        return;
    }
    for (idx, part) in chars.chunks(LARGE_STRING_PART_CHARS).enumerate() {
        m.set_attr(&part_key(name, idx), part.iter().collect::<String>());
    }
}

/// Removes the body attributes: `body`, every `body#partN` and `bodyEncoding`.
fn clear_body(m: &mut Message) {
    m.attrs.retain(|(key, _)| {
        let part = key
            .strip_prefix(BODY)
            .and_then(|rest| rest.strip_prefix("#part"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        !(part || key == BODY || key == BODY_ENCODING)
    });
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

    /// Through the stored wire form and back.
    fn over_the_wire(m: &Message) -> Message {
        let stored = m.to_stored().unwrap();
        Message::decode_stored(&mut qmq_protocol::wire::Reader::new(&stored)).unwrap()
    }

    /// The body attributes, sorted, without their values.
    fn body_keys(m: &Message) -> Vec<String> {
        let mut keys: Vec<String> = m
            .attrs
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with("body"))
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn text_bodies_are_java_large_strings() {
        for len in [0, 1, LARGE_STRING_PART_CHARS, LARGE_STRING_PART_CHARS + 1] {
            let text: String = "é".repeat(len);
            let mut m = new_message("s");
            assert_eq!(m.body_text(), None);
            assert_eq!(m.body(), None);
            m.set_body_text(&text);
            let m = over_the_wire(&m);
            assert_eq!(m.body_text().as_deref(), Some(text.as_str()), "{len} chars");
            assert_eq!(m.body(), Some(text.clone().into_bytes()), "{len} chars");
            assert_eq!(m.get_large_string(BODY), Some(text.clone()));
            if len <= LARGE_STRING_PART_CHARS {
                // Java's getStringProperty("body") reads it as it is.
                assert_eq!(body_keys(&m), ["body"]);
                assert_eq!(m.attr(BODY), Some(text.as_str()));
            } else {
                assert_eq!(body_keys(&m), ["body#part0", "body#part1"]);
                assert_eq!(
                    m.attr("body#part0").map(|p| p.chars().count()),
                    Some(LARGE_STRING_PART_CHARS)
                );
                assert_eq!(m.attr("body#part1"), Some("é"));
            }
        }
    }

    #[test]
    fn bytes_bodies_are_base64_large_strings() {
        let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        let not_utf8 = vec![0xff, 0xfe, 0x00, 0xc3, 0x28];
        assert!(String::from_utf8(not_utf8.clone()).is_err());
        for bytes in [Vec::new(), not_utf8, mib] {
            let mut m = new_message("s");
            m.set_body(&bytes);
            let m = over_the_wire(&m);
            assert_eq!(m.body().as_deref(), Some(bytes.as_slice()));
            assert_eq!(m.body_text(), None, "a bytes body is not text");
            assert_eq!(m.attr(BODY_ENCODING), Some(BODY_ENCODING_BASE64));
            // What Java decodes: the large string, standard padded base64.
            let encoded = m.get_large_string(BODY).unwrap();
            assert_eq!(
                encoded,
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            );
            let parts = encoded.len().div_ceil(LARGE_STRING_PART_CHARS);
            if parts <= 1 {
                assert_eq!(body_keys(&m), ["body", "bodyEncoding"]);
            } else {
                let mut keys: Vec<String> = (0..parts).map(|i| format!("body#part{i}")).collect();
                keys.push("bodyEncoding".into());
                keys.sort();
                assert_eq!(body_keys(&m), keys);
            }
        }
        let mut m = new_message("s");
        m.set_body(b"hi\xff");
        assert_eq!(m.attr(BODY), Some("aGn/"));
        m.set_body(b"h");
        assert_eq!(m.attr(BODY), Some("aA=="), "padded");
    }

    #[test]
    fn a_new_body_replaces_every_part_of_the_old_one() {
        let mut m = new_message("s");
        m.set_string("other", "kept").unwrap();
        m.set_body(&vec![7u8; 3 * LARGE_STRING_PART_CHARS]); // four parts of base64
        assert_eq!(body_keys(&m).len(), 5);
        m.set_body_text("short");
        assert_eq!(body_keys(&m), ["body"]);
        assert_eq!(m.body_text().as_deref(), Some("short"));
        m.set_body_text(&"x".repeat(LARGE_STRING_PART_CHARS + 1));
        assert_eq!(body_keys(&m), ["body#part0", "body#part1"]);
        m.set_body(b"b");
        assert_eq!(body_keys(&m), ["body", "bodyEncoding"]);
        assert_eq!(m.get_string("other"), Some("kept"));
        // Not a part: left alone.
        m.set_string("body#partial", "y").unwrap();
        m.set_body_text("t");
        assert_eq!(m.get_string("body#partial"), Some("y"));
    }

    #[test]
    fn undecodable_bytes_bodies_are_none() {
        let mut m = new_message("s");
        m.set_string(BODY, "not base64!").unwrap();
        m.set_string(BODY_ENCODING, BODY_ENCODING_BASE64).unwrap();
        assert_eq!(m.body(), None);
        assert_eq!(m.body_text(), None);
        m.set_string(BODY_ENCODING, "gzip").unwrap();
        assert_eq!(m.body(), None);
        // A Java producer's plain setProperty("body", text) is a text body.
        let mut j = new_message("s");
        j.set_string(BODY, "from java").unwrap();
        assert_eq!(j.body_text().as_deref(), Some("from java"));
        assert_eq!(j.body().as_deref(), Some(&b"from java"[..]));
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
