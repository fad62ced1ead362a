//! The backup server's metrics, served in the Prometheus text format at `GET /metrics` on its
//! HTTP port:
//!
//! - `qmq_backup_indexed_messages_total{group}`: messages newly indexed from each followed
//!   group (duplicates and expired ones not counted).
//! - `qmq_backup_consumption_records_total{group}`: consumption records stored (one per
//!   message pulled or acked).
//! - `qmq_backup_sync_offset{group,stream}`: the offset each follower asks for next (`index`:
//!   message log; `action`: action log); compare with the broker's log end for the lag.
//! - `qmq_backup_sync_errors_total{group,stream}`: failed sync requests (the follower retries
//!   with back-off).
//! - `qmq_backup_replayed_total{result}`: dead letters replayed, `sent` or `failed`.
//!
//! A follower's series exist (at 0) from when it starts.

use std::fmt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    group: String,
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The backup's metrics. [`BackupMetrics::default`] records into metrics no registry serves;
/// [`BackupMetrics::new`] registers them.
#[derive(Default)]
pub struct BackupMetrics {
    indexed: Family<GroupLabels, Counter>,
    records: Family<GroupLabels, Counter>,
    offset: Family<StreamLabels, Gauge>,
    sync_errors: Family<StreamLabels, Counter>,
    replayed: Family<ResultLabels, Counter>,
}

impl fmt::Debug for BackupMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupMetrics").finish_non_exhaustive()
    }
}

impl BackupMetrics {
    /// Creates the metrics and registers them into `registry` (once per registry).
    pub fn new(registry: &qmq_metrics::Registry) -> Self {
        let m = Self::default();
        for result in ["sent", "failed"] {
            let _series = m.replayed.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "qmq_backup_indexed_messages",
            "Messages newly indexed from each followed group",
            m.indexed.clone(),
        );
        registry.register(
            "qmq_backup_consumption_records",
            "Consumption records stored (one per message pulled or acked)",
            m.records.clone(),
        );
        registry.register(
            "qmq_backup_sync_offset",
            "The offset each follower asks for next (index: message log, action: action log)",
            m.offset.clone(),
        );
        registry.register(
            "qmq_backup_sync_errors",
            "Failed sync requests per follower (retried with back-off)",
            m.sync_errors.clone(),
        );
        registry.register(
            "qmq_backup_replayed",
            "Dead letters replayed, sent or failed",
            m.replayed.clone(),
        );
        m
    }

    fn stream(group: &str, stream: &'static str) -> StreamLabels {
        StreamLabels {
            group: group.to_owned(),
            stream,
        }
    }

    /// A follower of `group`'s `stream` starts from `offset`: its series exist from now on.
    pub(crate) fn following(&self, group: &str, stream: &'static str, offset: u64) {
        self.synced(group, stream, offset, 0);
        let _series = self.sync_errors.get_or_create(&Self::stream(group, stream));
    }

    /// A follower of `group`'s `stream` stored what a chunk brought and asks from `next` now;
    /// `items` are the messages indexed (index) or records stored (action).
    pub(crate) fn synced(&self, group: &str, stream: &'static str, next: u64, items: usize) {
        self.offset
            .get_or_create(&Self::stream(group, stream))
            .set(i64::try_from(next).unwrap_or(i64::MAX));
        let labels = GroupLabels {
            group: group.to_owned(),
        };
        let family = if stream == crate::ACTION_STREAM {
            &self.records
        } else {
            &self.indexed
        };
        family.get_or_create(&labels).inc_by(items as u64);
    }

    /// A sync request of `group`'s `stream` failed.
    pub(crate) fn sync_failed(&self, group: &str, stream: &'static str) {
        self.sync_errors
            .get_or_create(&Self::stream(group, stream))
            .inc();
    }

    /// A dead letter was replayed (`sent`) or not.
    pub(crate) fn replayed(&self, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        self.replayed.get_or_create(&ResultLabels { result }).inc();
    }
}
