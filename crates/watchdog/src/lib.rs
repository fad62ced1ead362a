//! The transactional-message watchdog (QMQ's `qmq-watchdog`): resends the messages that
//! producers wrote into their outbox tables ([`qmq_client::outbox`]) but did not get stored —
//! the broker was down, or the producer died between commit and send.
//!
//! - **Registry**: the databases registered with `qmq tools add-db` (the meta database's
//!   `client_db` table, QMQ's `datasource_config`) whose room is the watchdog's namespace.
//!   `mysql://`, `mariadb://` and QMQ's `mmm://` URLs are MySQL; `postgres://` (with the database
//!   given to add-db) is PostgreSQL. The table is the same on every database:
//!   `qmq_produce.qmq_msg_queue` unless configured otherwise.
//! - **One active watchdog**: every instance contends for a lease row in the meta database
//!   (`leader_election`, name `qmq_watchdog_<namespace>`), taken and renewed with one conditional
//!   UPDATE by the database's clock ([`qmq_meta::store::Store::acquire_lease`]). Only the holder
//!   scans. A holder that cannot renew stops scanning before its lease can expire; another
//!   instance takes over once the lease time has passed since the last renewal.
//! - **Scan** ([`Outbox::scan`]): pending rows (status 0) whose `update_time` is older than the
//!   grace period, oldest first, in batches, at most `rate` rows per second per database. A row
//!   with unusable content or [`MAX_ERRORS`](qmq_client::outbox::MAX_ERRORS) failed attempts is
//!   marked invalid (−2); the others are sent with attribute `qmq_sequence` = row id. Stored →
//!   row deleted; BLOCK → −100; the producer refused it outright (closed, queue full) → −1, as
//!   QMQ's "broker busy"; any other failure counts an error and restarts the row's grace period
//!   (QMQ leaves such rows untouched and retries them forever). Rows whose status is not 0 are
//!   never sent.
//!
//! Metrics ([`WatchdogMetrics`], registered into a [`qmq_metrics::Registry`] as the servers'
//! are): rows handled per outcome, scans, whether this instance is the leader, lease terms and
//! errors, databases watched.

mod lease;
mod metrics;
mod scan;

pub use lease::{start, WatchdogConfig, WatchdogHandle};
pub use metrics::WatchdogMetrics;
pub use scan::{Outbox, ScanOptions, ScanReport};

/// Why the watchdog failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The meta database failed.
    #[error(transparent)]
    Meta(#[from] qmq_meta::MetaError),
    /// An outbox database failed.
    #[error("outbox database {db}: {source}")]
    Outbox {
        /// The database (URL without password).
        db: String,
        /// What failed.
        source: sqlx::Error,
    },
    /// The outbox table name or the database's URL is not usable.
    #[error(transparent)]
    Table(#[from] qmq_client::outbox::OutboxError),
    /// A registered database's URL cannot be used.
    #[error("registered database {0:?}: unsupported URL (use mysql://, mariadb://, mmm:// or postgres://)")]
    BadUrl(String),
}
