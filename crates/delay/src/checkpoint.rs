//! Small metadata files: `delay.meta` (the fixed bucket width) and `checkpoint` (how far the
//! schedule logs are known durable).
//!
//! `delay.meta`: `b"QMQDELAY" | u32 version (1) | u32 segment scale in minutes | u32 CRC-32C`.
//!
//! `checkpoint`: `b"QDCP" | u32 version (2) | u64 message-log offset | u32 bucket count |
//! per bucket: i64 bucket start ms, u64 durable length, u64 records, u64 last message-log
//! offset (u64::MAX = none), u64 dispatched | u32 cleaned count | per cleaned bucket: i64
//! start, u64 last message-log offset | u32 CRC-32C of everything before`. Every message-log
//! record before the offset is in a schedule log whose first `length` bytes were fsynced, and
//! `dispatched` distinct records of each bucket are in its dispatch log, fsynced before the
//! checkpoint was written. Version 1 (the same without `dispatched`) is still read, as
//! "nothing known dispatched": the first restart after an upgrade reads the dispatch logs as
//! before.
//!
//! Checkpoints are generations, `checkpoint.<generation, 20 digits>`, as the broker's store
//! keeps them: each is written to a temporary file, fsynced, renamed into place and the
//! directory fsynced; the newest [`RETAIN`] are kept, and a damaged newest one falls back to
//! the one before (recovery then replays more of the message log, which is kept from the
//! oldest retained checkpoint on). A store written before generations existed has a single
//! `checkpoint` file: it is read when there is no generation and deleted once one exists.
//! Falling back past a retention pass can bring back a bucket whose files were deleted: its
//! messages would then be delivered again (never lost).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::DelayError;
use crate::fsutil::sync_dir;

const META_MAGIC: &[u8; 8] = b"QMQDELAY";
const CP_MAGIC: &[u8; 4] = b"QDCP";
const VERSION: u32 = 2;
/// Bytes per bucket in a version-1 and in a version-2 checkpoint.
const BUCKET_V1: usize = 32;
const BUCKET_V2: usize = 40;
/// Checkpoint generations kept.
pub const RETAIN: usize = 3;
const PREFIX: &str = "checkpoint.";
/// The single checkpoint file of stores written before generations.
const LEGACY: &str = "checkpoint";

/// What a checkpoint says about one schedule log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurableBucket {
    /// Bytes known durable.
    pub len: u64,
    /// Records in those bytes.
    pub records: u64,
    /// Message-log offset of the last of them.
    pub last_wal: Option<u64>,
    /// Distinct records of the bucket recorded in its dispatch log, fsynced before the
    /// checkpoint was written (0 in a version-1 checkpoint). A bucket whose `dispatched`
    /// reaches `records` is settled: a restart reads neither of its logs again.
    pub dispatched: u64,
}

/// The checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Every message-log record before this offset is in a durable schedule log.
    pub wal_offset: u64,
    /// Durable state of each schedule log, by bucket start (ms).
    pub buckets: BTreeMap<i64, DurableBucket>,
    /// Buckets deleted by retention: start -> last message-log offset they held. A replay of the
    /// message log skips those records instead of scheduling them again.
    pub cleaned: BTreeMap<i64, u64>,
}

/// Reads the persisted bucket width, or persists `scale` if the store is new; refuses a
/// different width.
pub fn check_scale(dir: &Path, scale: u32) -> Result<(), DelayError> {
    let path = dir.join("delay.meta");
    match fs::read(&path) {
        Ok(bytes) => {
            let corrupt = |reason: &str| DelayError::Corrupt {
                path: path.clone(),
                reason: reason.to_owned(),
            };
            if bytes.len() != 20 || &bytes[..8] != META_MAGIC {
                return Err(corrupt("not a delay store metadata file"));
            }
            let be_u32 = |at: usize| -> Option<u32> {
                Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
            };
            let (Some(stored), Some(crc)) = (be_u32(12), be_u32(16)) else {
                return Err(corrupt("not a delay store metadata file"));
            };
            if crc32c::crc32c(&bytes[..16]) != crc {
                return Err(corrupt("CRC-32C mismatch"));
            }
            if stored != scale {
                return Err(DelayError::ScaleMismatch {
                    path: dir.to_owned(),
                    stored,
                    configured: scale,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Vec::with_capacity(20);
            bytes.extend_from_slice(META_MAGIC);
            bytes.extend_from_slice(&VERSION.to_be_bytes());
            bytes.extend_from_slice(&scale.to_be_bytes());
            let crc = crc32c::crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_be_bytes());
            write_atomically(dir, "delay.meta", &bytes)
        }
        Err(e) => Err(DelayError::io("read", &path, e)),
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DelayError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| DelayError::io("create", &tmp, e))?;
    let written =
        crate::fsutil::inject("delay::checkpoint::write").and_then(|()| file.write_all(bytes));
    written.map_err(|e| DelayError::io("write", &tmp, e))?;
    let synced = crate::fsutil::inject("delay::checkpoint::fsync").and_then(|()| file.sync_all());
    synced.map_err(|e| DelayError::io("fsync", &tmp, e))?;
    let renamed =
        crate::fsutil::inject("delay::checkpoint::rename").and_then(|()| fs::rename(&tmp, &path));
    renamed.map_err(|e| DelayError::io("rename", &path, e))?;
    sync_dir(dir)
}

/// Checkpoint generations in `dir`, oldest first.
fn generations(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DelayError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| DelayError::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DelayError::io("list directory", dir, e))?;
        let gen = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(gen) = gen {
            out.push((gen, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and decodes one checkpoint file; `Ok(None)` when it is missing or damaged (logged).
fn read_one(path: &Path) -> Result<Option<Checkpoint>, DelayError> {
    let read = crate::fsutil::inject("delay::checkpoint::read").and_then(|()| fs::read(path));
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DelayError::io("read", path, e)),
    };
    let cp = Checkpoint::decode(&bytes);
    if cp.is_none() {
        tracing::error!(file = %path.display(), "damaged checkpoint skipped");
    }
    Ok(cp)
}

impl Checkpoint {
    /// Reads the newest intact checkpoint in `dir` (damaged ones are logged and skipped).
    /// None at all reads as empty: the store then rescans everything. An I/O error is an error,
    /// not damage.
    pub fn load(dir: &Path) -> Result<Self, DelayError> {
        let gens = generations(dir)?;
        let candidates: Vec<PathBuf> = if gens.is_empty() {
            vec![dir.join(LEGACY)]
        } else {
            gens.iter().rev().map(|(_, p)| p.clone()).collect()
        };
        for path in &candidates {
            if let Some(cp) = read_one(path)? {
                return Ok(cp);
            }
        }
        if candidates.iter().any(|p| p.exists()) {
            tracing::error!(dir = %dir.display(), "no intact checkpoint; rescanning all logs");
        }
        Ok(Self::default())
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (body, crc) = b.split_at(b.len().checked_sub(4)?);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        if body.get(..4)? != CP_MAGIC {
            return None;
        }
        let per_bucket = match u32::from_be_bytes(body.get(4..8)?.try_into().ok()?) {
            1 => BUCKET_V1,
            2 => BUCKET_V2,
            _ => return None,
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        let wal_offset = u64_at(8)?;
        let n = u32::from_be_bytes(body.get(16..20)?.try_into().ok()?) as usize;
        let cleaned_at = 20usize.checked_add(n.checked_mul(per_bucket)?)?;
        let m = u32::from_be_bytes(body.get(cleaned_at..cleaned_at + 4)?.try_into().ok()?) as usize;
        if body.len() != cleaned_at + 4 + m.checked_mul(16)? {
            return None;
        }
        let mut buckets = BTreeMap::new();
        for i in 0..n {
            let at = 20 + i * per_bucket;
            let last = u64_at(at + 24)?;
            let dispatched = match per_bucket {
                BUCKET_V2 => u64_at(at + 32)?,
                _ => 0,
            };
            buckets.insert(
                u64_at(at)? as i64,
                DurableBucket {
                    len: u64_at(at + 8)?,
                    records: u64_at(at + 16)?,
                    last_wal: (last != u64::MAX).then_some(last),
                    dispatched,
                },
            );
        }
        let mut cleaned = BTreeMap::new();
        for i in 0..m {
            let at = cleaned_at + 4 + i * 16;
            cleaned.insert(u64_at(at)? as i64, u64_at(at + 8)?);
        }
        Some(Self {
            wal_offset,
            buckets,
            cleaned,
        })
    }

    /// Writes the checkpoint durably into `dir` as the next generation and deletes all but the
    /// newest [`RETAIN`]. Returns the lowest message-log offset a retained checkpoint replays
    /// from: the message log must be kept from there.
    pub fn store(&self, dir: &Path) -> Result<u64, DelayError> {
        let mut b =
            Vec::with_capacity(28 + self.buckets.len() * BUCKET_V2 + self.cleaned.len() * 16);
        b.extend_from_slice(CP_MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&self.wal_offset.to_be_bytes());
        b.extend_from_slice(&(self.buckets.len() as u32).to_be_bytes());
        for (start, d) in &self.buckets {
            b.extend_from_slice(&start.to_be_bytes());
            b.extend_from_slice(&d.len.to_be_bytes());
            b.extend_from_slice(&d.records.to_be_bytes());
            b.extend_from_slice(&d.last_wal.unwrap_or(u64::MAX).to_be_bytes());
            b.extend_from_slice(&d.dispatched.to_be_bytes());
        }
        b.extend_from_slice(&(self.cleaned.len() as u32).to_be_bytes());
        for (start, last) in &self.cleaned {
            b.extend_from_slice(&start.to_be_bytes());
            b.extend_from_slice(&last.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        let gens = generations(dir)?;
        let gen = gens.last().map_or(1, |(g, _)| g + 1);
        write_atomically(dir, &format!("{PREFIX}{gen:020}"), &b)?;
        let mut retained_from = self.wal_offset;
        let gens = generations(dir)?;
        let cut = gens.len().saturating_sub(RETAIN);
        let mut deleted = false;
        for (_, old) in &gens[..cut] {
            fs::remove_file(old).map_err(|e| DelayError::io("delete", old, e))?;
            deleted = true;
        }
        for (_, kept) in &gens[cut..] {
            if let Some(cp) = read_one(kept)? {
                retained_from = retained_from.min(cp.wal_offset);
            }
        }
        let legacy = dir.join(LEGACY);
        match fs::remove_file(&legacy) {
            Ok(()) => deleted = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DelayError::io("delete", &legacy, e)),
        }
        if deleted {
            sync_dir(dir)?;
        }
        Ok(retained_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_fixed_once_persisted() {
        let dir = tempfile::tempdir().unwrap();
        check_scale(dir.path(), 60).unwrap();
        check_scale(dir.path(), 60).unwrap();
        let err = check_scale(dir.path(), 30).unwrap_err();
        assert!(matches!(
            err,
            DelayError::ScaleMismatch {
                stored: 60,
                configured: 30,
                ..
            }
        ));
        assert!(err.to_string().contains("fixed"));
    }

    #[test]
    fn checkpoint_round_trips_and_damage_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Checkpoint::default());
        let mut cp = Checkpoint {
            wal_offset: 4242,
            ..Default::default()
        };
        cp.buckets.insert(
            3_600_000,
            DurableBucket {
                len: 100,
                records: 2,
                last_wal: Some(40),
                dispatched: 1,
            },
        );
        cp.buckets.insert(7_200_000, DurableBucket::default());
        cp.cleaned.insert(0, 12);
        cp.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), cp);
        let path = newest(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Checkpoint::default());
    }

    /// The newest checkpoint file in `dir`, whatever the naming.
    fn newest(dir: &Path) -> PathBuf {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.starts_with("checkpoint") && !n.ends_with(".tmp")
            })
            .collect();
        names.sort();
        names.pop().unwrap()
    }

    fn cp_at(wal_offset: u64) -> Checkpoint {
        Checkpoint {
            wal_offset,
            ..Default::default()
        }
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        cp_at(100).store(dir.path()).unwrap();
        cp_at(200).store(dir.path()).unwrap();
        let path = newest(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), cp_at(100));
    }

    #[test]
    fn three_generations_are_kept_and_the_oldest_sets_the_replay_floor() {
        let dir = tempfile::tempdir().unwrap();
        for (i, off) in [10u64, 20, 30, 40, 50].into_iter().enumerate() {
            let floor = cp_at(off).store(dir.path()).unwrap();
            let expected = [10, 10, 10, 20, 30][i];
            assert_eq!(floor, expected, "after storing {off}");
        }
        assert_eq!(generations(dir.path()).unwrap().len(), RETAIN);
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), cp_at(50));
    }

    #[test]
    fn a_store_from_before_generations_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        // The legacy single file has the same content format.
        cp_at(77).store(dir.path()).unwrap();
        let (_, only) = generations(dir.path()).unwrap().pop().unwrap();
        fs::rename(only, dir.path().join(LEGACY)).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), cp_at(77));
        cp_at(88).store(dir.path()).unwrap();
        assert!(!dir.path().join(LEGACY).exists());
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), cp_at(88));
    }

    #[test]
    fn a_version_1_checkpoint_reads_as_nothing_known_dispatched() {
        // A version-1 file as the previous release wrote it: one bucket, one cleaned bucket.
        let mut b = Vec::new();
        b.extend_from_slice(CP_MAGIC);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&500u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        for v in [3_600_000u64, 100, 2, 40] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&12u64.to_be_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        let cp = Checkpoint::decode(&b).unwrap();
        assert_eq!(cp.wal_offset, 500);
        assert_eq!(
            cp.buckets[&3_600_000],
            DurableBucket {
                len: 100,
                records: 2,
                last_wal: Some(40),
                dispatched: 0,
            }
        );
        assert_eq!(cp.cleaned[&0], 12);
    }
}
