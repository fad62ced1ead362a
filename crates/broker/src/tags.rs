//! Server-side tag filtering with QMQ's matching rules.
//!
//! A pull may carry a tag filter: a list of tags and a mode. With no tags, or the "no tag" mode,
//! every message matches. Otherwise a message without tags never matches; in AND mode a message
//! matches when it carries every requested tag, in OR mode when it carries at least one of them.
//! Tags compare as exact byte strings.

pub use qmq_protocol::TagType as TagMode;

/// A tag filter taken from a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    mode: TagMode,
    tags: Vec<Vec<u8>>,
}

impl TagFilter {
    /// A filter over `tags` combined by `mode`.
    pub fn new(mode: TagMode, tags: Vec<Vec<u8>>) -> Self {
        Self { mode, tags }
    }

    /// Whether this filter lets every message through (and so need not look at messages at all).
    pub fn is_pass_all(&self) -> bool {
        self.mode == TagMode::NoTag || self.tags.is_empty()
    }

    /// Whether a message carrying `message_tags` is delivered.
    pub fn matches<T: AsRef<[u8]>>(&self, message_tags: &[T]) -> bool {
        if self.is_pass_all() {
            return true;
        }
        let has = |want: &Vec<u8>| message_tags.iter().any(|t| t.as_ref() == want.as_slice());
        match self.mode {
            TagMode::NoTag => true,
            TagMode::And => self.tags.iter().all(has),
            TagMode::Or => self.tags.iter().any(has),
        }
    }
}

/// The tags of a stored-form message, read without decoding the rest of it. Malformed
/// messages have no tags.
pub fn message_tags(message: &[u8]) -> Vec<&[u8]> {
    read_tags(&mut qmq_protocol::wire::Reader::new(message)).unwrap_or_default()
}

fn read_tags<'a>(r: &mut qmq_protocol::wire::Reader<'a>) -> Option<Vec<&'a [u8]>> {
    let flags = qmq_protocol::MessageFlags(r.u8("flag").ok()?);
    if !flags.has_tags() {
        return Some(Vec::new());
    }
    r.bytes(16, "times").ok()?;
    r.short_bytes("subject").ok()?;
    r.short_bytes("message id").ok()?;
    let count = r.u8("tag count").ok()?;
    (0..count).map(|_| r.short_bytes("tag").ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(mode: TagMode, tags: &[&str]) -> TagFilter {
        TagFilter::new(mode, tags.iter().map(|t| t.as_bytes().to_vec()).collect())
    }

    #[test]
    fn and_needs_every_tag() {
        let f = filter(TagMode::And, &["a", "b"]);
        assert!(f.matches(&["b", "c", "a"]));
        assert!(!f.matches(&["a"]));
        assert!(!f.matches(&["a", "c"]));
    }

    #[test]
    fn or_needs_one_tag() {
        let f = filter(TagMode::Or, &["a", "b"]);
        assert!(f.matches(&["b"]));
        assert!(f.matches(&["x", "a"]));
        assert!(!f.matches(&["c"]));
    }

    #[test]
    fn untagged_messages_never_match_an_active_filter() {
        let none: [&str; 0] = [];
        assert!(!filter(TagMode::And, &["a"]).matches(&none));
        assert!(!filter(TagMode::Or, &["a"]).matches(&none));
    }

    #[test]
    fn empty_or_no_tag_filters_pass_everything() {
        let none: [&str; 0] = [];
        assert!(filter(TagMode::NoTag, &["a"]).matches(&none));
        assert!(filter(TagMode::And, &[]).matches(&none));
        assert!(filter(TagMode::Or, &[]).is_pass_all());
    }

    #[test]
    fn tags_are_read_from_stored_messages() {
        let m = qmq_protocol::Message {
            flags: qmq_protocol::MessageFlags(0).with_tags(true),
            subject: "s".into(),
            message_id: "id".into(),
            tags: vec!["a".into(), "bb".into()],
            attrs: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let stored = m.to_stored().unwrap();
        assert_eq!(message_tags(&stored), vec![&b"a"[..], &b"bb"[..]]);
        let plain = qmq_protocol::Message::default().to_stored().unwrap();
        assert!(message_tags(&plain).is_empty());
        assert!(message_tags(&stored[..20]).is_empty());
    }

    #[test]
    fn tags_compare_exactly() {
        let f = filter(TagMode::Or, &["Tag"]);
        assert!(!f.matches(&["tag"]));
        assert!(!f.matches(&["Tag "]));
    }
}
