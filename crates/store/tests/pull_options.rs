//! `Store::pull_with`: the time gate, the byte budget and where a new group starts.

use bytes::Bytes;
use qmq_store::{
    BytesFilter, ConsumerKey, FlushPolicy, PullOptions, PullSpec, ResetTo, Store, StoreConfig,
};

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.flush = FlushPolicy::SyncBeforeAck;
    c
}

fn key(subject: &str, group: &str) -> ConsumerKey {
    ConsumerKey {
        subject: subject.into(),
        group: group.into(),
        consumer: "c".into(),
    }
}

fn pull(store: &Store, k: &ConsumerKey, options: PullOptions) -> Vec<Bytes> {
    let spec = PullSpec {
        key: k,
        broadcast: false,
        max: 100,
    };
    store
        .pull_with(spec, options, &BytesFilter(|_: &[u8]| true))
        .unwrap()
        .into_iter()
        .map(|p| p.message)
        .collect()
}

#[tokio::test]
async fn the_time_gate_stops_at_the_first_message_not_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.append([("s", Bytes::from("a"))]).await.unwrap();
    let first = store.read("s", 0, 1).unwrap()[0].appended_at_ms;
    let k = key("s", "g");
    let gate = |t| PullOptions {
        not_after_ms: Some(t),
        ..PullOptions::default()
    };
    assert!(pull(&store, &k, gate(first - 1)).is_empty(), "not due yet");
    assert_eq!(store.position(&k, false), 0, "a message not due stays next");
    assert_eq!(pull(&store, &k, gate(first)), [Bytes::from("a")]);
}

#[tokio::test]
async fn the_byte_budget_splits_pulls_but_a_large_message_goes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let big = Bytes::from(vec![b'x'; 5000]);
    let small = Bytes::from(vec![b'y'; 1000]);
    store
        .append([
            ("s", big.clone()),
            ("s", small.clone()),
            ("s", small.clone()),
            ("s", small.clone()),
        ])
        .await
        .unwrap();
    let k = key("s", "g");
    let budget = PullOptions {
        max_bytes: 2500,
        ..PullOptions::default()
    };
    assert_eq!(pull(&store, &k, budget), [big]);
    assert_eq!(pull(&store, &k, budget), [small.clone(), small.clone()]);
    assert_eq!(pull(&store, &k, budget), [small]);
    // Redelivery keeps to the budget too.
    let again = store.pulled_since_within(&k, 0, 100, 2500).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        store.pulled_since_within(&k, 1, 100, 2500).unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_new_group_starting_at_the_latest_keeps_that_start_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let latest = PullOptions {
        new_group: ResetTo::Latest,
        ..PullOptions::default()
    };
    let k = key("s", "late");
    {
        let store = Store::open(config(dir.path())).unwrap();
        store.append([("s", Bytes::from("old"))]).await.unwrap();
        assert!(pull(&store, &k, latest).is_empty());
        store.append([("s", Bytes::from("new"))]).await.unwrap();
        // Dropped without close: recovery must find the start in the action log.
    }
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(pull(&store, &k, latest), [Bytes::from("new")]);
    // The default starts a new group at the earliest.
    assert_eq!(
        pull(&store, &key("s", "early"), PullOptions::default()).len(),
        2
    );
}
