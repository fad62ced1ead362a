//! Small file-system helpers: durable directory entries, cutting damaged tails aside.
//!
//! Fault injection: with the `failpoints` feature, the `fail` crate's failpoints named
//! `delay::<file kind>::<operation>` make the disk operations of the message log (`wal`),
//! schedule logs (`schedule`), dispatch logs (`dispatch`) and checkpoint (`checkpoint`) fail
//! on demand (operations `write`, `fsync`, `read`, `rename`, `dir_fsync`); without the feature
//! they compile to nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::DelayError;

/// The error an injected failure (failpoint) reports.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub fn injected(op: &str) -> std::io::Error {
    std::io::Error::other(format!("injected {op} failure"))
}

/// Fails with an injected error when failpoint `name` is configured to `return` (feature
/// `failpoints`); otherwise (and always without the feature) does nothing.
#[inline]
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn inject(name: &str) -> std::io::Result<()> {
    fail::fail_point!(name, |_| Err(injected(name)));
    Ok(())
}

/// Creates `dir` (and parents) if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), DelayError> {
    fs::create_dir_all(dir).map_err(|e| DelayError::io("create directory", dir, e))
}

/// Fsyncs a directory so file creations, renames and deletions in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), DelayError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DelayError::io("fsync directory", dir, e))
}

/// Files in `dir` named `<number><suffix>`, as `(number, path)` sorted by number.
pub fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(i64, PathBuf)>, DelayError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| DelayError::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DelayError::io("list directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<i64>().ok())
        {
            out.push((num, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Cuts `file` (at `path`) back to `at` bytes. A non-empty cut-off tail is first copied to
/// `<path>.damaged-<at>` so nothing is destroyed without a trace.
pub fn cut_tail(file: &mut File, path: &Path, at: u64) -> Result<(), DelayError> {
    let len = file
        .metadata()
        .map_err(|e| DelayError::io("stat", path, e))?
        .len();
    if len <= at {
        return Ok(());
    }
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.take(len - at).read_to_end(&mut tail))
        .map_err(|e| DelayError::io("read damaged tail", path, e))?;
    let aside = PathBuf::from(format!("{}.damaged-{at}", path.display()));
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&aside)
        .and_then(|mut f| f.write_all(&tail).and_then(|_| f.sync_all()))
        .map_err(|e| DelayError::io("save damaged tail", &aside, e))?;
    file.set_len(at)
        .and_then(|_| file.sync_all())
        .map_err(|e| DelayError::io("truncate damaged tail", path, e))?;
    tracing::warn!(file = %path.display(), at, bytes = len - at, saved = %aside.display(), "cut a torn or damaged tail");
    Ok(())
}
