//! The `content` column: a message as the JSON QMQ's Java producer writes (Gson of
//! `BaseMessage`, 64-bit numbers as strings):
//!
//! ```json
//! {"messageId":"...","subject":"order.created","tags":["vip"],"storeAtFailed":false,
//!  "durable":true,"attrs":{"qmq_createTime":"1701396000000","orderId":"42"}}
//! ```
//!
//! This client writes every attribute as a JSON string. Reading, it accepts what Java writes:
//! numbers and booleans become their JSON text (`5`, `1.5`, `true`; the Java watchdog would
//! resend an int `5` as `"5.0"`), `null` attributes are dropped, `tags` and `attrs` may be
//! absent. `storeAtFailed` and `durable` are written for Java and ignored when read: the wire
//! has no use for them.

use chrono::Utc;
use qmq_protocol::{Message, MessageFlags};
use serde_json::{Map, Value};

use crate::message::keys;

/// A delay shorter than this is sent as an ordinary message (QMQ's rule).
const MIN_DELAY_MS: i64 = 500;

/// Why a row's content is not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentError {
    /// The content is empty.
    #[error("content is empty")]
    Empty,
    /// The content is not JSON, or not a JSON object.
    #[error("content is not a JSON object: {0}")]
    NotJson(String),
    /// A required field is missing, empty or of the wrong type.
    #[error("field {0} is missing or invalid")]
    BadField(&'static str),
    /// The subject is a placeholder (`${...}`), as QMQ's watchdog refuses.
    #[error("subject {0:?} is an unresolved placeholder")]
    PlaceholderSubject(String),
}

/// The JSON content of `message`.
pub fn to_json(message: &Message) -> String {
    let attrs: Map<String, Value> = message
        .attrs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut doc = Map::new();
    doc.insert(
        "messageId".into(),
        Value::String(message.message_id.clone()),
    );
    doc.insert("subject".into(), Value::String(message.subject.clone()));
    doc.insert(
        "tags".into(),
        Value::Array(message.tags.iter().cloned().map(Value::String).collect()),
    );
    doc.insert("storeAtFailed".into(), Value::Bool(false));
    doc.insert("durable".into(), Value::Bool(true));
    doc.insert("attrs".into(), Value::Object(attrs));
    Value::Object(doc).to_string()
}

/// The message a row's content describes, ready to send: tags flagged, the creation time from
/// `qmq_createTime`, and the delay flag and delivery time from `qmq_scheduleReceiveTime` when
/// it is at least 500 ms ahead.
pub fn from_json(content: &str) -> Result<Message, ContentError> {
    if content.trim().is_empty() {
        return Err(ContentError::Empty);
    }
    let doc: Value =
        serde_json::from_str(content).map_err(|e| ContentError::NotJson(e.to_string()))?;
    let Value::Object(doc) = doc else {
        return Err(ContentError::NotJson("not an object".into()));
    };
    let text = |name: &'static str| match doc.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ContentError::BadField(name)),
    };
    let message_id = text("messageId")?;
    let subject = text("subject")?;
    if subject.contains("${") {
        return Err(ContentError::PlaceholderSubject(subject));
    }
    let tags = match doc.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|t| match t {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ContentError::BadField("tags")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ContentError::BadField("tags")),
    };
    let attrs: Vec<(String, String)> = match doc.get("attrs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(attrs)) => attrs
            .iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    Value::Null => return None,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((k.clone(), v))
            })
            .collect(),
        Some(_) => return Err(ContentError::BadField("attrs")),
    };
    let now = Utc::now().timestamp_millis();
    let attr_ms = |key: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .map(|v| v as i64)
    };
    let created_time = attr_ms(keys::CREATE_TIME).unwrap_or(now);
    let schedule = attr_ms(keys::SCHEDULE_RECEIVE_TIME).filter(|at| *at - now >= MIN_DELAY_MS);
    let flags = MessageFlags::default()
        .with_tags(!tags.is_empty())
        .with_delay(schedule.is_some());
    Ok(Message {
        flags,
        created_time,
        expire_or_schedule: schedule.unwrap_or(now),
        subject,
        message_id,
        tags,
        attrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_message, MessageExt};

    #[test]
    fn round_trip_keeps_the_message() {
        let mut m = new_message("order.created");
        m.set_string("orderId", "42").unwrap();
        m.set_i64("amount", 1999).unwrap();
        m.add_tag("vip").unwrap();
        let back = from_json(&to_json(&m)).unwrap();
        assert_eq!(back.message_id, m.message_id);
        assert_eq!(back.subject, m.subject);
        assert_eq!(back.tags, m.tags);
        assert!(back.flags.has_tags());
        assert!(!back.flags.is_delay());
        assert_eq!(back.created_time, m.created_time);
        let mut a = back.attrs.clone();
        let mut b = m.attrs.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn java_content_is_read() {
        // As Gson writes a BaseMessage with LongSerializationPolicy.STRING: longs as strings,
        // ints, doubles and booleans as JSON values.
        let java = r#"{"messageId":"190603.154239.100.86.9.98.3920.0","subject":"java.s",
            "tags":[],"storeAtFailed":false,"durable":true,
            "attrs":{"qmq_createTime":"1559547759000","qmq_expireTime":"1559548659000",
            "qmq_appCode":"app","n":5,"d":1.5,"b":true,"nil":null}}"#;
        let m = from_json(java).unwrap();
        assert_eq!(m.message_id, "190603.154239.100.86.9.98.3920.0");
        assert_eq!(m.created_time, 1_559_547_759_000);
        assert!(!m.flags.has_tags());
        assert_eq!(m.get_string("n"), Some("5"));
        assert_eq!(m.get_string("d"), Some("1.5"));
        assert!(m.get_bool("b"));
        assert_eq!(m.get_string("nil"), None);
    }

    #[test]
    fn a_future_schedule_makes_a_delay_message() {
        let at = Utc::now().timestamp_millis() + 60_000;
        let json = format!(
            r#"{{"messageId":"x","subject":"s","attrs":{{"qmq_scheduleReceiveTime":"{at}"}}}}"#
        );
        let m = from_json(&json).unwrap();
        assert!(m.flags.is_delay());
        assert_eq!(m.expire_or_schedule, at);
    }

    #[test]
    fn malformed_content_is_refused() {
        assert_eq!(from_json(""), Err(ContentError::Empty));
        assert!(matches!(from_json("{oops"), Err(ContentError::NotJson(_))));
        assert!(matches!(from_json("[1]"), Err(ContentError::NotJson(_))));
        assert_eq!(
            from_json(r#"{"subject":"s"}"#),
            Err(ContentError::BadField("messageId"))
        );
        assert_eq!(
            from_json(r#"{"messageId":"x","subject":""}"#),
            Err(ContentError::BadField("subject"))
        );
        assert_eq!(
            from_json(r#"{"messageId":"x","subject":"${s}"}"#),
            Err(ContentError::PlaceholderSubject("${s}".into()))
        );
        assert_eq!(
            from_json(r#"{"messageId":"x","subject":"s","tags":"t"}"#),
            Err(ContentError::BadField("tags"))
        );
    }
}
