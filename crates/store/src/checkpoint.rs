//! Checkpoints: a consistent snapshot of where every derived structure is complete, so recovery
//! only replays the logs after it. A file is `CRC32C as 8 hex digits | newline | JSON`, written
//! atomically (temp file, fsync, rename, directory fsync); the newest `retain` are kept, and a
//! damaged or missing newest one falls back to the one before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::action::ConsumerKey;
use crate::error::{io, Result, StoreError};
use crate::faults;
use crate::log::sync_dir;

/// Progress of one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ConsumerProgress {
    /// Last pull-log sequence handed out (-1: none).
    pub pulled: i64,
    /// Last pull-log sequence acked (-1: none).
    pub acked: i64,
}

/// Everything recovery needs besides the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Message-log offset below which every message is in its consume log.
    pub message_indexed: u64,
    /// Consume-log length per subject at `message_indexed`.
    pub subjects: BTreeMap<String, u64>,
    /// Action-log offset below which every action is applied to this state and the pull logs.
    pub action_applied: u64,
    /// Action-log end read once the consumer state below was captured: the state reflects
    /// every action before `action_applied`, maybe some between it and this, and none at or
    /// after this. [`crate::truncate_logs`] keeps a checkpoint only if the action log is not
    /// cut below this. `None` in checkpoints written before it was recorded.
    #[serde(default)]
    pub action_state_end: Option<u64>,
    /// Next consume-log sequence per group (consumer field empty) or broadcast consumer.
    pub groups: Vec<(ConsumerKey, u64)>,
    /// Per-consumer pull/ack progress.
    pub consumers: Vec<(ConsumerKey, ConsumerProgress)>,
    /// A replica resynchronised from a snapshot ([`crate::Store::install_snapshot`]): its
    /// master's subject lengths when the snapshot was taken. Its consumer positions may point
    /// up to them before the messages are copied, so recovery does not move them back to the
    /// subject's local end; kept in later checkpoints until every subject reached its length.
    /// Empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resync_subject_ends: BTreeMap<String, u64>,
}

const PREFIX: &str = "checkpoint.";
/// The checkpoint's failpoints' prefix (see [`crate::faults`]).
const KIND: &str = "checkpoint";

fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let path = entry.map_err(io("list", dir))?.path();
        let gen = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(gen) = gen {
            out.push((gen, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the newest readable checkpoint in `dir` and its generation.
pub fn load(dir: &Path) -> Result<Option<(u64, Checkpoint)>> {
    std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
    for (gen, path) in files(dir)?.into_iter().rev() {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| decode(&b));
        match parsed {
            Ok(cp) => return Ok(Some((gen, cp))),
            Err(reason) => {
                let err = StoreError::BadCheckpoint { path, reason };
                tracing::error!(error = %err, "skipping a damaged checkpoint");
            }
        }
    }
    Ok(None)
}

/// Every checkpoint file in `dir`, oldest first, with its generation and its contents
/// (`None` if it is damaged).
pub(crate) fn load_all(dir: &Path) -> Result<Vec<(u64, PathBuf, Option<Checkpoint>)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (gen, path) in files(dir)? {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| decode(&b))
            .ok();
        out.push((gen, path, parsed));
    }
    Ok(out)
}

/// Writes checkpoint generation `gen` and deletes all but the newest `retain`. Returns the
/// oldest retained checkpoint (recovery may fall back to it, so logs must be kept from there).
pub fn store(dir: &Path, gen: u64, cp: &Checkpoint, retain: usize) -> Result<Checkpoint> {
    let path = dir.join(format!("{PREFIX}{gen:020}"));
    let tmp = dir.join(format!("{PREFIX}{gen:020}.tmp"));
    let json = serde_json::to_vec(cp).map_err(|e| StoreError::BadCheckpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut bytes = format!("{:08x}\n", crc32c::crc32c(&json)).into_bytes();
    bytes.extend_from_slice(&json);
    faults::check(KIND, "write")
        .and_then(|()| std::fs::write(&tmp, bytes))
        .map_err(io("write", &tmp))?;
    faults::check(KIND, "fsync")
        .and_then(|()| std::fs::File::open(&tmp))
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", &tmp))?;
    faults::check(KIND, "rename")
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io("rename", &tmp))?;
    sync_dir(dir)?;
    let all = files(dir)?;
    let keep = retain.max(1);
    let cut = all.len().saturating_sub(keep);
    for (_, old) in &all[..cut] {
        std::fs::remove_file(old).map_err(io("delete", old))?;
    }
    let oldest = &all[cut].1;
    let bytes = std::fs::read(oldest).map_err(io("read", oldest))?;
    decode(&bytes).map_err(|reason| StoreError::BadCheckpoint {
        path: oldest.clone(),
        reason,
    })
}

fn decode(b: &[u8]) -> Result<Checkpoint, String> {
    let (head, json) = b.split_at_checked(9).ok_or("too short")?;
    let crc = std::str::from_utf8(&head[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("no checksum")?;
    if head[8] != b'\n' || crc32c::crc32c(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}
