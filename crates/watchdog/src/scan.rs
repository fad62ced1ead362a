//! One outbox table on one database: finding the rows producers left behind and resending them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use qmq_client::idempotent::Dialect;
use qmq_client::outbox::{from_json, status, OutboxSql, MAX_ERRORS};
use qmq_client::{Message, Producer, SendError};
use qmq_protocol::ProducerCode;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Outcome, WatchdogMetrics};
use crate::WatchdogError;

/// The attribute carrying the outbox row id of a resent message (QMQ's watchdog sets it).
pub const SEQUENCE_ATTR: &str = "qmq_sequence";

/// How one scan of one outbox goes.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Rows younger than this (by `update_time`) are left alone: their producer may still be
    /// sending them (QMQ: 60 s).
    pub grace: Duration,
    /// Rows read per query (QMQ: 50).
    pub batch_size: u32,
    /// Rows handled per second at most (QMQ: 50 per database).
    pub rate: u32,
    /// A scan stops after this long even if rows remain (QMQ: 180 s).
    pub timeout: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(60),
            batch_size: 50,
            rate: 50,
            timeout: Duration::from_secs(180),
        }
    }
}

/// What one scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Rows sent and deleted.
    pub sent: u64,
    /// Rows marked invalid (−2): bad content, or too many failed attempts.
    pub invalid: u64,
    /// Rows marked blocked (−100): the broker answered BLOCK.
    pub blocked: u64,
    /// Rows marked broker-busy (−1): the producer refused the send outright.
    pub busy: u64,
    /// Rows whose send failed; they stay pending with one more error counted.
    pub failed: u64,
}

impl ScanReport {
    fn count(&mut self, outcome: Outcome) {
        let n = match outcome {
            Outcome::Sent => &mut self.sent,
            Outcome::Invalid => &mut self.invalid,
            Outcome::Blocked => &mut self.blocked,
            Outcome::Busy => &mut self.busy,
            Outcome::Failed => &mut self.failed,
        };
        *n += 1;
    }

    fn add(&mut self, other: ScanReport) {
        self.sent += other.sent;
        self.invalid += other.invalid;
        self.blocked += other.blocked;
        self.busy += other.busy;
        self.failed += other.failed;
    }

    fn rows(&self) -> u64 {
        self.sent + self.invalid + self.blocked + self.busy + self.failed
    }
}

/// One outbox table on one database.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: AnyPool,
    sql: OutboxSql,
    name: String,
    metrics: Arc<WatchdogMetrics>,
}

/// Spaces out rows: at most `rate` per second.
struct Pace {
    step: Duration,
    next: Instant,
}

impl Pace {
    fn new(rate: u32) -> Self {
        Self {
            step: Duration::from_secs(1) / rate.max(1),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep_until(self.next.into()).await;
        self.next = self.next.max(Instant::now()) + self.step;
    }
}

impl Outbox {
    /// Connects to the database at the sqlx URL `url` (`mysql://`, `mariadb://`, `postgres://`
    /// or `sqlite:`) and uses `table`. `name` names the database in logs (no password).
    pub async fn connect(url: &str, table: &str, name: &str) -> Result<Self, WatchdogError> {
        let dialect = Dialect::from_url(url).map_err(|_| WatchdogError::BadUrl(name.to_owned()))?;
        let sql = OutboxSql::new(dialect, table)?;
        sqlx::any::install_default_drivers();
        let url = url.replacen("mariadb:", "mysql:", 1);
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&url)
            .map_err(|source| WatchdogError::Outbox {
                db: name.to_owned(),
                source,
            })?;
        Ok(Self {
            pool,
            sql,
            name: name.to_owned(),
            metrics: Arc::default(),
        })
    }

    /// Counts the rows and scans of this outbox in `metrics` (by default in metrics no
    /// registry serves).
    pub fn with_metrics(mut self, metrics: Arc<WatchdogMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The database's name in logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn db_error(&self, source: sqlx::Error) -> WatchdogError {
        WatchdogError::Outbox {
            db: self.name.clone(),
            source,
        }
    }

    /// Resends pending rows older than the grace period with `producer`, batch after batch,
    /// until none is left, `options.timeout` passes or `stop` is cancelled (the rows of the
    /// batch in hand are finished first).
    pub async fn scan(
        &self,
        producer: &Producer,
        options: &ScanOptions,
        stop: &CancellationToken,
    ) -> Result<ScanReport, WatchdogError> {
        let scanned = self.scan_batches(producer, options, stop).await;
        self.metrics.scan(scanned.is_ok());
        scanned
    }

    async fn scan_batches(
        &self,
        producer: &Producer,
        options: &ScanOptions,
        stop: &CancellationToken,
    ) -> Result<ScanReport, WatchdogError> {
        let started = Instant::now();
        let grace_ms = i64::try_from(options.grace.as_millis()).unwrap_or(i64::MAX);
        let mut pace = Pace::new(options.rate);
        let mut report = ScanReport::default();
        // Rows are taken in id order; a row handled once is not read again in this scan.
        let mut after_id = 0i64;
        while !stop.is_cancelled() {
            if started.elapsed() > options.timeout {
                tracing::warn!(db = self.name, "scan time limit reached; rows remain");
                break;
            }
            let rows = sqlx::query(&self.sql.select_pending)
                .bind(grace_ms)
                .bind(after_id)
                .bind(i64::from(options.batch_size.max(1)))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db_error(e))?;
            if rows.is_empty() {
                break;
            }
            tracing::info!(db = self.name, rows = rows.len(), "resending outbox rows");
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.try_get("id").map_err(|e| self.db_error(e))?;
                // MySQL's LONGTEXT reaches the Any driver as a BLOB: take bytes then.
                let content = match row.try_get::<Option<String>, _>("content") {
                    Ok(text) => text.unwrap_or_default(),
                    Err(_) => {
                        let bytes: Option<Vec<u8>> =
                            row.try_get("content").map_err(|e| self.db_error(e))?;
                        // Not UTF-8: treated as empty, so the row is marked invalid.
                        String::from_utf8(bytes.unwrap_or_default()).unwrap_or_default()
                    }
                };
                let errors: i64 = row.try_get("error").map_err(|e| self.db_error(e))?;
                after_id = after_id.max(id);
                batch.push((id, content, errors));
            }
            let round = self.resend(producer, batch, &mut pace, stop).await?;
            if round.rows() == 0 {
                // Nothing changed (the batch was interrupted): do not read the same rows again.
                break;
            }
            report.add(round);
        }
        Ok(report)
    }

    /// Handles one batch: invalid rows are marked, the others sent concurrently and settled.
    async fn resend(
        &self,
        producer: &Producer,
        batch: Vec<(i64, String, i64)>,
        pace: &mut Pace,
        stop: &CancellationToken,
    ) -> Result<ScanReport, WatchdogError> {
        let mut report = ScanReport::default();
        let mut sends = Vec::new();
        for (id, content, errors) in batch {
            if stop.is_cancelled() {
                break;
            }
            pace.wait().await;
            if errors >= MAX_ERRORS {
                tracing::error!(
                    db = self.name,
                    id,
                    errors,
                    "outbox row failed too often; marked invalid"
                );
                self.mark(id, status::INVALID).await?;
                self.tally(&mut report, Outcome::Invalid);
                continue;
            }
            let mut message: Message = match from_json(&content) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(db = self.name, id, error = %e, "invalid outbox row; marked invalid");
                    self.mark(id, status::INVALID).await?;
                    self.tally(&mut report, Outcome::Invalid);
                    continue;
                }
            };
            message.attrs.retain(|(k, _)| k != SEQUENCE_ATTR);
            message
                .attrs
                .push((SEQUENCE_ATTR.to_owned(), id.to_string()));
            sends.push(async move { (id, producer.send(message).await) });
        }
        for (id, result) in join_all(sends).await {
            match result {
                Ok(_) => {
                    sqlx::query(&self.sql.delete)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| self.db_error(e))?;
                    self.tally(&mut report, Outcome::Sent);
                }
                Err(SendError::Refused {
                    code: ProducerCode::Block,
                    ..
                }) => {
                    tracing::error!(
                        db = self.name,
                        id,
                        "broker blocked the message; row marked blocked"
                    );
                    sqlx::query(&self.sql.block)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| self.db_error(e))?;
                    self.tally(&mut report, Outcome::Blocked);
                }
                Err(e @ (SendError::Closed | SendError::QueueFull)) => {
                    tracing::error!(db = self.name, id, error = %e, "send refused; row marked broker-busy");
                    self.mark(id, status::BROKER_BUSY).await?;
                    self.tally(&mut report, Outcome::Busy);
                }
                Err(e @ SendError::Encode(_)) => {
                    tracing::error!(db = self.name, id, error = %e, "message cannot be encoded; marked invalid");
                    self.mark(id, status::INVALID).await?;
                    self.tally(&mut report, Outcome::Invalid);
                }
                Err(e) => {
                    tracing::warn!(db = self.name, id, error = %e, "resend failed; the row stays pending");
                    sqlx::query(&self.sql.failed)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| self.db_error(e))?;
                    self.tally(&mut report, Outcome::Failed);
                }
            }
        }
        Ok(report)
    }

    /// Counts a handled row in `report` and the metrics.
    fn tally(&self, report: &mut ScanReport, outcome: Outcome) {
        report.count(outcome);
        self.metrics.row(outcome);
    }

    async fn mark(&self, id: i64, state: i16) -> Result<(), WatchdogError> {
        sqlx::query(&self.sql.mark)
            .bind(state)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
