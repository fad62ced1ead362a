//! Master/slave replication: what is shipped, and how a master's unreplicated tail is cut.
//!
//! A replica copies the master's **message log** and **action log** byte for byte (whole
//! records, `u32 length | u32 CRC32C | payload`, at the same logical offsets; see
//! `FORMAT.md`) and rebuilds everything else (consume logs, pull logs, positions, progress,
//! checkpoints) by indexing and replaying them exactly as the master did, so a promoted
//! replica continues where the master was. The record layouts are therefore the replication
//! protocol.
//!
//! - Master: [`Store::watch_log_end`] to long-poll, [`Store::read_log_chunk`] to read.
//! - Replica: [`Store::log_end`] for where to ask from, [`Store::append_replicated`] to apply.
//! - A master that comes back after its replica was promoted holds a tail the replica never
//!   had: [`truncate_logs`] cuts it (offline) so it can follow the new master.
//!
//! What replication does **not** carry: state changed without an action-log record. A pull
//! that creates a group but hands out nothing and moves nothing (a subject never written, a
//! time gate that holds the first message back, `max == 0`), or an ack refused for an
//! unknown consumer, leave an entry at its initial value in [`Store::groups`] /
//! [`Store::consumers`] on the master only. Such entries carry no progress; a promoted
//! replica creates them again at the same values on first use.
//!
//! A replica must start from an empty store at offset 0 of both logs: a master whose logs no
//! longer start at 0 (retention) cannot seed a new replica through these calls (its first
//! chunk starts above the replica's end: [`crate::StoreError::Diverged`]); that needs a copy
//! of a checkpoint and the derived files, which this crate does not provide.
//!
//! [`Store::watch_log_end`]: crate::Store::watch_log_end
//! [`Store::read_log_chunk`]: crate::Store::read_log_chunk
//! [`Store::log_end`]: crate::Store::log_end
//! [`Store::append_replicated`]: crate::Store::append_replicated
//! [`Store::groups`]: crate::Store::groups
//! [`Store::consumers`]: crate::Store::consumers

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checkpoint;
use crate::error::{io, Result, StoreError};
use crate::log::{open_segment_files, sync_dir, RECORD_HEADER};
use crate::store::{ACTION_DIR, CHECKPOINT_DIR, MESSAGE_DIR};
use crate::{DirLock, StoreConfig};

/// One of the two replicated logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// The message log (`messagelog/`): every message of every subject.
    Message,
    /// The action log (`actionlog/`): every pull, ack and reset.
    Action,
}

impl std::fmt::Display for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Message => "message log",
            Self::Action => "action log",
        })
    }
}

/// Bytes of a log for a replica: whole records, back to back, from offset `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Log offset of the first byte (the offset asked for, raised to the log's first stored
    /// offset if it was below it).
    pub start: u64,
    /// Whole records (`u32 length | u32 CRC32C | payload` each); empty when nothing new.
    pub bytes: bytes::Bytes,
}

/// What [`truncate_logs`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    /// Bytes cut from the message log (0 when nothing was beyond the point).
    pub message_bytes: u64,
    /// Bytes cut from the action log (0 when nothing was beyond the point).
    pub action_bytes: u64,
    /// Side files holding the cut bytes (raw records, as they were in the log), for
    /// inspection.
    pub side_files: Vec<PathBuf>,
}

/// Where the cut bytes are saved, under the data directory.
const TRUNCATED_DIR: &str = "truncated";

/// One log's segment files, offline.
struct Segments {
    /// (base, path, file), by base.
    files: Vec<(u64, PathBuf, File)>,
    end: u64,
}

impl Segments {
    fn open(dir: &Path) -> Result<Self> {
        let mut files = if dir.exists() {
            open_segment_files(dir)?
        } else {
            Vec::new()
        };
        files.sort_by_key(|(base, _, _)| *base);
        let end = match files.last() {
            Some((base, path, file)) => base + file.metadata().map_err(io("stat", path))?.len(),
            None => 0,
        };
        Ok(Self { files, end })
    }

    fn start(&self) -> u64 {
        self.files.first().map_or(0, |(b, _, _)| *b)
    }

    /// Checks that `to` (below the end) is a record boundary: the segment holding it is
    /// walked record by record from its base.
    fn check_boundary(&self, name: &str, to: u64) -> Result<()> {
        let refuse = |reason: String| StoreError::TruncateRefused { reason };
        if to < self.start() {
            return Err(refuse(format!(
                "{name}: {to} is below the first stored offset {}",
                self.start()
            )));
        }
        let Some((base, path, file)) = self.files.iter().rev().find(|(b, _, _)| *b <= to) else {
            return Err(refuse(format!("{name}: no segment holds {to}")));
        };
        let mut pos = *base;
        let mut head = [0u8; RECORD_HEADER as usize];
        while pos < to {
            file.read_exact_at(&mut head, pos - base)
                .map_err(io("read", path))?;
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if len == 0 {
                break;
            }
            pos += RECORD_HEADER + u64::from(len);
        }
        if pos != to {
            return Err(refuse(format!("{name}: {to} is not a record boundary")));
        }
        Ok(())
    }

    /// Copies `[to, end)` to `side` (fsynced).
    fn save(&self, to: u64, side: &Path) -> Result<()> {
        let mut out = File::create(side).map_err(io("create", side))?;
        let mut buf = vec![0u8; 1 << 20];
        for (base, path, file) in &self.files {
            let len = file.metadata().map_err(io("stat", path))?.len();
            let (from, until) = (to.max(*base), base + len);
            let mut at = from;
            while at < until {
                let n = ((until - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at - base)
                    .map_err(io("read", path))?;
                out.write_all(&buf[..n]).map_err(io("write", side))?;
                at += n as u64;
            }
        }
        out.sync_all().map_err(io("fsync", side))
    }

    /// Deletes the segments after the one holding `to` and cuts that one at `to` (a segment
    /// starting at `to` stays, empty, so the log still ends there), all fsynced.
    fn cut(&self, dir: &Path, to: u64) -> Result<()> {
        let keep = self
            .files
            .iter()
            .rev()
            .find(|(b, _, _)| *b <= to)
            .map(|(b, _, _)| *b);
        for (base, path, file) in &self.files {
            if Some(*base) == keep {
                file.set_len(to - base).map_err(io("truncate", path))?;
                file.sync_all().map_err(io("fsync", path))?;
            } else if *base > to {
                std::fs::remove_file(path).map_err(io("delete", path))?;
            }
        }
        sync_dir(dir)
    }
}

/// Offline: cuts the message log back to `message_to` and the action log back to `action_to`,
/// so the store can follow a master that never had what was beyond them (a former master
/// rejoining as the replica of the replica promoted in its place).
///
/// Both must be record boundaries at or above each log's first stored offset; at or beyond a
/// log's end, nothing is cut from it. The cut bytes are saved first, fsynced, to
/// `<dir>/truncated/<unix_ms>-<messagelog|actionlog>-<from>-<to>.bin` (raw records) and what
/// was cut is logged (`tracing::warn`). Checkpoints that vouch for anything beyond the cut
/// (a message-log offset past `message_to`, or consumer state that may reflect an action at
/// or past `action_to`) are deleted; older ones are kept, so recovery need not replay from 0.
/// [`crate::Store::open`] then yields exactly the state of a store that never had the cut
/// tail: it drops consume-log entries pointing at or past the message log's end, leaves out
/// subjects left with none, rebuilds positions and progress from the kept checkpoint and the
/// actions before the cut, and pull-log entries past a consumer's rebuilt progress are never
/// read and are overwritten by its next pulls.
///
/// Takes the data directory's lock as [`crate::Store::open`] does ([`StoreError::Locked`]
/// while a store has it open). If no checkpoint survives and a log no longer starts at 0
/// (retention deleted its head), the cut cannot be made consistent:
/// [`StoreError::TruncateRefused`], and nothing is changed (likewise for a point that is not a
/// record boundary).
pub fn truncate_logs(config: &StoreConfig, message_to: u64, action_to: u64) -> Result<Truncated> {
    let dir = &config.dir;
    let _lock = DirLock::acquire(dir)?;
    let message_dir = dir.join(MESSAGE_DIR);
    let action_dir = dir.join(ACTION_DIR);
    let messages = Segments::open(&message_dir)?;
    let actions = Segments::open(&action_dir)?;
    let cut_messages = message_to < messages.end;
    let cut_actions = action_to < actions.end;
    if cut_messages {
        messages.check_boundary("message log", message_to)?;
    }
    if cut_actions {
        actions.check_boundary("action log", action_to)?;
    }
    let mut truncated = Truncated {
        message_bytes: if cut_messages {
            messages.end - message_to
        } else {
            0
        },
        action_bytes: if cut_actions {
            actions.end - action_to
        } else {
            0
        },
        side_files: Vec::new(),
    };
    if !cut_messages && !cut_actions {
        return Ok(truncated);
    }

    // Which checkpoints still hold.
    let checkpoint_dir = dir.join(CHECKPOINT_DIR);
    let all = checkpoint::load_all(&checkpoint_dir)?;
    let holds = |cp: &checkpoint::Checkpoint| {
        let messages_ok = !cut_messages || cp.message_indexed <= message_to;
        let actions_ok = !cut_actions || cp.action_state_end.is_some_and(|e| e <= action_to);
        messages_ok && actions_ok
    };
    let doomed: Vec<&PathBuf> = all
        .iter()
        .filter(|(_, _, cp)| cp.as_ref().is_some_and(|cp| !holds(cp)))
        .map(|(_, path, _)| path)
        .collect();
    let survivor = all.iter().any(|(_, _, cp)| cp.as_ref().is_some_and(&holds));
    if !survivor && (messages.start() > 0 || actions.start() > 0) {
        return Err(StoreError::TruncateRefused {
            reason: format!(
                "no checkpoint predates the cut and the logs no longer start at 0 \
                 (message log at {}, action log at {}): recovery could not rebuild the state",
                messages.start(),
                actions.start()
            ),
        });
    }

    // Save the tails, then drop the checkpoints, then cut: a crash in between leaves a
    // consistent (uncut) store, and the call can be made again.
    let side_dir = dir.join(TRUNCATED_DIR);
    std::fs::create_dir_all(&side_dir).map_err(io("create dir", &side_dir))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut plan = Vec::new();
    if cut_messages {
        plan.push(("messagelog", &messages, &message_dir, message_to));
    }
    if cut_actions {
        plan.push(("actionlog", &actions, &action_dir, action_to));
    }
    for &(kind, segs, _, to) in &plan {
        let side = side_dir.join(format!("{now_ms}-{kind}-{to}-{}.bin", segs.end));
        segs.save(to, &side)?;
        truncated.side_files.push(side);
    }
    sync_dir(&side_dir)?;
    for path in &doomed {
        std::fs::remove_file(path).map_err(io("delete", path))?;
    }
    if !doomed.is_empty() {
        sync_dir(&checkpoint_dir)?;
    }
    for &(kind, segs, log_dir, to) in &plan {
        segs.cut(log_dir, to)?;
        tracing::warn!(
            log = kind,
            from = to,
            to = segs.end,
            bytes = segs.end - to,
            checkpoints_dropped = doomed.len(),
            "truncated an unreplicated log tail; the cut bytes are saved in {}",
            side_dir.display()
        );
    }
    Ok(truncated)
}
