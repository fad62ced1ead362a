//! Background work: fsyncing schedule and dispatch logs and writing the checkpoint every
//! `flush_interval`, and deleting what retention no longer needs.
//!
//! All of the disk work runs in `spawn_blocking`. Policy after a failed fsync of a schedule or
//! dispatch log: the pages it covered may be gone even if a later fsync succeeds, so the
//! checkpoint's message-log offset stays where the last good flush left it until the engine is
//! reopened (a restart then replays the message log from there; the message log is kept that
//! far back). A failed checkpoint write only means the next flush tries again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::error::DelayError;

use super::{join_error, CleanReport, Inner};

impl Inner {
    /// Fsyncs what was written since the last flush and writes the checkpoint. The caller holds
    /// `maint`.
    pub(super) async fn flush_locked(self: &Arc<Self>) -> Result<(), DelayError> {
        let me = self.clone();
        let root = self.cfg.data_dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            let plan = me.store.lock().plan_flush();
            if let Err(e) = plan.sync_logs() {
                let durable = me.checkpointed_wal.load(Ordering::SeqCst);
                tracing::error!(error = %e, checkpoint = durable, "fsync of a schedule or dispatch log failed; the checkpoint stays where it is until the engine is reopened");
                me.store.lock().flush_failed(plan, Some(durable));
                return Err(e);
            }
            match plan.write_checkpoint(&root) {
                Ok(from) => Ok(from),
                Err(e) => {
                    me.store.lock().flush_failed(plan, None);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| join_error("flush", e))?;
        let retained_from = result?;
        self.checkpointed_wal.store(retained_from, Ordering::SeqCst);
        Ok(())
    }

    pub(super) async fn clean(self: &Arc<Self>) -> Result<CleanReport, DelayError> {
        let _guard = self.maint.lock().await;
        let now = self.clock.now_ms();
        let cutoff = now - self.cfg.retention.as_millis() as i64;
        let doomed = self.store.lock().take_expired(cutoff);
        let mut report = CleanReport::default();
        if !doomed.is_empty() {
            // The checkpoint must stop naming the buckets (and tombstone them) before their
            // files go, or a restart would take the deletion for data loss.
            self.flush_locked().await?;
            let me = self.clone();
            let files = me.store.lock().files_of(&doomed);
            tokio::task::spawn_blocking(move || files.delete())
                .await
                .map_err(|e| join_error("delete", e))??;
            report.buckets = doomed.len();
            tracing::info!(
                buckets = doomed.len(),
                "deleted fully dispatched schedule and dispatch logs past retention"
            );
        }
        let older_than = UNIX_EPOCH
            + Duration::from_millis((now - self.cfg.wal_retention.as_millis() as i64).max(0) as u64);
        let upto = self.checkpointed_wal.load(Ordering::SeqCst);
        let me = self.clone();
        let (deleted, wal_start) = tokio::task::spawn_blocking(move || {
            let mut wal = me.wal.lock();
            let d = wal.delete_before(upto, older_than)?;
            Ok::<_, DelayError>((d, wal.start()))
        })
        .await
        .map_err(|e| join_error("delete", e))??;
        report.wal_segments = deleted;
        if deleted > 0 {
            self.store.lock().forget_cleaned_before(wal_start);
            self.flush_locked().await?;
        }
        Ok(report)
    }
}

pub(super) async fn maintenance_loop(inner: Arc<Inner>) {
    let mut last_clean = Instant::now();
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(inner.cfg.flush_interval) => {}
        }
        {
            let _guard = inner.maint.lock().await;
            if let Err(e) = inner.flush_locked().await {
                tracing::error!(error = %e, "flush failed");
            }
        }
        if last_clean.elapsed() >= inner.cfg.clean_interval {
            last_clean = Instant::now();
            if let Err(e) = inner.clean().await {
                tracing::error!(error = %e, "retention pass failed");
            }
        }
    }
}
