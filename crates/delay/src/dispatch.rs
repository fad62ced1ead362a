//! What the engine hands due messages to, what it hears back, and dead letters.
//!
//! A [`Dispatcher`] reports one [`Outcome`] per message. The engine retries every message that
//! was not stored on its own backoff (other messages are never held up by it), and after
//! `max_dispatch_attempts` *permanent* refusals sends it to its dead-letter subject
//! ([`dead_letter_subject`]) instead; transient failures (broker unreachable, busy, read-only)
//! are retried without limit, so an outage never turns messages into dead letters.

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;

use crate::error::DispatchError;

/// Prefix of the subject a message goes to when the brokers keep refusing it. QMQ's delay
/// server has no dead letters (it retries forever); the name follows QMQ's `%DEAD_RETRY%`
/// naming so tools that treat `%`-prefixed subjects as system subjects do the same here.
pub const DEAD_LETTER_PREFIX: &str = "%DEAD_DELAY%";

/// The dead-letter subject of `subject`: `%DEAD_DELAY%<subject>`.
pub fn dead_letter_subject(subject: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{subject}")
}

/// A message whose time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMessage {
    /// The subject.
    pub subject: String,
    /// The message id.
    pub message_id: String,
    /// When it was due (ms since the epoch; "now" for messages scheduled in the past).
    pub due_ms: i64,
    /// The message's stored wire form, exactly as it was received.
    pub message: Bytes,
}

/// Offset of the subject in QMQ's stored form: `u8 flags | i64 created | i64 expire/schedule`.
const SUBJECT_AT: usize = 17;

impl DueMessage {
    /// The same message under its dead-letter subject ([`dead_letter_subject`]): the subject
    /// field of the stored form is rewritten, every other byte is kept. `None` when the stored
    /// form does not hold this message's subject where QMQ puts it (not a QMQ message) or the
    /// new subject is too long for a QMQ short string.
    pub fn to_dead_letter(&self) -> Option<DueMessage> {
        let subject = dead_letter_subject(&self.subject);
        let new_len = u16::try_from(subject.len())
            .ok()
            .filter(|&n| n <= i16::MAX as u16)?;
        let raw = &self.message;
        let old_len = usize::from(u16::from_be_bytes(
            raw.get(SUBJECT_AT..SUBJECT_AT + 2)?.try_into().ok()?,
        ));
        let rest_at = SUBJECT_AT + 2 + old_len;
        if raw.get(SUBJECT_AT + 2..rest_at)? != self.subject.as_bytes() {
            return None;
        }
        let mut out = BytesMut::with_capacity(raw.len() + subject.len() - old_len);
        out.put_slice(&raw[..SUBJECT_AT]);
        out.put_u16(new_len);
        out.put_slice(subject.as_bytes());
        out.put_slice(&raw[rest_at..]);
        Some(DueMessage {
            subject,
            message_id: self.message_id.clone(),
            due_ms: self.due_ms,
            message: out.freeze(),
        })
    }
}

/// What became of one message handed to a [`Dispatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored by the broker (or already stored there: a duplicate id).
    Stored,
    /// Not stored for a reason that says nothing about the message: the broker could not be
    /// reached or did not answer, was busy, read-only or failed to store, no broker is
    /// writable. Retried with backoff, without limit.
    Transient(String),
    /// Refused because of the message or its subject: blocked (too large, malformed,
    /// forbidden), larger than a frame, subject not assigned to the routed broker. Retried
    /// with backoff (a stale route heals); after `max_dispatch_attempts` such refusals the
    /// message goes to its dead-letter subject.
    Permanent(String),
}

impl Outcome {
    /// Whether the message was stored.
    pub fn is_stored(&self) -> bool {
        matches!(self, Self::Stored)
    }
}

/// Takes due messages onward (to a realtime broker, in production).
///
/// The engine calls it with batches of due messages, one call at a time, and records a message
/// as dispatched only once it is reported [`Outcome::Stored`]; the others are offered again
/// (alone or in later batches, after a growing pause of their own). A call may be dropped
/// before it completes (engine shutdown): then none of its messages count as stored.
pub trait Dispatcher: Send + Sync + 'static {
    /// Hands `batch` over. `Ok(outcomes)` tells, per message in order, what became of it
    /// (missing entries count as [`Outcome::Transient`]); `Err` means nothing was stored, for a
    /// transient reason.
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, DispatchError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_rewrites_only_the_subject() {
        let m = qmq_protocol::Message {
            flags: qmq_protocol::MessageFlags::default().with_delay(true),
            created_time: 7,
            expire_or_schedule: 9,
            subject: "a.b".into(),
            message_id: "id1".into(),
            tags: vec![],
            attrs: vec![("k".into(), "v".into())],
        };
        let due = DueMessage {
            subject: "a.b".into(),
            message_id: "id1".into(),
            due_ms: 9,
            message: m.to_stored().unwrap(),
        };
        let dead = due.to_dead_letter().unwrap();
        assert_eq!(dead.subject, "%DEAD_DELAY%a.b");
        let expected = qmq_protocol::Message {
            subject: "%DEAD_DELAY%a.b".into(),
            ..m
        };
        assert_eq!(dead.message, expected.to_stored().unwrap());
        let not_qmq = DueMessage {
            message: Bytes::from_static(b"plain bytes"),
            ..due
        };
        assert_eq!(not_qmq.to_dead_letter(), None);
    }
}
