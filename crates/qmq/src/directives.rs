//! The broker's record of the last reset-offset request it applied, `<broker dir>/directives.json`
//! (a bare JSON number, the request id), so each request from the meta server is applied once
//! across restarts (see `qmq_meta::broker_api`).
//!
//! The file is written as the store writes its checkpoints: temp file, fsync, rename, directory
//! fsync, so a crash leaves the old or the new id, never a torn file. A file that exists but
//! cannot be read or parsed (disk damage, an operator's edit) is *not* read as 0: that would
//! apply every past reset again and rewind consumer groups. The broker then logs an error and
//! skips to the meta server's newest request without applying the old ones ([`Start::Latest`]);
//! a missing file (a new broker) starts from 0 as before.

use std::io::Write;
use std::path::{Path, PathBuf};

use qmq_meta::broker_api::BrokerDirectives;
use qmq_meta::model::ResetOffsetRequest;

/// File name under the broker's data directory.
pub const FILE: &str = "directives.json";

/// Where to start applying reset requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this request id (0: from the first).
    After(i64),
    /// The record is unusable: apply none of the requests that exist now, only later ones.
    Latest,
}

/// Reads the record at `path`.
pub fn load(path: &Path) -> Start {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Start::After(0),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e,
                "cannot read the applied reset-offset id; skipping to the newest request, past \
                 resets are not applied again");
            return Start::Latest;
        }
    };
    match serde_json::from_slice::<i64>(&bytes) {
        Ok(id) if id >= 0 => Start::After(id),
        Ok(id) => {
            tracing::error!(path = %path.display(), id,
                "negative applied reset-offset id; skipping to the newest request");
            Start::Latest
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e,
                "damaged applied reset-offset id; skipping to the newest request, past resets \
                 are not applied again");
            Start::Latest
        }
    }
}

/// The requests of `d` to apply, given where this broker starts: none when the record was
/// unusable (the caller then records `d.last_id`).
pub fn to_apply(start: Start, d: &BrokerDirectives) -> &[ResetOffsetRequest] {
    match start {
        Start::After(_) => &d.reset_offsets,
        Start::Latest => &[],
    }
}

/// Durably records `id` at `path`: temp file, fsync, rename, directory fsync.
pub fn save(path: &Path, id: i64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(id.to_string().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmq_meta::model::ResetAction;

    fn directives(ids: &[i64]) -> BrokerDirectives {
        BrokerDirectives {
            group: "b".into(),
            registered: true,
            readonly_subjects: Vec::new(),
            reset_offsets: ids
                .iter()
                .map(|&id| ResetOffsetRequest {
                    id,
                    subject: "s".into(),
                    consumer_group: "g".into(),
                    action: ResetAction::Earliest,
                    created_ms: 0,
                })
                .collect(),
            last_id: ids.last().copied().unwrap_or(0),
        }
    }

    #[test]
    fn a_saved_id_is_read_back_and_the_old_format_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(load(&path), Start::After(0), "a new broker starts at 0");
        save(&path, 42).unwrap();
        assert_eq!(load(&path), Start::After(42));
        save(&path, 43).unwrap();
        assert_eq!(load(&path), Start::After(43));
        assert!(!dir.path().join("directives.json.tmp").exists());
        // What earlier versions wrote (`std::fs::write(path, id.to_string())`).
        std::fs::write(&path, "7").unwrap();
        assert_eq!(load(&path), Start::After(7));
    }

    #[test]
    fn a_corrupt_record_replays_no_old_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let pending = directives(&[1, 2, 3]);
        for garbage in [&b""[..], b"\x00\x00\x00", b"4x", b"{\"id\":", b"-5"] {
            std::fs::write(&path, garbage).unwrap();
            let start = load(&path);
            assert_eq!(start, Start::Latest, "{garbage:?}");
            assert!(to_apply(start, &pending).is_empty(), "{garbage:?}");
        }
        // A record that cannot be read at all (here: a directory in its place).
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(load(&path), Start::Latest);
        // A good record applies what came after it.
        let other = dir.path().join("other.json");
        save(&other, 2).unwrap();
        let start = load(&other);
        assert_eq!(start, Start::After(2));
        assert_eq!(to_apply(start, &directives(&[3]))[0].id, 3);
    }
}
