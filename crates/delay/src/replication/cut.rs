//! Cutting a rejoining server's unreplicated tail: the delay equivalent of
//! `qmq_store::truncate_logs`.
//!
//! A server whose data comes from an older epoch shares the message log with the current
//! master up to the cut point (see `qmq_replication::epoch::cut_points`). Everything after it
//! was never on the new master: the message-log tail and the schedule-log records derived from
//! it are moved to side files under `replication-cut/` (for inspection), dispatch records of
//! the cut schedule-log records are dropped, and the checkpoint is rewritten so it claims
//! nothing beyond the cut.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::config::DelayConfig;
use crate::error::DelayError;
use crate::fsutil::{numbered_files, sync_dir};
use crate::record::FrameReader;

use super::DISPATCH_RECORD;

/// What [`cut_unreplicated`] cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Message-log bytes cut.
    pub wal_bytes: u64,
    /// Schedule-log records cut.
    pub schedule_records: u64,
    /// Dispatch records dropped.
    pub dispatch_records: u64,
    /// Where the cut bytes were saved.
    pub side_files: Vec<PathBuf>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DelayError + 'a {
    move |e| DelayError::io(op, path, e)
}

/// Saves `bytes` to a new side file in `side` named `name`.
fn save(side: &Path, name: String, bytes: &[u8]) -> Result<PathBuf, DelayError> {
    std::fs::create_dir_all(side).map_err(io("create directory", side))?;
    let path = side.join(name);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(io("create side file", &path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("write side file", &path))?;
    Ok(path)
}

/// Cuts the store in `cfg.data_dir` back to message-log offset `to` (the store must not be
/// open). Idempotent: a second call with the same `to` cuts nothing.
pub fn cut_unreplicated(cfg: &DelayConfig, to: u64) -> Result<CutReport, DelayError> {
    let root = &cfg.data_dir;
    let side = root.join("replication-cut");
    let mut report = CutReport::default();
    // 1. The message log.
    let wal_dir = root.join("message_log");
    if wal_dir.exists() {
        for (base, path) in numbered_files(&wal_dir, ".wal")? {
            let base = base as u64;
            let bytes = std::fs::read(&path).map_err(io("read", &path))?;
            let keep = to.saturating_sub(base).min(bytes.len() as u64) as usize;
            if keep == bytes.len() {
                continue;
            }
            let tail = &bytes[keep..];
            report.side_files.push(save(
                &side,
                format!("message-log-{}.cut", base + keep as u64),
                tail,
            )?);
            report.wal_bytes += tail.len() as u64;
            if keep == 0 && base > 0 {
                std::fs::remove_file(&path).map_err(io("delete", &path))?;
            } else {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                f.set_len(keep as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io("truncate", &path))?;
            }
        }
        sync_dir(&wal_dir)?;
    }
    // 2. Schedule logs: records are in message-log order, so cut at the first one at or past `to`.
    let sched_dir = root.join("schedule_log");
    let disp_dir = root.join("dispatch_log");
    let max_payload = crate::engine::max_payload(cfg) + 64 * 1024;
    let mut cut_buckets: BTreeMap<i64, u64> = BTreeMap::new();
    if sched_dir.exists() {
        for (start, path) in numbered_files(&sched_dir, ".sched")? {
            let file = File::open(&path).map_err(io("open", &path))?;
            let mut frames = FrameReader::new(BufReader::new(file), 0, max_payload);
            let mut records_after = 0u64;
            let mut cut_at: Option<u64> = None;
            while let Ok(Some((at, payload))) = frames
                .next_record()
                .map_err(io("read schedule log", &path))?
            {
                let wal = payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                if wal.is_none_or(|w| w >= to) {
                    cut_at.get_or_insert(at);
                    records_after += 1;
                }
            }
            let Some(at) = cut_at else { continue };
            let bytes = std::fs::read(&path).map_err(io("read", &path))?;
            report.side_files.push(save(
                &side,
                format!("schedule-{start}-{at}.cut"),
                &bytes[at as usize..],
            )?);
            report.schedule_records += records_after;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("open", &path))?;
            f.set_len(at)
                .and_then(|()| f.sync_all())
                .map_err(io("truncate", &path))?;
            cut_buckets.insert(start, at);
        }
        sync_dir(&sched_dir)?;
    }
    // 3. Dispatch records of cut schedule records.
    for (&start, &len) in &cut_buckets {
        let path = disp_dir.join(format!("{start}.disp"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DelayError::io("read", &path, e)),
        };
        let mut kept = Vec::with_capacity(bytes.len());
        for rec in bytes.chunks_exact(DISPATCH_RECORD) {
            let offset = u64::from_be_bytes([
                rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7],
            ]);
            if offset < len {
                kept.extend_from_slice(rec);
            } else {
                report.dispatch_records += 1;
            }
        }
        if kept.len() != bytes.len() {
            let tmp = disp_dir.join(format!(".{start}.disp.tmp"));
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&kept)
                .and_then(|()| f.sync_all())
                .map_err(io("write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
            sync_dir(&disp_dir)?;
        }
    }
    // 4. The checkpoint claims nothing beyond the cut.
    let mut cp = Checkpoint::load(root)?;
    let before = (cp.wal_offset, cp.buckets.len(), cp.cleaned.len());
    cp.wal_offset = cp.wal_offset.min(to);
    cp.buckets.retain(|s, _| !cut_buckets.contains_key(s));
    cp.cleaned.retain(|_, last| *last < to);
    if before != (cp.wal_offset, cp.buckets.len(), cp.cleaned.len()) {
        cp.store(root)?;
    }
    if report.wal_bytes > 0 || report.schedule_records > 0 {
        tracing::warn!(
            to,
            wal_bytes = report.wal_bytes,
            schedule_records = report.schedule_records,
            dispatch_records = report.dispatch_records,
            side_files = ?report.side_files,
            "cut this delay server's unreplicated tail before rejoining as a slave: those \
             messages were never on the new master"
        );
    }
    Ok(report)
}
