//! Reading the message log's tail back to a time: `offset_at_or_before_time` and
//! `scan_messages_since`, across segments and a reopen.

use qmq_store::{Store, StoreConfig};

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    // Small segments, so the tail spans many of them.
    c.segment_size = 1024;
    c
}

/// Every message with its append time, in log order (read back by subject and sequence).
fn all(store: &Store, subjects: &[&str]) -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    for s in subjects {
        for m in store.read(s, 0, 10_000).unwrap() {
            out.push((
                m.offset,
                m.appended_at_ms,
                String::from_utf8(m.message.to_vec()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

fn since(store: &Store, time_ms: u64) -> Vec<(String, u64, String)> {
    let mut got = Vec::new();
    store
        .scan_messages_since(time_ms, |subject, at, body| {
            got.push((
                subject.to_owned(),
                at,
                String::from_utf8(body.to_vec()).unwrap(),
            ))
        })
        .unwrap();
    got
}

#[tokio::test]
async fn scans_exactly_the_messages_appended_since_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for i in 0..200 {
        let subject = if i % 3 == 0 { "a" } else { "b" };
        store
            .append([(subject, format!("m{i:03}-{}", "x".repeat(40)))])
            .await
            .unwrap();
    }
    let stored = all(&store, &["a", "b"]);
    assert_eq!(stored.len(), 200);
    for check in [&store] {
        assert_eq!(since(check, 0).len(), 200, "from the beginning");
        assert!(
            since(check, u64::MAX).is_empty(),
            "nothing is newer than the end of time"
        );
        // Every cut-off that occurs: exactly the messages at or after it, in log order.
        for &(_, t, _) in stored.iter().step_by(17) {
            let expected: Vec<String> = stored
                .iter()
                .filter(|(_, at, _)| *at >= t)
                .map(|(_, _, b)| b.clone())
                .collect();
            let got: Vec<String> = since(check, t).into_iter().map(|(_, _, b)| b).collect();
            assert_eq!(got, expected, "since {t}");
            // It starts no later than the first such message, and at a segment start.
            let first = stored.iter().find(|(_, at, _)| *at >= t).unwrap().0;
            assert!(check.offset_at_or_before_time(t).unwrap() <= first);
        }
    }
    store.close().unwrap();
    drop(store);
    // After a reopen, the same.
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(since(&store, 0).len(), 200);
    let t = stored[150].1;
    assert_eq!(
        since(&store, t).len(),
        stored.iter().filter(|(_, at, _)| *at >= t).count()
    );
    store.close().unwrap();
}
