//! Resync snapshots: what a replica needs from its master to start copying again when it
//! cannot continue from its own logs (it fell behind the master's retention, joined empty
//! after the master's logs stopped starting at 0, or holds what the master never had).
//!
//! Copying the logs from the master's oldest retained record is not enough on its own: the
//! consume-log sequences of the messages copied, and the consumer state the action log
//! refers to, must be the master's. A snapshot carries exactly that state:
//!
//! - [`MessageSnapshot`]: the message log's first retained offset `start` and, per subject,
//!   the consume-log sequence of its first record at or after `start` (and the subject's
//!   length when the snapshot was taken);
//! - [`ConsumerSnapshot`]: the action log's end `action_end` and the consumer side exactly as
//!   the actions before it left it: group positions, each consumer's pulled/acked pull-log
//!   sequences and the pull-log entries it has not acked (so a promoted replica redelivers
//!   them).
//!
//! [`crate::Store::install_snapshot`] turns one into an empty store whose logs start at
//! `start` and `action_end`; appending the master's records from there with
//! [`crate::Store::append_replicated`] gives the master's state.
//!
//! On the wire (the broker's SYNC_CHECKPOINT_REQUEST answer) the two halves travel as two
//! JSON documents ([`Snapshot::encode_parts`]); this is qmq-rs's own content, not QMQ's
//! checkpoint layout.

use serde::{Deserialize, Serialize};

use crate::action::ConsumerKey;
use crate::error::{Result, StoreError};

/// Where one subject's consume log starts on a resynchronised replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectStart {
    /// The subject.
    pub subject: String,
    /// Consume-log sequence of its first record at or after [`MessageSnapshot::start`] (its
    /// length then if it has none there): the sequence the replica's first copied message of
    /// this subject gets.
    pub first: u64,
    /// The subject's length on the master when the snapshot was taken (consumer positions
    /// never exceed it).
    pub len: u64,
}

/// The message side of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSnapshot {
    /// The master's first retained message-log offset: the replica's log starts (empty) here.
    pub start: u64,
    /// Every subject the master indexes, sorted by subject.
    pub subjects: Vec<SubjectStart>,
}

/// One consumer's state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotConsumer {
    /// The consumer.
    pub key: ConsumerKey,
    /// Last pull-log sequence handed out (-1: none).
    pub pulled: i64,
    /// Last pull-log sequence acked (-1: none).
    pub acked: i64,
    /// `(pull-log sequence, consume-log sequence)` of every entry after `acked` up to
    /// `pulled` (a damaged entry on the master is left out).
    pub unacked: Vec<(u64, u64)>,
}

/// The consumer side of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerSnapshot {
    /// The master's action-log end: the state below reflects every action before it and none
    /// after; the replica's action log starts (empty) here.
    pub action_end: u64,
    /// Next consume-log sequence per group (consumer field empty) or broadcast consumer,
    /// sorted.
    pub groups: Vec<(ConsumerKey, u64)>,
    /// Every consumer, sorted.
    pub consumers: Vec<SnapshotConsumer>,
}

/// A master's state from which an empty store continues copying its logs (see the module
/// docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The message side.
    pub messages: MessageSnapshot,
    /// The consumer side.
    pub consumers: ConsumerSnapshot,
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::BadSnapshot {
        reason: e.to_string(),
    }
}

impl Snapshot {
    /// The two halves as JSON documents: (message side, consumer side).
    pub fn encode_parts(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let m = serde_json::to_vec(&self.messages).map_err(bad)?;
        let c = serde_json::to_vec(&self.consumers).map_err(bad)?;
        Ok((m, c))
    }

    /// Decodes what [`Snapshot::encode_parts`] produced.
    pub fn decode_parts(messages: &[u8], consumers: &[u8]) -> Result<Self> {
        Ok(Self {
            messages: serde_json::from_slice(messages).map_err(bad)?,
            consumers: serde_json::from_slice(consumers).map_err(bad)?,
        })
    }
}
