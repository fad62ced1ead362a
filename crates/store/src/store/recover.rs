//! Opening a store: load the newest readable checkpoint, check the logs' tails after it, bring
//! the consume logs up to the message log, and replay the action log into the consumer side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::consumers::ConsumerSide;
use super::{
    FlushPolicy, Inner, StoreConfig, ACTION_DIR, CHECKPOINT_DIR, CONSUME_DIR, MESSAGE_DIR, PULL_DIR,
};
use crate::action::Action;
use crate::checkpoint;
use crate::consume_log::{ConsumeLog, Entry};
use crate::error::{io, Result};
use crate::log::RecordLog;
use crate::DirLock;
use crate::{names, record};

pub(crate) fn open(config: StoreConfig) -> Result<Inner> {
    let dir = config.dir.clone();
    std::fs::create_dir_all(&dir).map_err(io("create dir", &dir))?;
    let lock = DirLock::acquire(&dir)?;
    let (gen, cp) = checkpoint::load(&dir.join(CHECKPOINT_DIR))?.unwrap_or_default();

    // Message log: records after the checkpoint are checked, a torn tail is cut.
    let log = RecordLog::open(
        "message log",
        &dir.join(MESSAGE_DIR),
        config.segment_size,
        cp.message_indexed,
    )?;

    // Consume logs: entries the checkpoint vouched for are kept, later ones checked.
    // Directories are named by hashes of the names (see `names`); older layouts move first.
    let consume_dir = dir.join(CONSUME_DIR);
    names::migrate(&consume_dir, 1)?;
    names::migrate(&dir.join(PULL_DIR), 3)?;
    let mut consume = HashMap::new();
    let mut rescan_from = cp.message_indexed.min(log.end());
    for (path, names) in names::list(&consume_dir)? {
        let [subject]: [String; 1] = match names.try_into() {
            Ok(one) => one,
            Err(names) => {
                tracing::warn!(dir = %path.display(), ?names, "left alone: not one subject");
                continue;
            }
        };
        let trusted = cp.subjects.get(&subject).copied().unwrap_or(0);
        let clog = ConsumeLog::open(&path, config.index_segment_entries, trusted, log.end())?;
        if clog.is_empty() && trusted == 0 {
            // Every entry pointed past the log's end (its tail was lost or cut by
            // `truncate_logs`): the subject has no message, so it is not listed (the scan
            // below opens it again if the log has one).
            continue;
        }
        if clog.len() < trusted {
            // Entries the checkpoint vouched for are gone: re-index from after the last one left.
            rescan_from = rescan_from.min(clog.last_offset().map_or(0, |o| o + 1));
        }
        consume.insert(subject, clog);
    }
    if cp.subjects.keys().any(|s| !consume.contains_key(s)) {
        rescan_from = 0;
    }
    let rescan_from = rescan_from.max(log.start());
    let mut reindexed = 0u64;
    // Entries per subject, written in one go at the end of the scan.
    let mut pending: HashMap<String, Vec<Entry>> = HashMap::new();
    log.reader()
        .scan(rescan_from, log.end(), log.skipped(), |offset, payload| {
            let view = match record::decode(payload, offset) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "skipping an undecodable message record");
                    return Ok(());
                }
            };
            let clog = match consume.get(view.subject) {
                Some(c) => c,
                None => {
                    let path = names::ensure_dir(&consume_dir, &[view.subject])?;
                    let c = ConsumeLog::open(&path, config.index_segment_entries, 0, u64::MAX)?;
                    consume.entry(view.subject.to_owned()).or_insert(c)
                }
            };
            if clog.last_offset().is_some_and(|last| last >= offset) {
                return Ok(());
            }
            let entries = pending.entry(view.subject.to_owned()).or_default();
            entries.push(Entry {
                offset,
                len: payload.len() as u32,
                tags: record::tag_summary(&view.tags),
            });
            if entries.len() >= 4096 {
                flush_entries(&mut consume, &mut pending, view.subject)?;
            }
            reindexed += 1;
            Ok(())
        })?;
    let subjects: Vec<String> = pending.keys().cloned().collect();
    for s in subjects {
        flush_entries(&mut consume, &mut pending, &s)?;
    }
    if reindexed > 0 {
        tracing::info!(
            reindexed,
            "rebuilt consume-log entries from the message log"
        );
    }

    // Consumer side: state from the checkpoint, then the action log after it.
    let actions = RecordLog::open(
        "action log",
        &dir.join(ACTION_DIR),
        config.action_segment_size,
        cp.action_applied,
    )?;
    let replay_from = cp.action_applied.clamp(actions.start(), actions.end());
    let (actions_end, skipped, reader) =
        (actions.end(), actions.skipped().to_vec(), actions.reader());
    let side = ConsumerSide::new(
        actions,
        &dir.join(PULL_DIR),
        config.index_segment_entries,
        config.flush == FlushPolicy::SyncBeforeAck,
        &cp.groups,
        &cp.consumers,
    );
    let mut replayed = 0u64;
    reader.scan(
        replay_from,
        actions_end,
        &skipped,
        |offset, payload| match Action::decode(payload, offset) {
            Ok(action) => {
                replayed += 1;
                side.replay(&action)
            }
            Err(e) => {
                tracing::error!(error = %e, "skipping an undecodable action");
                Ok(())
            }
        },
    )?;
    if replayed > 0 {
        tracing::info!(replayed, "replayed actions after the checkpoint");
    }
    // A resynchronised replica's positions may run ahead of the messages it has copied yet.
    side.clamp_groups(|s| {
        let len = consume.get(s).map_or(0, ConsumeLog::len);
        len.max(cp.resync_subject_ends.get(s).copied().unwrap_or(0))
    });

    Ok(Inner {
        message_shippable: tokio::sync::watch::Sender::new(log.end()),
        message_reader: log.reader(),
        log: Mutex::new(log),
        consume: RwLock::new(
            consume
                .into_iter()
                .map(|(s, c)| (s, Arc::new(RwLock::new(c))))
                .collect(),
        ),
        watchers: Mutex::new(HashMap::new()),
        consumers: side,
        checkpoint_gen: Mutex::new(gen),
        resync_subject_ends: Mutex::new(cp.resync_subject_ends.clone()),
        oldest_checkpoint: Mutex::new(cp),
        index_entries_rebuilt: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        config,
        _lock: lock,
    })
}

fn flush_entries(
    consume: &mut HashMap<String, ConsumeLog>,
    pending: &mut HashMap<String, Vec<Entry>>,
    subject: &str,
) -> Result<()> {
    if let (Some(c), Some(entries)) = (consume.get_mut(subject), pending.get_mut(subject)) {
        c.append_many(entries)?;
        entries.clear();
    }
    Ok(())
}
