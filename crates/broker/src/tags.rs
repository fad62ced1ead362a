//! Server-side tag filtering with QMQ's matching rules.
//!
//! A pull may carry a tag filter: a list of tags and a mode. With no tags, or the "no tag" mode,
//! every message matches. Otherwise a message without tags never matches; in AND mode a message
//! matches when it carries every requested tag, in OR mode when it carries at least one of them.
//! Tags compare as exact byte strings.

/// How the requested tags combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagMode {
    /// No filtering.
    NoTag,
    /// The message must carry every requested tag.
    And,
    /// The message must carry at least one requested tag.
    Or,
}

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
    fn tags_compare_exactly() {
        let f = filter(TagMode::Or, &["Tag"]);
        assert!(!f.matches(&["tag"]));
        assert!(!f.matches(&["Tag "]));
    }
}
