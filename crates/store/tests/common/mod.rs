//! Shared helpers for the store's integration tests.
#![allow(dead_code)]

use qmq_store::{ConsumerKey, FlushPolicy, PullSpec, Pulled, Store, StoreConfig};

/// Small segments (so tests cross them) and fsync before every acknowledgement.
pub fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 4096;
    c.action_segment_size = 4096;
    c.flush = FlushPolicy::SyncBeforeAck;
    c
}

/// A consumer key.
pub fn key(subject: &str, group: &str, consumer: &str) -> ConsumerKey {
    ConsumerKey {
        subject: subject.into(),
        group: group.into(),
        consumer: consumer.into(),
    }
}

/// Pulls up to `max` of the group's next messages, in shared mode, with no filter.
pub fn pull(store: &Store, k: &ConsumerKey, max: usize) -> Vec<Pulled> {
    store
        .pull(
            PullSpec {
                key: k,
                broadcast: false,
                max,
            },
            |_| true,
        )
        .unwrap()
}
