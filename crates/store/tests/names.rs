//! Names never decide a file name: subjects, groups and consumers of any length and alphabet
//! are stored, survive a crash and a reopen, and data directories in the older layout (names
//! percent-encoded into directory names) open and keep everything.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use qmq_store::{ConsumerKey, Store};

mod common;
use common::{config, key, pull};

/// The names the issue reported as bricking a store, plus path-like ones.
fn hostile_subjects() -> Vec<String> {
    vec![
        "q".repeat(256),
        "主".repeat(100),
        "主".repeat(341), // 1023 bytes: the longest a store accepts
        "../../etc/passwd".into(),
        "a/b".into(),
        ".".into(),
    ]
}

#[tokio::test]
async fn over_long_and_path_like_subjects_are_stored_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let subjects = hostile_subjects();
    {
        let store = Store::open(config(dir.path())).unwrap();
        for s in &subjects {
            store
                .append([(s.as_str(), Bytes::from(format!("body of {s}")))])
                .await
                .unwrap();
        }
        // A normal subject after them still works.
        store.append([("plain", Bytes::from("p"))]).await.unwrap();
        store.close().unwrap();
    }
    let store = Store::open(config(dir.path())).unwrap();
    for s in &subjects {
        let m = store.read(s, 0, 10).unwrap();
        assert_eq!(m.len(), 1, "{s}");
        assert_eq!(m[0].message, Bytes::from(format!("body of {s}")));
    }
    assert_eq!(store.subject_len("plain"), 1);
    // Nothing escaped the data directory.
    assert!(!dir.path().parent().unwrap().join("etc").exists());
}

#[tokio::test]
async fn over_long_group_and_consumer_ids_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let group = "g".repeat(300);
    let consumer = "主".repeat(120);
    let k = key("s", &group, &consumer);
    {
        let store = Store::open(config(dir.path())).unwrap();
        store
            .append((0..5).map(|i| ("s", Bytes::from(format!("m{i}")))))
            .await
            .unwrap();
        let got = pull(&store, &k, 3);
        assert_eq!(got.len(), 3);
        store.ack(&k, got[0].pull_seq).unwrap();
        // Dropped without close: a crash.
    }
    let store = Store::open(config(dir.path())).unwrap();
    let progress = store.progress(&k);
    assert_eq!((progress.pulled, progress.acked), (2, 0));
    let next = pull(&store, &k, 10);
    assert_eq!(next.len(), 2);
    assert_eq!(next[0].message, Bytes::from("m3"));
}

/// The percent-encoded directory name the layout before hashed names used.
fn legacy(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.starts_with('.') {
        out.replace_range(0..1, "%2E");
    }
    out
}

fn names_of(dir: &Path) -> Vec<String> {
    serde_json::from_slice(&std::fs::read(dir.join("NAME")).unwrap()).unwrap()
}

/// Rewrites a data directory into the older layout: every hashed directory renamed to its
/// percent-encoded name(s), NAME files removed, pull logs three levels deep again.
fn to_legacy_layout(root: &Path) {
    let consume = root.join("consumelog");
    for e in std::fs::read_dir(&consume).unwrap() {
        let p = e.unwrap().path();
        let names = names_of(&p);
        std::fs::remove_file(p.join("NAME")).unwrap();
        std::fs::rename(&p, consume.join(legacy(&names[0]))).unwrap();
    }
    let pull = root.join("pulllog");
    let hashed: Vec<PathBuf> = std::fs::read_dir(&pull)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for p in hashed {
        let names = names_of(&p);
        std::fs::remove_file(p.join("NAME")).unwrap();
        let to = pull
            .join(legacy(&names[0]))
            .join(legacy(&names[1]))
            .join(legacy(&names[2]));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(&p, &to).unwrap();
    }
}

#[tokio::test]
async fn a_data_directory_in_the_older_layout_opens_with_everything() {
    let dir = tempfile::tempdir().unwrap();
    let subjects = ["order.paid", "a/b", "主题", "%RETRY%order.paid%g"];
    let keys: Vec<ConsumerKey> = subjects.iter().map(|s| key(s, "g/1", "c 1")).collect();
    {
        let store = Store::open(config(dir.path())).unwrap();
        for s in subjects {
            store
                .append((0..4).map(|i| (s, Bytes::from(format!("{s}-{i}")))))
                .await
                .unwrap();
        }
        for k in &keys {
            let got = pull(&store, k, 2);
            store.ack(k, got[1].pull_seq).unwrap();
            pull(&store, k, 1);
        }
        store.close().unwrap();
    }
    to_legacy_layout(dir.path());
    assert!(dir.path().join("consumelog").join("a%2Fb").is_dir());
    assert!(dir.path().join("pulllog/a%2Fb/g%2F1/c%201").is_dir());

    let store = Store::open(config(dir.path())).unwrap();
    for (s, k) in subjects.iter().zip(&keys) {
        assert_eq!(store.subject_len(s), 4, "{s}");
        let p = store.progress(k);
        assert_eq!((p.pulled, p.acked), (2, 1), "{s}");
        // The unacked pull is redelivered from the migrated pull log.
        let again = store.pulled_since(k, 2, 10).unwrap();
        assert_eq!(again.len(), 1, "{s}");
        assert_eq!(again[0].message, Bytes::from(format!("{s}-2")));
    }
    // Only hashed directories remain.
    for sub in ["consumelog", "pulllog"] {
        for e in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            let p = e.unwrap().path();
            assert!(p.join("NAME").is_file(), "{}", p.display());
        }
    }
    drop(store);
    // And it opens again, unchanged.
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.subject_len("a/b"), 4);
}

#[tokio::test]
async fn a_damaged_name_file_does_not_stop_a_store_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("s/1", "g", "c");
    {
        let store = Store::open(config(dir.path())).unwrap();
        store
            .append((0..6).map(|i| ("s/1", Bytes::from(format!("m{i}")))))
            .await
            .unwrap();
        let got = pull(&store, &k, 4);
        store.ack(&k, got[1].pull_seq).unwrap();
        store.close().unwrap();
    }
    for sub in ["consumelog", "pulllog"] {
        for e in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            std::fs::write(e.unwrap().path().join("NAME"), b"\0garbage").unwrap();
        }
    }
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.subject_len("s/1"), 6);
    let again = store.pulled_since(&k, 2, 10).unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].message, Bytes::from("m2"));
    assert_eq!(pull(&store, &k, 10).len(), 2);
    drop(store);
    // Repaired on the way: every NAME reads again.
    for sub in ["consumelog", "pulllog"] {
        for e in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            assert!(!names_of(&e.unwrap().path()).is_empty());
        }
    }
}
