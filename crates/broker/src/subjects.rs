//! Names of the subjects the broker derives from a real subject, as QMQ spells them.
//!
//! A consumer group's failed messages go to `%RETRY%<subject>%<group>` and, after the maximum
//! number of tries, to `%DEAD_RETRY%<subject>%<group>`. QMQ clients subscribe to the retry subject
//! of every group they consume, so the names must match byte for byte.

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
