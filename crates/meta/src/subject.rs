//! Subject names: validity and the real subject behind retry / dead-letter subjects.

const RETRY_PREFIX: &str = "%RETRY";
const DEAD_RETRY_PREFIX: &str = "%DEAD_RETRY";

/// Whether `subject` can be routed: non-empty, no `/`, no line breaks, no whitespace.
pub fn is_valid(subject: &str) -> bool {
    !subject.is_empty() && !subject.chars().any(|c| c == '/' || c.is_whitespace())
}

/// The subject a retry (`%RETRY%subject%group`) or dead-letter (`%DEAD_RETRY%subject%group`)
/// subject belongs to; any other subject is its own real subject. Retry subjects share the
/// real subject's route, as in QMQ.
pub fn real_subject(subject: &str) -> &str {
    if !subject.starts_with(RETRY_PREFIX) && !subject.starts_with(DEAD_RETRY_PREFIX) {
        return subject;
    }
    let parts: Vec<&str> = subject
        .split('%')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [_, real, _] => real,
        _ => subject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_subjects_map_to_their_subject() {
        assert_eq!(real_subject("%RETRY%qmq.a%g1"), "qmq.a");
        assert_eq!(real_subject("%DEAD_RETRY%qmq.a%g1"), "qmq.a");
        assert_eq!(real_subject("qmq.a"), "qmq.a");
        assert_eq!(real_subject("%RETRY%broken"), "%RETRY%broken");
    }

    #[test]
    fn validity() {
        assert!(is_valid("qmq.capture.subject"));
        assert!(!is_valid(""));
        assert!(!is_valid("a/b"));
        assert!(!is_valid("a b"));
        assert!(!is_valid("a\nb"));
    }
}
