//! The watchdog's metrics, registered into a [`qmq_metrics::Registry`] as the servers' are, so
//! `qmq watchdog --metrics-listen` serves them and `qmq standalone` adds them to its one
//! endpoint.
//!
//! - `qmq_watchdog_rows_total{outcome}`: outbox rows handled, by outcome: `sent` (stored on a
//!   broker, row deleted), `invalid` (marked −2: unusable content or too many failed attempts),
//!   `blocked` (marked −100: the broker answered BLOCK), `busy` (marked −1: the producer refused
//!   the send outright), `failed` (the send failed; the row stays pending with one more error).
//! - `qmq_watchdog_scans_total{result}`: scans of one database, `ok` or `failed` (the database
//!   could not be read or written).
//! - `qmq_watchdog_leader`: 1 while this instance holds the lease (and so scans), else 0.
//! - `qmq_watchdog_leader_terms_total`: times this instance took the lease.
//! - `qmq_watchdog_lease_errors_total`: lease calls to the meta database that failed or timed
//!   out (the instance stops scanning at the first).
//! - `qmq_watchdog_databases`: registered databases the leader watches (0 on a follower).
//!
//! Every series exists from registration on (at 0), so dashboards and alerts see them before
//! the first row is handled. Labels take fixed values only.

use std::fmt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// What became of one outbox row a scan handled (the `outcome` label of
/// `qmq_watchdog_rows_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Stored on a broker; the row was deleted.
    Sent,
    /// Marked invalid (−2).
    Invalid,
    /// Marked blocked (−100): the broker answered BLOCK.
    Blocked,
    /// Marked broker-busy (−1).
    Busy,
    /// The send failed; the row stays pending.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Self::Sent,
        Self::Invalid,
        Self::Blocked,
        Self::Busy,
        Self::Failed,
    ];

    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Invalid => "invalid",
            Self::Blocked => "blocked",
            Self::Busy => "busy",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The watchdog's metrics. [`WatchdogMetrics::default`] records into metrics no registry
/// serves; [`WatchdogMetrics::new`] registers them.
#[derive(Default)]
pub struct WatchdogMetrics {
    rows: Family<OutcomeLabels, Counter>,
    scans: Family<ResultLabels, Counter>,
    leader: Gauge,
    terms: Counter,
    lease_errors: Counter,
    databases: Gauge,
}

impl fmt::Debug for WatchdogMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchdogMetrics").finish_non_exhaustive()
    }
}

impl WatchdogMetrics {
    /// Creates the watchdog's metrics and registers them into `registry`. Call once per
    /// registry.
    pub fn new(registry: &qmq_metrics::Registry) -> Self {
        let m = Self::default();
        for outcome in Outcome::ALL {
            m.row_series(outcome);
        }
        for result in ["ok", "failed"] {
            let _series = m.scans.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "qmq_watchdog_rows",
            "Outbox rows the watchdog handled, per outcome: sent (stored, row deleted), invalid \
             (marked -2), blocked (marked -100 on BLOCK), busy (marked -1), failed (still \
             pending, one more error counted)",
            m.rows.clone(),
        );
        registry.register(
            "qmq_watchdog_scans",
            "Scans of one outbox database, per result (ok, or failed: the database could not \
             be read or written)",
            m.scans.clone(),
        );
        registry.register(
            "qmq_watchdog_leader",
            "1 while this watchdog holds the lease and scans, else 0",
            m.leader.clone(),
        );
        registry.register(
            "qmq_watchdog_leader_terms",
            "Times this watchdog took the lease",
            m.terms.clone(),
        );
        registry.register(
            "qmq_watchdog_lease_errors",
            "Lease calls to the meta database that failed or timed out",
            m.lease_errors.clone(),
        );
        registry.register(
            "qmq_watchdog_databases",
            "Registered outbox databases this watchdog watches (0 unless it is the leader)",
            m.databases.clone(),
        );
        m
    }

    fn row_series(&self, outcome: Outcome) -> Counter {
        self.rows
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .clone()
    }

    /// Counts one row handled.
    pub(crate) fn row(&self, outcome: Outcome) {
        self.row_series(outcome).inc();
    }

    /// Counts one scan of one database: `ok`, or it failed on its database.
    pub(crate) fn scan(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.scans.get_or_create(&ResultLabels { result }).inc();
    }

    /// This instance took (`true`) or lost (`false`) the lease.
    pub(crate) fn leader(&self, leader: bool) {
        if leader {
            self.terms.inc();
        }
        self.leader.set(i64::from(leader));
        if !leader {
            self.databases.set(0);
        }
    }

    /// A lease call failed or timed out.
    pub(crate) fn lease_error(&self) {
        self.lease_errors.inc();
    }

    /// The leader watches `n` databases.
    pub(crate) fn databases(&self, n: usize) {
        self.databases.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
