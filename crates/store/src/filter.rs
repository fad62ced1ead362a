//! Server-side filters for pulls. A filter first gets a look at a message's 64-bit tag summary
//! from the consume log (no message read), then at the message itself. Messages a filter
//! rejects count as consumed by the group (QMQ semantics).

use crate::record::tag_bits;

/// Decides which messages a pull hands out.
pub trait Filter {
    /// Whether a message with this tag summary may match; `false` passes over it without
    /// reading it. Must never be `false` for a message [`Filter::matches`] would accept.
    fn may_match(&self, _tag_summary: u64) -> bool {
        true
    }

    /// Whether the message (its tags as appended, and its bytes) is handed out.
    fn matches(&self, tags: &[&str], message: &[u8]) -> bool;
}

/// A filter on the message bytes alone (e.g. a broker that parses tags from its own format).
pub struct BytesFilter<F>(pub F);

impl<F: Fn(&[u8]) -> bool> Filter for BytesFilter<F> {
    fn matches(&self, _tags: &[&str], message: &[u8]) -> bool {
        (self.0)(message)
    }
}

/// How a [`TagFilter`]'s tags combine (QMQ's `TagType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagMode {
    /// The message carries at least one of the tags (QMQ `OR`).
    Any,
    /// The message carries every one of the tags (QMQ `AND`).
    All,
}

/// QMQ's tag filter on the tags given at append ([`crate::NewMessage::tags`]); tags compare
/// byte for byte. A filter with no tags accepts everything (QMQ `NO_TAG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    mode: TagMode,
    tags: Vec<String>,
    bits: Vec<u64>,
}

impl TagFilter {
    /// A filter for `tags` combined by `mode`.
    pub fn new(mode: TagMode, tags: Vec<String>) -> Self {
        let bits = tags.iter().map(|t| tag_bits(t)).collect();
        Self { mode, tags, bits }
    }
}

impl Filter for TagFilter {
    fn may_match(&self, summary: u64) -> bool {
        if self.tags.is_empty() {
            return true;
        }
        let has = |b: &u64| summary & b == *b;
        match self.mode {
            TagMode::Any => self.bits.iter().any(has),
            TagMode::All => self.bits.iter().all(has),
        }
    }

    fn matches(&self, tags: &[&str], _message: &[u8]) -> bool {
        if self.tags.is_empty() {
            return true;
        }
        let has = |t: &String| tags.contains(&t.as_str());
        match self.mode {
            TagMode::Any => self.tags.iter().any(has),
            TagMode::All => self.tags.iter().all(has),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tag_summary;

    #[test]
    fn tag_filters_follow_qmq_and_or_and_never_prefilter_a_match_away() {
        let any = TagFilter::new(TagMode::Any, vec!["a".into(), "b".into()]);
        let all = TagFilter::new(TagMode::All, vec!["a".into(), "b".into()]);
        for (tags, want_any, want_all) in [
            (vec!["a"], true, false),
            (vec!["b", "a", "c"], true, true),
            (vec!["c"], false, false),
            (vec![], false, false),
        ] {
            let s = tag_summary(&tags);
            assert_eq!(any.matches(&tags, b""), want_any, "{tags:?}");
            assert_eq!(all.matches(&tags, b""), want_all, "{tags:?}");
            if want_any {
                assert!(any.may_match(s));
            }
            if want_all {
                assert!(all.may_match(s));
            }
        }
        assert!(!any.may_match(0));
        let none = TagFilter::new(TagMode::All, vec![]);
        assert!(none.may_match(0) && none.matches(&[], b""));
    }
}
