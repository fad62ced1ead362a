//! Model-based property test: random appends, pulls, acks and restarts against an in-memory
//! model of QMQ's consumption semantics.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use qmq_store::{ConsumerKey, FlushPolicy, PullSpec, Store, StoreConfig};

#[derive(Debug, Clone)]
enum Op {
    Append {
        subject: usize,
        n: usize,
    },
    Pull {
        consumer: usize,
        subject: usize,
        max: usize,
    },
    AckAll {
        consumer: usize,
        subject: usize,
    },
    Restart {
        clean: bool,
    },
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..20usize).prop_map(|(subject, n)| Op::Append { subject, n }),
        4 => (0..3usize, 0..2usize, 1..15usize).prop_map(|(consumer, subject, max)| Op::Pull { consumer, subject, max }),
        2 => (0..3usize, 0..2usize).prop_map(|(consumer, subject)| Op::AckAll { consumer, subject }),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        1 => Just(Op::Checkpoint),
    ]
}

#[derive(Default)]
struct Model {
    subjects: [Vec<Bytes>; 2],
    /// Next consume sequence of the one group per subject.
    next: [usize; 2],
    /// Per (consumer, subject): consume sequences pulled, and how many acked.
    pulled: HashMap<(usize, usize), (Vec<usize>, usize)>,
}

fn key(consumer: usize, subject: usize) -> ConsumerKey {
    ConsumerKey {
        subject: format!("s{subject}"),
        group: "g".into(),
        consumer: format!("c{consumer}"),
    }
}

fn open(dir: &std::path::Path) -> Store {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 2048;
    c.action_segment_size = 1024;
    c.flush = FlushPolicy::SyncBeforeAck;
    c.checkpoints_retained = 2;
    Store::open(c).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut model = Model::default();
        let mut counter = 0usize;
        for op in ops {
            match op {
                Op::Append { subject, n } => {
                    let batch: Vec<(String, Bytes)> = (0..n).map(|_| {
                        counter += 1;
                        (format!("s{subject}"), Bytes::from(format!("m{counter}")))
                    }).collect();
                    let appended = rt.block_on(store.append(batch.clone())).unwrap();
                    for (a, (_, m)) in appended.iter().zip(batch) {
                        prop_assert_eq!(a.sequence as usize, model.subjects[subject].len());
                        model.subjects[subject].push(m);
                    }
                }
                Op::Pull { consumer, subject, max } => {
                    let k = key(consumer, subject);
                    let got = store.pull(PullSpec { key: &k, broadcast: false, max }, |_| true).unwrap();
                    let start = model.next[subject];
                    let end = (start + max).min(model.subjects[subject].len());
                    let entry = model.pulled.entry((consumer, subject)).or_default();
                    prop_assert_eq!(got.len(), end - start);
                    for (i, p) in got.iter().enumerate() {
                        prop_assert_eq!(p.sequence as usize, start + i);
                        prop_assert_eq!(p.pull_seq as usize, entry.0.len() + i);
                        prop_assert_eq!(&p.message, &model.subjects[subject][start + i]);
                    }
                    entry.0.extend(start..end);
                    model.next[subject] = end;
                }
                Op::AckAll { consumer, subject } => {
                    let k = key(consumer, subject);
                    if let Some(entry) = model.pulled.get_mut(&(consumer, subject)) {
                        if !entry.0.is_empty() {
                            store.ack(&k, entry.0.len() as u64 - 1).unwrap();
                            entry.1 = entry.0.len();
                        }
                    }
                }
                Op::Restart { clean } => {
                    if clean {
                        store.close().unwrap();
                    }
                    drop(store);
                    store = open(dir.path());
                }
                Op::Checkpoint => store.checkpoint().unwrap(),
            }
            // Invariants after every step: progress and unacked messages match the model.
            for ((consumer, subject), (pulled, acked)) in &model.pulled {
                let k = key(*consumer, *subject);
                let p = store.progress(&k);
                prop_assert_eq!(p.pulled, pulled.len() as i64 - 1);
                prop_assert_eq!(p.acked, *acked as i64 - 1);
                let unacked = store.pulled_since(&k, *acked as u64, 1000).unwrap();
                let want: Vec<&Bytes> = pulled[*acked..].iter().map(|&s| &model.subjects[*subject][s]).collect();
                let got: Vec<&Bytes> = unacked.iter().map(|p| &p.message).collect();
                prop_assert_eq!(got, want);
            }
            for s in 0..2 {
                prop_assert_eq!(store.subject_len(&format!("s{s}")) as usize, model.subjects[s].len());
            }
        }
    }
}
