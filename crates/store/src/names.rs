//! Directory names for subjects, groups and consumers.
//!
//! A client's name never becomes a file name. The directory of a subject's consume log, and of
//! a consumer's pull log, is named by the first 128 bits of the SHA-256 of its name(s), in hex
//! (32 characters), and holds a `NAME` file with the full name(s) as a JSON array of strings.
//! So a name of any length or alphabet (`/`, `..`, 1 KiB of CJK) reaches the file system only as
//! file *contents*; the directory's name is always 32 safe bytes.
//!
//! - consume logs: `consumelog/<hash(subject)>/NAME` = `["subject"]`
//! - pull logs: `pulllog/<hash(subject, group, consumer)>/NAME` = `["subject","group","consumer"]`
//!
//! A directory is created as `.tmp-<hash>` with its `NAME` written and fsynced, then renamed into
//! place and the parent fsynced: every directory with a final name has a readable `NAME`, and a
//! leftover `.tmp-*` (a crash mid-creation) holds nothing and is removed at open.
//!
//! # Older data directories
//!
//! Until this layout, directory names were the names themselves with every byte outside
//! `[A-Za-z0-9._-]` written as `%XX`, and pull logs sat three levels deep
//! (`pulllog/<subject>/<group>/<consumer>`). [`migrate`] moves such directories into the hashed
//! layout when a store opens: it writes the `NAME` file inside the old directory, renames it to its
//! hashed name and fsyncs the parent. Each step is atomic and the scan is repeated on every open,
//! so a crash in the middle of a migration is finished by the next open.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io, Result, StoreError};
use crate::log::sync_dir;

/// The file in each named directory that holds its names.
const NAME_FILE: &str = "NAME";
/// Prefix of a directory being created (no legacy or hashed name starts with a dot).
const TMP_PREFIX: &str = ".tmp-";

/// The directory name for `names`: 32 hex characters of their SHA-256.
///
/// Each name is length-prefixed before hashing, so `["ab","c"]` and `["a","bc"]` differ.
pub(crate) fn hashed(names: &[&str]) -> String {
    let mut h = Sha256::new();
    for n in names {
        h.update((n.len() as u64).to_le_bytes());
        h.update(n.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Returns the directory for `names` under `parent`, creating it (with its `NAME` file, durably)
/// if it does not exist yet.
pub(crate) fn ensure_dir(parent: &Path, names: &[&str]) -> Result<PathBuf> {
    let hash = hashed(names);
    let path = parent.join(&hash);
    if path.is_dir() {
        if let Err(e) = check_names(&path, names) {
            if !matches!(e, StoreError::BadNameFile { .. }) || read_names(&path).is_ok() {
                return Err(e);
            }
            // Unreadable, in a directory whose name is these names' hash: it is theirs.
            tracing::warn!(dir = %path.display(), error = %e, "rewriting a damaged NAME file");
            write_names(&path, names)?;
        }
        return Ok(path);
    }
    std::fs::create_dir_all(parent).map_err(io("create dir", parent))?;
    let tmp = parent.join(format!("{TMP_PREFIX}{hash}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io("create dir", &tmp))?;
    write_names(&tmp, names)?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    sync_dir(parent)?;
    Ok(path)
}

/// The names a directory stands for, from its `NAME` file.
pub(crate) fn read_names(dir: &Path) -> Result<Vec<String>> {
    let file = dir.join(NAME_FILE);
    let bytes = std::fs::read(&file).map_err(io("read", &file))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadNameFile {
        path: file,
        reason: e.to_string(),
    })
}

/// Lists the named directories under `parent` (skipping anything else) with their names.
pub(crate) fn list(parent: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let mut out = Vec::new();
    if !parent.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(parent).map_err(io("list", parent))? {
        let path = entry.map_err(io("list", parent))?.path();
        if path.is_dir() && path.join(NAME_FILE).is_file() {
            match read_names(&path) {
                Ok(names) => out.push((path, names)),
                // Left for the caller to rebuild: its owner opens it again by name.
                Err(e) => tracing::error!(error = %e, "skipping a directory with a damaged name"),
            }
        }
    }
    Ok(out)
}

/// Brings `parent` into the hashed layout: removes leftover `.tmp-*` directories, and moves
/// legacy directories (`depth` levels of percent-encoded names) to their hashed names. Returns how
/// many directories were migrated.
pub(crate) fn migrate(parent: &Path, depth: usize) -> Result<usize> {
    std::fs::create_dir_all(parent).map_err(io("create dir", parent))?;
    let mut moved = 0;
    for entry in std::fs::read_dir(parent).map_err(io("list", parent))? {
        let path = entry.map_err(io("list", parent))?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !path.is_dir() {
            continue;
        }
        if file_name.starts_with(TMP_PREFIX) {
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            continue;
        }
        if path.join(NAME_FILE).is_file() {
            // Hashed already, or a legacy leaf whose NAME was written before a crash.
            let names = match read_names(&path) {
                Ok(names) => names,
                Err(e) => {
                    tracing::error!(error = %e, "skipping a directory with a damaged name");
                    continue;
                }
            };
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if hashed(&refs) != file_name {
                move_into_place(parent, &path, &refs)?;
                moved += 1;
            }
            continue;
        }
        moved += migrate_legacy(parent, &path, &mut Vec::new(), depth)?;
    }
    if moved > 0 {
        sync_dir(parent)?;
        tracing::info!(dir = %parent.display(), moved, "moved directories to hashed names");
    }
    Ok(moved)
}

/// Moves the legacy tree at `path` (whose decoded ancestors are `prefix`) into `root`, and
/// removes the emptied legacy directories.
fn migrate_legacy(
    root: &Path,
    path: &Path,
    prefix: &mut Vec<String>,
    depth: usize,
) -> Result<usize> {
    let Some(name) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(legacy_decode)
    else {
        tracing::warn!(dir = %path.display(), "left alone: not a legacy name");
        return Ok(0);
    };
    prefix.push(name);
    let mut moved = 0;
    if prefix.len() == depth {
        let refs: Vec<&str> = prefix.iter().map(String::as_str).collect();
        write_names(path, &refs)?;
        move_into_place(root, path, &refs)?;
        moved += 1;
    } else {
        for entry in std::fs::read_dir(path).map_err(io("list", path))? {
            let child = entry.map_err(io("list", path))?.path();
            if child.is_dir() {
                moved += migrate_legacy(root, &child, prefix, depth)?;
            }
        }
        // Only empty once every child moved; anything left stays for an operator to see.
        if std::fs::read_dir(path)
            .map_err(io("list", path))?
            .next()
            .is_none()
        {
            std::fs::remove_dir(path).map_err(io("remove", path))?;
        }
    }
    prefix.pop();
    Ok(moved)
}

fn move_into_place(root: &Path, from: &Path, names: &[&str]) -> Result<()> {
    let to = root.join(hashed(names));
    if to.exists() {
        return Err(StoreError::BadNameFile {
            path: from.to_path_buf(),
            reason: format!("{} already exists for the same names", to.display()),
        });
    }
    std::fs::rename(from, &to).map_err(io("rename", from))?;
    if let Some(parent) = from.parent() {
        sync_dir(parent)?;
    }
    sync_dir(root)
}

/// Writes `NAME` in `dir` durably: temp file, fsync, rename, directory fsync.
fn write_names(dir: &Path, names: &[&str]) -> Result<()> {
    let tmp = dir.join(format!("{NAME_FILE}.tmp"));
    let file = dir.join(NAME_FILE);
    let json = serde_json::to_vec(names).map_err(|e| StoreError::BadNameFile {
        path: file.clone(),
        reason: e.to_string(),
    })?;
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&json).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, &file).map_err(io("rename", &tmp))?;
    sync_dir(dir)
}

fn check_names(dir: &Path, names: &[&str]) -> Result<()> {
    let found = read_names(dir)?;
    if found.iter().map(String::as_str).eq(names.iter().copied()) {
        Ok(())
    } else {
        Err(StoreError::BadNameFile {
            path: dir.join(NAME_FILE),
            reason: format!("holds {found:?}, expected {names:?}"),
        })
    }
}

/// The name a legacy percent-encoded directory name stands for.
fn legacy_decode(file: &str) -> Option<String> {
    let bytes = file.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = file.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_are_fixed_length_and_distinct() {
        let long = "q".repeat(256);
        let cjk = "主".repeat(100);
        let cases: Vec<Vec<&str>> = vec![
            vec!["order.paid"],
            vec!["a/b"],
            vec![".."],
            vec![""],
            vec![&long],
            vec![&cjk],
            vec!["ab", "c"],
            vec!["a", "bc"],
        ];
        let mut seen = std::collections::HashSet::new();
        for c in &cases {
            let h = hashed(c);
            assert_eq!(h.len(), 32);
            assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(h), "{c:?}");
        }
    }

    #[test]
    fn ensure_dir_round_trips_names_of_any_length() {
        let root = tempfile::tempdir().unwrap();
        let long = "主".repeat(300);
        let names = ["a/b/../c", long.as_str(), "%RETRY%x%y"];
        let dir = ensure_dir(root.path(), &names).unwrap();
        assert_eq!(read_names(&dir).unwrap(), names);
        assert_eq!(ensure_dir(root.path(), &names).unwrap(), dir);
        let listed = list(root.path()).unwrap();
        assert_eq!(
            listed,
            vec![(dir, names.iter().map(|s| s.to_string()).collect())]
        );
    }

    #[test]
    fn legacy_three_level_tree_migrates_and_resumes_after_a_crash() {
        let root = tempfile::tempdir().unwrap();
        // Percent-encoded names, as the older layout wrote them; `data` holds the decoded ones.
        let legacy = |path: &str, decoded: &str| {
            let p = root.path().join(path);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("data"), decoded).unwrap();
        };
        legacy("a%2Fb/g1/c1", "a/b|g1|c1");
        legacy("a%2Fb/g1/c2", "a/b|g1|c2");
        legacy("%E4%B8%BB%E9%A2%98/%2Ehidden/x%20y", "主题|.hidden|x y");
        // A crash after the NAME of one leaf was written, before its rename.
        let half = root.path().join("s").join("g").join("c");
        std::fs::create_dir_all(&half).unwrap();
        write_names(&half, &["s", "g", "c"]).unwrap();
        // And a leftover from an interrupted creation.
        std::fs::create_dir_all(root.path().join(".tmp-0123")).unwrap();

        assert_eq!(migrate(root.path(), 3).unwrap(), 4);
        let mut listed = list(root.path()).unwrap();
        listed.sort_by(|a, b| a.1.cmp(&b.1));
        let names: Vec<Vec<String>> = listed.iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(
            names,
            vec![
                vec!["a/b".to_owned(), "g1".into(), "c1".into()],
                vec!["a/b".to_owned(), "g1".into(), "c2".into()],
                vec!["s".to_owned(), "g".into(), "c".into()],
                vec!["主题".to_owned(), ".hidden".into(), "x y".into()],
            ]
        );
        for (dir, n) in &listed {
            if n[0] != "s" {
                let data = std::fs::read_to_string(dir.join("data")).unwrap();
                assert_eq!(data, n.join("|"));
            }
        }
        // Nothing else is left, and a second run moves nothing.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 4);
        assert_eq!(migrate(root.path(), 3).unwrap(), 0);
    }
}
