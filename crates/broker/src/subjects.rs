//! Names of the subjects the broker derives from a real subject, as QMQ spells them, and the
//! rules every name from a client must meet before the broker records or logs anything.
//!
//! Name rules (checked at the protocol edge, before a name reaches a map, a log line or the
//! store): subject, group and consumer id are non-empty, hold no `\r` or `\n`, and are at
//! most [`MAX_NAME_BYTES`] bytes; a retry or dead-letter subject, which embeds a subject and a
//! group, may be up to [`MAX_DERIVED_SUBJECT_BYTES`]. Pulls also refuse `/` in names, as QMQ's
//! pull path does; sends accept it (the store does not derive file names from names).
//!
//! A consumer group's failed messages go to `%RETRY%<subject>%<group>` and, after the maximum
//! number of tries, to `%DEAD_RETRY%<subject>%<group>`. QMQ clients subscribe to the retry subject
//! of every group they consume, so the names must match byte for byte.

/// Longest subject, group or consumer id, in bytes. Chosen so that a group's derived subjects
/// (`%DEAD_RETRY%<subject>%<group>`) stay within the store's 1024-byte name limit; QMQ's client
/// allows 100.
pub const MAX_NAME_BYTES: usize = 500;

/// Longest retry or dead-letter subject, in bytes (the store's name limit).
pub const MAX_DERIVED_SUBJECT_BYTES: usize = 1024;

/// Why a name from a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidName {
    /// Which name: "subject", "group" or "consumer id".
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a name from a client: non-empty, no line breaks, at most `max` bytes.
fn check(what: &'static str, name: &str, max: usize) -> Result<(), InvalidName> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > max {
        "too long"
    } else if name.contains(['\r', '\n']) {
        "contains a line break"
    } else {
        return Ok(());
    };
    Err(InvalidName { what, reason })
}

/// Checks a subject a producer sends to (retry and dead-letter subjects may be longer).
pub fn check_subject(subject: &str) -> Result<(), InvalidName> {
    let max = if is_retry(subject) || is_dead_letter(subject) {
        MAX_DERIVED_SUBJECT_BYTES
    } else {
        MAX_NAME_BYTES
    };
    check("subject", subject, max)
}

/// Checks the names of a pull or ack: the subject as [`check_subject`], group and consumer id
/// up to [`MAX_NAME_BYTES`], and no `/` in any of them (QMQ's pull rule).
pub fn check_consumer(subject: &str, group: &str, consumer: &str) -> Result<(), InvalidName> {
    check_subject(subject)?;
    check("group", group, MAX_NAME_BYTES)?;
    check("consumer id", consumer, MAX_NAME_BYTES)?;
    for (what, name) in [
        ("subject", subject),
        ("group", group),
        ("consumer id", consumer),
    ] {
        if name.contains('/') {
            return Err(InvalidName {
                what,
                reason: "contains '/'",
            });
        }
    }
    Ok(())
}

const RETRY_PREFIX: &str = "%RETRY";
const DEAD_PREFIX: &str = "%DEAD_RETRY";

/// The retry subject of `group` consuming `subject`.
pub fn retry_subject(subject: &str, group: &str) -> String {
    format!("{RETRY_PREFIX}%{subject}%{group}")
}

/// The dead-letter subject of `group` consuming `subject`.
pub fn dead_letter_subject(subject: &str, group: &str) -> String {
    format!("{DEAD_PREFIX}%{subject}%{group}")
}

/// Whether `subject` is a retry subject.
pub fn is_retry(subject: &str) -> bool {
    subject.starts_with(RETRY_PREFIX)
}

/// Whether `subject` is a dead-letter subject.
pub fn is_dead_letter(subject: &str) -> bool {
    subject.starts_with(DEAD_PREFIX)
}

/// The real subject and group a retry or dead-letter subject was derived from.
pub fn parse_derived(subject: &str) -> Option<(&str, &str)> {
    if !is_retry(subject) && !is_dead_letter(subject) {
        return None;
    }
    let mut parts = subject.split('%').map(str::trim).filter(|p| !p.is_empty());
    let (_prefix, real, group) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some((real, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_captures() {
        // From the CLIENT_REGISTER and PULL frames in the send-consume capture.
        assert_eq!(
            retry_subject("qmq.capture.subject", "capture-group"),
            "%RETRY%qmq.capture.subject%capture-group"
        );
        assert_eq!(dead_letter_subject("s", "g"), "%DEAD_RETRY%s%g");
    }

    #[test]
    fn names_are_checked_by_length_and_content() {
        assert!(check_subject(&"q".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(check_subject(&"q".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(
            check_subject(&"主".repeat(200)).is_err(),
            "bytes, not characters"
        );
        let longest = retry_subject(&"s".repeat(MAX_NAME_BYTES), &"g".repeat(MAX_NAME_BYTES));
        assert!(check_subject(&longest).is_ok());
        let dead = dead_letter_subject(&"s".repeat(MAX_NAME_BYTES), &"g".repeat(MAX_NAME_BYTES));
        assert!(dead.len() <= MAX_DERIVED_SUBJECT_BYTES && check_subject(&dead).is_ok());
        assert!(check_subject("").is_err() && check_subject("a\nb").is_err());
        assert!(check_subject("a/b").is_ok(), "producers may use '/'");
        assert!(check_consumer("a/b", "g", "c").is_err());
        assert!(check_consumer("s", "", "c").is_err());
        assert!(check_consumer("s", "g", &"c".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(check_consumer("s", "g", "c").is_ok());
    }

    #[test]
    fn derived_subjects_parse_back() {
        let retry = retry_subject("order.paid", "billing");
        assert!(is_retry(&retry) && !is_dead_letter(&retry));
        assert_eq!(parse_derived(&retry), Some(("order.paid", "billing")));
        let dead = dead_letter_subject("order.paid", "billing");
        assert!(is_dead_letter(&dead) && !is_retry(&dead));
        assert_eq!(parse_derived(&dead), Some(("order.paid", "billing")));
        assert_eq!(parse_derived("order.paid"), None);
        assert_eq!(parse_derived("%RETRY%only-one"), None);
    }
}
