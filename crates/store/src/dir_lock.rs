//! Data-directory locks: two writers on one directory would corrupt it, whether they are two
//! stores in one process or two processes.

use std::fs::File;
use std::path::Path;

use crate::error::{io, Result, StoreError};

/// The lock file's name in a locked directory.
const LOCK_FILE: &str = "LOCK";

/// An exclusive lock on a directory: a `flock` on its `LOCK` file, released when this is
/// dropped or the process ends (a crash leaves no stale lock behind).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (creating it if missing), or fails with [`StoreError::Locked`] if another
    /// holder, in this process or another, has it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io("create dir", dir))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StoreError::Locked {
                dir: dir.to_path_buf(),
            }),
            Err(e) => Err(StoreError::Io {
                op: "lock",
                path,
                source: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(StoreError::Locked { .. })
        ));
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
