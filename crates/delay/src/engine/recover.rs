//! Opening the engine: checkpoint, schedule logs, message-log replay, dispatch logs.

use crate::checkpoint::{check_scale, Checkpoint};
use crate::config::DelayConfig;
use crate::error::DelayError;
use crate::fsutil::ensure_dir;
use crate::record::peek_due;
use crate::store::{NewRecord, Store};
use crate::wal::MessageLog;

use super::max_payload;

/// Bytes of replayed records appended to schedule logs at once during recovery.
const REPLAY_CHUNK: usize = 4 << 20;

/// Opens the store and replays the message log into the schedule logs.
/// Returns the store, the message log and the message-log offset the retained checkpoints
/// replay from.
pub(crate) fn recover(cfg: &DelayConfig) -> Result<(Store, MessageLog, u64), DelayError> {
    let root = &cfg.data_dir;
    ensure_dir(root)?;
    check_scale(root, cfg.segment_scale_minutes)?;
    let cp = Checkpoint::load(root)?;
    let (mut store, rewind) = Store::open(
        root,
        cfg.scale_ms(),
        cfg.tick.as_millis() as i64,
        cfg.max_message_bytes,
        &cp,
    )?;
    let mut wal = MessageLog::open(
        &root.join("message_log"),
        cfg.wal_segment_bytes,
        max_payload(cfg),
        if rewind { 0 } else { cp.wal_offset },
    )?;
    // Offsets identify records across replays: never reuse one, whatever was lost.
    let used = store
        .buckets
        .values()
        .filter_map(|b| b.last_wal)
        .chain(store.cleaned.values().copied())
        .max()
        .map_or(0, |m| m + 1);
    wal.ensure_end_at_least(used.max(cp.wal_offset))?;
    let from = if rewind {
        tracing::warn!("schedule logs lost durable records; replaying the whole message log");
        wal.start()
    } else {
        cp.wal_offset
    };
    let mut chunk: Vec<(u64, Vec<u8>, i64)> = Vec::new();
    let mut chunk_bytes = 0;
    let mut replayed = 0u64;
    let mut apply =
        |store: &mut Store, chunk: &mut Vec<(u64, Vec<u8>, i64)>| -> Result<(), DelayError> {
            let records: Vec<NewRecord<'_>> = chunk
                .iter()
                .map(|(o, p, d)| NewRecord {
                    wal_offset: *o,
                    payload: p,
                    due_ms: *d,
                })
                .collect();
            let (results, _) = store.append(&records);
            if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                return Err(DelayError::Corrupt {
                    path: store.root().to_owned(),
                    reason: format!("cannot rebuild schedule logs: {e}"),
                });
            }
            replayed += chunk.len() as u64;
            chunk.clear();
            Ok(())
        };
    wal.replay(from, |offset, payload| {
        let Some(due) = peek_due(payload) else {
            tracing::error!(offset, "message log record with an unknown layout skipped");
            return Ok(());
        };
        let bucket = store.bucket_of(due);
        if store
            .cleaned
            .get(&bucket)
            .is_some_and(|&last| offset <= last)
            || store
                .buckets
                .get(&bucket)
                .and_then(|b| b.last_wal)
                .is_some_and(|last| offset <= last)
        {
            return Ok(());
        }
        chunk_bytes += payload.len();
        chunk.push((offset, payload.to_vec(), due));
        if chunk_bytes >= REPLAY_CHUNK {
            chunk_bytes = 0;
            apply(&mut store, &mut chunk)?;
        }
        Ok(())
    })?;
    apply(&mut store, &mut chunk)?;
    if replayed > 0 {
        tracing::info!(replayed, "message log records replayed into schedule logs");
    }
    store.applied_wal = wal.end();
    if !rewind {
        store.settle(&cp);
    }
    let retained_from = store.plan_flush().execute(root)?;
    Ok((store, wal, retained_from))
}
