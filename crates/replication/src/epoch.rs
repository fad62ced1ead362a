//! Epochs: the epoch a server's data comes from (a file in its data directory) and where a
//! server coming back as a slave must cut its logs, from the group's epoch history.
//!
//! Each epoch of a group starts where its master's logs ended when it took over (the meta
//! server records it). Everything before that start is what the new master copied from the
//! old one, so a server whose data comes from an older epoch shares the data up to the
//! smallest start of the later epochs, and must cut anything beyond it.

use std::path::{Path, PathBuf};

use qmq_protocol::EpochStart;

use crate::ReplicationError;

/// Where a slave whose data comes from epoch `data_epoch` must cut its logs: the smallest
/// start of the later epochs. `Some(None)`: nothing to cut; `None`: a later epoch has not
/// reported its start yet (wait).
pub fn cut_points(data_epoch: u64, epochs: &[EpochStart]) -> Option<Option<(u64, u64)>> {
    let later: Vec<&EpochStart> = epochs
        .iter()
        .filter(|e| e.epoch > data_epoch as i64)
        .collect();
    if later.is_empty() {
        return Some(None);
    }
    if later
        .iter()
        .any(|e| e.message_start < 0 || e.action_start < 0)
    {
        return None;
    }
    let message = later.iter().map(|e| e.message_start).min()?;
    let action = later.iter().map(|e| e.action_start).min()?;
    Some(Some((message as u64, action as u64)))
}

fn epoch_file(dir: &Path) -> PathBuf {
    dir.join("replication-epoch")
}

/// The epoch this store's data comes from (0: none recorded).
pub fn read_epoch(dir: &Path) -> Result<u64, ReplicationError> {
    match std::fs::read_to_string(epoch_file(dir)) {
        Ok(s) => s.trim().parse().map_err(|_| ReplicationError::Io {
            op: "read replication-epoch",
            source: std::io::Error::other(format!("not a number: {s:?}")),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(ReplicationError::Io {
            op: "read replication-epoch",
            source,
        }),
    }
}

/// Records the epoch of this store's data (written to a temporary file, fsynced, renamed).
pub fn write_epoch(dir: &Path, epoch: u64) -> Result<(), ReplicationError> {
    let io = |source| ReplicationError::Io {
        op: "write replication-epoch",
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(".replication-epoch.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("{epoch}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, epoch_file(dir)).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: i64, m: i64, a: i64) -> EpochStart {
        EpochStart {
            epoch,
            message_start: m,
            action_start: a,
        }
    }

    #[test]
    fn a_slave_cuts_at_the_earliest_later_epoch() {
        let history = [e(1, 0, 0), e(2, 500, 40), e(3, 300, 60)];
        assert_eq!(cut_points(3, &history), Some(None), "up to date");
        assert_eq!(cut_points(2, &history), Some(Some((300, 60))));
        assert_eq!(cut_points(1, &history), Some(Some((300, 40))));
        assert_eq!(cut_points(0, &history), Some(Some((0, 0))));
        assert_eq!(
            cut_points(1, &[e(1, 0, 0), e(2, -1, -1)]),
            None,
            "waits for the new master's report"
        );
        assert_eq!(cut_points(0, &[]), Some(None));
    }

    #[test]
    fn the_epoch_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_epoch(dir.path()).unwrap(), 0);
        write_epoch(dir.path(), 7).unwrap();
        assert_eq!(read_epoch(dir.path()).unwrap(), 7);
        std::fs::write(epoch_file(dir.path()), "x").unwrap();
        assert!(read_epoch(dir.path()).is_err());
    }
}
